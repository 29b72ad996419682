"""What the baseline methods share: reading taps, putting the student's maps on the teacher's grid,
masks of box areas, and the binary KL divergence of class scores.

Every baseline compares the two models on the **teacher's grid**: a student map of another voxel
or pillar size (or range) is read bilinearly at the metric centres of the teacher's cells
(:func:`rdd3d.distill.regions.resample_to`), so a cell compares the same place in the world. Anchor
heads are compared anchor by anchor on the anchors both share (:mod:`rdd3d.distill.heads`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdd3d.distill.base import BEVGeometry, DistillLoss, DistillStep, adapter
from rdd3d.distill.heads import ANCHOR, HEAD_TAP, anchor_pair, step_head_kind
from rdd3d.distill.regions import MapArea, gaussian_areas, resample_to
from rdd3d.models.heads import AnchorLossConfig, TaskPrediction

#: The neck-map tap the feature baselines read, (B, C, H, W); the head tap is ``heads.HEAD_TAP``
#: (:data:`rdd3d.distill.taps.DETECTOR_TAPS` declares both).
FEATURE_TAP = "bev"
#: Smooth-L1 β of the anchor-box regression KD terms: the anchor head's own regression loss default.
ANCHOR_SMOOTH_L1_BETA = AnchorLossConfig().smooth_l1_beta


class AdapterLoss(DistillLoss):
    """A method that maps the student's neck to the teacher's channels through ψ (1×1 conv + BN + ReLU);
    ψ's parameters train with the student."""

    @classmethod
    def from_config(cls, config, student_channels: int, teacher_channels: int) -> "AdapterLoss":
        return cls(config, student_channels, teacher_channels)

    def __init__(self, config, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.config = config
        self.adapter = adapter(student_channels, teacher_channels)


def check_at_least(config, minimum: float, *names: str) -> None:
    """Raise naming ``Config.field`` when one of ``names`` is below ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{type(config).__name__}.{name} must be >= {minimum}, got {value}")


def map_size(tensor: Tensor) -> tuple[int, int]:
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def on_teacher_grid(student_map: Tensor, step: DistillStep, size: tuple[int, int]) -> Tensor:
    """A student map (B, C, h, w) read at the teacher's ``size`` cells -> (B, C, *size); itself on one grid."""
    return resample_to(student_map, step.student.geometry, step.teacher.geometry, size)


def adapted_features(step: DistillStep, psi: nn.Module, method: str) -> tuple[Tensor, Tensor]:
    """ψ(student neck) on the teacher's grid and the (detached) teacher neck, both (B, C_T, H, W).
    ψ runs on the student's own map (its BatchNorm sees the student's cells), then the result is resampled."""
    teacher = step.teacher.tap(FEATURE_TAP, method).detach()
    student = psi(step.student.tap(FEATURE_TAP, method))  # (B, C_T, h, w)
    return on_teacher_grid(student, step, map_size(teacher)), teacher


def task_predictions(step: DistillStep, method: str) -> tuple[Sequence[TaskPrediction], Sequence[TaskPrediction]]:
    """The (student, teacher) centre-head outputs; both heads must predict the same classes in the same tasks."""
    if step_head_kind(step, method) == ANCHOR:
        raise ValueError(f"{method}: reads centre-head (CenterPoint) predictions, but both models have anchor heads")
    student = step.student.tap(HEAD_TAP, method)
    teacher = step.teacher.tap(HEAD_TAP, method)
    student_classes = [task.heatmap.shape[1] for task in student]
    teacher_classes = [task.heatmap.shape[1] for task in teacher]
    if student_classes != teacher_classes:
        raise ValueError(f"{method}: student and teacher heads differ: classes per task {student_classes} "
                         f"vs {teacher_classes}; heatmaps can only be compared between the same class groups")
    return student, teacher


def heatmap_logits(step: DistillStep, method: str) -> list[tuple[Tensor, Tensor]]:
    """Class logits to compare cell by cell. Centre heads, per task: (student logits on the teacher's grid,
    detached teacher logits), both (B, C_task, H, W). Anchor heads: one pair of class-logit maps
    (B, A * C, H, W) on the anchors both share."""
    if step_head_kind(step, method) == ANCHOR:
        pair = anchor_pair(step, method)
        return [(pair.student.cls_logits, pair.teacher.cls_logits)]
    student, teacher = task_predictions(step, method)
    pairs = []
    for student_task, teacher_task in zip(student, teacher):
        teacher_logits = teacher_task.heatmap.detach()
        pairs.append((on_teacher_grid(student_task.heatmap, step, map_size(teacher_logits)), teacher_logits))
    return pairs


def binary_kl_with_logits(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Element-wise KL(Bernoulli(σ(teacher)) ‖ Bernoulli(σ(student))): the binary cross-entropy with the
    teacher's probability as soft target, less the teacher's entropy, so it is 0 where they agree."""
    p = torch.sigmoid(teacher_logits)
    return (p * (F.logsigmoid(teacher_logits) - F.logsigmoid(student_logits))
            + (1 - p) * (F.logsigmoid(-teacher_logits) - F.logsigmoid(-student_logits)))


def mask_of(area: MapArea, batch_index: Tensor, batch_size: int, size: tuple[int, int]) -> Tensor:
    """``(B, H, W)`` bool: the cells of ``area`` (box ``k``'s in sample ``batch_index[k]``), boxes not on
    the map left out."""
    height, width = size
    mask = torch.zeros(batch_size * height * width, dtype=torch.bool, device=batch_index.device)
    keep = area.on_map[area.owner]  # (A,) cells of boxes on the map
    flat = batch_index[area.owner] * (height * width) + area.flat_index
    mask[flat[keep]] = True
    return mask.view(batch_size, height, width)


def area_mask(
    boxes: Tensor, batch_index: Tensor, batch_size: int, geometry: BEVGeometry, size: tuple[int, int],
    gaussian_overlap: float, min_radius: int,
) -> Tensor:
    """``(B, H, W)`` bool: the cells of the Gaussian areas (disc about the centre cell, CenterPoint's target
    radius) of metric ``boxes`` (K, 7+) in samples ``batch_index`` (K,); boxes centred off the map mark none."""
    if not boxes.shape[0]:
        return torch.zeros(batch_size, *size, dtype=torch.bool, device=boxes.device)
    return mask_of(gaussian_areas(boxes, geometry.grid(size), gaussian_overlap, min_radius), batch_index,
                   batch_size, size)


def flatten_boxes(per_sample: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-sample boxes ``[(M_b, 7+)]`` -> all boxes (M, 7+) and their sample index (M,)."""
    index = [torch.full((boxes.shape[0],), sample, dtype=torch.long, device=boxes.device)
             for sample, boxes in enumerate(per_sample)]
    return torch.cat(list(per_sample)), torch.cat(index)


def keep_in_graph(tensor: Tensor) -> Tensor:
    """A zero that depends on ``tensor``: a term with nothing to distil this step still reaches the
    parameters behind it (DistributedDataParallel requires each one to receive a gradient)."""
    return tensor.sum() * 0.0
