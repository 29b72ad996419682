import math

import pytest
import torch

from rdd3d.models.nms import circle_nms, nearest_bev_nms, rotated_nms

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _box(x, y, dx=4.0, dy=2.0, yaw=0.0):
    return [x, y, 0.0, dx, dy, 1.5, yaw]


@pytest.mark.parametrize("device", DEVICES)
def test_rotated_nms_keeps_the_higher_scoring_of_two_overlapping_boxes(device):
    boxes = torch.tensor([_box(0.0, 0.0), _box(0.5, 0.2)], device=device)
    kept = rotated_nms(boxes, torch.tensor([0.3, 0.9], device=device), iou_threshold=0.2)
    assert kept.tolist() == [1] and kept.device == boxes.device


@pytest.mark.parametrize("device", DEVICES)
def test_rotated_nms_keeps_both_of_two_far_apart_boxes_best_first(device):
    boxes = torch.tensor([_box(0.0, 0.0), _box(20.0, 0.0)], device=device)
    assert rotated_nms(boxes, torch.tensor([0.3, 0.9], device=device), 0.2).tolist() == [1, 0]


def test_rotated_nms_uses_the_rotated_overlap():
    # A cross: same centre, 4 x 1 m at yaw 0 and pi/2; IoU = 1 / (4 + 4 - 1) = 0.143.
    boxes = torch.tensor([_box(0, 0, 4.0, 1.0, 0.0), _box(0, 0, 4.0, 1.0, math.pi / 2)])
    scores = torch.tensor([0.9, 0.8])
    assert rotated_nms(boxes, scores, iou_threshold=0.1).tolist() == [0]
    assert rotated_nms(boxes, scores, iou_threshold=0.2).tolist() == [0, 1]


def test_nearest_bev_nms_snaps_yaw_to_the_nearest_axis():
    # Two 4 x 2 m boxes 1 m apart along x. At yaw 0.3 rad (snapped to 0) their axis-aligned IoU is
    # 3 x 2 / (8 + 8 - 6) = 0.6, while the rotated overlap of the same boxes is smaller.
    boxes = torch.tensor([_box(0, 0, yaw=0.3), _box(1.0, 0, yaw=0.3)])
    scores = torch.tensor([0.9, 0.8])
    assert nearest_bev_nms(boxes, scores, iou_threshold=0.59).tolist() == [0]
    assert nearest_bev_nms(boxes, scores, iou_threshold=0.61).tolist() == [0, 1]
    # At yaw 1.2 rad (snapped to pi/2) both lie 2 x 4 m: IoU = 1 x 4 / (8 + 8 - 4) = 1/3.
    turned = torch.tensor([_box(0, 0, yaw=1.2), _box(1.0, 0, yaw=1.2)])
    assert nearest_bev_nms(turned, scores, iou_threshold=0.3).tolist() == [0]
    assert nearest_bev_nms(turned, scores, iou_threshold=0.34).tolist() == [0, 1]


def test_greedy_order_a_suppressed_box_suppresses_nothing():
    # a overlaps b, b overlaps c, a and c apart: b goes, so c stays.
    boxes = torch.tensor([_box(0.0, 0.0), _box(2.5, 0.0), _box(5.0, 0.0)])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert rotated_nms(boxes, scores, iou_threshold=0.1).tolist() == [0, 2]
    assert circle_nms(boxes, scores, dist_thresh=2.5 ** 2).tolist() == [0, 2]


def test_pre_and_post_max_size():
    boxes = torch.tensor([_box(0.0, 0.0), _box(20.0, 0.0), _box(40.0, 0.0)])
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert rotated_nms(boxes, scores, 0.2, post_max_size=2).tolist() == [1, 2]
    assert rotated_nms(boxes, scores, 0.2, pre_max_size=1).tolist() == [1]
    assert circle_nms(boxes, scores, 1.0, post_max_size=1).tolist() == [1]


@pytest.mark.parametrize("device", DEVICES)
def test_circle_nms_threshold_is_an_inclusive_squared_distance(device):
    boxes = torch.tensor([_box(0.0, 0.0), _box(1.0, 1.0), _box(10.0, 0.0)], device=device)
    scores = torch.tensor([0.4, 0.8, 0.6], device=device)
    assert circle_nms(boxes, scores, dist_thresh=2.0).tolist() == [1, 2]  # squared distance exactly 2
    assert circle_nms(boxes, scores, dist_thresh=1.99).tolist() == [1, 2, 0]


def test_empty_input():
    empty = torch.zeros(0, 7)
    assert rotated_nms(empty, torch.zeros(0), 0.2).numel() == 0
    assert circle_nms(empty, torch.zeros(0), 1.0).numel() == 0


