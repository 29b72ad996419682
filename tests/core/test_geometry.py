"""Rotated BEV / 3D IoU against shapely and against cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from rdd3d.core.geometry import (
    axis_aligned_iou,
    bev_iou,
    bev_iou_aligned,
    bev_overlap_area,
    bev_overlap_area_aligned,
    iou3d,
    iou3d_aligned,
    nearest_axis_aligned_bev,
    nearest_bev_iou,
)


def random_boxes(rng: np.random.Generator, n: int, spread: float = 3.0, offset: float = 0.0) -> np.ndarray:
    boxes = np.zeros((n, 7))
    boxes[:, :2] = rng.uniform(-spread, spread, (n, 2)) + offset
    boxes[:, 2] = rng.uniform(-1, 1, n)
    boxes[:, 3:6] = rng.uniform(0.2, 5.0, (n, 3))
    boxes[:, 6] = rng.uniform(-2 * np.pi, 2 * np.pi, n)
    return boxes


def shapely_bev_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference intersection areas and IoUs from shapely, corners built in float64."""
    def polygons(boxes):
        result = []
        for x, y, _, dx, dy, _, yaw in boxes[:, :7]:
            local = np.array([[dx, dy], [-dx, dy], [-dx, -dy], [dx, -dy]]) / 2
            rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
            result.append(Polygon(local @ rot.T + [x, y]))
        return result

    pa, pb = polygons(a), polygons(b)
    inter = np.array([[p.intersection(q).area for q in pb] for p in pa])
    area_a = np.array([p.area for p in pa])[:, None]
    area_b = np.array([q.area for q in pb])[None, :]
    return inter, inter / (area_a + area_b - inter)


def test_bev_iou_matches_shapely_on_random_boxes():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 120), random_boxes(rng, 90)
    inter_ref, iou_ref = shapely_bev_iou(a, b)
    assert (iou_ref > 0).mean() > 0.2  # the test must exercise real overlaps
    np.testing.assert_allclose(bev_overlap_area(a, b).numpy(), inter_ref, atol=1e-9)
    np.testing.assert_allclose(bev_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), iou_ref, atol=1e-9)


def test_bev_iou_matches_shapely_far_from_origin_and_for_near_duplicates():
    rng = np.random.default_rng(1)
    a = random_boxes(rng, 60, spread=2.0, offset=500.0)
    b = a + rng.normal(0, 1e-4, a.shape) * np.array([1, 1, 1, 0, 0, 0, 1])  # tiny shifts and turns
    b = np.concatenate([b, random_boxes(rng, 40, spread=2.0, offset=500.0)])
    _, iou_ref = shapely_bev_iou(a, b)
    np.testing.assert_allclose(bev_iou(a, b).numpy(), iou_ref, atol=1e-7)


def test_iou3d_matches_shapely_times_height_overlap():
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 50), random_boxes(rng, 40)
    inter_bev, _ = shapely_bev_iou(a, b)
    top = np.minimum(a[:, None, 2] + a[:, None, 5] / 2, b[None, :, 2] + b[None, :, 5] / 2)
    bottom = np.maximum(a[:, None, 2] - a[:, None, 5] / 2, b[None, :, 2] - b[None, :, 5] / 2)
    inter = inter_bev * np.clip(top - bottom, 0, None)
    volume_a, volume_b = a[:, 3:6].prod(1), b[:, 3:6].prod(1)
    expected = inter / (volume_a[:, None] + volume_b[None, :] - inter)
    np.testing.assert_allclose(iou3d(a, b).numpy(), expected, atol=1e-9)
    assert 0 < (expected > 0).sum() < expected.size


@pytest.mark.parametrize("yaw", [0.0, 0.3, np.pi / 2, -2.5, np.pi])
def test_identical_boxes_have_iou_one(yaw):
    box = np.array([[10.0, -4.0, 1.0, 4.2, 1.8, 1.5, yaw]])
    assert bev_iou(box, box).item() == pytest.approx(1.0, abs=1e-12)
    assert iou3d(box, box).item() == pytest.approx(1.0, abs=1e-12)


