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

**Anchor heads** (SECOND, PointPillars), as SparseKD's maintainer describes its KITTI recipe (SparseKD
issue #11; SparseKD released no anchor-head code): the pivotal positions are the **positive anchors** of
the ground truth's target assignment (the teacher's head assigns, on the anchors both heads share).

* **class** (``pp-logit/class``): ``weight · Σ_positive Σ_classes (p_S − p_T)² / N_positive`` on the clamped
  sigmoid class scores (L2; weight 15 in the maintainer's recipe, ``for_student``).
* **regression**: ``regression_weight · Σ_positive Σ_codes smoothL1(δ_S − δ_T) / N_positive`` on the raw box
  deltas (weight 0.2; β of the anchor head's own regression loss, 1/9).
* **label KD**: as above; an anchor head regresses 7 box values, so the ground truth's extra columns
  (velocity) are dropped when the teacher's boxes lack them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rdd3d.distill.base import DistillLoss, DistillStep, METHODS, Method
from rdd3d.distill.baselines.common import (
    ANCHOR_SMOOTH_L1_BETA,
    HEAD_TAP,
    check_at_least,
    map_size,
    on_teacher_grid,
    task_predictions,
)
from rdd3d.distill.heads import ANCHOR, AnchorPair, anchor_pair, head_kind, step_head_kind
from rdd3d.models.heads import TaskTargets, clamped_sigmoid, gather_cells, masked_l1, per_anchor
from rdd3d.models.heads.anchor_head import BOX_CODE_SIZE

#: Class-score KD weight per student. CenterPoint heatmaps: 10 (S), 15 (XS), 7 (XXS and the pillar
#: students), as the RDD paper reports SparseKD's settings (SparseKD's released cp-voxel-xxs_sparsekd.yaml
#: uses 15 for XXS). Anchor heads' positive anchors: 15, SparseKD's maintainer's KITTI setting.
SPARSEKD_HEATMAP_WEIGHTS: dict[str, float] = {
    "cp-voxel-s": 10.0, "cp-voxel-xs": 15.0, "cp-voxel-xxs": 7.0,
    "cp-pillar-v0.4": 7.0, "cp-pillar-v0.48": 7.0, "cp-pillar-v0.64": 7.0,
    "second-s": 15.0, "second-xs": 15.0, "pointpillars-s": 15.0, "pointpillars-xs": 15.0,
}


@dataclass(frozen=True)
class PPLogitConfig:
    weight: float = 10.0  # class-score KD; 10 / 15 / 7 for S / XS / XXS and pillars, 15 anchor heads (for_student)
    regression_weight: float = 0.2  # SparseKD's REG_LOSS weight (0 in its CP-Pillar configs)
    label_score_threshold: Optional[float] = 0.6  # label KD; None turns it off

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "weight", "regression_weight")
        if self.label_score_threshold is not None and not 0.0 <= self.label_score_threshold < 1.0:
            raise ValueError(f"PPLogitConfig.label_score_threshold must be in [0, 1) or None, "
                             f"got {self.label_score_threshold}")

    @classmethod
    def for_student(cls, preset: str) -> "PPLogitConfig":
        """SparseKD's settings for one of the paper's student presets (regression off only for the CP-Pillar
        students, whose pillars differ from the teacher's)."""
        if preset not in SPARSEKD_HEATMAP_WEIGHTS:
            raise ValueError(f"PPLogitConfig.for_student: no SparseKD setting for {preset!r}; "
                             f"known students: {sorted(SPARSEKD_HEATMAP_WEIGHTS)}")
        regression = 0.0 if preset.startswith("cp-pillar") else 0.2
        return cls(weight=SPARSEKD_HEATMAP_WEIGHTS[preset], regression_weight=regression)


def _teacher_head(step: DistillStep):
    head = getattr(step.teacher.model, "head", None)
    if not hasattr(head, "targets"):
        raise ValueError(f"pp-logit: the teacher {type(step.teacher.model).__name__} needs a 'head' with "
                         f"targets(map_size, gt_boxes, gt_labels) (rdd3d's CenterHead or AnchorHead) for its "
                         f"pivotal positions")
    return head


def teacher_grid_targets(step: DistillStep) -> list[TaskTargets]:
    """The ground truth's CenterPoint targets on the teacher's grid, from the teacher's own head."""
    size = map_size(step.teacher.tap(HEAD_TAP, "pp-logit")[0].heatmap)
    return _teacher_head(step).targets(size, step.batch.gt_boxes, step.batch.gt_labels)


def positive_anchors(step: DistillStep, pair: AnchorPair) -> Tensor:
    """``(B, H * W * A)`` bool: the anchors the teacher's head assigns to the ground truth."""
    device = pair.teacher.cls_logits.device
    return _teacher_head(step).targets(pair.map_size, step.batch.gt_boxes, step.batch.gt_labels, device).positive


class PPLogitLoss(DistillLoss):
    """Terms: ``pp-logit/heatmap`` (anchor heads: ``pp-logit/class``), ``pp-logit/regression``; label KD
    through :meth:`detection_targets`."""

    def __init__(self, config: PPLogitConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        if step_head_kind(step, "pp-logit") == ANCHOR:
            return self._anchor_terms(step)
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

    def _anchor_terms(self, step: DistillStep) -> dict[str, Tensor]:
        pair = anchor_pair(step, "pp-logit")
        positive = positive_anchors(step, pair)  # (B, N)
        count = positive.sum().clamp_min(1)
        types = pair.anchors.shape[2]

        def at_positives(maps: Tensor) -> Tensor:  # (B, A * D, H, W) -> (N_positive, D)
            return per_anchor(maps, types)[positive]

        scores = [clamped_sigmoid(at_positives(part.cls_logits)) for part in (pair.student, pair.teacher)]
        squared = (scores[0] - scores[1]).pow(2).sum()
        smooth_l1 = F.smooth_l1_loss(at_positives(pair.student.box_deltas), at_positives(pair.teacher.box_deltas),
                                     reduction="sum", beta=ANCHOR_SMOOTH_L1_BETA)
        return {"pp-logit/class": self.config.weight * squared / count,
                "pp-logit/regression": self.config.regression_weight * smooth_l1 / count}

    def detection_targets(self, step: DistillStep) -> tuple[list[Tensor], list[Tensor]] | None:
        threshold = self.config.label_score_threshold
        if threshold is None:
            return None
        # An anchor head regresses 7 box values and reads no more of its targets (never a velocity).
        anchor_student = head_kind(step.student.tap(HEAD_TAP, "pp-logit")) == ANCHOR
        boxes, labels = [], []
        for gt_boxes, gt_labels, found in zip(step.batch.gt_boxes, step.batch.gt_labels, step.teacher.detections()):
            confident = found.scores > threshold
            columns = BOX_CODE_SIZE if anchor_student else gt_boxes.shape[1]
            gt_boxes = gt_boxes[:, :columns]
            if found.boxes.shape[1] < columns:
                raise ValueError(f"pp-logit label KD: the teacher's boxes have {found.boxes.shape[1]} columns, "
                                 f"the ground truth {columns}; the teacher must predict every ground-truth field")
            boxes.append(torch.cat([found.boxes[confident, :columns].to(gt_boxes.dtype), gt_boxes]))
            labels.append(torch.cat([found.labels[confident].to(gt_labels.dtype), gt_labels]))
        return boxes, labels


METHODS.register(Method("pp-logit", PPLogitConfig, PPLogitLoss,
                        {"weight": ("pp-logit/heatmap", "pp-logit/class"), "regression_weight": ("pp-logit/regression",)}))
