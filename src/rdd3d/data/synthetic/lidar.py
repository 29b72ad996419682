"""A spinning LiDAR: a grid of beams x azimuth steps cast into a scene, nearest hit wins.

Per sweep, every primitive is tested only against the rays inside the azimuth and elevation
interval its bounding sphere covers as seen from the sensor, so the cost grows with the
solid angle things cover rather than with (rays x primitives). The ground is searched for
every downward ray. Returns then get range noise along the beam, random dropout, and an
intensity from the surface's reflectivity, the incidence angle and the range.

Earlier sweeps are cast from where the sensor was (the ego drives along its velocity) at
the scene as it was (objects moved back by velocity x time lag), in the key sweep's frame:
the accumulated cloud is ego-motion compensated, as nuScenes' multi-sweep clouds are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from rdd3d.data.synthetic.config import LidarConfig
from rdd3d.data.synthetic.ground import Ground
from rdd3d.data.synthetic.scene import Scene
from rdd3d.data.synthetic.shapes import Primitives, intersect

POINT_COLUMNS = ("x", "y", "z", "intensity", "time_lag")
GROUND = -1  # owner of a ground return
INTENSITY_SCALE = 255.0  # nuScenes-style 0..255 intensities
_INCIDENCE_FLOOR = 0.2  # share of the return that does not depend on the incidence angle
_INTENSITY_RANGE_DECAY = 150.0  # metres; intensity falls as exp(-range / this)
_INTENSITY_NOISE = 0.03  # standard deviation, in reflectivity units


@dataclass(frozen=True)
class Scan:
    points: np.ndarray  # (N, 5) float32, columns POINT_COLUMNS, in the key sweep's LiDAR frame
    owner: np.ndarray  # (N,) int64 index of the scene actor each point hit; GROUND for the ground


class Hits(NamedTuple):
    distance: np.ndarray  # (R,) along the ray; inf where nothing is hit within range
    cos_incidence: np.ndarray  # (R,)
    owner: np.ndarray  # (R,) actor index, GROUND, or GROUND for misses (check distance)
    reflectivity: np.ndarray  # (R,)


@dataclass(frozen=True)
class RayGrid:
    """Rays of one sweep: every beam elevation at every azimuth step; ray index = beam * count + step."""

    elevations: np.ndarray  # (B,) radians, ascending
    azimuth_start: float  # radians
    azimuth_step: float  # radians
    azimuth_count: int

    @classmethod
    def for_sweep(cls, config: LidarConfig, rng: np.random.Generator) -> "RayGrid":
        """A sweep starts at a random fraction of an azimuth step: sweeps interleave instead of repeating."""
        step = np.deg2rad(config.azimuth_resolution_deg)
        return cls(np.deg2rad(np.linspace(config.fov_down_deg, config.fov_up_deg, config.beams)),
                   float(rng.uniform(0, step)), float(step), int(round(2 * np.pi / step)))

    def __len__(self) -> int:
        return len(self.elevations) * self.azimuth_count

    @cached_property
    def directions(self) -> np.ndarray:  # (R, 3) unit vectors
        azimuth = self.azimuth_start + self.azimuth_step * np.arange(self.azimuth_count)
        elevation, azimuth = np.meshgrid(self.elevations, azimuth, indexing="ij")  # (B, A)
        return np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                         np.sin(elevation)], axis=-1).reshape(-1, 3)

    def candidate_pairs(self, primitives: Primitives, origin: np.ndarray,
                        max_range: float) -> tuple[np.ndarray, np.ndarray]:
        """(primitive, ray) pairs whose ray passes within the primitive's bounding sphere's angular box."""
        offset = primitives.center - origin  # (P, 3)
        radius = primitives.bounding_radius
        planar = np.hypot(offset[:, 0], offset[:, 1])
        distance = np.linalg.norm(offset, axis=1)
        # angular half-widths of the bounding sphere; a sphere around the sensor covers everything
        half_azimuth = np.arcsin(np.minimum(radius / np.maximum(planar, 1e-9), 1.0))
        half_azimuth[planar <= radius] = np.pi
        half_elevation = np.arcsin(np.minimum(radius / np.maximum(distance, 1e-9), 1.0))
        half_elevation[distance <= radius] = np.pi

        azimuth = np.arctan2(offset[:, 1], offset[:, 0])
        first_step = np.floor((azimuth - half_azimuth - self.azimuth_start) / self.azimuth_step).astype(np.int64)
        last_step = np.ceil((azimuth + half_azimuth - self.azimuth_start) / self.azimuth_step).astype(np.int64)
        steps = np.minimum(last_step - first_step + 1, self.azimuth_count)
        elevation = np.arctan2(offset[:, 2], planar)
        first_beam = np.searchsorted(self.elevations, elevation - half_elevation, side="left")
        beams = np.searchsorted(self.elevations, elevation + half_elevation, side="right") - first_beam
        pairs = np.where(distance - radius < max_range, steps * beams, 0)  # (P,)

        primitive = np.repeat(np.arange(len(primitives)), pairs)  # (K,)
        within = np.arange(pairs.sum()) - np.repeat(np.cumsum(pairs) - pairs, pairs)  # index inside its block
        beam = first_beam[primitive] + within // steps[primitive]
        step = (first_step[primitive] + within % steps[primitive]) % self.azimuth_count
        return primitive, beam * self.azimuth_count + step


def cast(grid: RayGrid, origin: np.ndarray, primitives: Primitives, ground: Ground, max_range: float) -> Hits:
    """Nearest hit of every ray of ``grid`` among the primitives and the ground."""
    directions = grid.directions
    pair_primitive, pair_ray = grid.candidate_pairs(primitives, origin, max_range)
    t, cos = intersect(primitives, origin, directions, pair_primitive, pair_ray)
    hit = np.isfinite(t)
    t, cos, pair_primitive, pair_ray = t[hit], cos[hit], pair_primitive[hit], pair_ray[hit]
    order = np.lexsort((t, pair_ray))  # by ray, nearest first
    nearest = order[np.r_[True, pair_ray[order][1:] != pair_ray[order][:-1]]] if order.size else order

    distance, cos_incidence = ground.intersect(origin, directions, max_range)
    owner = np.full(len(directions), GROUND, np.int64)
    reflectivity = np.full(len(directions), ground.reflectivity)
    rays = pair_ray[nearest]
    closer = t[nearest] < distance[rays]
    rays, winners = rays[closer], nearest[closer]
    distance[rays] = t[winners]
    cos_incidence[rays] = cos[winners]
    owner[rays] = primitives.owner[pair_primitive[winners]]
    reflectivity[rays] = primitives.reflectivity[pair_primitive[winners]]
    distance[distance > max_range] = np.inf
    return Hits(distance, cos_incidence, owner, reflectivity)


def scan(scene: Scene, config: LidarConfig, rng: np.random.Generator) -> Scan:
    """All sweeps of one frame, the key sweep first."""
    sweeps = [_sweep(scene, config, k * config.sweep_interval, rng) for k in range(config.num_sweeps)]
    return Scan(np.concatenate([s.points for s in sweeps]), np.concatenate([s.owner for s in sweeps]))


def _sweep(scene: Scene, config: LidarConfig, time_lag: float, rng: np.random.Generator) -> Scan:
    grid = RayGrid.for_sweep(config, rng)
    origin = scene.sensor_origin(time_lag, config.mount_height)
    hits = cast(grid, origin, scene.primitives_at(time_lag), scene.ground, config.max_range)
    returned = np.flatnonzero(np.isfinite(hits.distance) & (hits.distance >= config.min_range))

    bound = config.range_noise_bound
    noise = np.clip(rng.normal(0, config.range_noise_std, returned.size), -bound, bound)
    distance = hits.distance[returned] + noise
    kept = rng.random(returned.size) >= config.dropout
    signal = (hits.reflectivity[returned] * (_INCIDENCE_FLOOR + (1 - _INCIDENCE_FLOOR) * hits.cos_incidence[returned])
              * np.exp(-distance / _INTENSITY_RANGE_DECAY) + rng.normal(0, _INTENSITY_NOISE, returned.size))
    xyz = origin + distance[:, None] * grid.directions[returned]
    points = np.concatenate([xyz, INTENSITY_SCALE * np.clip(signal, 0, 1)[:, None],
                             np.full((returned.size, 1), time_lag)], axis=1)
    return Scan(points[kept].astype(np.float32), hits.owner[returned][kept])
