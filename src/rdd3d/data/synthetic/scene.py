"""A scene: ground, labelled objects and distractors with their motion, and how to sample one.

Hand-made scenes (tests, pictures) are composed directly::

    ground = Ground.flat(-1.84)
    wall = Actor(build_distractor("wall", rng), x=10, y=0, yaw=np.pi / 2)
    car = Actor(build_object("car", rng), x=20, y=0, yaw=0.0, label=CLASS_NAMES.index("car"))
    scene = Scene.compose(ground, [wall, car])
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np

from rdd3d.data.synthetic.catalog import CLASS_NAMES, DISTRACTORS, build_distractor, build_object, sample_speed
from rdd3d.data.synthetic.config import WorldConfig
from rdd3d.data.synthetic.ground import Ground
from rdd3d.data.synthetic.shapes import Part, Primitives, rotate_z

_PLACEMENT_TRIES = 20
_CLEARANCE = 0.3  # metres kept free between footprints
_EGO_HALF_LENGTH, _EGO_HALF_WIDTH = 3.0, 1.5  # the ego vehicle's own footprint around the sensor
_EGO_STOPPED_PROBABILITY = 0.3


@dataclass(frozen=True)
class Actor:
    """One thing in a scene: parts in its own frame (see catalog), its pose on the ground, its motion."""

    parts: Sequence[Part]
    x: float
    y: float
    yaw: float
    velocity: tuple[float, float] = (0.0, 0.0)  # m/s in the scene frame
    label: int | None = None  # index into the world's classes (WorldConfig.classes); None for a distractor

    def tight_box(self, ground_z: float = 0.0) -> np.ndarray:
        """(7,) x y z dx dy dz yaw: the tight box of the parts, standing on ground height ``ground_z``."""
        centers = np.array([p.center for p in self.parts], np.float64)
        halves = np.array([p.size for p in self.parts], np.float64) / 2
        low, high = (centers - halves).min(axis=0), (centers + halves).max(axis=0)  # in the actor's frame
        offset = rotate_z(((low + high) / 2)[None], np.cos(self.yaw), np.sin(self.yaw))[0]
        return np.array([self.x + offset[0], self.y + offset[1], ground_z + offset[2], *(high - low), self.yaw])


@dataclass(frozen=True)
class Scene:
    """Everything a sensor can hit, at the key time (time lag 0), in the LiDAR frame of the key sweep."""

    ground: Ground
    actors: tuple[Actor, ...]
    primitives: Primitives  # every part of every actor; owner = index into actors
    boxes: np.ndarray  # (M, 9) tight boxes of the labelled actors: x y z dx dy dz yaw vx vy
    labels: np.ndarray  # (M,) class indices
    box_owner: np.ndarray  # (M,) actor index of each box
    ego_velocity: np.ndarray  # (2,) m/s; the sensor was at -ego_velocity * lag at an earlier sweep

    @classmethod
    def compose(cls, ground: Ground, actors: Sequence[Actor], ego_velocity=(0.0, 0.0),
                box_margin: float = 0.0) -> "Scene":
        """Place the actors on the ground. Each labelled box is the tight box of its actor's parts grown
        by ``box_margin`` on every side: with the sensor's range-noise bound as margin, no noisy return
        of an object can fall outside its box."""
        actors = tuple(actors)
        counts = [len(a.parts) for a in actors]
        owner = np.repeat(np.arange(len(actors)), counts)
        poses = np.array([(a.x, a.y, a.yaw) for a in actors], np.float64).reshape(-1, 3)
        ground_z = ground.height(poses[:, :2])
        position = np.concatenate([poses[:, :2], ground_z[:, None]], axis=1)  # (T, 3) ground contact points
        parts = Primitives.from_parts([p for a in actors for p in a.parts], owner)
        primitives = parts.placed(position[owner], poses[owner, 2])

        box_owner = np.array([i for i, a in enumerate(actors) if a.label is not None], np.int64)
        boxes = np.array([[*actors[i].tight_box(ground_z[i]), *actors[i].velocity] for i in box_owner]).reshape(-1, 9)
        boxes[:, 3:6] += 2 * box_margin
        labels = np.array([actors[i].label for i in box_owner], np.int64)
        return cls(ground, actors, primitives, boxes, labels, box_owner, np.asarray(ego_velocity, np.float64))

    @property
    def velocities(self) -> np.ndarray:  # (T, 2)
        return np.array([a.velocity for a in self.actors], np.float64).reshape(-1, 2)

    def primitives_at(self, time_lag: float) -> Primitives:
        """Where every part was ``time_lag`` seconds before the key time (constant velocities)."""
        shift = -self.velocities[self.primitives.owner] * time_lag  # (P, 2)
        return self.primitives.translated(np.concatenate([shift, np.zeros((len(shift), 1))], axis=1))

    def sensor_origin(self, time_lag: float, mount_height: float) -> np.ndarray:  # (3,)
        """Where the sensor was ``time_lag`` seconds before the key time, in the key frame."""
        xy = -self.ego_velocity * time_lag
        return np.array([xy[0], xy[1], self.ground.height(xy) + mount_height])


# ----------------------------------------------------------------------------- sampling


class _Footprints:
    """Bird's-eye rectangles already taken; a new one must not overlap any (separating axis test)."""

    def __init__(self) -> None:
        self.rects = np.zeros((0, 5))  # (N, 5) centre x, centre y, half length, half width, yaw

    def add_if_free(self, rect: np.ndarray) -> bool:
        if len(self.rects):
            own, other = _unit_axes(rect[None, 4]), _unit_axes(self.rects[:, 4])  # (1, 2, 2), (N, 2, 2)
            axes = np.concatenate([np.broadcast_to(own, other.shape), other], axis=1)  # (N, 4, 2)
            reach = _half_projection(rect[None, 2:4], own, axes) + _half_projection(self.rects[:, 2:4], other, axes)
            gap = np.abs(((self.rects[:, None, :2] - rect[:2]) * axes).sum(-1))  # (N, 4)
            if (gap <= reach + _CLEARANCE).all(axis=1).any():
                return False
        self.rects = np.concatenate([self.rects, rect[None]])
        return True