def test_hand_cases():
    unit = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    cases = {
        # same square turned 45 degrees: the overlap is a regular octagon of area 2(sqrt2 - 1)
        "octagon": ([0, 0, 0, 1, 1, 1, np.pi / 4], (2 * math.sqrt(2) - 2) / (2 - (2 * math.sqrt(2) - 2))),
        "shares an edge": ([1, 0, 0, 1, 1, 1, 0], 0.0),
        "touches at a corner": ([1, 1, 0, 1, 1, 1, 0], 0.0),
        "shares a corner after a turn": ([0.5 + math.sqrt(0.5), 0, 0, 1, 1, 1, np.pi / 4], 0.0),
        "half overlap, parallel edges": ([0.5, 0, 0, 1, 1, 1, 0], 0.5 / 1.5),
        "inside, quarter area": ([0.1, -0.1, 0, 0.5, 0.5, 1, 0.7], 0.25),
        "contains it": ([0, 0, 0, 2, 2, 1, 0], 0.25),
        "far away": ([5, 5, 0, 1, 1, 1, 0.3], 0.0),
        "turned half a circle": ([0, 0, 0, 1, 1, 1, np.pi], 1.0),
        "turned a quarter, sizes swapped": ([0, 0, 0, 1, 1, 1, np.pi / 2], 1.0),
    }
    a = np.array([unit])
    for name, (other, expected) in cases.items():
        got = bev_iou(a, np.array([other], dtype=float)).item()
        assert got == pytest.approx(expected, abs=1e-12), name


def test_quarter_turn_with_swapped_sizes_is_the_same_rectangle():
    a = np.array([[3.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.2]])
    b = np.array([[3.0, 1.0, 0.0, 2.0, 4.0, 1.5, 0.2 + np.pi / 2]])
    assert bev_iou(a, b).item() == pytest.approx(1.0, abs=1e-12)


def test_iou3d_height_overlap_by_hand():
    a = np.array([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    b = np.array([[0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.0]])  # half the height shared: 4 of 8 + 8 - 4
    assert iou3d(a, b).item() == pytest.approx(4.0 / 12.0, abs=1e-12)
    c = np.array([[0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 0.0]])  # stacked, touching
    assert iou3d(a, c).item() == 0.0
    assert bev_iou(a, c).item() == pytest.approx(1.0)


def test_shapes_symmetry_dtypes_and_aligned_variants():
    rng = np.random.default_rng(3)
    a32 = torch.from_numpy(random_boxes(rng, 7)).float()
    b32 = torch.from_numpy(random_boxes(rng, 5)).float()
    iou = bev_iou(a32, b32)
    assert iou.shape == (7, 5) and iou.dtype == torch.float32
    assert bev_iou(a32.double(), b32).dtype == torch.float64
    torch.testing.assert_close(iou, bev_iou(b32, a32).T)
    with_velocity = torch.cat([a32, torch.ones(7, 2)], dim=1)
    torch.testing.assert_close(bev_iou(with_velocity, b32), iou)
    torch.testing.assert_close(bev_iou_aligned(a32[:5], b32), iou[:5].diagonal())
    torch.testing.assert_close(iou3d_aligned(a32[:5], b32), iou3d(a32, b32)[:5].diagonal())
    torch.testing.assert_close(bev_overlap_area_aligned(a32[:5], b32), bev_overlap_area(a32, b32)[:5].diagonal())
    assert bev_iou(np.zeros((0, 7)), b32).shape == (0, 5)
    assert iou3d(a32, np.zeros((0, 7))).shape == (7, 0)
    with pytest.raises(ValueError, match="boxes_a must be"):
        bev_iou(np.zeros((3, 5)), b32)
    with pytest.raises(ValueError, match="equal counts"):
        bev_iou_aligned(a32, b32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_cuda_and_agree_with_cpu():
    rng = np.random.default_rng(4)
    a, b = torch.from_numpy(random_boxes(rng, 300)), torch.from_numpy(random_boxes(rng, 200))
    on_gpu = iou3d(a.cuda(), b.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), iou3d(a, b), atol=1e-9, rtol=0)
    torch.testing.assert_close(bev_iou(a.cuda(), b.cuda()).cpu(), bev_iou(a, b), atol=1e-9, rtol=0)


def test_axis_aligned_and_nearest_bev_iou():
    image_a = np.array([[0.0, 0.0, 10.0, 10.0]])
    image_b = np.array([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    np.testing.assert_allclose(axis_aligned_iou(image_a, image_b).numpy(), [[50 / 150, 0.0, 1.0]])
    # yaw near +-pi/2 lies along y: its snapped box swaps length and width
    boxes = np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 1.0, np.pi / 2 - 0.1], [1.0, 1.0, 0.0, 4.0, 2.0, 1.0, -3.0]])
    np.testing.assert_allclose(nearest_axis_aligned_bev(boxes).numpy(), [[-1, -2, 1, 2], [-1, 0, 3, 2]], atol=1e-12)
    snapped = np.array([[0.0, 0.0, 0.0, 2.0, 4.0, 1.0, 0.0]])
    assert nearest_bev_iou(boxes[:1], snapped).item() == pytest.approx(1.0)
