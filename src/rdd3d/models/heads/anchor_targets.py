"""Anchor target assignment (OpenPCDet's ``AxisAlignedTargetAssigner`` without sampling).

Per sample and class, anchors of that class are matched to the ground-truth boxes of that class
by BEV IoU (``matching``: ``"rotated"``, exact rotated IoU, or ``"nearest_bev"``, OpenPCDet's
choice on KITTI: axis-aligned IoU after snapping each yaw to the nearest multiple of π/2):

- positive: IoU >= the class's matched threshold with some box, or the anchor is a best match
  of some box (all anchors tied at that box's highest IoU, even below the threshold, as long as
  it is above 0); a positive regresses towards the box it overlaps most;
- negative: not positive and IoU < the unmatched threshold with every box;
- ignored: the rest.

Anchors are indexed ``(row * W + column) * A + anchor type``, the order of
:func:`rdd3d.models.heads.anchors.anchor_grid` flattened.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from rdd3d.core.geometry import bev_iou, nearest_bev_iou
from rdd3d.models.heads.anchors import AnchorClassConfig
from rdd3d.models.heads.box_coder import direction_bins, encode_box_deltas

MATCHING_KINDS = ("rotated", "nearest_bev")
#: Label of an anchor that is background to every class.
NEGATIVE = -1
#: Label of an anchor that takes no part in the classification loss.
IGNORED = -2


class AnchorMatch(NamedTuple):
    """Matching of one class's anchors in one sample."""

    positive: Tensor  # (N,) bool
    negative: Tensor  # (N,) bool
    gt_index: Tensor  # (N,) long: the box each anchor overlaps most (its regression target where positive)


class AnchorTargets(NamedTuple):
    """Targets of a batch, one row per sample, one column per anchor."""

    labels: Tensor  # (B, N) long: ClassTable label of a positive anchor, NEGATIVE or IGNORED
    box_deltas: Tensor  # (B, N, 7) encoded matched box (zero unless positive)
    direction_bins: Tensor  # (B, N) long direction-classifier target (zero unless positive)

    @property
    def positive(self) -> Tensor:  # (B, N) bool
        return self.labels >= 0


def _overlaps(anchors: Tensor, boxes: Tensor, matching: str) -> Tensor:
    if matching == "rotated":
        return bev_iou(anchors, boxes)  # skips the pairs whose circumscribed circles do not meet
    return nearest_bev_iou(anchors, boxes)


def match_anchors(
    anchors: Tensor, boxes: Tensor, matched_threshold: float, unmatched_threshold: float, matching: str = "rotated"
) -> AnchorMatch:
    """``(N, 7)`` anchors against ``(M, 7+)`` boxes of their class (see the module docstring)."""
    if matching not in MATCHING_KINDS:
        raise ValueError(f"anchor matching must be one of {MATCHING_KINDS}, got {matching!r}")
    count = anchors.shape[0]
    if boxes.shape[0] == 0:
        nothing = torch.zeros(count, dtype=torch.bool, device=anchors.device)
        return AnchorMatch(nothing, ~nothing, torch.zeros(count, dtype=torch.long, device=anchors.device))
    iou = _overlaps(anchors, boxes, matching)  # (N, M)
    best_iou, gt_index = iou.max(dim=1)
    best_per_box = iou.max(dim=0).values  # (M,)
    is_best = (iou == best_per_box[None, :]) & (best_per_box[None, :] > 0)
    positive = is_best.any(dim=1) | (best_iou >= matched_threshold)
    return AnchorMatch(positive, ~positive & (best_iou < unmatched_threshold), gt_index)


def check_ground_truth(gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], num_classes: int, source: str) -> None:
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"{source}: {len(gt_boxes)} box tensors but {len(gt_labels)} label tensors")
    for sample, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        if boxes.ndim != 2 or boxes.shape[1] not in (7, 9) or labels.shape != (boxes.shape[0],):
            raise ValueError(
                f"{source}: sample {sample} needs boxes (M, 7|9) and labels (M,), "
                f"got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"{source}: sample {sample} has a label outside 0..{num_classes - 1}")


def assign_anchor_targets(
    anchors: Tensor,
    classes: Sequence[AnchorClassConfig],
    class_labels: Sequence[int],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    matching: str = "rotated",
    dir_offset: float = 0.78539,
    num_dir_bins: int = 2,
) -> AnchorTargets:
    """Targets for ``(H, W, A, 7)`` anchors whose types are those of ``classes`` in order;
    ``class_labels[k]`` is the ClassTable label of ``classes[k]``. ``gt_boxes[b]`` ``(M_b, 7|9)``
    metric boxes (velocity unused), ``gt_labels[b]`` ``(M_b,)`` ClassTable labels."""
    check_ground_truth(gt_boxes, gt_labels, max(class_labels) + 1, "assign_anchor_targets")
    height, width, num_types, _ = anchors.shape
    ends = torch.tensor([spec.num_anchor_types for spec in classes]).cumsum(0).tolist()
    if ends[-1] != num_types:
        raise ValueError(f"assign_anchor_targets: the anchor classes define {ends[-1]} anchor types, "
                         f"the anchors have {num_types}")
    per_sample = []
    for boxes, labels in zip(gt_boxes, gt_labels):
        boxes = boxes[:, :7].to(anchors)
        target_labels = anchors.new_full((height, width, num_types), IGNORED, dtype=torch.long)
        deltas = anchors.new_zeros(height, width, num_types, 7)
        bins = torch.zeros(height, width, num_types, dtype=torch.long, device=anchors.device)
        for spec, label, start, end in zip(classes, class_labels, [0] + ends[:-1], ends):
            class_anchors = anchors[:, :, start:end].reshape(-1, 7)
            class_boxes = boxes[labels.to(boxes.device) == label]
            match = match_anchors(class_anchors, class_boxes, spec.matched_threshold, spec.unmatched_threshold,
                                  matching)
            class_labels_here = torch.full_like(match.gt_index, IGNORED)
            class_labels_here[match.negative] = NEGATIVE
            class_labels_here[match.positive] = label
            matched = class_boxes[match.gt_index[match.positive]]
            class_deltas = torch.zeros_like(class_anchors)
            class_deltas[match.positive] = encode_box_deltas(matched, class_anchors[match.positive])
            class_bins = torch.zeros_like(match.gt_index)
            class_bins[match.positive] = direction_bins(matched[:, 6], dir_offset, num_dir_bins)
            target_labels[:, :, start:end] = class_labels_here.view(height, width, -1)
            deltas[:, :, start:end] = class_deltas.view(height, width, -1, 7)
            bins[:, :, start:end] = class_bins.view(height, width, -1)
        per_sample.append(AnchorTargets(target_labels.flatten(), deltas.view(-1, 7), bins.flatten()))
    return AnchorTargets(*(torch.stack(parts) for parts in zip(*per_sample)))
