"""Voxelisation against a naive per-point reference and against spconv's PointToVoxel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rdd3d.data.voxelize import Voxelizer, voxel_centers

RANGE = (-4.0, -4.0, -2.0, 4.0, 4.0, 2.0)


def random_cloud(seed: int, num_points: int = 600, columns: int = 4) -> torch.Tensor:
    """Points spilling over the range on every side, clustered so that voxels overflow."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-5, 5, size=(12, 3))
    xyz = centres[rng.integers(0, 12, num_points)] + rng.normal(0, 0.4, size=(num_points, 3))
    extra = rng.uniform(0, 1, size=(num_points, columns - 3))
    return torch.from_numpy(np.concatenate([xyz, extra], axis=1).astype(np.float32))


def naive_voxelize(points: torch.Tensor, voxelizer: Voxelizer):
    """spconv's CPU algorithm, one point at a time."""
    nx, ny, nz = voxelizer.grid_size
    low = np.float32(voxelizer.point_cloud_range[:3])
    size = np.float32(voxelizer.voxel_size)
    slots: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for point in points.numpy():
        x, y, z = (int(math.floor(v)) for v in (point[:3] - low) / size)
        if not (0 <= x < nx and 0 <= y < ny and 0 <= z < nz):
            continue
        key = (z, y, x)
        if key not in slots:
            if len(slots) == voxelizer.max_voxels:
                continue
            slots[key] = []
        if len(slots[key]) < voxelizer.max_points_per_voxel:
            slots[key].append(point)
    features = np.zeros((len(slots), voxelizer.max_points_per_voxel, points.shape[1]), np.float32)
    for v, rows in enumerate(slots.values()):
        features[v, : len(rows)] = rows
    num_points = np.array([len(rows) for rows in slots.values()], np.int32)
    coords = np.array(list(slots.keys()), np.int32).reshape(-1, 3)
    return features, num_points, coords


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "voxel_size, max_points, max_voxels",
    [((0.5, 0.5, 0.5), 5, 10_000), ((0.8, 0.8, 4.0), 3, 30), ((0.25, 0.4, 0.3), 2, 10_000)],
)
def test_matches_naive_reference(seed, voxel_size, max_points, max_voxels):
    points = random_cloud(seed)
    voxelizer = Voxelizer(voxel_size, RANGE, max_points, max_voxels)
    voxels = voxelizer(points)
    features, num_points, coords = naive_voxelize(points, voxelizer)
    assert voxels.coords.dtype == torch.int32 and voxels.num_points.dtype == torch.int32
    np.testing.assert_array_equal(voxels.coords.numpy(), coords)
    np.testing.assert_array_equal(voxels.num_points.numpy(), num_points)
    np.testing.assert_array_equal(voxels.features.numpy(), features)
    assert voxels.grid_size == voxelizer.grid_size
    # The cases really exercise truncation: some voxel is full, or voxels were dropped.
    assert num_points.max() == max_points or len(coords) == max_voxels


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("voxel_size, max_points, max_voxels", [((0.3, 0.3, 0.25), 4, 20_000), ((0.5, 0.5, 4.0), 8, 50)])
def test_matches_spconv_point_to_voxel(seed, voxel_size, max_points, max_voxels):
    utils = pytest.importorskip("spconv.pytorch.utils", reason="spconv is not installed")
    points = random_cloud(seed, num_points=3000, columns=5)
    generator = utils.PointToVoxel(
        vsize_xyz=list(voxel_size), coors_range_xyz=list(RANGE), num_point_features=5,
        max_num_voxels=max_voxels, max_num_points_per_voxel=max_points,
    )
    expected_features, expected_coords, expected_counts = generator(points)
    voxels = Voxelizer(voxel_size, RANGE, max_points, max_voxels)(points)
    assert voxels.grid_size == tuple(generator.grid_size[::-1])
    assert torch.equal(voxels.coords, expected_coords)
    assert torch.equal(voxels.num_points, expected_counts)
    assert torch.equal(voxels.features, expected_features)


def test_range_is_half_open():
    voxelizer = Voxelizer((1.0, 1.0, 1.0), (0, 0, 0, 2, 2, 2), 4, 100)
    points = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, 1.0], [1.999, 1.999, 1.999], [-0.001, 1, 1]])
    voxels = voxelizer(points)
    assert voxels.coords.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_pillars_have_one_z_slice_and_centres_inside_them():
    voxelizer = Voxelizer((0.5, 0.5, 4.0), RANGE, 10, 10_000)
    voxels = voxelizer(random_cloud(3))
    assert voxelizer.grid_size == (16, 16, 1)
    assert (voxels.coords[:, 0] == 0).all()
    centres = voxel_centers(voxels.coords, voxelizer.voxel_size, voxelizer.point_cloud_range)
    first_points = voxels.features[:, 0, :3]
    half = torch.tensor(voxelizer.voxel_size) / 2
    assert ((first_points - centres).abs() <= half + 1e-5).all()


def test_batch_prepends_cloud_index():
    voxelizer = Voxelizer((0.5, 0.5, 0.5), RANGE, 5, 10_000)
    clouds = [random_cloud(4), random_cloud(5, num_points=100)]
    batch = voxelizer.voxelize_batch(clouds)
    singles = [voxelizer(c) for c in clouds]
    assert batch.batch_size == 2 and batch.coords.dtype == torch.int32
    assert batch.coords.shape == (sum(len(s.coords) for s in singles), 4)
    first = len(singles[0].coords)
    assert (batch.coords[:first, 0] == 0).all() and (batch.coords[first:, 0] == 1).all()
    assert torch.equal(batch.coords[first:, 1:], singles[1].coords)
    assert torch.equal(batch.features[:first], singles[0].features)


def test_empty_and_all_outside_clouds_give_no_voxels():
    voxelizer = Voxelizer((0.5, 0.5, 0.5), RANGE, 5, 100)
    for points in (torch.zeros(0, 4), torch.full((3, 4), 100.0)):
        voxels = voxelizer(points)
        assert voxels.features.shape == (0, 5, 4)
        assert voxels.coords.shape == (0, 3) and voxels.num_points.shape == (0,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(voxel_size=(0.1, 0.1)), "voxel_size"),
        (dict(voxel_size=(0.1, -0.1, 0.2)), "voxel_size"),
        (dict(point_cloud_range=(0, 0, 0, -1, 1, 1)), "point_cloud_range"),
        (dict(max_voxels=0), "max_voxels"),
    ],
)
def test_bad_configuration_is_named(kwargs, message):
    config = dict(voxel_size=(0.1, 0.1, 0.2), point_cloud_range=RANGE, max_points_per_voxel=5, max_voxels=10)
    config.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Voxelizer(**config)


def test_bad_points_shape_is_named():
    with pytest.raises(ValueError, match=r"\(N, C>=3\)"):
        Voxelizer((0.5, 0.5, 0.5), RANGE, 5, 10)(torch.zeros(10, 2))
