"""What can stand in the world: the labelled classes and the unlabelled distractors.

Each builder returns the parts of one thing in its own frame: x forward (the heading),
y left, z up from the ground contact, centred on x = y = 0. Parts are axis-aligned in
that frame; the labelled box of an object is the tight box of its parts, so a builder
only has to make something that looks right.

Class sizes follow nuScenes' per-class means and spreads (length along the heading,
width, height in metres). Distractors are chosen to resemble objects in size but not in
shape: containers are truck-sized plain boxes, cabinets car-sized ones, bollards are
cone-sized cylinders, pillars pedestrian-sized, benches and fences barrier-like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rdd3d.data.synthetic.shapes import Part, box, ellipsoid, frustum

CLASS_NAMES = ("car", "truck", "bus", "pedestrian", "cyclist", "traffic_cone", "barrier")
#: Relative frequency of each class in a scene (many small objects, as in city traffic).
DEFAULT_CLASS_WEIGHTS = (0.28, 0.08, 0.04, 0.25, 0.10, 0.13, 0.12)

Builder = Callable[[np.ndarray, np.random.Generator], list[Part]]  # (size (3,), rng) -> parts


# Surface reflectivity ranges (0..1); each part draws its own value, so two cars differ in paint.
class Material:
    PAINT = (0.15, 0.8)
    GLASS = (0.05, 0.12)
    RUBBER = (0.03, 0.06)
    CLOTH = (0.08, 0.5)
    SKIN = (0.25, 0.4)
    METAL = (0.3, 0.6)
    CONCRETE = (0.25, 0.4)
    VEGETATION = (0.15, 0.35)
    RETROREFLECTIVE = (0.7, 0.95)


def _shade(rng: np.random.Generator, material: tuple[float, float]) -> float:
    return float(rng.uniform(*material))


# ----------------------------------------------------------------------------- labelled classes


def _wheels(rng, axle_xs, half_track: float, diameter: float, width: float) -> list[Part]:
    rubber = _shade(rng, Material.RUBBER)
    return [box((x, side * (half_track - width / 2), diameter / 2), (diameter, width, diameter), rubber)
            for x in axle_xs for side in (1, -1)]


def _car(size, rng) -> list[Part]:
    length, width, height = size
    wheel = 0.38 * height
    body_bottom, body_top = 0.35 * wheel, height * rng.uniform(0.5, 0.6)
    # A lower hood in front of a cabin set back from the middle: real cars' front and back differ,
    # which is what lets a detector tell a parked car's heading from its opposite.
    hood_length, hood_top = length * rng.uniform(0.25, 0.32), body_top - rng.uniform(0.1, 0.18)
    cabin_length = length * rng.uniform(0.45, 0.55)
    cabin_x = -length * rng.uniform(0.06, 0.14)
    roof = 0.06
    paint = _shade(rng, Material.PAINT)
    rear_length = length - hood_length
    return [
        box((length / 2 - hood_length / 2, 0, (body_bottom + hood_top) / 2),
            (hood_length, width, hood_top - body_bottom), paint),
        box((-length / 2 + rear_length / 2, 0, (body_bottom + body_top) / 2),
            (rear_length, width, body_top - body_bottom), paint),
        box((cabin_x, 0, (body_top + height - roof) / 2), (cabin_length, 0.86 * width, height - roof - body_top),
            _shade(rng, Material.GLASS)),
        box((cabin_x, 0, height - roof / 2), (cabin_length * 0.9, 0.8 * width, roof), paint),
        *_wheels(rng, (length / 2 - 0.18 * length, -length / 2 + 0.18 * length), width / 2, wheel, 0.2),
    ]


def _truck(size, rng) -> list[Part]:
    length, width, height = size
    cab_length = min(rng.uniform(1.8, 2.4), 0.35 * length)
    cab_height = min(height, rng.uniform(2.5, 3.0))
    cargo_length = length - cab_length - 0.15
    wheel = rng.uniform(0.9, 1.05)
    cab_x = length / 2 - cab_length / 2
    cargo_bottom = wheel
    paint = _shade(rng, Material.PAINT)
    return [
        box((cab_x, 0, (0.5 + 0.6 * cab_height) / 2), (cab_length, 0.95 * width, 0.6 * cab_height - 0.5), paint),
        box((cab_x - 0.1, 0, 0.8 * cab_height), (cab_length - 0.2, 0.9 * width, 0.4 * cab_height),
            _shade(rng, Material.GLASS)),
        box((-length / 2 + cargo_length / 2, 0, (cargo_bottom + height) / 2),
            (cargo_length, width, height - cargo_bottom), _shade(rng, Material.METAL)),
        *_wheels(rng, (cab_x, -length / 2 + 0.25 * cargo_length, -length / 2 + 0.1 * cargo_length + wheel / 2),
                 0.95 * width / 2, wheel, 0.35),
    ]


def _bus(size, rng) -> list[Part]:
    length, width, height = size
    wheel = rng.uniform(0.95, 1.05)
    # A raised front roof (destination sign and roof-top cooling) over the front 40 % and a front axle
    # nearer its end than the rear one: front and back differ, as a car's do, so that a detector can tell a
    # bus's heading from its opposite. No extra random draws: every other object of a scene stays the same.
    skirt, windows_top, roof_top = 0.45 * height, 0.78 * height, 0.88 * height
    raised_length = 0.4 * length
    paint = _shade(rng, Material.PAINT)
    return [
        box((0, 0, (0.35 + skirt) / 2), (length, width, skirt - 0.35), paint),
        box((0, 0, (skirt + windows_top) / 2), (length - 0.4, width - 0.12, windows_top - skirt),
            _shade(rng, Material.GLASS)),
        box((0, 0, (windows_top + roof_top) / 2), (length, width, roof_top - windows_top), paint),
        box((length / 2 - raised_length / 2, 0, (roof_top + height) / 2), (raised_length, width, height - roof_top),
            paint),
        *_wheels(rng, (length / 2 - 0.2 * length, -length / 2 + 0.3 * length), width / 2, wheel, 0.3),
    ]


def _pedestrian(size, rng) -> list[Part]:
    length, width, height = size
    leg_top, shoulders = 0.47 * height, 0.82 * height
    head = 0.13 * height
    limb = 0.14
    arm_swing = rng.uniform(-1, 1) * (length / 2 - limb / 2)
    cloth_legs, cloth_top = _shade(rng, Material.CLOTH), _shade(rng, Material.CLOTH)
    parts = [  # one leg forward, one back: the stride sets the box length
        box((side * (length / 2 - limb / 2), 0.06 * side, leg_top / 2), (limb, limb, leg_top), cloth_legs)
        for side in (1, -1)
    ]
    parts += [  # arms swing against the legs and set the width
        box((-side * arm_swing, side * (width / 2 - 0.05), (0.45 * height + shoulders) / 2),
            (limb, 0.1, shoulders - 0.45 * height), cloth_top)
        for side in (1, -1)
    ]
    parts += [
        box((0, 0, (leg_top + shoulders) / 2), (min(0.26, length), width - 0.2, shoulders - leg_top), cloth_top),
        ellipsoid((0, 0, height - head / 2), (0.2, 0.17, head), _shade(rng, Material.SKIN)),
    ]
    return parts


def _cyclist(size, rng) -> list[Part]:
    length, width, height = size
    wheel = min(0.7, 0.42 * length)
    head = 0.13 * height
    metal = _shade(rng, Material.METAL)
    cloth = _shade(rng, Material.CLOTH)
    return [
        *[box((side * (length / 2 - wheel / 2), 0, wheel / 2), (wheel, 0.06, wheel), _shade(rng, Material.RUBBER))
          for side in (1, -1)],
        box((0, 0, 0.6 * wheel), (length - wheel, 0.06, 0.3), metal),  # frame
        box((length / 2 - 0.8 * wheel, 0, wheel + 0.3), (0.08, width, 0.06), metal),  # handlebar
        box((-0.05, 0, 0.6), (0.3, 0.32, 0.5), cloth),  # legs on the pedals
        box((0, 0, (0.85 + height - head) / 2), (0.4, min(0.45, width - 0.05), height - head - 0.85), cloth),
        ellipsoid((0.1, 0, height - head / 2), (0.2, 0.18, head), _shade(rng, Material.SKIN)),
    ]


def _traffic_cone(size, rng) -> list[Part]:
    length, width, height = size
    base = 0.04
    radius = 0.45 * min(length, width)
    return [
        box((0, 0, base / 2), (length, width, base), _shade(rng, Material.PAINT)),
        frustum((0, 0, base), radius, 0.1 * radius, height - base, _shade(rng, Material.RETROREFLECTIVE)),
    ]


def _barrier(size, rng) -> list[Part]:
    length, width, height = size
    if rng.random() < 0.5:  # concrete jersey barrier: wide foot, narrow top
        concrete = _shade(rng, Material.CONCRETE)
        return [
            box((0, 0, 0.15 * height), (length, width, 0.3 * height), concrete),
            box((0, 0, 0.65 * height), (length, 0.5 * width, 0.7 * height), concrete),
        ]
    plastic = _shade(rng, Material.METAL)  # striped plank on two feet
    return [
        box((0, 0, 0.825 * height), (length, 0.4 * width, 0.35 * height), _shade(rng, Material.RETROREFLECTIVE)),
        *[box((side * (length / 2 - 0.15), 0, 0.325 * height), (0.3, width, 0.65 * height), plastic)
          for side in (1, -1)],
    ]


@dataclass(frozen=True)
class ClassSpec:
    mean_size: tuple[float, float, float]  # length along the heading, width, height (m)
    std_size: tuple[float, float, float]
    moving_probability: float
    speed_range: tuple[float, float]  # m/s of a moving object, along its heading
    build: Builder


CLASS_SPECS: dict[str, ClassSpec] = {
    "car": ClassSpec((4.62, 1.95, 1.73), (0.45, 0.16, 0.20), 0.5, (1.0, 14.0), _car),
    "truck": ClassSpec((6.93, 2.51, 2.84), (1.60, 0.25, 0.45), 0.4, (1.0, 12.0), _truck),
    "bus": ClassSpec((11.0, 2.94, 3.47), (1.20, 0.12, 0.25), 0.5, (1.0, 10.0), _bus),
    "pedestrian": ClassSpec((0.73, 0.67, 1.76), (0.15, 0.12, 0.15), 0.7, (0.4, 2.0), _pedestrian),
    "cyclist": ClassSpec((1.75, 0.62, 1.72), (0.15, 0.08, 0.10), 0.8, (2.0, 7.0), _cyclist),
    "traffic_cone": ClassSpec((0.41, 0.41, 1.00), (0.06, 0.06, 0.15), 0.0, (0.0, 0.0), _traffic_cone),
    "barrier": ClassSpec((2.50, 0.50, 1.00), (0.50, 0.08, 0.10), 0.0, (0.0, 0.0), _barrier),
}


def sample_size(class_name: str, rng: np.random.Generator) -> np.ndarray:  # (3,)
    """Normal around the class mean, clipped at two standard deviations."""
    spec = CLASS_SPECS[class_name]
    return np.asarray(spec.mean_size) + np.asarray(spec.std_size) * np.clip(rng.standard_normal(3), -2, 2)


def build_object(class_name: str, rng: np.random.Generator, size=None) -> list[Part]:
    """Parts of one object of ``class_name``; its size is sampled unless given as (length, width, height)."""
    if class_name not in CLASS_SPECS:
        raise ValueError(f"unknown class {class_name!r}; known classes are {list(CLASS_NAMES)}")
    size = sample_size(class_name, rng) if size is None else np.asarray(size, dtype=np.float64)
    return CLASS_SPECS[class_name].build(size, rng)


def sample_speed(class_name: str, rng: np.random.Generator) -> float:
    """Speed along the heading: 0 for a parked/standing object, else uniform in the class's range."""
    spec = CLASS_SPECS[class_name]
    if rng.random() >= spec.moving_probability:
        return 0.0
    return float(rng.uniform(*spec.speed_range))


