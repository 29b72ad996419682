"""Label methods: LAD places the student's positives where the teacher finds the object; PP-Logit's label
KD adds the teacher's confident boxes to the ground truth."""

import torch

from baselines_support import (
    TEACHER_GRID, TEACHER_SIZE, TinyDetector, box, cell_of, heads_from_probabilities, map_view, step_of,
)
from rdd3d.distill.baselines import LADConfig, LADLoss, PPLogitConfig, PPLogitLoss
from rdd3d.distill.baselines.lad import greedy_matches
from rdd3d.models.heads import Detections

CAR, PEDESTRIAN = 0, 1
GT_BOXES = torch.tensor([box(2.0, 2.0), box(5.0, 2.0, 0.8, 0.8), box(2.0, 6.0)])
GT_LABELS = torch.tensor([CAR, PEDESTRIAN, CAR])


def _step(teacher_boxes, scores, labels):
    heads = heads_from_probabilities(torch.full((1, 1, *TEACHER_SIZE), 0.1), torch.full((1, 2, *TEACHER_SIZE), 0.1))
    found = Detections(torch.tensor(teacher_boxes), torch.tensor(scores), torch.tensor(labels))
    teacher = map_view(torch.zeros(1, 4, *TEACHER_SIZE), heads, TEACHER_GRID, [found])
    student = map_view(torch.zeros(1, 4, *TEACHER_SIZE), heads, TEACHER_GRID)
    return step_of(teacher, student, [GT_BOXES], [GT_LABELS])


def test_lad_moves_matched_ground_truth_to_the_teacher_centre_and_adds_nothing():
    step = _step(
        [box(2.5, 2.0),  # matches the first car (BEV IoU 0.6) with a confident score
         box(5.05, 2.0, 0.8, 0.8),  # on the pedestrian, but called a car: no match
         box(2.1, 6.0),  # on the second car, but not confident
         box(6.5, 6.5)],  # confident, matching no ground truth
        [0.8, 0.9, 0.2, 0.95], [CAR, CAR, CAR, CAR])
    (boxes,), (labels,) = LADLoss(LADConfig(score_threshold=0.3, match_iou=0.5)).detection_targets(step)
    expected = GT_BOXES.clone()
    expected[0, :2] = torch.tensor([2.5, 2.0])  # the place is the teacher's; z, size and yaw stay the ground truth's
    torch.testing.assert_close(boxes, expected)
    torch.testing.assert_close(labels, GT_LABELS)
    assert LADLoss(LADConfig())(step) == {}


def test_lad_targets_put_the_heatmap_peak_on_the_teacher_cell():
    step = _step([box(2.5, 2.0)], [0.8], [CAR])
    (boxes,), (labels,) = LADLoss(LADConfig()).detection_targets(step)
    head = TinyDetector(4, TEACHER_GRID).head
    peak = head.targets(TEACHER_SIZE, [boxes], [labels])[0].heatmap[0, 0]  # the car task
    assert peak[cell_of(TEACHER_GRID, 2.5, 2.0)] == 1.0
    assert peak[cell_of(TEACHER_GRID, 2.0, 2.0)] < 1.0


def test_greedy_matching_is_one_to_one_by_descending_iou():
    rows, columns = greedy_matches(torch.tensor([[0.6, 0.0], [0.7, 0.55]]), 0.5)
    assert rows.tolist() == [1] and columns.tolist() == [0]  # (1, 0) first; (0, 0) and (1, 1) reuse its row or column


def test_label_kd_adds_teacher_boxes_above_the_threshold_before_the_ground_truth():
    teacher_boxes = [box(6.5, 6.5), box(7.0, 1.0), box(1.0, 7.0)]
    step = _step(teacher_boxes, [0.61, 0.59, 0.9], [CAR, PEDESTRIAN, CAR])
    (boxes,), (labels,) = PPLogitLoss(PPLogitConfig()).detection_targets(step)
    torch.testing.assert_close(boxes, torch.cat([torch.tensor([teacher_boxes[0], teacher_boxes[2]]), GT_BOXES]))
    torch.testing.assert_close(labels, torch.cat([torch.tensor([CAR, CAR]), GT_LABELS]))
    assert PPLogitLoss(PPLogitConfig(label_score_threshold=None)).detection_targets(step) is None
