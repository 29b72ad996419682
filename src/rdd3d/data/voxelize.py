"""Vectorised voxelisation of point clouds into the fixed-size layout CenterPoint consumes.

The semantics are those of spconv's ``PointToVoxel`` on the CPU (and of OpenPCDet's data processor):

* a point's voxel is ``floor((p - range_min) / voxel_size)`` per axis, computed in float32;
  points whose voxel falls outside the grid are dropped (the range is half-open);
* voxels are numbered in the order their first point appears in the input;
* a voxel keeps its first ``max_points_per_voxel`` points in input order, the rest are dropped;
* voxels beyond ``max_voxels`` are dropped with their points.

A pillar is a voxel whose z size is the whole z range (grid z size 1). Coordinates are
``(z, y, x)`` as in spconv; the grid size is reported ``(x, y, z)`` as in OpenPCDet.

Everything is tensor code (one stable sort of hashed voxel indices, no loop over points or
voxels), so it runs on whatever device the points are on.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor


class Voxels(NamedTuple):
    """The voxels of one point cloud."""

    features: Tensor  # (V, P, C) point features, zero-padded after num_points
    num_points: Tensor  # (V,) int32, 1..P
    coords: Tensor  # (V, 3) int32 (z, y, x)
    grid_size: tuple[int, int, int]  # (nx, ny, nz)


class VoxelBatch(NamedTuple):
    """The voxels of several point clouds, concatenated; ``coords`` carries the cloud index."""

    features: Tensor  # (V, P, C)
    num_points: Tensor  # (V,) int32
    coords: Tensor  # (V, 4) int32 (batch, z, y, x)
    grid_size: tuple[int, int, int]  # (nx, ny, nz)
    batch_size: int


class _MadeBatch(NamedTuple):
    voxelizer: "Voxelizer"
    clouds: tuple[Tensor, ...]  # held, so that the identity check below cannot meet a recycled id
    batch: VoxelBatch
    most_voxels: int  # of any one cloud


#: The batches made inside :func:`shared_voxelisation` (None outside it).
_SHARED_BATCHES: ContextVar[list[_MadeBatch] | None] = ContextVar("rdd3d_shared_voxel_batches", default=None)


@contextlib.contextmanager
def shared_voxelisation() -> Iterator[None]:
    """Inside the block, voxelising the same point tensors (the same objects) on the same grid again returns
    the :class:`VoxelBatch` made the first time: a teacher and a student on one grid read one batch, and
    their sparse convolutions can share rulebooks (:func:`rdd3d.models.sparse.rulebook.shared_rulebooks`).
    Two ``max_voxels`` share a batch only when neither dropped a voxel (the results are then identical)."""
    token = _SHARED_BATCHES.set([])
    try:
        yield
    finally:
        _SHARED_BATCHES.reset(token)


@dataclass(frozen=True)
class Voxelizer:
    """Turns ``(N, C)`` point tensors (x, y, z first) into :class:`Voxels`."""

    voxel_size: tuple[float, float, float]  # (x, y, z) metres
    point_cloud_range: tuple[float, float, float, float, float, float]  # x0 y0 z0 x1 y1 z1
    max_points_per_voxel: int
    max_voxels: int

    def __post_init__(self) -> None:
        voxel_size = tuple(float(v) for v in self.voxel_size)
        pc_range = tuple(float(v) for v in self.point_cloud_range)
        if len(voxel_size) != 3 or min(voxel_size) <= 0:
            raise ValueError(f"Voxelizer.voxel_size must be 3 positive sizes (x, y, z), got {self.voxel_size}")
        if len(pc_range) != 6 or any(pc_range[i + 3] <= pc_range[i] for i in range(3)):
            raise ValueError(
                "Voxelizer.point_cloud_range must be (x0, y0, z0, x1, y1, z1) with x1 > x0, y1 > y0, z1 > z0, "
                f"got {self.point_cloud_range}"
            )
        if self.max_points_per_voxel < 1 or self.max_voxels < 1:
            raise ValueError(
                f"Voxelizer.max_points_per_voxel and max_voxels must be >= 1, "
                f"got {self.max_points_per_voxel} and {self.max_voxels}"
            )
        object.__setattr__(self, "voxel_size", voxel_size)
        object.__setattr__(self, "point_cloud_range", pc_range)

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """``(nx, ny, nz)``, rounded in float32 exactly as spconv does."""
        extent = np.float32(self.point_cloud_range[3:]) - np.float32(self.point_cloud_range[:3])
        sizes = np.round(extent / np.float32(self.voxel_size))
        return tuple(int(s) for s in sizes)

    def __call__(self, points: Tensor) -> Voxels:
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"Voxelizer expects (N, C>=3) points with x, y, z first, got shape {tuple(points.shape)}")
        nx, ny, nz = self.grid_size
        device = points.device
        low = torch.tensor(self.point_cloud_range[:3], dtype=torch.float32, device=device)
        size = torch.tensor(self.voxel_size, dtype=torch.float32, device=device)
        grid = torch.tensor([nx, ny, nz], device=device)

        cell = torch.floor((points[:, :3].float() - low) / size).long()  # (N, 3) x y z
        inside = ((cell >= 0) & (cell < grid)).all(dim=1)
        point_index = torch.nonzero(inside).squeeze(1)  # (M,) input positions of kept points
        cell = cell[point_index]
        key = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]  # (M,) linear (z, y, x) index

        # Stable sort groups each voxel's points together, still in input order.
        order = torch.argsort(key, stable=True)
        sorted_key = key[order]
        is_first = torch.ones_like(sorted_key, dtype=torch.bool)
        is_first[1:] = sorted_key[1:] != sorted_key[:-1]
        group = torch.cumsum(is_first, dim=0) - 1  # (M,) voxel group of each sorted point
        group_start = torch.nonzero(is_first).squeeze(1)  # (G,) first sorted position of each group
        slot = torch.arange(order.numel(), device=device) - group_start[group]  # rank inside its voxel

        # Number voxels by first appearance: the first point of a group is its earliest in the input,
        # so counting voxel-opening points in input order numbers the voxels.
        first_point = order[group_start]  # (G,) position among kept points
        opens_voxel = torch.zeros_like(key, dtype=torch.bool)
        opens_voxel[first_point] = True
        voxel = (torch.cumsum(opens_voxel, dim=0) - 1)[first_point][group]  # (M,) voxel id of each sorted point

        num_voxels = min(group_start.numel(), self.max_voxels)
        keep = (voxel < num_voxels) & (slot < self.max_points_per_voxel)
        voxel, slot = voxel[keep], slot[keep]
        source = point_index[order[keep]]  # input row of each kept point

        features = points.new_zeros((num_voxels, self.max_points_per_voxel, points.shape[1]))
        features[voxel, slot] = points[source]
        num_points = torch.bincount(voxel, minlength=num_voxels).int()
        openers = torch.nonzero(opens_voxel).squeeze(1)[:num_voxels]  # in input order = voxel order
        coords = cell[openers].flip(1).int()  # (V, 3) z y x
        return Voxels(features, num_points, coords, (nx, ny, nz))

    def voxelize_batch(self, clouds: Sequence[Tensor]) -> VoxelBatch:
        """Voxelise each cloud on its own (``max_voxels`` applies per cloud) and concatenate."""
        if len(clouds) == 0:
            raise ValueError("Voxelizer.voxelize_batch needs at least one point cloud")
        shared = _SHARED_BATCHES.get()
        if shared is not None:
            for made in shared:
                if self._can_reuse(made, clouds):
                    return made.batch
        per_cloud = [self(points) for points in clouds]
        coords = torch.cat([
            torch.nn.functional.pad(v.coords, (1, 0), value=b) for b, v in enumerate(per_cloud)
        ])  # (V, 4) b z y x
        batch = VoxelBatch(
            features=torch.cat([v.features for v in per_cloud]),
            num_points=torch.cat([v.num_points for v in per_cloud]),
            coords=coords,
            grid_size=self.grid_size,
            batch_size=len(clouds),
        )
        if shared is not None:
            shared.append(_MadeBatch(self, tuple(clouds), batch, max(len(v.num_points) for v in per_cloud)))
        return batch

    def _can_reuse(self, made: _MadeBatch, clouds: Sequence[Tensor]) -> bool:
        other = made.voxelizer
        same_grid = (other.voxel_size, other.point_cloud_range, other.max_points_per_voxel) == (
            self.voxel_size, self.point_cloud_range, self.max_points_per_voxel)
        same_clouds = len(made.clouds) == len(clouds) and all(a is b for a, b in zip(made.clouds, clouds))
        # Below both limits no voxel was dropped by either, so the two results are the same.
        same_limit = other.max_voxels == self.max_voxels or made.most_voxels < min(other.max_voxels, self.max_voxels)
        return same_grid and same_clouds and same_limit


def voxel_centers(
    coords: Tensor, voxel_size: Sequence[float], point_cloud_range: Sequence[float]
) -> Tensor:
    """``(V, 3)`` metric centres (x, y, z) of voxels given their ``(..., z, y, x)`` coordinates."""
    zyx = coords[:, -3:].float()
    low = torch.tensor(point_cloud_range[:3], dtype=torch.float32, device=coords.device)
    size = torch.tensor(voxel_size, dtype=torch.float32, device=coords.device)
    return (zyx.flip(1) + 0.5) * size + low
