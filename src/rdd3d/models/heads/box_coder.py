"""SECOND's residual box coder and direction bins (OpenPCDet's ``ResidualCoder`` and direction classifier).

A box ``g`` is regressed relative to its anchor ``a`` through seven box deltas:

    dx = (x_g - x_a) / d,  dy = (y_g - y_a) / d,  d = sqrt(dx_a^2 + dy_a^2)  (the anchor's BEV diagonal)
    dz = (z_g - z_a) / dz_a
    dl = log(dx_g / dx_a),  dw = log(dy_g / dy_a),  dh = log(dz_g / dz_a)
    dθ = yaw_g - yaw_a

The regression loss compares yaws through ``sin(dθ_pred - dθ_target)``, blind to a flip by π; the
direction classifier restores it: bin ``k`` of ``num_bins`` covers ``yaw - dir_offset`` in
``[k, k + 1) * 2π / num_bins`` (modulo 2π).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rdd3d.models.heads.targets import LOG_SIZE_RANGE

#: Smallest size taken for a box or anchor: a zero size would make its log -inf (as OpenPCDet clamps).
MIN_SIZE = 1e-5


def encode_box_deltas(boxes: Tensor, anchors: Tensor) -> Tensor:
    """``(..., 7)`` boxes and their ``(..., 7)`` anchors -> ``(..., 7)`` deltas (module docstring)."""
    box_sizes, anchor_sizes = boxes[..., 3:6].clamp_min(MIN_SIZE), anchors[..., 3:6].clamp_min(MIN_SIZE)
    diagonal = torch.hypot(anchor_sizes[..., 0:1], anchor_sizes[..., 1:2])
    return torch.cat([
        (boxes[..., 0:2] - anchors[..., 0:2]) / diagonal,
        (boxes[..., 2:3] - anchors[..., 2:3]) / anchor_sizes[..., 2:3],
        torch.log(box_sizes / anchor_sizes),
        boxes[..., 6:7] - anchors[..., 6:7],
    ], dim=-1)


def decode_box_deltas(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode_box_deltas`; ``anchors`` broadcast against ``deltas``."""
    anchor_sizes = anchors[..., 3:6].clamp_min(MIN_SIZE)
    diagonal = torch.hypot(anchor_sizes[..., 0:1], anchor_sizes[..., 1:2])
    return torch.cat([
        deltas[..., 0:2] * diagonal + anchors[..., 0:2],
        deltas[..., 2:3] * anchor_sizes[..., 2:3] + anchors[..., 2:3],
        deltas[..., 3:6].clamp(*LOG_SIZE_RANGE).exp() * anchor_sizes,
        deltas[..., 6:7] + anchors[..., 6:7],
    ], dim=-1)


def limit_period(values: Tensor, offset: float, period: float) -> Tensor:
    """``values`` moved by whole periods into ``[-offset * period, (1 - offset) * period)``."""
    return values - torch.floor(values / period + offset) * period


def direction_bins(yaw: Tensor, dir_offset: float, num_bins: int) -> Tensor:
    """Direction-classifier target (long) of each yaw."""
    width = 2 * math.pi / num_bins
    bins = torch.floor(limit_period(yaw - dir_offset, 0.0, 2 * math.pi) / width).long()
    return bins.clamp(0, num_bins - 1)  # float rounding can land exactly on 2π


def apply_direction(yaw: Tensor, bins: Tensor, dir_offset: float, dir_limit_offset: float, num_bins: int) -> Tensor:
    """Yaw moved by whole bin widths into the predicted bin: the regression fixes the yaw modulo
    ``2π / num_bins``, the classifier picks which of those turns (OpenPCDet's decoding)."""
    width = 2 * math.pi / num_bins
    return limit_period(yaw - dir_offset, dir_limit_offset, width) + dir_offset + width * bins.to(yaw.dtype)
