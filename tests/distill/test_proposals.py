import math

import torch

from rdd3d.distill.proposals import Proposals, select_proposals
from rdd3d.models.heads import Detections


def _box(x, y, length=4.0, width=2.0, yaw=0.0):
    return [x, y, 0.0, length, width, 1.5, yaw]


def _detections(boxes, scores, labels):
    return Detections(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels))


def test_score_threshold_is_strict_and_results_are_best_first():
    found = _detections([_box(0, 0), _box(10, 0), _box(20, 0), _box(30, 0)], [0.125, 0.5, 0.0625, 0.875], [0, 1, 2, 0])
    proposals = select_proposals([found], score_threshold=0.125)
    assert proposals.scores.tolist() == [0.875, 0.5]
    assert proposals.boxes[:, 0].tolist() == [30.0, 10.0]
    assert proposals.labels.tolist() == [0, 1] and proposals.labels.dtype == torch.long


def test_nms_is_class_agnostic_and_uses_rotated_iou():
    # Box 1 overlaps box 0 (IoU 0.6) with another label; box 2 lies across box 0 (rotated by 90 degrees, IoU 1/3).
    found = _detections(
        [_box(0, 0), _box(1.0, 0), _box(20, 0), _box(20, 0, yaw=math.pi / 2), _box(40, 0)],
        [0.875, 0.75, 0.625, 0.5, 0.375], [0, 1, 0, 2, 1],
    )
    proposals = select_proposals([found], nms_iou=0.2)
    assert proposals.boxes[:, 0].tolist() == [0.0, 20.0, 40.0]
    loose = select_proposals([found], nms_iou=0.7)  # IoU 0.6 and 1/3 both stay below
    assert loose.num_boxes == 5


def test_top_k_per_sample_and_batch_index():
    first = _detections([_box(10.0 * i, 0) for i in range(5)], [0.25, 0.625, 0.5, 0.875, 0.375], [0] * 5)
    empty = Detections(torch.zeros(0, 7), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    third = _detections([_box(0, 0)], [0.75], [1])
    proposals = select_proposals([first, empty, third], max_per_sample=3)
    assert proposals.batch_index.tolist() == [0, 0, 0, 2] and proposals.batch_index.dtype == torch.long
    assert proposals.scores.tolist() == [0.875, 0.625, 0.5, 0.75]
    assert select_proposals([first], max_per_sample=0).num_boxes == 0


def test_cat_keeps_order_and_the_shared_columns():
    teacher = Proposals(torch.ones(2, 9), torch.tensor([0, 1]), torch.tensor([0.5, 0.6]), torch.tensor([0, 1]))
    student = Proposals(torch.zeros(1, 7), torch.tensor([1]), torch.tensor([0.3]), torch.tensor([2]))
    both = Proposals.cat(teacher, student)
    assert both.boxes.shape == (3, 7)
    assert both.batch_index.tolist() == [0, 1, 1] and both.labels.tolist() == [0, 1, 2]
    assert both.boxes[:2].eq(1).all() and both.boxes[2].eq(0).all()
