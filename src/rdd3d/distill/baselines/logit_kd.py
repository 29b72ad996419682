"""Plain logit KD (Hinton et al., 2015) on the class scores: the simplest reference.

Every cell and class of every task is a binary distribution; with temperature ``T`` the student's
``σ(z_S / T)`` follows the teacher's ``σ(z_T / T)`` everywhere on the map (no region choice):

    L = weight · T² · Σ_tasks Σ_cells,classes D(σ(z_T/T), σ(z_S/T)) / max(1, number of ground-truth boxes)

``D`` is the binary KL divergence (``divergence: kl``) or the squared difference (``mse``). The sum is
divided by the number of objects, as CenterPoint's focal loss is, so that ``weight = 1`` weighs the
distillation like the heatmap loss: averaged over every cell of a map that is mostly background, the
signal would vanish. The student's logits are resampled to the teacher's grid first. Anchor heads: the
same over every anchor (type, class) of the class-logit maps, both heads sharing their anchors; the term
is then ``kd/class``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rdd3d.distill.base import DistillLoss, DistillStep, METHODS, Method
from rdd3d.distill.baselines.common import HEAD_TAP, binary_kl_with_logits, check_at_least, heatmap_logits
from rdd3d.distill.heads import ANCHOR, head_kind

DIVERGENCES = ("kl", "mse")


@dataclass(frozen=True)
class LogitKDConfig:
    weight: float = 1.0  # [ours]
    temperature: float = 1.0  # [ours]; Hinton's T
    divergence: str = "kl"  # "kl" | "mse"

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "weight")
        if self.temperature <= 0:
            raise ValueError(f"LogitKDConfig.temperature must be > 0, got {self.temperature}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"LogitKDConfig.divergence must be one of {DIVERGENCES}, got {self.divergence!r}")


class LogitKDLoss(DistillLoss):
    """Terms: ``kd/heatmap`` (anchor heads: ``kd/class``)."""

    def __init__(self, config: LogitKDConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        temperature = self.config.temperature
        total = 0.0
        for student, teacher in heatmap_logits(step, "kd"):  # (B, C_task, H, W) each
            student, teacher = student / temperature, teacher / temperature
            if self.config.divergence == "kl":
                total = total + binary_kl_with_logits(teacher, student).sum()
            else:
                total = total + (torch.sigmoid(student) - torch.sigmoid(teacher)).pow(2).sum()
        objects = max(1, sum(int(boxes.shape[0]) for boxes in step.batch.gt_boxes))
        name = "kd/class" if head_kind(step.teacher.tap(HEAD_TAP, "kd")) == ANCHOR else "kd/heatmap"
        return {name: self.config.weight * temperature ** 2 * total / objects}


METHODS.register(Method("kd", LogitKDConfig, LogitKDLoss, {"weight": ("kd/heatmap", "kd/class")}))
