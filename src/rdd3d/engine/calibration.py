"""Scale calibration of distillation methods by one rule fixed before any score is seen.

Methods weigh their terms on scales of their own (RDD's channel softmaxes give terms orders of magnitude
below the detection loss at the paper's α; PP-Logit's weight 10 is SparseKD's for its own reduction). A
comparison at published defaults therefore partly compares weights. The rule here gives every method,
baselines and RDD alike, one calibrated variant: each weight option a method declares
(:attr:`rdd3d.distill.base.Method.weights`) is scaled so that the gradient its terms send into the
student's BEV map (the ``bev`` tap) has ``share`` times the norm of the detection loss's gradient there,
both averaged over ``batches`` batches of the tune split, with the student at a fixed point (its
initialisation, or a given early checkpoint). Gradients are linear in a weight, so one measurement fixes
it. Nothing here looks at a validation score.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from rdd3d.core.types import Frame
from rdd3d.data.collate import collate_frames
from rdd3d.distill.base import METHODS
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.methods import DistillConfig, build_method
from rdd3d.models.detector import detection_loss_terms

BEV_TAP = "bev"


@dataclass(frozen=True)
class CalibrationRule:
    share: float = 0.1  # a calibrated term's gradient norm on the student's BEV map, as a share of the detection loss's
    batches: int = 4  # batches of the tune split the norms are averaged over
    batch_size: int = 2
    seed: int = 0  # initialises the methods' own modules (ψ): a measurement repeats exactly

    def __post_init__(self) -> None:
        if not (self.share > 0 and self.batches >= 1 and self.batch_size >= 1):
            raise ValueError(f"calibration: share must be > 0, batches and batch_size >= 1, got {self}")


@dataclass(frozen=True)
class WeightCalibration:
    """One weight option of one method: its value at the method's defaults, the gradient norms measured there,
    and the calibrated value (None where the terms sent no gradient, e.g. no proposal on any frame)."""

    method: str
    option: str  # e.g. "alpha_feature"
    terms: tuple[str, ...]
    default: float
    term_gradient: float  # mean ‖∂(its terms)/∂ BEV map‖ at the default
    detection_gradient: float  # mean ‖∂ L_det / ∂ BEV map‖
    calibrated: float | None

    @property
    def override(self) -> str | None:
        """The run-config override that sets the calibrated value."""
        block = METHODS[self.method].block
        return None if self.calibrated is None else f"distill.{block}.{self.option}={self.calibrated:.6g}"


def calibrate(teacher: nn.Module, student: nn.Module, methods: Sequence[str], frames: Sequence[Frame],
              rule: CalibrationRule = CalibrationRule(), base: DistillConfig = DistillConfig()) -> list[WeightCalibration]:
    """Every weight option of ``methods`` calibrated by ``rule`` on ``frames`` (the tune split). Each method is
    measured from the same student weights, with its other options as ``base`` sets them."""
    batches = [collate_frames(frames[start:start + rule.batch_size])
               for start in range(0, rule.batch_size * rule.batches, rule.batch_size)]
    batches = [batch for batch in batches if batch.points]
    if not batches:
        raise ValueError("calibration needs frames of the tune split, got none")
    initial = {key: value.clone() for key, value in student.state_dict().items()}
    found = []
    for name in methods:
        method = METHODS[name]
        config = dataclasses.replace(base, method=name)
        student.load_state_dict(initial)  # BatchNorm statistics move in train mode: every method starts alike
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(rule.seed)
            losses = build_method(config, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
        with Distiller(teacher, student, losses, teacher_precision=config.teacher_precision) as distiller:
            distiller.train()
            norms = [_gradient_norms(distiller, batch, method.weights) for batch in batches]
        detection = statistics.fmean(norm["det"] for norm in norms)
        options = config.method_options()
        for option, terms in method.weights.items():
            term = statistics.fmean(norm[option] for norm in norms)
            default = float(getattr(options, option))
            calibrated = default * rule.share * detection / term if term > 0 and default > 0 else None
            found.append(WeightCalibration(name, option, terms, default, term, detection, calibrated))
    student.load_state_dict(initial)
    return found


def _gradient_norms(distiller: Distiller, batch, weights) -> dict[str, float]:
    step = distiller.step_views(batch)
    bev = step.student.taps[BEV_TAP]
    detection = sum(detection_loss_terms(distiller.student, step.student.output, batch).values())
    terms = {}
    for loss in distiller.losses:
        terms.update(loss(step))
    norms = {"det": _norm(detection, bev)}
    for option, names in weights.items():
        present = [terms[name] for name in names if name in terms]
        norms[option] = _norm(sum(present), bev) if present else 0.0
    return norms


def _norm(value: Tensor | float, tensor: Tensor) -> float:
    if not torch.is_tensor(value) or not value.requires_grad:
        return 0.0
    gradient, = torch.autograd.grad(value, tensor, retain_graph=True, allow_unused=True)
    return 0.0 if gradient is None else float(gradient.norm())