# ----------------------------------------------------------------------------- distractors


def _wall(rng) -> list[Part]:
    length, thickness, height = rng.uniform(4, 20), rng.uniform(0.2, 0.4), rng.uniform(1.5, 4.0)
    return [box((0, 0, height / 2), (length, thickness, height), _shade(rng, Material.CONCRETE))]


def _fence(rng) -> list[Part]:
    length, height = rng.uniform(3, 12), rng.uniform(1.0, 2.0)
    metal = _shade(rng, Material.METAL)
    posts = np.linspace(-length / 2 + 0.04, length / 2 - 0.04, max(2, int(length / 2.5) + 1))
    return [
        box((0, 0, height - 0.05), (length, 0.06, 0.1), metal),
        box((0, 0, 0.4 * height), (length, 0.06, 0.1), metal),
        *[box((x, 0, height / 2), (0.08, 0.08, height), metal) for x in posts],
    ]


def _pole(rng) -> list[Part]:
    radius = rng.uniform(0.08, 0.2)
    return [frustum((0, 0, 0), radius, 0.7 * radius, rng.uniform(4, 9), _shade(rng, Material.METAL))]


def _sign(rng) -> list[Part]:
    post = rng.uniform(1.8, 2.8)
    plate_width, plate_height = rng.uniform(0.5, 1.0), rng.uniform(0.5, 0.9)
    return [
        frustum((0, 0, 0), 0.04, 0.04, post, _shade(rng, Material.METAL)),
        box((0, 0, post + plate_height / 2), (0.04, plate_width, plate_height), _shade(rng, Material.RETROREFLECTIVE)),
    ]


