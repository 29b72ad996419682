"""GID, general instance distillation (Dai et al., CVPR 2021): distil where the two models disagree.

**General instances** (GID's GISM), per sample: the candidates are both models' decoded detections;
a candidate's GI score is ``max over classes |p_T − p_S|``, each model's class probabilities read at
the map cell holding the candidate's centre (on its own grid; for anchor heads, every anchor type's
classes at that cell, both heads sharing their anchors); greedy rotated NMS at IoU 0.3 over the
candidates ordered by GI score keeps the ``max_instances`` (10) most disagreeing, class-agnostic.
GID scores every anchor; reading only where one of the models detects something (score > its decode
threshold) skips places where both are below it, whose discrepancy is below it too. A candidate keeps
its own detector's box (GID takes the box of the model scoring higher at the place).

* **GID-L** (``gid-l``): logits at the instances — the binary KL between the teacher's and the
  student's class probabilities, summed over classes, over the cells of the instances' Gaussian areas
  on the teacher's grid, divided by their count; GID's response weight 0.1. Only the class response:
  a centre head's box codes are in cell units, and RDD keeps the class term alone for centre heads.
  Anchor heads: both responses over the anchor locations whose anchor centre lies in an instance box —
  the binary KL summed over anchor types and classes (``gid-l/logit``) and the smooth L1 of the box
  deltas summed over anchor types and codes (``gid-l/regression``), each divided by the locations' count.
* **GID-F** (``gid-f``): features at the instances — each instance's box pooled on the teacher's neck
  and on ψ(student neck) (rotated 7×7 grid, each map through its own geometry), squared difference
  summed over channels and averaged over instances and grid points (weight λ1 = 5e-3); plus GID's
  **relation** term: within each sample, the pairwise Euclidean distances between instances' pooled
  teacher features and between their pooled (un-adapted) student features, each divided by its mean,
  compared with smooth L1 (β = 1) (weight λ2 = 40).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rdd3d.distill.base import DistillLoss, DistillStep, METHODS, Method, ModelView
from rdd3d.distill.baselines.common import (
    ANCHOR_SMOOTH_L1_BETA,
    FEATURE_TAP,
    HEAD_TAP,
    AdapterLoss,
    area_mask,
    binary_kl_with_logits,
    check_at_least,
    flatten_boxes,
    heatmap_logits,
    keep_in_graph,
    map_size,
    mask_of,
    task_predictions,
)
from rdd3d.distill.heads import ANCHOR, anchor_pair, class_logit_maps, step_head_kind
from rdd3d.distill.proposals import Proposals, select_proposals
from rdd3d.distill.regions import anchor_areas, pool_boxes
from rdd3d.models.heads import Detections


def class_probabilities_at(view: ModelView, xy: Tensor, batch_index: Tensor, method: str) -> Tensor:
    """Every class's probability (tasks concatenated) at the cell holding each metric point ``xy`` (K, 2)
    of sample ``batch_index`` (K,) on the model's own map -> (K, C_all), no gradient (anchor heads: C_all is
    every anchor type's classes)."""
    maps = class_logit_maps(view.tap(HEAD_TAP, method))
    probabilities = torch.cat([logits.detach() for logits in maps], dim=1).sigmoid()  # (B, C_all, H, W)
    height, width = map_size(probabilities)
    cells = view.geometry.metric_to_cells(xy).floor().long()  # (K, 2) column, row
    columns, rows = cells[:, 0].clamp(0, width - 1), cells[:, 1].clamp(0, height - 1)
    return probabilities[batch_index, :, rows, columns]


def select_general_instances(step: DistillStep, max_instances: int, nms_iou: float, method: str) -> Proposals:
    """GID's general instances of the batch; ``scores`` holds their GI scores."""
    # Raise unless the two heads' class channels mean the same: same classes per task, or the same anchors.
    if step_head_kind(step, method) == ANCHOR:
        anchor_pair(step, method)
    else:
        task_predictions(step, method)
    boxes, labels = [], []
    for found_t, found_s in zip(step.teacher.detections(), step.student.detections()):
        columns = min(found_t.boxes.shape[1], found_s.boxes.shape[1])
        boxes.append(torch.cat([found_t.boxes[:, :columns], found_s.boxes[:, :columns]]))  # (N_b, 7+)
        labels.append(torch.cat([found_t.labels, found_s.labels]))
    flat, batch_index = flatten_boxes(boxes)
    discrepancy = (class_probabilities_at(step.teacher, flat[:, :2], batch_index, method)
                   - class_probabilities_at(step.student, flat[:, :2], batch_index, method)).abs().amax(dim=1)
    gi_scores = discrepancy.split([len(sample) for sample in boxes])
    scored = [Detections(*candidate) for candidate in zip(boxes, gi_scores, labels)]
    return select_proposals(scored, score_threshold=0.0, nms_iou=nms_iou, max_per_sample=max_instances)


@dataclass(frozen=True)
class GIDLogitConfig:
    weight: float = 0.1  # GID's response weight
    max_instances: int = 10  # GID's K per sample
    nms_iou: float = 0.3  # GID's GISM NMS
    gaussian_overlap: float = 0.1  # centre heads: Gaussian areas as CenterPoint's targets draw them
    min_radius: int = 2

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "weight", "max_instances", "nms_iou", "min_radius")


