"""FG, fine-grained feature imitation (Wang et al., CVPR 2019): the neck imitates the teacher only near
ground-truth objects.

FG's imitation region holds the anchor locations whose anchors overlap a ground-truth box by more than
ψ = 0.5 of that box's best anchor IoU. With an anchor-head teacher (SECOND, PointPillars) that is the
mask: every anchor of the teacher's head against every ground-truth box (rotated BEV IoU, any class),
a location marked when one of its anchors passes some box's threshold. A centre head has no anchors;
its counterpart is the **Gaussian area** of each ground-truth box: the disc about the box's centre cell
whose radius CenterPoint's target assigner derives from the box size and a minimum overlap (CornerNet's
radius: how far a box of that size may shift and still overlap the ground truth), i.e. the cells its
heatmap target marks as near the object. The mask is class-agnostic and drawn on the teacher's grid.

``L = weight · Σ_cells∈mask Σ_c (ψ(f_S) − f_T)² / (2 N_mask)`` — FG's normalisation (sum over channels,
halved, divided by the number of masked cells) and weight λ = 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Sequence

import torch
from torch import Tensor

from rdd3d.distill.base import DistillStep, METHODS, Method
from rdd3d.distill.baselines.common import (
    AdapterLoss,
    adapted_features,
    area_mask,
    check_at_least,
    flatten_boxes,
    map_size,
)
from rdd3d.distill.heads import ANCHOR, HEAD_TAP, anchors_of, head_kind
from rdd3d.core.geometry import bev_iou


@dataclass(frozen=True)
class FGConfig:
    weight: float = 0.01  # FG's λ
    anchor_iou_ratio: float = 0.5  # FG's ψ (anchor-head teachers): share of a box's best anchor IoU
    gaussian_overlap: float = 0.1  # centre-head teachers: Gaussian-area radius as CenterPoint's targets draw it
    min_radius: int = 2

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "weight", "min_radius")
        if not 0.0 < self.gaussian_overlap < 1.0:
            raise ValueError(f"FGConfig.gaussian_overlap must be in (0, 1), got {self.gaussian_overlap}")
        if not 0.0 < self.anchor_iou_ratio <= 1.0:
            raise ValueError(f"FGConfig.anchor_iou_ratio must be in (0, 1], got {self.anchor_iou_ratio}")


def anchor_imitation_mask(anchors: Tensor, gt_boxes: Sequence[Tensor], ratio: float) -> Tensor:
    """FG's mask on ``(H, W, A, 7)`` anchors -> ``(B, H, W)`` bool: the locations with an anchor whose BEV IoU
    with a box of ``gt_boxes[b]`` exceeds ``ratio`` times that box's best anchor IoU (which must be > 0)."""
    height, width, types, _ = anchors.shape
    flat = anchors.reshape(-1, 7)
    masks = []
    for boxes in gt_boxes:
        iou = bev_iou(flat, boxes[:, :7].to(flat)).to(flat.dtype)  # (H*W*A, M)
        best = iou.amax(dim=0)  # (M,)
        chosen = ((iou > ratio * best) & (best > 0)).any(dim=1)  # (H*W*A,)
        masks.append(chosen.view(height, width, types).any(dim=-1))
    return torch.stack(masks)


class FGLoss(AdapterLoss):
    """``FGLoss(FGConfig, student_channels, teacher_channels)``. Terms: ``fg/feature``."""

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        student, teacher = adapted_features(step, self.adapter, "fg")  # (B, C_T, H, W) each
        if head_kind(step.teacher.taps.get(HEAD_TAP)) == ANCHOR:
            anchors = anchors_of(step.teacher, map_size(teacher), "fg")
            mask = anchor_imitation_mask(anchors, step.batch.gt_boxes, self.config.anchor_iou_ratio)
        else:
            boxes, batch_index = flatten_boxes(step.batch.gt_boxes)
            mask = area_mask(boxes, batch_index, teacher.shape[0], step.teacher.geometry, map_size(teacher),
                             self.config.gaussian_overlap, self.config.min_radius)  # (B, H, W)
        squared = (student - teacher).pow(2).sum(dim=1)  # (B, H, W)
        imitation = (squared * mask).sum() / (2 * mask.sum().clamp_min(1))
        return {"fg/feature": self.config.weight * imitation}


METHODS.register(Method("fg", FGConfig, FGLoss, {"weight": ("fg/feature",)}))
