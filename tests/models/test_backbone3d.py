"""VoxelResBackBone8x and SECOND's VoxelBackBone8x: structure (OpenPCDet's), width multiplier, BEV output,
backends agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rdd3d.data.voxelize import Voxelizer
from rdd3d.models.backbones3d import (
    MIN_Z_SLICES, HeightCompression, VoxelBackBone8x, VoxelResBackBone8x, scale_width,
)
from rdd3d.models.encoders import MeanVFE
from rdd3d.models.sparse import SparseConvolution, SparseTensor, set_sparse_backend, spconv_available


def random_voxels(grid_size, count: int, batch_size: int, seed: int = 0):
    """``count`` distinct random voxels per sample: features (V, 4), coords (V, 4) int32."""
    generator = torch.Generator().manual_seed(seed)
    nx, ny, nz = grid_size
    coords = []
    for b in range(batch_size):
        flat = torch.randperm(nx * ny * nz, generator=generator)[:count]
        z, y, x = flat // (ny * nx), (flat // nx) % ny, flat % nx
        coords.append(torch.stack([torch.full_like(z, b), z, y, x], dim=1))
    coords = torch.cat(coords).int()
    return torch.randn(len(coords), 4, generator=generator), coords


def test_structure_and_parameter_names_follow_openpcdet():
    net = VoxelResBackBone8x(5, grid_size=(32, 32, 40))
    shapes = {name: tuple(p.shape) for name, p in net.state_dict().items()}
    assert shapes["conv_input.0.weight"] == (16, 3, 3, 3, 5)  # [C_out, kz, ky, kx, C_in]
    assert shapes["conv1.1.conv2.bias"] == (16,)  # residual blocks' convs carry a bias
    assert shapes["conv2.0.0.weight"] == (32, 3, 3, 3, 16)  # strided conv, then BN at conv2.0.1
    assert shapes["conv2.0.1.running_var"] == (32,)
    assert shapes["conv4.2.bn2.weight"] == (128,)
    assert shapes["conv_out.0.weight"] == (128, 3, 1, 1, 128)
    assert "conv1.2.conv1.weight" not in shapes and "conv4.3.conv1.weight" not in shapes
    convs = [m for m in net.modules() if isinstance(m, SparseConvolution)]
    # conv_input + 2 blocks x 2 + 3 stages x (1 strided + 2 blocks x 2) + conv_out
    assert len(convs) == 1 + 4 + 3 * 5 + 1
    strided = [(m.geometry.stride, m.geometry.padding) for m in convs if not m.geometry.subm]
    assert strided == [((2, 2, 2), (1, 1, 1))] * 2 + [((2, 2, 2), (0, 1, 1)), ((2, 1, 1), (0, 0, 0))]
    assert net.out_channels == 128 * 2 and net.output_shape() == (2, 4, 4)


def test_second_backbone_is_plain_with_openpcdet_names_and_kitti_shapes():
    net = VoxelBackBone8x(4, grid_size=(1408, 1600, 40))  # KITTI at 0.05 x 0.05 x 0.1 m
    shapes = {name: tuple(p.shape) for name, p in net.state_dict().items()}
    assert shapes["conv_input.0.weight"] == (16, 3, 3, 3, 4) and "conv_input.0.bias" not in shapes
    assert shapes["conv1.0.0.weight"] == (16, 3, 3, 3, 16) and shapes["conv1.0.1.running_mean"] == (16,)
    assert shapes["conv2.0.0.weight"] == (32, 3, 3, 3, 16) and shapes["conv2.2.0.weight"] == (32, 3, 3, 3, 32)
    assert shapes["conv4.0.0.weight"] == (64, 3, 3, 3, 64) and shapes["conv_out.0.weight"] == (128, 3, 1, 1, 64)
    assert not any(".conv1." in name or "bn1" in name for name in shapes)  # no residual blocks
    convs = [m for m in net.modules() if isinstance(m, SparseConvolution)]
    assert len(convs) == 1 + 1 + 3 * 3 + 1
    assert net.output_shape() == (2, 200, 176) and net.out_channels == 256
    half = VoxelBackBone8x(4, grid_size=(64, 64, 40), width=0.5)
    assert [m.out_channels for m in half.modules() if isinstance(m, SparseConvolution)][-1] == 64


def test_second_backbone_runs_forward_and_backward():
    grid = (48, 40, 40)
    features, coords = random_voxels(grid, count=600, batch_size=2)
    net = VoxelBackBone8x(4, grid, width=0.5, backend="torch")
    bev = net(features.requires_grad_(True), coords, batch_size=2)
    assert bev.features.shape == (2, net.out_channels, 5, 6)
    bev.features.square().mean().backward()
    assert net.conv_input[0].weight.grad.abs().sum() > 0 and features.grad.abs().sum() > 0


@pytest.mark.parametrize("width, filters", [(0.5, (8, 8, 16, 32, 64, 64)), (0.75, (12, 12, 24, 48, 96, 96))])
def test_width_multiplier_scales_every_stage(width, filters):
    net = VoxelResBackBone8x(4, grid_size=(16, 16, 40), width=width)
    outputs = [m.out_channels for m in net.modules() if isinstance(m, SparseConvolution)]
    assert outputs[0] == filters[0] and outputs[-1] == filters[5]
    assert sorted(set(outputs)) == sorted(set(filters))
    assert net.out_channels == filters[5] * 2
    assert [scale_width(c, width) for c in (16, 128)] == [filters[0], filters[5]]


def test_forward_backward_gives_a_stride_8_bev_map():
    grid = (48, 40, 40)
    features, coords = random_voxels(grid, count=600, batch_size=2)
    net = VoxelResBackBone8x(4, grid, width=0.25, backend="torch")
    bev = net(features.requires_grad_(True), coords, batch_size=2)
    assert bev.stride == 8
    assert bev.features.shape == (2, net.out_channels, 5, 6)
    bev.features.square().mean().backward()
    assert net.conv_input[0].weight.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
    pairs = [m.last_active_pairs for m in net.modules() if isinstance(m, SparseConvolution)]
    assert all(p > 0 for p in pairs)


def test_samples_of_a_batch_stay_apart():
    grid = (32, 32, 40)
    features, coords = random_voxels(grid, count=300, batch_size=2, seed=3)
    net = VoxelResBackBone8x(4, grid, width=0.25, backend="torch").eval()
    first = coords[:, 0] == 0
    with torch.no_grad():
        together = net(features, coords, batch_size=2).features
        alone = net(features[first], coords[first], batch_size=1).features
    torch.testing.assert_close(together[:1], alone)


def test_too_few_z_slices_is_named():
    VoxelResBackBone8x(4, grid_size=(16, 16, MIN_Z_SLICES))
    with pytest.raises(ValueError, match=f"nz={MIN_Z_SLICES - 1}"):
        VoxelResBackBone8x(4, grid_size=(16, 16, MIN_Z_SLICES - 1))


def test_height_compression_stacks_z_slices_per_channel():
    # Two channels, two z slices: BEV channel c * D + d holds channel c of slice d.
    indices = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.int32)
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # slice 0: (1, 2); slice 1: (3, 4)
    bev = HeightCompression()(SparseTensor(features, indices, (2, 1, 1), batch_size=1))
    assert bev.flatten().tolist() == [1.0, 3.0, 2.0, 4.0]


@pytest.mark.skipif(not spconv_available(), reason="spconv is not installed")
def test_backends_agree_on_the_real_sweep(real_data):
    path = next((real_data / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    points = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, 5)[:, :4].copy())
    voxelizer = Voxelizer((0.2, 0.2, 0.2), (-12.8, -12.8, -5.0, 12.8, 12.8, 3.0), 10, 40_000)
    batch = voxelizer.voxelize_batch([points])
    features = MeanVFE(4)(batch.features, batch.num_points)
    torch.manual_seed(0)
    net = VoxelResBackBone8x(4, batch.grid_size, width=0.25, backend="torch").eval()
    with torch.no_grad():
        expected = net(features, batch.coords, 1).features
        torch_pairs = [m.last_active_pairs for m in net.modules() if isinstance(m, SparseConvolution)]
        got = set_sparse_backend(net, "spconv")(features, batch.coords, 1).features
        spconv_pairs = [m.last_active_pairs for m in net.modules() if isinstance(m, SparseConvolution)]
    assert expected.shape == (1, 64, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert spconv_pairs == torch_pairs
