"""FG, fine-grained feature imitation (Wang et al., CVPR 2019): the neck imitates the teacher only near
ground-truth objects.

FG's imitation region holds the anchor locations whose anchors overlap a ground-truth box by more than
ψ = 0.5 of that box's best anchor IoU. A centre head has no anchors; its counterpart is the **Gaussian
area** of each ground-truth box: the disc about the box's centre cell whose radius CenterPoint's target
assigner derives from the box size and a minimum overlap (CornerNet's radius: how far a box of that
size may shift and still overlap the ground truth), i.e. the cells its heatmap target marks as near
the object. The mask is class-agnostic and drawn on the teacher's grid.

``L = weight · Σ_cells∈mask Σ_c (ψ(f_S) − f_T)² / (2 N_mask)`` — FG's normalisation (sum over channels,
halved, divided by the number of masked cells) and weight λ = 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rdd3d.distill.base import DistillStep
from rdd3d.distill.baselines.common import (
    AdapterLoss,
    adapted_features,
    area_mask,
    check_at_least,
    flatten_boxes,
    map_size,
)


@dataclass(frozen=True)
class FGConfig:
    weight: float = 0.01  # FG's λ
    gaussian_overlap: float = 0.1  # Gaussian-area radius as CenterPoint's targets draw it
    min_radius: int = 2

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "weight", "min_radius")
        if not 0.0 < self.gaussian_overlap < 1.0:
            raise ValueError(f"FGConfig.gaussian_overlap must be in (0, 1), got {self.gaussian_overlap}")


class FGLoss(AdapterLoss):
    """``FGLoss(FGConfig, student_channels, teacher_channels)``. Terms: ``fg/feature``."""

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        student, teacher = adapted_features(step, self.adapter, "fg")  # (B, C_T, H, W) each
        boxes, batch_index = flatten_boxes(step.batch.gt_boxes)
        mask = area_mask(boxes, batch_index, teacher.shape[0], step.teacher.geometry, map_size(teacher),
                         self.config.gaussian_overlap, self.config.min_radius)  # (B, H, W)
        squared = (student - teacher).pow(2).sum(dim=1)  # (B, H, W)
        imitation = (squared * mask).sum() / (2 * mask.sum().clamp_min(1))
        return {"fg/feature": self.config.weight * imitation}
