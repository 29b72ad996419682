"""Typed outputs of the CenterPoint head: raw per-task maps (decoded detections are
:class:`rdd3d.core.types.Detections`)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class TaskPrediction(NamedTuple):
    """Raw output of one class group's head on a ``(B, ., H, W)`` map."""

    heatmap: Tensor  # (B, C_task, H, W) logits
    center: Tensor  # (B, 2, H, W) offset of the box centre from its cell, in cells
    center_z: Tensor  # (B, 1, H, W) metres
    dim: Tensor  # (B, 3, H, W) log of dx, dy, dz
    rot: Tensor  # (B, 2, H, W) cos yaw, sin yaw
    velocity: Optional[Tensor]  # (B, 2, H, W) vx, vy, or None when the head has no velocity branch

    def box_code(self) -> Tensor:
        """``(B, code size, H, W)`` regression maps in the targets' box-code order."""
        maps = [self.center, self.center_z, self.dim, self.rot]
        if self.velocity is not None:
            maps.append(self.velocity)
        return torch.cat(maps, dim=1)


def gather_cells(maps: Tensor, indices: Tensor) -> Tensor:
    """``(B, D, H, W)`` maps at ``(B, K)`` flat cell indices (row * W + column) -> ``(B, K, D)``."""
    flat = maps.flatten(2)  # (B, D, H*W)
    return flat.gather(2, indices[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)
