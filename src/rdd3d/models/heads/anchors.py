"""Anchors of SECOND and PointPillars (OpenPCDet's ``AnchorGenerator`` semantics).

Every location of an ``(H, W)`` BEV output map carries the same set of *anchor types*: for each
class in order, each of its sizes, each of its rotations. Anchors of a class sit at
``z = bottom_z + dz / 2`` (OpenPCDet configures the bottom face and shifts to the centre).

Where the locations lie (``align_center``):

- ``False`` (OpenPCDet's default and every one of its KITTI configs): the ``W`` columns span the
  x range edge to edge, ``x_i = x_min + i * (x_max - x_min) / (W - 1)``, so the first anchor sits
  on ``x_min`` and the last on ``x_max`` (same along y with ``H``). The spacing is slightly larger
  than a map cell and anchors drift by up to half a cell from the cell centres towards the far edge.
- ``True``: anchors at the cell centres, ``x_i = x_min + (i + 1/2) * (x_max - x_min) / W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class AnchorClassConfig:
    """Anchors and IoU thresholds of one class. An anchor is positive at BEV IoU >= ``matched_threshold``
    with a box of its class, negative below ``unmatched_threshold``, ignored in between."""

    class_name: str
    sizes: tuple[tuple[float, float, float], ...]  # (dx, dy, dz): length, width, height in metres
    bottom_z: float  # z of the anchors' bottom face (OpenPCDet's anchor_bottom_heights)
    matched_threshold: float
    unmatched_threshold: float
    rotations: tuple[float, ...] = (0.0, math.pi / 2)  # yaw of each anchor type (OpenPCDet writes 1.57)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(tuple(float(v) for v in size) for size in self.sizes))
        object.__setattr__(self, "rotations", tuple(float(r) for r in self.rotations))
        where = f"AnchorClassConfig({self.class_name!r})"
        if not self.sizes or any(len(size) != 3 or min(size) <= 0 for size in self.sizes):
            raise ValueError(f"{where}.sizes needs at least one (dx, dy, dz) of positive sizes, got {self.sizes}")
        if not self.rotations:
            raise ValueError(f"{where}.rotations needs at least one yaw")
        if not 0 <= self.unmatched_threshold <= self.matched_threshold <= 1:
            raise ValueError(
                f"{where}: need 0 <= unmatched_threshold <= matched_threshold <= 1, got "
                f"{self.unmatched_threshold} and {self.matched_threshold}"
            )

    @property
    def num_anchor_types(self) -> int:
        return len(self.sizes) * len(self.rotations)

    def anchor_types(self) -> list[tuple[float, ...]]:
        """``(z, dx, dy, dz, yaw)`` of each anchor type, size-major then rotation."""
        return [(self.bottom_z + size[2] / 2, *size, yaw) for size in self.sizes for yaw in self.rotations]


def anchor_positions(low: float, high: float, count: int, align_center: bool) -> Tensor:
    """``(count,)`` float64 anchor coordinates along one axis of the map (see the module docstring)."""
    steps = torch.arange(count, dtype=torch.float64)
    if align_center:
        return low + (steps + 0.5) * ((high - low) / count)
    if count < 2:
        raise ValueError(f"anchors spanning the range edge to edge (align_center False) need a map of at "
                         f"least 2 cells per axis, got {count}")
    return low + steps * ((high - low) / (count - 1))


def anchor_grid(
    classes: Sequence[AnchorClassConfig],
    point_cloud_range: Sequence[float],
    map_size: tuple[int, int],
    align_center: bool = False,
    device: Optional[torch.device] = None,
) -> Tensor:
    """``(H, W, A, 7)`` float32 anchors ``x y z dx dy dz yaw`` on an ``(H, W)`` map; rows run along y,
    columns along x; the ``A`` anchor types are those of ``classes`` in order."""
    height, width = map_size
    x_min, y_min, _, x_max, y_max, _ = (float(v) for v in point_cloud_range)
    xs = anchor_positions(x_min, x_max, width, align_center)
    ys = anchor_positions(y_min, y_max, height, align_center)
    types = torch.tensor([t for spec in classes for t in spec.anchor_types()], dtype=torch.float64)  # (A, 5)
    anchors = torch.empty(height, width, types.shape[0], 7, dtype=torch.float64)
    anchors[..., 0] = xs[None, :, None]
    anchors[..., 1] = ys[:, None, None]
    anchors[..., 2:] = types
    return anchors.to(device=device, dtype=torch.float32)