def _reference_greedy(boxes, scores, overlap_matrix, post_max_size=None):
    """Textbook greedy NMS over the full overlap matrix of the score-sorted boxes."""
    order = torch.argsort(scores, descending=True, stable=True)
    overlaps = overlap_matrix(boxes[order])
    kept, removed = [], torch.zeros(len(order), dtype=torch.bool)
    for position in range(len(order)):
        if not removed[position]:
            kept.append(position)
            removed |= overlaps[position]
    return order[kept][:post_max_size].tolist()


@pytest.mark.parametrize("post_max_size", [None, 7, 150])
def test_block_by_block_nms_keeps_what_the_full_matrix_keeps(post_max_size):
    # 300 candidates in clusters around 40 objects (a decoded heatmap's blobs), more than four blocks.
    from rdd3d.core.geometry import bev_iou

    generator = torch.Generator().manual_seed(3)
    centres = torch.rand(40, 2, generator=generator) * 60 - 30
    owner = torch.randint(0, 40, (300,), generator=generator)
    xy = centres[owner] + torch.randn(300, 2, generator=generator) * 0.6
    size = torch.rand(300, 2, generator=generator) * 3 + 0.5
    yaw = torch.rand(300, 1, generator=generator) * 6.28
    boxes = torch.cat([xy, torch.zeros(300, 1), size, torch.ones(300, 1), yaw], dim=1)
    scores = torch.rand(300, generator=generator)
    for threshold in (0.05, 0.2, 0.5):
        expected = _reference_greedy(boxes, scores, lambda b: bev_iou(b, b) > threshold, post_max_size)
        assert rotated_nms(boxes, scores, threshold, post_max_size=post_max_size).tolist() == expected
    distance = 1.0
    expected = _reference_greedy(boxes, scores, lambda b: torch.cdist(b[:, :2], b[:, :2]) ** 2 <= distance,
                                 post_max_size)
    assert circle_nms(boxes, scores, distance, post_max_size=post_max_size).tolist() == expected


@pytest.mark.parametrize("nms", [
    lambda boxes, scores, **kw: rotated_nms(boxes, scores, 0.1, **kw),
    lambda boxes, scores, **kw: nearest_bev_nms(boxes, scores, 0.2, **kw),
    lambda boxes, scores, **kw: circle_nms(boxes, scores, 1.5, **kw),
], ids=["rotated", "nearest_bev", "circle"])
@pytest.mark.parametrize("sizes", [(None, None), (None, 9), (40, 25)])
def test_grouped_nms_keeps_what_each_group_alone_keeps(nms, sizes):
    # Five groups over the same place (a batch's samples and tasks): no box may suppress another group's.
    pre_max_size, post_max_size = sizes
    generator = torch.Generator().manual_seed(5)
    count = 400
    xy = torch.rand(count, 2, generator=generator) * 20
    size = torch.rand(count, 2, generator=generator) * 3 + 0.5
    yaw = torch.rand(count, 1, generator=generator) * 6.28
    boxes = torch.cat([xy, torch.zeros(count, 1), size, torch.ones(count, 1), yaw], dim=1)
    scores = torch.rand(count, generator=generator)
    groups = torch.randint(0, 5, (count,), generator=generator)
    expected = []
    for group in range(5):
        members = torch.nonzero(groups == group).flatten()
        expected += members[nms(boxes[members], scores[members], pre_max_size=pre_max_size,
                                post_max_size=post_max_size)].tolist()
    assert nms(boxes, scores, pre_max_size=pre_max_size, post_max_size=post_max_size, groups=groups).tolist() == expected


def test_the_cheap_iou_bound_never_falls_below_the_exact_iou():
    # rotated_nms skips the exact overlap where this bound is at or below the threshold: it must be sound.
    from rdd3d.core.geometry import bev_iou_aligned
    from rdd3d.models.nms import _IoUBound

    generator = torch.Generator().manual_seed(11)
    count = 5000
    boxes = torch.cat([torch.rand(count, 2, generator=generator) * 6, torch.zeros(count, 1),
                       torch.rand(count, 2, generator=generator) * 4 + 0.1, torch.ones(count, 1),
                       torch.rand(count, 1, generator=generator) * 12 - 6], dim=1)
    a, b = torch.randint(0, count, (2, 20000), generator=generator)
    exact = bev_iou_aligned(boxes[a], boxes[b]).double()
    bound = _IoUBound(boxes).at_most(a, b)
    assert (bound >= exact).all()
    assert (exact > 0).sum() > 5000 and (bound < 0.5 * exact.max()).sum() > 1000  # a real spread, and a useful bound