def _tree(rng) -> list[Part]:
    trunk_radius, trunk_height = rng.uniform(0.1, 0.3), rng.uniform(1.5, 3.0)
    crown_width, crown_height = rng.uniform(2, 6), rng.uniform(2, 5)
    return [
        frustum((0, 0, 0), trunk_radius, 0.7 * trunk_radius, trunk_height, _shade(rng, Material.VEGETATION)),
        ellipsoid((0, 0, trunk_height + crown_height / 2 - 0.3), (crown_width, crown_width * rng.uniform(0.8, 1.0),
                  crown_height), _shade(rng, Material.VEGETATION)),
    ]


def _bush(rng) -> list[Part]:
    length, width, height = rng.uniform(0.8, 2.5), rng.uniform(0.8, 2.5), rng.uniform(0.6, 1.6)
    return [ellipsoid((0, 0, height / 2), (length, width, height), _shade(rng, Material.VEGETATION))]


def _plain_box(length_range, width_range, height_range, material) -> Callable[[np.random.Generator], list[Part]]:
    def build(rng) -> list[Part]:
        length, width, height = rng.uniform(*length_range), rng.uniform(*width_range), rng.uniform(*height_range)
        return [box((0, 0, height / 2), (length, width, height), _shade(rng, material))]
    return build


