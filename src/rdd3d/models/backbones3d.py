"""Sparse 3D backbones (CenterPoint-Voxel's residual one, SECOND's plain one) and the height compression
to a bird's-eye view.

:class:`VoxelResBackBone8x` and :class:`VoxelBackBone8x` follow OpenPCDet's / SparseKD's structure and parameter names, so their
checkpoints' backbone tensors load unchanged (spconv 2.x weight layout). SparseKD's students differ from
the teacher only by a width multiplier on every channel count.

Grid sizes, (z, y, x), for nuScenes at 0.075 m (a 1440 x 1440 x 40 grid):
``[41, 1440, 1440] -> conv2 [21, 720, 720] -> conv3 [11, 360, 360] -> conv4 [5, 180, 180] -> out [2, 180, 180]``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from rdd3d.models.sparse import (
    SparseConv3d, SparseConvolution, SparseModule, SparseSequential, SparseTensor, SubMConv3d,
)
from rdd3d.models.sparse.backends import BackendName

#: Channels of conv_input, conv1, conv2, conv3, conv4 and conv_out at width 1.
VOXEL_RES_FILTERS = (16, 16, 32, 64, 128, 128)
#: Channels of SECOND's plain VoxelBackBone8x at width 1 (same stages, no residual blocks).
VOXEL_FILTERS = (16, 16, 32, 64, 64, 128)
#: Layers of each stage: conv1 has two residual blocks; conv2-4 one strided conv and two blocks.
VOXEL_RES_LAYERS = (1, 2, 3, 3, 3, 1)
#: Fewest z slices whose 3 stride-2 stages and conv_out leave one BEV slice (41 -> 21 -> 11 -> 5 -> 2 for 40).
MIN_Z_SLICES = 24


class BEVMap(NamedTuple):
    """A bird's-eye-view feature map and its stride in input voxels (CenterHead targets need it)."""

    features: Tensor  # (B, C, ny / stride, nx / stride)
    stride: int


