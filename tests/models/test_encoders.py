"""Voxel and pillar feature encoders and the pillar scatter to a BEV canvas."""

from __future__ import annotations

import pytest
import torch

from rdd3d.data.voxelize import Voxelizer
from rdd3d.models.encoders import MeanVFE, PillarVFE, PointPillarScatter

RANGE = (-4.0, -4.0, -2.0, 4.0, 4.0, 2.0)
PILLARS = Voxelizer((0.5, 0.5, 4.0), RANGE, max_points_per_voxel=6, max_voxels=1000)


def cloud(seed: int, num_points: int = 400) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.rand(num_points, 3, generator=generator) * 8 - 4
    intensity = torch.rand(num_points, 1, generator=generator)
    return torch.cat([xyz, intensity], dim=1)


def test_mean_vfe_is_the_mean_of_real_points():
    voxels = Voxelizer((1.0, 1.0, 1.0), RANGE, 5, 1000)(cloud(0))
    features = voxels.features.clone()
    padded = ~(torch.arange(features.shape[1])[None, :] < voxels.num_points[:, None])
    assert padded.any()
    features[padded] = 1e3  # padded slots must not count
    means = MeanVFE(4)(features, voxels.num_points)
    for v in range(len(features)):
        n = int(voxels.num_points[v])
        torch.testing.assert_close(means[v], features[v, :n].mean(dim=0))
    assert means.shape == (len(features), 4)


def pillar_inputs(seed: int = 1):
    batch = PILLARS.voxelize_batch([cloud(seed), cloud(seed + 1, 200)])
    return batch.features, batch.num_points, batch.coords


def test_pillar_vfe_matches_a_per_pillar_hand_computation():
    features, num_points, coords = pillar_inputs()
    torch.manual_seed(0)
    vfe = PillarVFE(4, [16], PILLARS.voxel_size, PILLARS.point_cloud_range).eval()
    with torch.no_grad():
        vfe.layers[0].norm.running_mean.uniform_(-0.1, 0.1)
        vfe.layers[0].norm.running_var.uniform_(0.5, 2.0)
        out = vfe(features, num_points, coords)
    layer = vfe.layers[0]
    for v in range(0, len(features), 7):
        points = features[v, : int(num_points[v])]  # (n, 4)
        z, y, x = coords[v, 1:].tolist()
        centre = torch.tensor([(x + 0.5) * 0.5 - 4.0, (y + 0.5) * 0.5 - 4.0, (z + 0.5) * 4.0 - 2.0])
        decorated = torch.cat([points, points[:, :3] - points[:, :3].mean(0), points[:, :3] - centre], dim=1)
        with torch.no_grad():
            expected = torch.relu(layer.norm(layer.linear(decorated))).amax(dim=0)
        torch.testing.assert_close(out[v], expected)
    assert out.shape == (len(features), 16) and vfe.out_channels == 16


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_pillar_vfe_ignores_padded_slots_and_point_order(train):
    features, num_points, coords = pillar_inputs()
    torch.manual_seed(0)
    vfe = PillarVFE(4, [8, 16], PILLARS.voxel_size, PILLARS.point_cloud_range).train(train)
    padded = ~(torch.arange(features.shape[1])[None, :] < num_points[:, None])
    garbage = features.clone()
    garbage[padded] = 1e3  # anything in padded slots must not matter, nor reach BatchNorm statistics
    shuffled = features.clone()
    for v in torch.nonzero(num_points > 2)[:, 0].tolist():  # reverse the real points of busy pillars
        n = int(num_points[v])
        shuffled[v, :n] = features[v, :n].flip(0)
    with torch.no_grad():
        reference = vfe(features, num_points, coords)
        torch.testing.assert_close(vfe(garbage, num_points, coords), reference)
        torch.testing.assert_close(vfe(shuffled, num_points, coords), reference)
    assert reference.shape == (len(features), 16)


def test_pillar_vfe_trains():
    features, num_points, coords = pillar_inputs()
    vfe = PillarVFE(4, [8, 16], PILLARS.voxel_size, PILLARS.point_cloud_range)
    vfe(features, num_points, coords).square().mean().backward()
    for name, parameter in vfe.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_pillar_vfe_rejects_odd_inner_width():
    with pytest.raises(ValueError, match="even width"):
        PillarVFE(4, [7, 16], PILLARS.voxel_size, PILLARS.point_cloud_range)


def test_scatter_places_each_pillar_at_its_cell():
    features, num_points, coords = pillar_inputs()
    pillar_features = torch.randn(len(coords), 5)
    scatter = PointPillarScatter(5, PILLARS.grid_size)
    bev = scatter(pillar_features, coords, batch_size=2)
    canvas = bev.features
    assert bev.stride == 1
    nx, ny, _ = PILLARS.grid_size
    assert canvas.shape == (2, 5, ny, nx)
    b, _, y, x = coords.long().unbind(1)
    torch.testing.assert_close(canvas[b, :, y, x], pillar_features)
    occupied = torch.zeros(2, ny, nx, dtype=torch.bool)
    occupied[b, y, x] = True
    assert (canvas.permute(0, 2, 3, 1)[~occupied] == 0).all()


def test_scatter_needs_a_pillar_grid():
    with pytest.raises(ValueError, match="nz == 1"):
        PointPillarScatter(5, (16, 16, 4))
