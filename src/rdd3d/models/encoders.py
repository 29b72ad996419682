"""Voxel feature encoders: per-voxel features from the points of :class:`rdd3d.data.voxelize.Voxels`.

* :class:`MeanVFE` — the mean of a voxel's points (CenterPoint-Voxel / SECOND).
* :class:`PillarVFE` — a small PointNet over each pillar's points (PointPillars / CenterPoint-Pillar),
  then :class:`PointPillarScatter` puts the pillar features on a dense bird's-eye-view canvas.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rdd3d.data.voxelize import voxel_centers
from rdd3d.models.backbones3d import BEVMap


def point_mask(num_points: Tensor, max_points: int) -> Tensor:
    """``(V, P)`` bool: which of the P slots of each voxel hold a real point."""
    return torch.arange(max_points, device=num_points.device)[None, :] < num_points[:, None]


class MeanVFE(nn.Module):
    """Mean of the point features of each voxel; padded slots are ignored."""

    def __init__(self, num_point_features: int) -> None:
        super().__init__()
        self.out_channels = num_point_features

    def forward(self, features: Tensor, num_points: Tensor) -> Tensor:
        # features (V, P, C), num_points (V,) -> (V, C)
        mask = point_mask(num_points, features.shape[1])[:, :, None]  # (V, P, 1)
        count = num_points.clamp(min=1).to(features.dtype)[:, None]
        return (features * mask).sum(dim=1) / count


class PFNLayer(nn.Module):
    """Linear -> BatchNorm1d -> ReLU on every real point, then max over each pillar's points.

    A non-final layer returns each point's features concatenated with its pillar's maximum
    (PointNet style): its linear part is ``out_channels // 2`` wide, as in OpenPCDet.
    """

    def __init__(self, in_channels: int, out_channels: int, last: bool) -> None:
        super().__init__()
        if not last and out_channels % 2:
            raise ValueError(f"a non-final PFNLayer needs an even width, got {out_channels}")
        self.last = last
        width = out_channels if last else out_channels // 2
        self.linear = nn.Linear(in_channels, width, bias=False)
        self.norm = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01)

    def forward(self, points: Tensor, pillar_of_point: Tensor, num_pillars: int) -> Tensor:
        # points (M, C_in) real points only, pillar_of_point (M,) -> (V, C_out) if last else (M, C_out)
        x = torch.relu(self.norm(self.linear(points)))
        # ReLU output is >= 0, so a zero start makes scatter-max the max over each pillar's real points.
        index = pillar_of_point[:, None].expand_as(x)
        pooled = x.new_zeros(num_pillars, x.shape[1]).scatter_reduce_(0, index, x, "amax")
        if self.last:
            return pooled
        return torch.cat([x, pooled[pillar_of_point]], dim=1)


class PillarVFE(nn.Module):
    """PointPillars' pillar feature net.

    Each point gets its own features, its offset to the mean of its pillar's points and its offset
    to the pillar's centre (x, y, z); a stack of :class:`PFNLayer` then max-pools over the pillar.
    Unlike OpenPCDet, padded slots take no part in BatchNorm statistics or in the maximum.
    """

    def __init__(
        self, num_point_features: int, filters: Sequence[int], voxel_size: Sequence[float],
        point_cloud_range: Sequence[float],
    ) -> None:
        super().__init__()
        if not filters:
            raise ValueError("PillarVFE.filters must name at least one layer width")
        self.voxel_size = tuple(voxel_size)
        self.point_cloud_range = tuple(point_cloud_range)
        widths = [num_point_features + 6, *filters]
        self.layers = nn.ModuleList(
            PFNLayer(widths[i], widths[i + 1], last=i == len(filters) - 1) for i in range(len(filters))
        )
        self.out_channels = filters[-1]

    def forward(self, features: Tensor, num_points: Tensor, coords: Tensor) -> Tensor:
        # features (V, P, C) zero-padded, num_points (V,), coords (V, 4) b z y x -> (V, filters[-1])
        mask = point_mask(num_points, features.shape[1])  # (V, P)
        pillar_of_point = torch.nonzero(mask)[:, 0]  # (M,)
        points = features[mask]  # (M, C) real points only
        xyz = points[:, :3]
        count = num_points.clamp(min=1).to(features.dtype)[:, None]
        pillar_mean = xyz.new_zeros(len(features), 3).index_add_(0, pillar_of_point, xyz) / count  # (V, 3)
        centre = voxel_centers(coords, self.voxel_size, self.point_cloud_range).to(features.dtype)  # (V, 3)
        x = torch.cat([points, xyz - pillar_mean[pillar_of_point], xyz - centre[pillar_of_point]], dim=1)
        for layer in self.layers:
            x = layer(x, pillar_of_point, len(features))
        return x


class PointPillarScatter(nn.Module):
    """Pillar features -> dense ``(B, C, ny, nx)`` bird's-eye-view canvas (stride 1), zero where there is
    no pillar."""

    def __init__(self, num_bev_features: int, grid_size: Sequence[int]) -> None:
        super().__init__()
        nx, ny, nz = grid_size
        if nz != 1:
            raise ValueError(f"PointPillarScatter needs a pillar grid (nz == 1), got grid_size {tuple(grid_size)}")
        self.out_channels = num_bev_features
        self.nx, self.ny = int(nx), int(ny)

    def forward(self, pillar_features: Tensor, coords: Tensor, batch_size: int) -> BEVMap:
        # pillar_features (V, C), coords (V, 4) b z y x -> (B, C, ny, nx)
        index = coords.long()
        flat = (index[:, 0] * self.ny + index[:, 2]) * self.nx + index[:, 3]
        canvas = pillar_features.new_zeros(batch_size * self.ny * self.nx, pillar_features.shape[1])
        canvas = canvas.index_copy(0, flat, pillar_features)
        return BEVMap(canvas.view(batch_size, self.ny, self.nx, -1).permute(0, 3, 1, 2).contiguous(), stride=1)
