"""Ray intersection of the synthetic world's primitives and ground, against closed-form answers."""

import numpy as np
import pytest

from rdd3d.data.synthetic import Ground, LidarConfig
from rdd3d.data.synthetic.lidar import RayGrid
from rdd3d.data.synthetic.shapes import Primitives, box, ellipsoid, frustum, intersect


def _hit(part, direction, origin=(0.0, 0.0, 0.0)):
    prims = Primitives.from_parts([part], owner=[0]).placed(np.zeros((1, 3)), np.zeros(1))
    direction = np.asarray(direction, float)[None] / np.linalg.norm(direction)
    t, cos = intersect(prims, np.asarray(origin, float), direction, np.array([0]), np.array([0]))
    return t[0], cos[0]


def test_box_hit_distance_and_incidence():
    part = box((10, 0, 0), (2, 2, 2), 0.5)
    assert _hit(part, (1, 0, 0)) == pytest.approx((9.0, 1.0))
    t, cos = _hit(part, (10, 0.5, 0))  # enters the x = 9 face at an angle
    assert t == pytest.approx(np.hypot(9, 0.45)) and cos == pytest.approx(10 / np.hypot(10, 0.5))
    assert np.isinf(_hit(part, (0, 1, 0))[0])  # points away


def test_box_yaw_turns_the_box():
    # a 4 x 1 box at x = 10: along +x the near face is at 8; turned by 90 degrees it is at 9.5
    part = box((0, 0, 0), (4, 1, 1), 0.5)
    prims = Primitives.from_parts([part], owner=[0]).placed(np.array([[10.0, 0, 0]]), np.array([np.pi / 2]))
    t, _ = intersect(prims, np.zeros(3), np.array([[1.0, 0, 0]]), np.array([0]), np.array([0]))
    assert t[0] == pytest.approx(9.5)


def test_cylinder_side_and_top_cap():
    part = frustum((10, 0, -1), 0.5, 0.5, 2.0, 0.5)  # z from -1 to 1
    assert _hit(part, (1, 0, 0)) == pytest.approx((9.5, 1.0))
    t, cos = _hit(part, (0, 0, -1), origin=(10.2, 0, 5))  # straight down onto the top cap
    assert (t, cos) == pytest.approx((4.0, 1.0))


def test_cone_side_narrows_with_height():
    # radius 1 at the base (z = 0), 0 at z = 2: at height z the side is at 10 - (1 - z / 2)
    part = frustum((10, 0, 0), 1.0, 0.0, 2.0, 0.5)
    for z in (0.5, 1.0, 1.5):
        t, _ = _hit(part, (1, 0, 0), origin=(0, 0, z))
        assert t == pytest.approx(10 - (1 - z / 2))
    assert np.isinf(_hit(part, (1, 0, 0), origin=(0, 0, 2.5))[0])  # above the tip


def test_ellipsoid_hit_and_tangent_miss():
    part = ellipsoid((10, 0, 0), (4, 2, 2), 0.5)  # semi-axes 2, 1, 1
    assert _hit(part, (1, 0, 0)) == pytest.approx((8.0, 1.0))
    assert np.isinf(_hit(part, (0, 0, 1), origin=(10, 1.01, -5))[0])


def test_flat_ground_distance():
    ground = Ground.flat(-2.0)
    directions = np.array([[np.cos(a), 0, -np.sin(a)] for a in (0.1, 0.5)] + [[1.0, 0, 0.1]])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    t, cos = ground.intersect(np.zeros(3), directions, max_range=100)
    assert t[:2] == pytest.approx(2.0 / np.sin([0.1, 0.5]))
    assert cos[:2] == pytest.approx(np.sin([0.1, 0.5]))
    assert np.isinf(t[2])  # upward ray


def test_rolling_ground_hits_lie_on_the_surface_and_are_the_first_crossing():
    rng = np.random.default_rng(3)
    ground = Ground.sample(rng, -1.84, amplitude=0.3, wavelength=30.0)
    grid = RayGrid.for_sweep(LidarConfig(azimuth_resolution_deg=5.0), rng)
    origin = np.array([0.0, 0.0, 0.0])
    t, _ = ground.intersect(origin, grid.directions, max_range=70)
    hit = np.isfinite(t)
    points = origin + t[hit, None] * grid.directions[hit]
    assert np.abs(points[:, 2] - ground.height(points[:, :2])).max() < 1e-3
    # densely sampled, no ray dips below the ground before its reported hit
    fractions = np.linspace(0, 0.999, 1000)[None, :, None]
    before = origin + fractions * (points - origin)[:, None, :]  # (N, S, 3)
    assert (before[..., 2] > ground.height(before[..., :2]) - 1e-6).all()


def test_pruned_candidates_find_the_same_hits_as_all_pairs():
    rng = np.random.default_rng(0)
    parts = [box(rng.uniform(-15, 15, 3) * [1, 1, 0.1], rng.uniform(0.3, 4, 3), 0.5) for _ in range(12)]
    parts += [frustum((*rng.uniform(-15, 15, 2), -1.8), 0.3, 0.1, 1.0, 0.5), ellipsoid((3, -4, 0), (2, 3, 2), 0.5)]
    yaws = rng.uniform(-np.pi, np.pi, len(parts))
    prims = Primitives.from_parts(parts, owner=np.arange(len(parts))).placed(np.zeros((len(parts), 3)), yaws)
    grid = RayGrid.for_sweep(LidarConfig(beams=16, azimuth_resolution_deg=1.0), rng)
    origin = np.array([0.5, -0.3, 0.0])

    def nearest(pair_prim, pair_ray):
        t, _ = intersect(prims, origin, grid.directions, pair_prim, pair_ray)
        best = np.full(len(grid), np.inf)
        np.minimum.at(best, pair_ray, t)
        return best

    every = np.repeat(np.arange(len(prims)), len(grid)), np.tile(np.arange(len(grid)), len(prims))
    pruned = grid.candidate_pairs(prims, origin, max_range=100)
    assert len(pruned[0]) < len(every[0]) / 4
    np.testing.assert_array_equal(nearest(*pruned), nearest(*every))
