"""Voxelisation in NumPy, with the semantics of rdd3d's ``Voxelizer`` (spconv's ``PointToVoxel``):

* a point's voxel is ``floor((p - range_min) / voxel_size)`` per axis in float32; points outside the
  grid are dropped;
* voxels are numbered in the order their first point appears;
* a voxel keeps its first ``max_points_per_voxel`` points, and voxels beyond ``max_voxels`` are dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rdd3d_runtime.manifest import VoxelizationSpec


class Voxels(NamedTuple):
    features: np.ndarray  # (V, P, C) float32, zero-padded after num_points
    num_points: np.ndarray  # (V,) int32, 1..P
    coords: np.ndarray  # (V, 3) int32 (z, y, x)


def voxelize(points: np.ndarray, spec: VoxelizationSpec) -> Voxels:
    """``(N, C)`` float32 points, x y z first -> :class:`Voxels`."""
    nx, ny, nz = spec.grid_size
    low = np.asarray(spec.point_cloud_range[:3], dtype=np.float32)
    size = np.asarray(spec.voxel_size, dtype=np.float32)
    cell = np.floor((points[:, :3].astype(np.float32) - low) / size).astype(np.int64)  # (N, 3) x y z
    inside = np.all((cell >= 0) & (cell < np.array([nx, ny, nz])), axis=1)
    kept_rows = np.flatnonzero(inside)
    cell = cell[kept_rows]
    key = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]

    # np.unique's first indices are the first appearances: ordering the voxels by them numbers the voxels
    # as they appear; a stable sort by voxel keeps each voxel's points in input order.
    _, first, voxel_of_key = np.unique(key, return_index=True, return_inverse=True)
    rank_of_voxel = np.empty(len(first), dtype=np.int64)
    rank_of_voxel[np.argsort(first, kind="stable")] = np.arange(len(first))
    voxel = rank_of_voxel[voxel_of_key.reshape(-1)]  # (M,) voxel id of each kept point
    order = np.argsort(voxel, kind="stable")
    sorted_voxel = voxel[order]
    starts = np.searchsorted(sorted_voxel, sorted_voxel, side="left")
    slot = np.arange(len(order)) - starts  # rank of each point inside its voxel

    num_voxels = min(len(first), spec.max_voxels)
    keep = (sorted_voxel < num_voxels) & (slot < spec.max_points_per_voxel)
    voxel_ids, slots = sorted_voxel[keep], slot[keep]
    features = np.zeros((num_voxels, spec.max_points_per_voxel, points.shape[1]), dtype=np.float32)
    features[voxel_ids, slots] = points[kept_rows[order[keep]]]
    num_points = np.bincount(voxel_ids, minlength=num_voxels).astype(np.int32)
    first_points = np.sort(first)[:num_voxels]
    coords = cell[first_points][:, ::-1].astype(np.int32)  # (V, 3) z y x
    return Voxels(features, num_points, np.ascontiguousarray(coords))
