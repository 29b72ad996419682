"""LAD, label assignment distillation (Nguyen et al., WACV 2022): the teacher decides where the student's
positive samples lie; what the student learns to predict stays the ground truth.

LAD feeds the teacher's predictions to a dynamic assigner (PAA) that splits the anchors of each ground
-truth box into positives and negatives; it adds no objects and keeps the ground-truth boxes as
targets. CenterPoint's assignment is static: a box's positive is the cell holding its centre, with the
Gaussian around it. The LAD counterpart used here: each ground-truth box matched by a confident teacher
detection of its class (score above ``score_threshold``, BEV IoU at least ``match_iou``, greedy one-to-one
by IoU) is assigned at the **teacher's centre** (x, y): its heatmap peak, positive cell and centre
offset follow the teacher, its z, size, heading and velocity stay the ground truth's. Unmatched ground
truth keeps its own place; teacher detections matching no ground truth add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rdd3d.distill.base import DistillLoss, DistillStep, METHODS, Method
from rdd3d.distill.baselines.common import check_at_least
from rdd3d.core.geometry import bev_iou


@dataclass(frozen=True)
class LADConfig:
    score_threshold: float = 0.3  # [ours] LAD weighs every prediction inside its assigner; we gate by score
    match_iou: float = 0.5  # [ours] BEV IoU for a teacher detection to stand for a ground-truth box

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "score_threshold")
        if not 0.0 < self.match_iou <= 1.0:
            raise ValueError(f"LADConfig.match_iou must be in (0, 1], got {self.match_iou}")


def greedy_matches(iou: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """One-to-one pairs (row, column) of an ``(M, N)`` IoU matrix, highest IoU first, each at least ``threshold``."""
    rows, columns = torch.nonzero(iou >= threshold, as_tuple=True)
    order = torch.argsort(iou[rows, columns], descending=True, stable=True)
    taken_rows, taken_columns, pairs = set(), set(), []
    for row, column in zip(rows[order].tolist(), columns[order].tolist()):
        if row not in taken_rows and column not in taken_columns:
            taken_rows.add(row)
            taken_columns.add(column)
            pairs.append((row, column))
    matched = torch.tensor(pairs, dtype=torch.long, device=iou.device).reshape(-1, 2)
    return matched[:, 0], matched[:, 1]


class LADLoss(DistillLoss):
    """No loss terms of its own: it changes the student's detection targets."""

    def __init__(self, config: LADConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        return {}

    def detection_targets(self, step: DistillStep) -> tuple[list[Tensor], list[Tensor]]:
        boxes_out = []
        for gt_boxes, gt_labels, found in zip(step.batch.gt_boxes, step.batch.gt_labels, step.teacher.detections()):
            confident = found.scores > self.config.score_threshold
            teacher_boxes, teacher_labels = found.boxes[confident], found.labels[confident]
            iou = bev_iou(gt_boxes[:, :7], teacher_boxes[:, :7]).to(gt_boxes.dtype)  # (M, N)
            iou = torch.where(gt_labels[:, None] == teacher_labels[None, :], iou, torch.zeros_like(iou))
            gt_index, teacher_index = greedy_matches(iou, self.config.match_iou)
            assigned = gt_boxes.clone()
            assigned[gt_index, 0:2] = teacher_boxes[teacher_index, 0:2].to(gt_boxes.dtype)
            boxes_out.append(assigned)
        return boxes_out, list(step.batch.gt_labels)


METHODS.register(Method("lad", LADConfig, LADLoss))
