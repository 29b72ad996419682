"""Typed containers passed between the stages of the pipeline: ``PointCloud``, ``Boxes3D``, ``ClassTable``,
``Frame`` (numpy, the data side) and ``Detections`` (torch, what a detector decodes).

Conventions (identical to OpenPCDet's, so that numbers stay comparable):

* LiDAR frame, right-handed: +x forward, +y left, +z up, metres.
* A box is ``(x, y, z, dx, dy, dz, yaw[, vx, vy])``:
  ``(x, y, z)`` is the **centre** of the box (not the bottom face);
  ``dx`` is the length along the heading, ``dy`` the width, ``dz`` the height;
  ``yaw`` is the heading in radians, rotation about +z, counter-clockwise seen
  from above, 0 pointing along +x (so yaw = pi/2 points along +y);
  ``(vx, vy)`` is the velocity in m/s in the same frame.
* Points are float32 rows whose first three columns are always x, y, z.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from torch import Tensor

#: Column names a point cloud may carry, in their canonical order.
KNOWN_POINT_COLUMNS = ("x", "y", "z", "intensity", "time_lag")
BOX_FIELDS = ("x", "y", "z", "dx", "dy", "dz", "yaw")
VELOCITY_FIELDS = ("vx", "vy")


@dataclass(frozen=True)
class PointCloud:
    """An ``(N, C)`` float32 array with named columns (x, y, z first)."""

    points: np.ndarray  # (N, C) float32
    columns: tuple[str, ...] = ("x", "y", "z", "intensity")

    def __post_init__(self) -> None:
        points = np.asarray(self.points)
        if points.ndim != 2:
            raise ValueError(f"PointCloud.points must be (N, C), got shape {points.shape}")
        if points.shape[1] != len(self.columns):
            raise ValueError(
                f"PointCloud has {points.shape[1]} columns but {len(self.columns)} names {self.columns}"
            )
        if tuple(self.columns[:3]) != ("x", "y", "z"):
            raise ValueError(f"PointCloud columns must start with x, y, z, got {self.columns}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"PointCloud columns must be unique, got {self.columns}")
        unknown = [c for c in self.columns if c not in KNOWN_POINT_COLUMNS]
        if unknown:
            raise ValueError(f"unknown point columns {unknown}; known: {KNOWN_POINT_COLUMNS}")
        object.__setattr__(self, "points", np.ascontiguousarray(points, dtype=np.float32))
        object.__setattr__(self, "columns", tuple(self.columns))

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def xyz(self) -> np.ndarray:  # (N, 3)
        return self.points[:, :3]

    def has(self, name: str) -> bool:
        return name in self.columns

    def column(self, name: str) -> np.ndarray:  # (N,)
        if name not in self.columns:
            raise KeyError(f"point cloud has no column {name!r}; it has {self.columns}")
        return self.points[:, self.columns.index(name)]

    def replace(self, points: np.ndarray) -> "PointCloud":
        """Same columns, new rows (e.g. after a crop or a transform)."""
        return PointCloud(points, self.columns)

    def select(self, mask_or_index: np.ndarray) -> "PointCloud":
        return PointCloud(self.points[mask_or_index], self.columns)


@dataclass(frozen=True)
class Boxes3D:
    """``(M, 7)`` or ``(M, 9)`` float32 boxes in the LiDAR frame (see module docstring)."""

    tensor: np.ndarray  # (M, 7) x y z dx dy dz yaw, or (M, 9) with vx vy

    def __post_init__(self) -> None:
        boxes = np.asarray(self.tensor, dtype=np.float32)
        if boxes.ndim == 1 and boxes.size == 0:
            boxes = boxes.reshape(0, 7)
        if boxes.ndim != 2 or boxes.shape[1] not in (7, 9):
            raise ValueError(f"Boxes3D must be (M, 7) or (M, 9), got shape {boxes.shape}")
        if not np.isfinite(boxes).all():
            bad = np.argwhere(~np.isfinite(boxes))[0]
            fields = BOX_FIELDS + VELOCITY_FIELDS
            raise ValueError(f"Boxes3D box {bad[0]} has a non-finite {fields[bad[1]]}")
        if (boxes[:, 3:6] <= 0).any():
            bad = int(np.argwhere((boxes[:, 3:6] <= 0).any(axis=1))[0, 0])
            raise ValueError(f"Boxes3D box {bad} has a non-positive size {boxes[bad, 3:6].tolist()}")
        object.__setattr__(self, "tensor", np.ascontiguousarray(boxes))

    @classmethod
    def empty(cls, with_velocity: bool = False) -> "Boxes3D":
        return cls(np.zeros((0, 9 if with_velocity else 7), dtype=np.float32))

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def has_velocity(self) -> bool:
        return self.tensor.shape[1] == 9

    @property
    def centers(self) -> np.ndarray:  # (M, 3)
        return self.tensor[:, 0:3]

    @property
    def dims(self) -> np.ndarray:  # (M, 3) dx dy dz
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> np.ndarray:  # (M,)
        return self.tensor[:, 6]

    @property
    def velocity(self) -> np.ndarray:  # (M, 2); zeros when the boxes carry none
        if self.has_velocity:
            return self.tensor[:, 7:9]
        return np.zeros((len(self), 2), dtype=np.float32)

    def replace(self, tensor: np.ndarray) -> "Boxes3D":
        return Boxes3D(tensor)

    def select(self, mask_or_index: np.ndarray) -> "Boxes3D":
        return Boxes3D(self.tensor[mask_or_index])

    def corners(self) -> np.ndarray:
        """``(M, 8, 3)`` corners; first the four bottom corners counter-clockwise
        starting at (+dx/2, +dy/2), then the four top ones in the same order."""
        signs = np.array(
            [[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
             [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]],
            dtype=np.float32,
        )
        local = signs[None] * self.dims[:, None, :] / 2  # (M, 8, 3)
        cos, sin = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        x = local[..., 0] * cos - local[..., 1] * sin
        y = local[..., 0] * sin + local[..., 1] * cos
        return np.stack([x, y, local[..., 2]], axis=-1) + self.centers[:, None, :]

    def bev_corners(self) -> np.ndarray:  # (M, 4, 2) counter-clockwise
        return self.corners()[:, :4, :2]

    def points_to_local(self, xyz: np.ndarray) -> np.ndarray:
        """``(N, 3)`` points -> ``(N, M, 3)`` coordinates in every box's own frame."""
        shifted = xyz[:, None, :] - self.centers[None, :, :]
        cos, sin = np.cos(self.yaw)[None, :], np.sin(self.yaw)[None, :]
        local_x = shifted[..., 0] * cos + shifted[..., 1] * sin
        local_y = -shifted[..., 0] * sin + shifted[..., 1] * cos
        return np.stack([local_x, local_y, shifted[..., 2]], axis=-1)

    def contains_points(self, xyz: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """``(N, M)`` bool: point n lies inside box m (faces count as inside)."""
        local = self.points_to_local(np.asarray(xyz, dtype=np.float32)[:, :3])
        half = self.dims[None, :, :] / 2 + margin
        return (np.abs(local) <= half).all(axis=-1)


@dataclass(frozen=True)
class ClassTable:
    """The ordered class names of a dataset; labels are indices into it."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names must be unique, got {self.names}")
        object.__setattr__(self, "names", tuple(self.names))

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str, source: str = "labels") -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(
                f"{source}: unknown class name {name!r}; known classes are {list(self.names)}"
            ) from None

    def indices(self, names: Sequence[str], source: str = "labels") -> np.ndarray:
        return np.array([self.index(n, source) for n in names], dtype=np.int64)

    def name(self, label: int) -> str:
        return self.names[int(label)]


@dataclass(frozen=True)
class Frame:
    """One LiDAR sample with its ground truth (labels index ``classes``)."""

    frame_id: str
    points: PointCloud
    boxes: Boxes3D
    labels: np.ndarray  # (M,) int64
    classes: ClassTable
    # Free-form per-frame information. NumPy arrays whose leading dimension equals the number
    # of boxes (e.g. ``num_points``) are per-box and follow the boxes through ``select_boxes``.
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != len(self.boxes):
            raise ValueError(
                f"frame {self.frame_id}: {len(self.boxes)} boxes but {labels.shape[0]} labels"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(
                f"frame {self.frame_id}: label outside 0..{len(self.classes) - 1} ({list(self.classes.names)})"
            )
        object.__setattr__(self, "labels", labels)

    def replace(self, **changes) -> "Frame":
        values = dict(
            frame_id=self.frame_id, points=self.points, boxes=self.boxes,
            labels=self.labels, classes=self.classes, metadata=self.metadata,
        )
        values.update(changes)
        return Frame(**values)

    def select_boxes(self, mask_or_index: np.ndarray) -> "Frame":
        count = len(self.boxes)
        metadata = {
            key: value[mask_or_index] if isinstance(value, np.ndarray) and value.shape[:1] == (count,) else value
            for key, value in self.metadata.items()
        }
        return self.replace(
            boxes=self.boxes.select(mask_or_index), labels=self.labels[mask_or_index], metadata=metadata
        )


class Detections(NamedTuple):
    """Decoded boxes of one sample."""

    boxes: Tensor  # (K, 7|9) x y z dx dy dz yaw [vx vy], metric LiDAR frame
    scores: Tensor  # (K,)
    labels: Tensor  # (K,) long, indices into the dataset's ClassTable

    @classmethod
    def of(cls, found: Any) -> "Detections":
        """One sample's detections as another detector's ``decode`` gives them: anything with ``boxes``,
        ``scores`` and ``labels`` attributes (a dataclass, a named tuple) or keys (a dict), read by name."""
        if isinstance(found, Detections):
            return found
        parts = []
        for name in cls._fields:
            if isinstance(found, Mapping) and name in found:
                parts.append(found[name])
            elif not isinstance(found, Mapping) and hasattr(found, name):
                parts.append(getattr(found, name))
            else:
                raise ValueError(f"a detector's decode gave {type(found).__name__} without '{name}': each sample's "
                                 f"detections need boxes (K, 7+), scores (K,) and labels (K,), as attributes or keys")
        return cls(*parts)
