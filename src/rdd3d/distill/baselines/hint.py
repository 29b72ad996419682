"""Hint / FitNets (Romero et al., ICLR 2015): the student's neck imitates the teacher's over the whole map.

``L = weight · mean over (B, C, H, W) of (ψ(f_S) − f_T)²`` on the teacher's grid, ψ the 1×1 conv +
BN + ReLU adapter. FitNets trains the hint in a stage of its own; as the RDD paper's baseline (and its
region-choice ablation) it is added to the detection loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from rdd3d.distill.base import DistillStep, METHODS, Method
from rdd3d.distill.baselines.common import AdapterLoss, adapted_features, check_at_least


@dataclass(frozen=True)
class HintConfig:
    weight: float = 1.0  # [ours]: FitNets has no joint weight (its hint stage is separate)

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "weight")


class HintLoss(AdapterLoss):
    """``HintLoss(HintConfig, student_channels, teacher_channels)``. Terms: ``hint/feature``."""

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        student, teacher = adapted_features(step, self.adapter, "hint")  # (B, C_T, H, W) each
        return {"hint/feature": self.config.weight * F.mse_loss(student, teacher)}


METHODS.register(Method("hint", HintConfig, HintLoss, {"weight": ("hint/feature",)}))