class GIDLogitLoss(DistillLoss):
    """GID-L. Terms: ``gid-l/logit``; with anchor heads also ``gid-l/regression``."""

    def __init__(self, config: GIDLogitConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        config = self.config
        instances = select_general_instances(step, config.max_instances, config.nms_iou, "gid-l")
        if step_head_kind(step, "gid-l") == ANCHOR:
            return self._anchor_responses(step, instances)
        pairs = heatmap_logits(step, "gid-l")  # per task (student, teacher), (B, C_task, H, W) each
        teacher_map = pairs[0][1]
        mask = area_mask(instances.boxes, instances.batch_index, teacher_map.shape[0], step.teacher.geometry,
                         map_size(teacher_map), config.gaussian_overlap, config.min_radius)  # (B, H, W)
        divergence = sum(binary_kl_with_logits(teacher, student).sum(dim=1) for student, teacher in pairs)
        return {"gid-l/logit": config.weight * (divergence * mask).sum() / mask.sum().clamp_min(1)}

    def _anchor_responses(self, step: DistillStep, instances: Proposals) -> dict[str, Tensor]:
        pair = anchor_pair(step, "gid-l")
        student, teacher = pair.student, pair.teacher
        mask = mask_of(anchor_areas(instances.boxes, pair.anchors), instances.batch_index,
                       teacher.cls_logits.shape[0], pair.map_size)  # (B, H, W)
        count = mask.sum().clamp_min(1)
        divergence = binary_kl_with_logits(teacher.cls_logits, student.cls_logits).sum(dim=1)  # (B, H, W)
        regression = F.smooth_l1_loss(student.box_deltas, teacher.box_deltas, reduction="none",
                                      beta=ANCHOR_SMOOTH_L1_BETA).sum(dim=1)
        weight = self.config.weight
        return {"gid-l/logit": weight * (divergence * mask).sum() / count,
                "gid-l/regression": weight * (regression * mask).sum() / count}


@dataclass(frozen=True)
class GIDFeatureConfig:
    feature_weight: float = 5e-3  # GID's λ1
    relation_weight: float = 40.0  # GID's λ2
    max_instances: int = 10
    nms_iou: float = 0.3
    grid_size: int = 7  # pooled samples per box side (SparseKD's RoI feature KD)

    def __post_init__(self) -> None:
        check_at_least(self, 0.0, "feature_weight", "relation_weight", "max_instances", "nms_iou")
        check_at_least(self, 1, "grid_size")


def normalised_distances(features: Tensor) -> Tensor:
    """``(n, D)`` -> the ``n (n - 1) / 2`` pairwise Euclidean distances (i < j), divided by their mean."""
    squared = features.pow(2).sum(dim=1)
    gram = features @ features.T
    rows, columns = torch.triu_indices(features.shape[0], features.shape[0], offset=1, device=features.device)
    distances = (squared[rows] + squared[columns] - 2 * gram[rows, columns]).clamp_min(1e-12).sqrt()
    return distances / distances.mean().clamp_min(1e-12)


def relation_loss(teacher: Tensor, student: Tensor, batch_index: Tensor, batch_size: int) -> Tensor:
    """GID's relation term on pooled instance features (K, ...) of each sample; mean over the samples
    holding at least two instances, 0 (in the graph) when none does."""
    terms = []
    for sample in range(batch_size):
        chosen = batch_index == sample
        if int(chosen.sum()) >= 2:
            terms.append(F.smooth_l1_loss(normalised_distances(student[chosen].flatten(1)),
                                          normalised_distances(teacher[chosen].flatten(1)), beta=1.0))
    return torch.stack(terms).mean() if terms else keep_in_graph(student)


class GIDFeatureLoss(AdapterLoss):
    """GID-F: ``GIDFeatureLoss(GIDFeatureConfig, student_channels, teacher_channels)``.
    Terms: ``gid-f/feature``, ``gid-f/relation``."""

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        config = self.config
        instances = select_general_instances(step, config.max_instances, config.nms_iou, "gid-f")
        teacher_map = step.teacher.tap(FEATURE_TAP, "gid-f").detach()  # (B, C_T, H, W)
        student_map = step.student.tap(FEATURE_TAP, "gid-f")  # (B, C_S, h, w)
        adapted_map = self.adapter(student_map)  # (B, C_T, h, w)
        if instances.num_boxes == 0:
            zero = keep_in_graph(adapted_map)
            return {"gid-f/feature": zero, "gid-f/relation": zero}

        def pool(feature_map: Tensor, view: ModelView) -> Tensor:  # (K, C, g, g)
            return pool_boxes(feature_map, view.geometry, instances.boxes, instances.batch_index, config.grid_size)

        teacher = pool(teacher_map, step.teacher)
        imitation = (pool(adapted_map, step.student) - teacher).pow(2).sum(dim=1).mean()
        relation = relation_loss(teacher, pool(student_map, step.student), instances.batch_index,
                                 teacher_map.shape[0])
        return {"gid-f/feature": config.feature_weight * imitation,
                "gid-f/relation": config.relation_weight * relation}


METHODS.register(Method("gid-l", GIDLogitConfig, GIDLogitLoss,
                        {"weight": ("gid-l/logit", "gid-l/regression")}))
METHODS.register(Method("gid-f", GIDFeatureConfig, GIDFeatureLoss,
                        {"feature_weight": ("gid-f/feature",), "relation_weight": ("gid-f/relation",)}))