def _bollard(rng) -> list[Part]:
    radius = rng.uniform(0.08, 0.2)
    return [frustum((0, 0, 0), radius, radius, rng.uniform(0.5, 1.1), _shade(rng, Material.PAINT))]


def _pillar(rng) -> list[Part]:
    radius = rng.uniform(0.15, 0.3)
    return [frustum((0, 0, 0), radius, radius, rng.uniform(1.4, 2.0), _shade(rng, Material.CONCRETE))]


def _bench(rng) -> list[Part]:
    length = rng.uniform(1.5, 2.2)
    wood = _shade(rng, Material.PAINT)
    return [
        box((0, 0, 0.45), (length, 0.5, 0.08), wood),
        box((0, -0.22, 0.72), (length, 0.06, 0.45), wood),
        *[box((side * (length / 2 - 0.03), 0, 0.225), (0.06, 0.5, 0.45), wood) for side in (1, -1)],
    ]


#: kind -> (relative frequency, builder)
DISTRACTORS: dict[str, tuple[float, Callable[[np.random.Generator], list[Part]]]] = {
    "wall": (0.12, _wall),
    "fence": (0.08, _fence),
    "pole": (0.14, _pole),
    "sign": (0.08, _sign),
    "tree": (0.14, _tree),
    "bush": (0.10, _bush),
    "container": (0.05, _plain_box((6, 12), (2.3, 2.5), (2.5, 2.9), Material.METAL)),  # truck-sized
    "cabinet": (0.08, _plain_box((1.2, 4.5), (1.0, 2.0), (1.0, 1.8), Material.PAINT)),  # car-sized
    "bollard": (0.08, _bollard),  # cone-sized
    "pillar": (0.06, _pillar),  # pedestrian-sized
    "bench": (0.07, _bench),  # barrier-sized
}


def build_distractor(kind: str, rng: np.random.Generator) -> list[Part]:
    if kind not in DISTRACTORS:
        raise ValueError(f"unknown distractor kind {kind!r}; known kinds are {list(DISTRACTORS)}")
    return DISTRACTORS[kind][1](rng)
