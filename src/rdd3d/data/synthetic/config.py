"""Difficulty knobs of the synthetic world; every default is documented in docs/synthetic-world.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from rdd3d.data.synthetic.catalog import CLASS_NAMES, DEFAULT_CLASS_WEIGHTS


@dataclass(frozen=True)
class LidarConfig:
    """A spinning LiDAR (defaults close to nuScenes' 32-beam sensor, with a coarser azimuth step)."""

    beams: int = 32
    fov_up_deg: float = 10.67  # elevation of the top beam
    fov_down_deg: float = -30.67  # elevation of the bottom beam; beams are evenly spaced between
    azimuth_resolution_deg: float = 0.45
    mount_height: float = 1.84  # sensor height over the ground under it (the LiDAR frame's origin)
    max_range: float = 70.0
    min_range: float = 1.0  # closer returns are discarded (the ego vehicle's own body)
    range_noise_std: float = 0.02  # metres along the beam, clipped at range_noise_bound
    dropout: float = 0.05  # probability that a return is lost
    num_sweeps: int = 2  # sweeps accumulated into one frame; the key sweep has time_lag 0
    # Seconds between the accumulated sweeps. nuScenes' 10 sweeps span 0.45 s; two sweeps 0.25 s apart
    # (5 revolutions of a 20 Hz sensor) leave a comparable motion trail with a fifth of the points.
    sweep_interval: float = 0.25

    def __post_init__(self) -> None:
        _check(self.beams >= 1, "lidar.beams", self.beams, ">= 1")
        _check(-90 <= self.fov_down_deg < self.fov_up_deg <= 90, "lidar.fov_down_deg/fov_up_deg",
               (self.fov_down_deg, self.fov_up_deg), "-90 <= fov_down_deg < fov_up_deg <= 90")
        _check(0 < self.azimuth_resolution_deg <= 10, "lidar.azimuth_resolution_deg",
               self.azimuth_resolution_deg, "in (0, 10]")
        _check(self.mount_height > 0, "lidar.mount_height", self.mount_height, "> 0")
        _check(0 <= self.min_range < self.max_range, "lidar.min_range/max_range",
               (self.min_range, self.max_range), "0 <= min_range < max_range")
        _check(self.range_noise_std >= 0, "lidar.range_noise_std", self.range_noise_std, ">= 0")
        _check(0 <= self.dropout < 1, "lidar.dropout", self.dropout, "in [0, 1)")
        _check(self.num_sweeps >= 1, "lidar.num_sweeps", self.num_sweeps, ">= 1")
        _check(self.sweep_interval > 0, "lidar.sweep_interval", self.sweep_interval, "> 0")

    @property
    def range_noise_bound(self) -> float:
        """Range noise never moves a return further than this (three standard deviations)."""
        return 3 * self.range_noise_std


@dataclass(frozen=True)
class WorldConfig:
    """What a scene holds and how the sensor sees it."""

    lidar: LidarConfig = field(default_factory=LidarConfig)
    objects_per_scene: tuple[int, int] = (15, 30)  # labelled objects, inclusive range
    distractors_per_scene: tuple[int, int] = (25, 40)  # unlabelled clutter, inclusive range
    occluder_fraction: float = 0.3  # share of distractors placed between the sensor and an object
    scene_radius: float = 40.0  # objects are placed within this distance of the sensor
    clutter_radius: float = 50.0  # distractors are placed within this distance
    # The labelled classes placed in scenes, in CLASS_NAMES order: the world's class table (labels index it).
    classes: tuple[str, ...] = CLASS_NAMES
    # Relative frequency, one per class of CLASS_NAMES whether chosen or not (so that a subset keeps the
    # others' proportions); only the chosen classes' weights are used, renormalised over them.
    class_weights: tuple[float, ...] = DEFAULT_CLASS_WEIGHTS
    ego_speed_max: float = 10.0  # m/s; the ego vehicle drives along +x (stopped in 30% of scenes)
    ground_amplitude: float = 0.3  # metres of height variation of the ground
    ground_wavelength: float = 40.0  # metres; typical length of a ground undulation

    def __post_init__(self) -> None:
        for name in ("objects_per_scene", "distractors_per_scene", "classes", "class_weights"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.lidar, dict):
            object.__setattr__(self, "lidar", LidarConfig(**self.lidar))
        for name in ("objects_per_scene", "distractors_per_scene"):
            low_high = getattr(self, name)
            _check(len(low_high) == 2 and 0 <= low_high[0] <= low_high[1], name, low_high,
                   "(min, max) with 0 <= min <= max")
        _check(0 <= self.occluder_fraction <= 1, "occluder_fraction", self.occluder_fraction, "in [0, 1]")
        _check(self.scene_radius > 5, "scene_radius", self.scene_radius, "> 5 m")
        _check(self.clutter_radius > 5, "clutter_radius", self.clutter_radius, "> 5 m")
        _check(len(self.classes) > 0 and set(self.classes) <= set(CLASS_NAMES)
               and self.classes == tuple(name for name in CLASS_NAMES if name in self.classes), "classes",
               self.classes, f"distinct names among {CLASS_NAMES}, at least one, in that order")
        _check(len(self.class_weights) == len(CLASS_NAMES) and min(self.class_weights) >= 0,
               "class_weights", self.class_weights, f"{len(CLASS_NAMES)} non-negative weights for {CLASS_NAMES}")
        unweighted = [name for name in self.classes if self.class_weights[CLASS_NAMES.index(name)] == 0]
        _check(not unweighted, "class_weights", self.class_weights,
               f"a weight > 0 for every class of WorldConfig.classes (a chosen class that is never placed has no "
               f"ground truth to learn or score); {unweighted} have 0")
        _check(self.ego_speed_max >= 0, "ego_speed_max", self.ego_speed_max, ">= 0")
        _check(0 <= self.ground_amplitude < self.lidar.mount_height / 2, "ground_amplitude",
               self.ground_amplitude, f"in [0, mount_height / 2 = {self.lidar.mount_height / 2})")
        _check(self.ground_wavelength > 0, "ground_wavelength", self.ground_wavelength, "> 0")


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"WorldConfig.{name} = {value!r}: expected {expected}")
