"""Frame transforms: range cropping, shuffling and global augmentation.

Every transform takes a :class:`Frame` and returns a new one; geometric ones move points,
box centres, yaws and velocities together, so a point inside a box stays inside it.
Randomness comes from an explicit ``np.random.Generator`` so that a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rdd3d.core.config_loading import require
from rdd3d.data.gt_sampling import GTSamplingConfig
from rdd3d.core.types import Frame


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Wrap angles into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def in_range_mask(xyz: np.ndarray, point_cloud_range: Sequence[float]) -> np.ndarray:
    """(N,) bool: xyz inside ``[x_min, y_min, z_min, x_max, y_max, z_max)``."""
    low = np.asarray(point_cloud_range[:3], dtype=np.float32)
    high = np.asarray(point_cloud_range[3:], dtype=np.float32)
    return ((xyz >= low) & (xyz < high)).all(axis=1)


def crop_to_range(frame: Frame, point_cloud_range: Sequence[float]) -> Frame:
    """Drop points outside the range, and boxes whose centre lies outside it in BEV."""
    points = frame.points.select(in_range_mask(frame.points.xyz, point_cloud_range))
    centers = frame.boxes.centers
    box_mask = (
        (centers[:, 0] >= point_cloud_range[0]) & (centers[:, 0] < point_cloud_range[3])
        & (centers[:, 1] >= point_cloud_range[1]) & (centers[:, 1] < point_cloud_range[4])
    )
    return frame.replace(points=points).select_boxes(box_mask)


def shuffle_points(frame: Frame, rng: np.random.Generator) -> Frame:
    return frame.replace(points=frame.points.select(rng.permutation(len(frame.points))))


def flip(frame: Frame, axis: str) -> Frame:
    """Mirror the scene: ``axis="x"`` mirrors across the x axis (y -> -y), ``"y"`` across the y axis."""
    points = frame.points.points.copy()
    boxes = frame.boxes.tensor.copy()
    if axis == "x":
        points[:, 1] = -points[:, 1]
        boxes[:, 1] = -boxes[:, 1]
        boxes[:, 6] = -boxes[:, 6]
        velocity_column = 8
    elif axis == "y":
        points[:, 0] = -points[:, 0]
        boxes[:, 0] = -boxes[:, 0]
        boxes[:, 6] = np.pi - boxes[:, 6]
        velocity_column = 7
    else:
        raise ValueError(f"flip axis must be 'x' or 'y', got {axis!r}")
    if frame.boxes.has_velocity:
        boxes[:, velocity_column] = -boxes[:, velocity_column]
    boxes[:, 6] = wrap_angle(boxes[:, 6])
    return frame.replace(points=frame.points.replace(points), boxes=frame.boxes.replace(boxes))


def rotate(frame: Frame, angle: float) -> Frame:
    """Rotate the whole scene about +z by ``angle`` radians (counter-clockwise)."""
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]], dtype=np.float32)
    points = frame.points.points.copy()
    points[:, :2] = points[:, :2] @ rotation.T
    boxes = frame.boxes.tensor.copy()
    boxes[:, :2] = boxes[:, :2] @ rotation.T
    boxes[:, 6] = wrap_angle(boxes[:, 6] + angle)
    if frame.boxes.has_velocity:
        boxes[:, 7:9] = boxes[:, 7:9] @ rotation.T
    return frame.replace(points=frame.points.replace(points), boxes=frame.boxes.replace(boxes))


def scale(frame: Frame, factor: float) -> Frame:
    """Scale the scene about the sensor: positions, sizes and velocities."""
    points = frame.points.points.copy()
    points[:, :3] *= factor
    boxes = frame.boxes.tensor.copy()
    boxes[:, :6] *= factor
    if frame.boxes.has_velocity:
        boxes[:, 7:9] *= factor
    return frame.replace(points=frame.points.replace(points), boxes=frame.boxes.replace(boxes))


@dataclass
class AugmentationConfig:
    """Ground-truth sampling (off by default), then global flips, rotation and scaling. The defaults are
    the synthetic world's; the nuScenes configs narrow the rotation to CenterPoint's ±π/8 and KITTI's
    turn off ``flip_y`` (configs/)."""

    gt_sampling: GTSamplingConfig = field(default_factory=GTSamplingConfig)

    flip_x: bool = True
    flip_y: bool = True
    rotation_range: tuple[float, float] = (-0.785398, 0.785398)  # radians
    scale_range: tuple[float, float] = (0.95, 1.05)
    shuffle: bool = True

    def __post_init__(self) -> None:
        for name in ("rotation_range", "scale_range"):
            low, high = getattr(self, name)
            require(math.isfinite(low) and math.isfinite(high) and low <= high, f"data.augmentation.{name}",
                    "[low, high] with finite low <= high (equal: off)", [low, high])
        require(self.scale_range[0] > 0, "data.augmentation.scale_range", "positive", list(self.scale_range))


def augment(frame: Frame, config: AugmentationConfig, rng: np.random.Generator) -> Frame:
    """Random flips, then rotation, then scaling (then shuffling), each drawn from ``rng``."""
    if config.flip_x and rng.random() < 0.5:
        frame = flip(frame, "x")
    if config.flip_y and rng.random() < 0.5:
        frame = flip(frame, "y")
    low, high = config.rotation_range
    if high > low:
        frame = rotate(frame, float(rng.uniform(low, high)))
    low, high = config.scale_range
    if high > low:
        frame = scale(frame, float(rng.uniform(low, high)))
    if config.shuffle:
        frame = shuffle_points(frame, rng)
    return frame

