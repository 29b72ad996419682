"""PP-Logit KD, SparseKD's pivotal-position logit distillation (Yang et al., NeurIPS 2022), as its released
CenterPoint configs run it (``HM_LOSS`` MSE with ``fg_mask`` and ``soft_mask``, ``REG_LOSS``
RegLossCenterNet, ``LABEL_ASSIGN_KD``), with the teacher's grid as the common grid.

* **heatmap** (per task, then the mean over tasks): ``weight · Σ (p_S − p_T)² · m / (Σ m + 1e-6)`` with
  ``p`` the clamped sigmoid heatmaps (the student's logits resampled to the teacher's grid first) and the
  per-cell mask ``m = max_c p_T · max_c h_GT``: the teacher's confidence times the soft foreground mask,
  the task's ground-truth Gaussian heatmap on the teacher's grid (the squared error is summed over the
  task's classes, the mask over cells).
* **regression** (per task, then the mean): ``regression_weight · Σ_codes L1(student box codes, teacher
  box codes)`` at the ground-truth centre cells, as CenterPoint's masked L1. Box codes are in cells, so
  the term is 0 when the two maps differ (SparseKD drops it then too).
* **label KD** (:meth:`PPLogitLoss.detection_targets`): the teacher's decoded boxes scoring above
  ``label_score_threshold`` join the ground truth of the student's detection loss (teacher boxes first,
  as SparseKD's ``GT_FIRST: False``). SparseKD decodes the teacher without NMS here; the teacher's own
  decoding (with its NMS) keeps one box per object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rdd3d.distill.base import DistillLoss, DistillStep
from rdd3d.distill.baselines.common import (
    HEAD_TAP,
    check_at_least,
    map_size,
    on_teacher_grid,
    task_predictions,
)
from rdd3d.models.heads import TaskTargets, clamped_sigmoid, gather_cells, masked_l1

#: Heatmap-KD weight per student: 10 (S), 15 (XS), 7 (XXS and the pillar students), as the RDD paper
#: reports SparseKD's settings. SparseKD's released cp-voxel-xxs_sparsekd.yaml uses 15 for XXS.
SPARSEKD_HEATMAP_WEIGHTS: dict[str, float] = {
    "cp-voxel-s": 10.0, "cp-voxel-xs": 15.0, "cp-voxel-xxs": 7.0,
    "cp-pillar-v0.4": 7.0, "cp-pillar-v0.48": 7.0, "cp-pillar-v0.64": 7.0,
}


@dataclass(frozen=True)
class PPLogitConfig:
    weight: float = 10.0  # heatmap KD; 10 / 15 / 7 for S / XS / XXS and pillars (SPARSEKD_HEATMAP_WEIGHTS)
    regression_weight: float = 0.2  # SparseKD's REG_LOSS weight (0 in its pillar configs)
    label_score_threshold: Optional[float] = 0.6  # label KD; None turns it off

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "weight", "regression_weight")
        if self.label_score_threshold is not None and not 0.0 <= self.label_score_threshold < 1.0:
            raise ValueError(f"PPLogitConfig.label_score_threshold must be in [0, 1) or None, "
                             f"got {self.label_score_threshold}")

    @classmethod
    def for_student(cls, preset: str) -> "PPLogitConfig":
        """SparseKD's settings for one of the paper's student presets."""
        if preset not in SPARSEKD_HEATMAP_WEIGHTS:
            raise ValueError(f"PPLogitConfig.for_student: no SparseKD setting for {preset!r}; "
                             f"known students: {sorted(SPARSEKD_HEATMAP_WEIGHTS)}")
        regression = 0.0 if preset.startswith("cp-pillar") else 0.2
        return cls(weight=SPARSEKD_HEATMAP_WEIGHTS[preset], regression_weight=regression)


def teacher_grid_targets(step: DistillStep) -> list[TaskTargets]:
    """The ground truth's CenterPoint targets on the teacher's grid, from the teacher's own head."""
    head = getattr(step.teacher.model, "head", None)
    if not hasattr(head, "targets"):
        raise ValueError(f"pp-logit: the teacher {type(step.teacher.model).__name__} needs a 'head' with "
                         f"targets(map_size, gt_boxes, gt_labels) (CenterPoint's CenterHead) for its foreground mask")
    size = map_size(step.teacher.tap(HEAD_TAP, "pp-logit")[0].heatmap)
    return head.targets(size, step.batch.gt_boxes, step.batch.gt_labels)


class PPLogitLoss(DistillLoss):
    """Terms: ``pp-logit/heatmap``, ``pp-logit/regression``; label KD through :meth:`detection_targets`."""

    def __init__(self, config: PPLogitConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        students, teachers = task_predictions(step, "pp-logit")
        targets = teacher_grid_targets(step)
        regress = (self.config.regression_weight > 0 and step.student.geometry == step.teacher.geometry
                   and map_size(students[0].heatmap) == map_size(teachers[0].heatmap))
        heatmap_terms, regression_terms = [], []
        for student, teacher, target in zip(students, teachers, targets):
            p_teacher = clamped_sigmoid(teacher.heatmap.detach())  # (B, C, H, W)
            p_student = clamped_sigmoid(on_teacher_grid(student.heatmap, step, map_size(p_teacher)))
            mask = p_teacher.amax(dim=1) * target.heatmap.amax(dim=1)  # (B, H, W)
            squared = (p_student - p_teacher).pow(2) * mask[:, None]
            heatmap_terms.append(squared.sum() / (mask.sum() + 1e-6))
            if regress:
                codes_student = gather_cells(student.box_code(), target.indices)  # (B, K, D)
                codes_teacher = gather_cells(teacher.box_code().detach(), target.indices)
                regression_terms.append(masked_l1(codes_student, codes_teacher, target.mask).sum())
        heatmap = self.config.weight * torch.stack(heatmap_terms).mean()
        regression = (self.config.regression_weight * torch.stack(regression_terms).mean() if regression_terms
                      else heatmap.new_zeros(()))
        return {"pp-logit/heatmap": heatmap, "pp-logit/regression": regression}

    def detection_targets(self, step: DistillStep) -> tuple[list[Tensor], list[Tensor]] | None:
        threshold = self.config.label_score_threshold
        if threshold is None:
            return None
        boxes, labels = [], []
        for gt_boxes, gt_labels, found in zip(step.batch.gt_boxes, step.batch.gt_labels, step.teacher.detections()):
            confident = found.scores > threshold
            columns = gt_boxes.shape[1]
            if found.boxes.shape[1] < columns:
                raise ValueError(f"pp-logit label KD: the teacher's boxes have {found.boxes.shape[1]} columns, "
                                 f"the ground truth {columns}; the teacher must predict every ground-truth field")
            boxes.append(torch.cat([found.boxes[confident, :columns].to(gt_boxes.dtype), gt_boxes]))
            labels.append(torch.cat([found.labels[confident].to(gt_labels.dtype), gt_labels]))
        return boxes, labels