def _unit_axes(yaw: np.ndarray) -> np.ndarray:  # (N,) -> (N, 2, 2): heading and side unit vectors
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], axis=1)


def _half_projection(half_sizes: np.ndarray, own_axes: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Half extent along ``axes`` (N, 4, 2) of rectangles with ``half_sizes`` (N, 2) and ``own_axes`` (N, 2, 2)."""
    return (half_sizes[:, None, :] * np.abs(axes @ own_axes.transpose(0, 2, 1))).sum(-1)


def _footprint(parts: Sequence[Part], x: float, y: float, yaw: float, trail: float) -> np.ndarray:
    """(5,) bird's-eye rectangle (centre x, y, half length, half width, yaw) of the tight box, stretched
    backwards by ``trail`` metres: the ground a moving actor covers during the accumulated sweeps."""
    box = Actor(parts, x, y, yaw).tight_box()
    back = trail / 2 * np.array([np.cos(yaw), np.sin(yaw)])
    return np.array([box[0] - back[0], box[1] - back[1], box[3] / 2 + trail / 2, box[4] / 2, yaw])


def _uniform_in_disc(rng: np.random.Generator, inner: float, outer: float) -> np.ndarray:
    """A point uniform in area over the ring inner < r < outer (far things are as common as in a city)."""
    radius = np.sqrt(rng.uniform(inner**2, outer**2))
    angle = rng.uniform(-np.pi, np.pi)
    return radius * np.array([np.cos(angle), np.sin(angle)])


def _place(rng, parts, footprints: _Footprints, propose, trail: float = 0.0) -> tuple[float, float, float] | None:
    """Try ``propose()`` positions with a random yaw until one is free; None if all tries collide."""
    for _ in range(_PLACEMENT_TRIES):
        x, y = propose()
        yaw = float(rng.uniform(-np.pi, np.pi))
        if footprints.add_if_free(_footprint(parts, x, y, yaw, trail)):
            return float(x), float(y), yaw
    return None


def sample_scene(config: WorldConfig, rng: np.random.Generator) -> Scene:
    """A random scene: rolling ground, labelled objects, distractors (some deliberately in the way)."""
    lidar = config.lidar
    ground = Ground.sample(rng, -lidar.mount_height, config.ground_amplitude, config.ground_wavelength)
    ego_speed = 0.0 if rng.random() < _EGO_STOPPED_PROBABILITY else float(rng.uniform(0, config.ego_speed_max))
    footprints = _Footprints()
    duration = lidar.sweep_interval * (lidar.num_sweeps - 1)  # from the oldest sweep to the key sweep
    trail = ego_speed * duration
    footprints.add_if_free(np.array([-trail / 2, 0, _EGO_HALF_LENGTH + trail / 2, _EGO_HALF_WIDTH, 0]))
    inner = _EGO_HALF_LENGTH + 1

    actors: list[Actor] = []
    weights = np.array([config.class_weights[CLASS_NAMES.index(name)] for name in config.classes])
    for label in rng.choice(len(config.classes), rng.integers(config.objects_per_scene[0],
                                                              config.objects_per_scene[1] + 1),
                            p=weights / sum(weights)):
        name = config.classes[label]
        parts = build_object(name, rng)
        speed = sample_speed(name, rng)
        pose = _place(rng, parts, footprints, partial(_uniform_in_disc, rng, inner, config.scene_radius),
                      trail=speed * duration)
        if pose is not None:
            velocity = (speed * np.cos(pose[2]), speed * np.sin(pose[2]))
            actors.append(Actor(parts, *pose, velocity=velocity, label=int(label)))

    objects = list(actors)
    kinds = list(DISTRACTORS)
    kind_weights = np.array([DISTRACTORS[k][0] for k in kinds])
    for kind in rng.choice(len(kinds), rng.integers(config.distractors_per_scene[0],
                                                     config.distractors_per_scene[1] + 1),
                           p=kind_weights / kind_weights.sum()):
        parts = build_distractor(kinds[kind], rng)
        if objects and rng.random() < config.occluder_fraction:
            propose = partial(_in_front_of, rng, objects[rng.integers(len(objects))])
        else:
            propose = partial(_uniform_in_disc, rng, inner, config.clutter_radius)
        pose = _place(rng, parts, footprints, propose)
        if pose is not None:
            actors.append(Actor(parts, *pose))
    return Scene.compose(ground, actors, ego_velocity=(ego_speed, 0.0), box_margin=lidar.range_noise_bound)


def _in_front_of(rng: np.random.Generator, target: Actor) -> np.ndarray:
    """A point on the sensor's side of ``target``, 30-80% of the way to it, give or take a metre sideways."""
    toward = np.array([target.x, target.y])
    distance = np.linalg.norm(toward)
    sideways = np.array([-toward[1], toward[0]]) / max(distance, 1e-6)
    return toward * rng.uniform(0.3, 0.8) + sideways * rng.uniform(-1.0, 1.0)
