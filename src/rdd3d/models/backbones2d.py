"""SECOND-style 2D BEV backbone and neck (OpenPCDet's ``BaseBEVBackbone``).

Each level is a strided 3x3 conv followed by ``layer_nums[i]`` 3x3 convs (all
Conv-BN-ReLU); a deblock brings every level back to a common stride (transposed
conv for an up-sampling stride >= 1, strided conv for a stride < 1) and the
deblock outputs are concatenated along channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

# BatchNorm settings of OpenPCDet's BEV backbone (not PyTorch's defaults).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class BEVBackboneConfig:
    """Channel counts are at width 1; ``width`` multiplies all of them (SparseKD's compression)."""

    layer_nums: tuple[int, ...] = (5, 5)
    layer_strides: tuple[int, ...] = (1, 2)
    num_filters: tuple[int, ...] = (128, 256)
    upsample_strides: tuple[float, ...] = (1, 2)
    num_upsample_filters: tuple[int, ...] = (256, 256)
    width: float = 1.0

    def __post_init__(self) -> None:
        lengths = {
            "layer_nums": len(self.layer_nums), "layer_strides": len(self.layer_strides),
            "num_filters": len(self.num_filters), "upsample_strides": len(self.upsample_strides),
            "num_upsample_filters": len(self.num_upsample_filters),
        }
        if len(set(lengths.values())) != 1 or lengths["layer_nums"] == 0:
            raise ValueError(f"BEVBackboneConfig: every per-level list needs the same non-zero length, got {lengths}")
        if self.width <= 0:
            raise ValueError(f"BEVBackboneConfig.width must be > 0, got {self.width}")
        for name in ("layer_strides", "upsample_strides"):
            if any(s <= 0 for s in getattr(self, name)):
                raise ValueError(f"BEVBackboneConfig.{name} must be positive, got {getattr(self, name)}")
        output_strides = {self.level_output_stride(i) for i in range(lengths["layer_nums"])}
        if len(output_strides) != 1:
            raise ValueError(
                "BEVBackboneConfig: levels end at different strides (cumulative layer_strides / "
                f"upsample_strides = {sorted(output_strides)}); they must agree to be concatenated"
            )

    def level_output_stride(self, level: int) -> float:
        """Stride of level ``level``'s deblock output relative to the input map."""
        return math.prod(self.layer_strides[: level + 1]) / self.upsample_strides[level]

    def scaled(self, channels: int) -> int:
        """SparseKD truncates ``channels * width`` to an int."""
        scaled = int(channels * self.width)
        if scaled < 1:
            raise ValueError(f"BEVBackboneConfig.width={self.width} leaves {channels} channels with none")
        return scaled


class BEVFeatures(NamedTuple):
    features: Tensor  # (B, C, H, W)
    stride: float  # size of one output cell in input-map cells


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM), nn.ReLU()]


def _level(in_channels: int, channels: int, stride: int, num_layers: int) -> nn.Sequential:
    layers = _conv_bn_relu(nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False), channels)
    for _ in range(num_layers):
        layers += _conv_bn_relu(nn.Conv2d(channels, channels, 3, padding=1, bias=False), channels)
    return nn.Sequential(*layers)


def _deblock(in_channels: int, channels: int, upsample_stride: float) -> nn.Sequential:
    if upsample_stride >= 1:
        stride = int(upsample_stride)
        conv = nn.ConvTranspose2d(in_channels, channels, stride, stride=stride, bias=False)
    else:
        stride = round(1 / upsample_stride)
        conv = nn.Conv2d(in_channels, channels, stride, stride=stride, bias=False)
    return nn.Sequential(*_conv_bn_relu(conv, channels))


class BEVBackbone(nn.Module):
    """``(B, in_channels, H, W)`` BEV map -> :class:`BEVFeatures` with ``out_channels`` channels."""

    def __init__(self, in_channels: int, config: BEVBackboneConfig = BEVBackboneConfig()) -> None:
        super().__init__()
        self.config = config
        filters = [config.scaled(c) for c in config.num_filters]
        upsample_filters = [config.scaled(c) for c in config.num_upsample_filters]
        level_inputs = [in_channels, *filters[:-1]]
        self.blocks = nn.ModuleList(
            _level(c_in, c, stride, n)
            for c_in, c, stride, n in zip(level_inputs, filters, config.layer_strides, config.layer_nums)
        )
        self.deblocks = nn.ModuleList(
            _deblock(c, c_up, up) for c, c_up, up in zip(filters, upsample_filters, config.upsample_strides)
        )
        self.out_channels = sum(upsample_filters)
        self.stride = config.level_output_stride(0)
        self._input_multiple = math.prod(config.layer_strides)

    def forward(self, bev: Tensor) -> BEVFeatures:
        if bev.shape[-2] % self._input_multiple or bev.shape[-1] % self._input_multiple:
            raise ValueError(
                f"BEVBackbone: input map {tuple(bev.shape[-2:])} must be divisible by the product of "
                f"layer_strides ({self._input_multiple}) so that the levels' outputs line up"
            )
        upsampled = []
        x = bev
        for block, deblock in zip(self.blocks, self.deblocks):
            x = block(x)
            upsampled.append(deblock(x))
        return BEVFeatures(torch.cat(upsampled, dim=1), self.stride)
