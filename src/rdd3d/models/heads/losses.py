"""CenterPoint training losses: CenterNet focal loss on heatmaps, masked L1 on box codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from rdd3d.models.heads.prediction import TaskPrediction, gather_cells
from rdd3d.models.heads.targets import TaskTargets


@dataclass(frozen=True)
class LossConfig:
    """CenterPoint's weights. ``code_weights`` follow the box code (offset x, y, z, log dx, dy, dz,
    cos, sin[, vx, vy]) with one value per code: the default fits a head without velocity; CenterPoint's
    nuScenes head (with velocity) down-weights only the velocity: (1, 1, 1, 1, 1, 1, 1, 1, 0.2, 0.2)."""

    cls_weight: float = 1.0
    loc_weight: float = 0.25
    code_weights: tuple[float, ...] = (1.0,) * 8

    def check_code_size(self, code_size: int) -> None:
        if len(self.code_weights) != code_size:
            raise ValueError(
                f"LossConfig.code_weights has {len(self.code_weights)} values but the head regresses "
                f"{code_size} box codes; give one weight per code"
            )


class CenterLoss(NamedTuple):
    """Loss breakdown; ``total`` is what to back-propagate, the rest is for logging."""

    total: Tensor  # () sum over tasks of heatmap + location
    heatmap: Tensor  # (T,) cls_weight * focal loss, per task
    location: Tensor  # (T,) loc_weight * code-weighted L1, per task
    per_code: Tensor  # (T, code size) unweighted L1 per box code, per task

    def terms(self) -> dict[str, Tensor]:
        """The logged parts, summing to ``total``."""
        return {"heatmap": self.heatmap.sum(), "location": self.location.sum()}


def clamped_sigmoid(logits: Tensor, eps: float = 1e-4) -> Tensor:
    """Sigmoid kept inside [eps, 1 - eps] so that the focal loss's logs stay finite."""
    return torch.clamp(logits.sigmoid(), min=eps, max=1 - eps)


def focal_loss(probs: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the
    number of peak cells (target exactly 1); with no peak, the summed negative term alone."""
    positive = target.eq(1)
    positive_term = torch.log(probs) * (1 - probs) ** 2 * positive
    negative_term = torch.log(1 - probs) * probs ** 2 * (1 - target) ** 4 * ~positive
    num_positive = positive.sum()
    return -(positive_term.sum() + negative_term.sum()) / num_positive.clamp_min(1)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``(B, K, D)`` predictions and targets, ``(B, K)`` bool mask -> ``(D,)`` L1 per code,
    summed over the masked slots and divided by their count (at least 1)."""
    weight = mask[..., None].to(pred.dtype)
    per_code = ((pred - target).abs() * weight).sum(dim=(0, 1))
    return per_code / mask.sum().clamp_min(1)


def center_loss(
    predictions: Sequence[TaskPrediction], targets: Sequence[TaskTargets], config: LossConfig = LossConfig()
) -> CenterLoss:
    """Focal + masked L1 loss summed over tasks (OpenPCDet's ``CenterHead.get_loss``)."""
    heatmap_terms, location_terms, per_code_terms = [], [], []
    for prediction, target in zip(predictions, targets, strict=True):
        heatmap_terms.append(config.cls_weight * focal_loss(clamped_sigmoid(prediction.heatmap), target.heatmap))
        codes = gather_cells(prediction.box_code(), target.indices)  # (B, K, D)
        config.check_code_size(codes.shape[-1])
        per_code = masked_l1(codes, target.box_codes, target.mask)
        per_code_terms.append(per_code)
        location_terms.append(config.loc_weight * (per_code * per_code.new_tensor(config.code_weights)).sum())
    heatmap, location = torch.stack(heatmap_terms), torch.stack(location_terms)
    return CenterLoss(heatmap.sum() + location.sum(), heatmap, location, torch.stack(per_code_terms))
