"""The sparse voxel tensor passed between sparse convolution layers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch
from torch import Tensor


@dataclass(frozen=True)
class SparseTensor:
    """Active voxels of a batch of 3D grids.

    ``rulebooks`` maps an ``indice_key`` to the rulebook a convolution built for it during this
    forward pass, so that later submanifold layers with the same key reuse it (spconv's
    ``indice_dict``). Each layer returns a new tensor whose mapping extends its input's, so the
    cache lives exactly as long as the forward pass.
    """

    features: Tensor  # (V, C)
    indices: Tensor  # (V, 4) int32 (batch, z, y, x)
    spatial_shape: tuple[int, int, int]  # (D, H, W) = (z, y, x) grid size
    batch_size: int
    rulebooks: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(f"SparseTensor.features must be (V, C), got shape {tuple(self.features.shape)}")
        if self.indices.ndim != 2 or self.indices.shape[1] != 4 or self.indices.dtype != torch.int32:
            raise ValueError(
                "SparseTensor.indices must be (V, 4) int32 (batch, z, y, x), "
                f"got shape {tuple(self.indices.shape)} {self.indices.dtype}"
            )
        if self.features.shape[0] != self.indices.shape[0]:
            raise ValueError(
                f"SparseTensor has {self.features.shape[0]} feature rows but {self.indices.shape[0]} indices"
            )
        if len(self.spatial_shape) != 3 or self.batch_size < 1:
            raise ValueError(
                f"SparseTensor needs a (D, H, W) spatial_shape and batch_size >= 1, "
                f"got {self.spatial_shape} and {self.batch_size}"
            )
        object.__setattr__(self, "spatial_shape", tuple(int(s) for s in self.spatial_shape))

    def replace_features(self, features: Tensor) -> "SparseTensor":
        """Same sites, new features (after a norm, an activation, a residual sum...)."""
        return replace(self, features=features)

    def dense(self) -> Tensor:
        """``(B, C, D, H, W)`` dense grid, zero at inactive sites."""
        depth, height, width = self.spatial_shape
        channels = self.features.shape[1]
        index = self.indices.long()
        flat = ((index[:, 0] * depth + index[:, 1]) * height + index[:, 2]) * width + index[:, 3]
        grid = self.features.new_zeros(self.batch_size * depth * height * width, channels)
        grid = grid.index_copy(0, flat, self.features)
        return grid.view(self.batch_size, depth, height, width, channels).permute(0, 4, 1, 2, 3).contiguous()