def scale_width(channels: int, width: float) -> int:
    """SparseKD's width multiplier: truncate ``channels * width`` (at least 1)."""
    return max(1, int(channels * width))


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class SparseBasicBlock(SparseModule):
    """Two submanifold 3x3x3 convolutions with a residual connection (ResNet basic block)."""

    def __init__(self, channels: int, indice_key: str, backend: BackendName = "auto") -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, bias=True, indice_key=indice_key, backend=backend)
        self.bn1 = _norm(channels)
        self.conv2 = SubMConv3d(channels, channels, 3, bias=True, indice_key=indice_key, backend=backend)
        self.bn2 = _norm(channels)

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.conv1(x)
        out = out.replace_features(torch.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_features(torch.relu(self.bn2(out.features) + x.features))


def _down_stage(
    in_channels: int, out_channels: int, padding: int | tuple[int, int, int], layers: int, stage: int,
    backend: BackendName,
) -> SparseSequential:
    """``layers`` layers: a stride-2 sparse convolution (+BN, ReLU), then residual blocks."""
    down = SparseSequential(
        SparseConv3d(in_channels, out_channels, 3, stride=2, padding=padding, indice_key=f"spconv{stage}",
                     backend=backend),
        _norm(out_channels),
        nn.ReLU(),
    )
    residual = [SparseBasicBlock(out_channels, f"res{stage}", backend) for _ in range(layers - 1)]
    return SparseSequential(down, *residual)


class HeightCompression(nn.Module):
    """Stack the z slices of a sparse 3D map as channels: ``(B, C, D, H, W) -> (B, C * D, H, W)``."""

    def forward(self, x: SparseTensor) -> Tensor:
        dense = x.dense()
        batch, channels, depth, height, width = dense.shape
        return dense.view(batch, channels * depth, height, width)


class SparseBackBone8x(nn.Module):
    """Shared frame of the 8x sparse backbones: conv_input, conv1..conv4 (x and y halved by conv2-4),
    conv_out (z halved), then height compression. Subclasses build the stages.

    ``grid_size`` is the voxel grid ``(nx, ny, nz)``; like OpenPCDet, the sparse grid gets one extra
    z slice (``nz + 1``) so that nuScenes' 40 slices compress to 2.
    """

    stride = 8
    conv_input: SparseSequential
    conv1: SparseSequential
    conv2: SparseSequential
    conv3: SparseSequential
    conv4: SparseSequential
    conv_out: SparseSequential

    def __init__(self, grid_size: Sequence[int], width: float) -> None:
        super().__init__()
        nx, ny, nz = (int(s) for s in grid_size)
        self.sparse_shape = (nz + 1, ny, nx)
        self.width = width
        self.to_bev = HeightCompression()

    def _finish(self, out_channels: int) -> None:
        """Called by subclasses once their stages exist: checks the depth left and sets ``out_channels``."""
        depth = self.output_shape()[0]
        if depth < 1:
            raise ValueError(
                f"{type(self).__name__}: a grid of nz={self.sparse_shape[0] - 1} z slices leaves none after "
                f"conv_out; it needs nz >= {MIN_Z_SLICES} (nuScenes: 8 m at 0.2 m = 40)"
            )
        self.out_channels = out_channels * depth

    def output_shape(self) -> tuple[int, int, int]:
        """(D, H, W) of the last sparse map; the BEV map is (C * D, H, W)."""
        shape = self.sparse_shape
        for module in self.modules():  # registration order is forward order
            if isinstance(module, SparseConvolution):
                shape = module.geometry.output_shape(shape)
        return shape

    def forward(self, voxel_features: Tensor, coords: Tensor, batch_size: int) -> BEVMap:
        # voxel_features (V, C), coords (V, 4) int32 b z y x -> BEV (B, C_out * D, ny / 8, nx / 8)
        x = SparseTensor(voxel_features, coords.int(), self.sparse_shape, batch_size)
        x = self.conv_input(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        x = self.conv_out(x)
        return BEVMap(self.to_bev(x), self.stride)


def _conv_out(in_channels: int, out_channels: int, backend: BackendName) -> SparseSequential:
    """z stride 2 with a (3, 1, 1) kernel: [5, H, W] -> [2, H, W]."""
    return SparseSequential(
        SparseConv3d(in_channels, out_channels, (3, 1, 1), stride=(2, 1, 1), padding=0, indice_key="spconv_down2",
                     backend=backend),
        _norm(out_channels),
        nn.ReLU(),
    )


class VoxelResBackBone8x(SparseBackBone8x):
    """CenterPoint's sparse residual backbone, 8x down-sampling in x and y, then a BEV map."""

    def __init__(
        self, in_channels: int, grid_size: Sequence[int], width: float = 1.0, backend: BackendName = "auto"
    ) -> None:
        super().__init__(grid_size, width)
        f = [scale_width(c, width) for c in VOXEL_RES_FILTERS]
        self.conv_input = SparseSequential(
            SubMConv3d(in_channels, f[0], 3, indice_key="subm1", backend=backend), _norm(f[0]), nn.ReLU()
        )
        layers = VOXEL_RES_LAYERS
        self.conv1 = SparseSequential(*(SparseBasicBlock(f[1], "res1", backend) for _ in range(layers[1])))
        self.conv2 = _down_stage(f[1], f[2], 1, layers[2], stage=2, backend=backend)  # [41, 1440, 1440] -> [21, 720, 720]
        self.conv3 = _down_stage(f[2], f[3], 1, layers[3], stage=3, backend=backend)  # -> [11, 360, 360]
        self.conv4 = _down_stage(f[3], f[4], (0, 1, 1), layers[4], stage=4, backend=backend)  # -> [5, 180, 180]
        self.conv_out = _conv_out(f[4], f[5], backend)  # -> [2, 180, 180]
        self._finish(f[5])


def _plain_block(conv: SparseModule, channels: int) -> SparseSequential:
    return SparseSequential(conv, _norm(channels), nn.ReLU())


class VoxelBackBone8x(SparseBackBone8x):
    """SECOND's plain sparse backbone (no residual blocks): a stride-2 sparse convolution then two
    submanifold convolutions per stage, OpenPCDet's parameter names."""

    def __init__(
        self, in_channels: int, grid_size: Sequence[int], width: float = 1.0, backend: BackendName = "auto"
    ) -> None:
        super().__init__(grid_size, width)
        f = [scale_width(c, width) for c in VOXEL_FILTERS]

        def subm(channels: int, key: str) -> SparseSequential:
            return _plain_block(SubMConv3d(channels, channels, 3, indice_key=key, backend=backend), channels)

        def stage(in_ch: int, out_ch: int, padding, index: int) -> SparseSequential:
            down = SparseConv3d(in_ch, out_ch, 3, stride=2, padding=padding, indice_key=f"spconv{index}",
                                backend=backend)
            return SparseSequential(_plain_block(down, out_ch), subm(out_ch, f"subm{index}"),
                                    subm(out_ch, f"subm{index}"))

        self.conv_input = _plain_block(SubMConv3d(in_channels, f[0], 3, indice_key="subm1", backend=backend), f[0])
        self.conv1 = SparseSequential(subm(f[1], "subm1"))
        self.conv2 = stage(f[1], f[2], 1, 2)  # KITTI [41, 1600, 1408] -> [21, 800, 704]
        self.conv3 = stage(f[2], f[3], 1, 3)  # -> [11, 400, 352]
        self.conv4 = stage(f[3], f[4], (0, 1, 1), 4)  # -> [5, 200, 176]
        self.conv_out = _conv_out(f[4], f[5], backend)  # -> [2, 200, 176]
        self._finish(f[5])
