"""The anchor head of SECOND and PointPillars (OpenPCDet's ``AnchorHeadSingle``): three 1x1 convs
predicting, for every anchor of every BEV location, class logits, box deltas and direction logits.

Anchors: :mod:`rdd3d.models.heads.anchors`; targets: :mod:`rdd3d.models.heads.anchor_targets`;
box code and direction bins: :mod:`rdd3d.models.heads.box_coder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdd3d.core.types import ClassTable
from rdd3d.models.heads.anchor_targets import IGNORED, MATCHING_KINDS, AnchorTargets, assign_anchor_targets
from rdd3d.models.heads.anchors import AnchorClassConfig, anchor_grid
from rdd3d.models.heads.box_coder import apply_direction, decode_box_deltas, limit_period
from rdd3d.models.heads.decode import NMSConfig, peak_cells, suppress
from rdd3d.core.types import Detections

BOX_CODE_SIZE = 7

#: OpenPCDet's KITTI anchors (second.yaml, pointpillar.yaml): one size and two rotations per class.
KITTI_ANCHORS = (
    AnchorClassConfig("Car", ((3.9, 1.6, 1.56),), bottom_z=-1.78, matched_threshold=0.6, unmatched_threshold=0.45),
    AnchorClassConfig("Pedestrian", ((0.8, 0.6, 1.73),), bottom_z=-0.6, matched_threshold=0.5,
                      unmatched_threshold=0.35),
    AnchorClassConfig("Cyclist", ((1.76, 0.6, 1.73),), bottom_z=-0.6, matched_threshold=0.5,
                      unmatched_threshold=0.35),
)


@dataclass(frozen=True)
class AnchorLossConfig:
    """OpenPCDet's KITTI weights. ``code_weights`` scale the box-delta differences (x, y, z, l, w, h, yaw)
    before the smooth-L1."""

    cls_weight: float = 1.0
    loc_weight: float = 2.0
    dir_weight: float = 0.2
    code_weights: tuple[float, ...] = (1.0,) * BOX_CODE_SIZE
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 1 / 9

    def __post_init__(self) -> None:
        object.__setattr__(self, "code_weights", tuple(float(w) for w in self.code_weights))
        if len(self.code_weights) != BOX_CODE_SIZE:
            raise ValueError(f"AnchorLossConfig.code_weights needs {BOX_CODE_SIZE} values (x y z l w h yaw), "
                             f"got {len(self.code_weights)}")


def _kitti_nms() -> NMSConfig:
    return NMSConfig(kind="rotated", iou_threshold=0.01, pre_max_size=4096, post_max_size=500)


@dataclass(frozen=True)
class AnchorDecodeConfig:
    """Defaults: OpenPCDet's KITTI SECOND/PointPillars post-processing (scores above 0.1, class-agnostic
    rotated NMS at IoU 0.01, 4096 candidates before, 500 after). The RDD paper reports KITTI with NMS 0.5."""

    score_threshold: float = 0.1  # keep scores strictly above
    class_agnostic_nms: bool = True  # True: each anchor keeps its best class and one NMS runs over all
    nms: NMSConfig = field(default_factory=_kitti_nms)


def _anchor_class(entry) -> AnchorClassConfig:
    # OmegaConf does not type the items of a variadic tuple: entries read from YAML arrive as mappings.
    if isinstance(entry, AnchorClassConfig):
        return entry
    try:
        return AnchorClassConfig(**entry)
    except TypeError as error:
        names = [f.name for f in fields(AnchorClassConfig)]
        raise ValueError(f"AnchorHeadConfig.anchors: each entry needs the fields {names}, got {dict(entry)} "
                         f"({error})") from None


@dataclass(frozen=True)
class AnchorHeadConfig:
    """``anchors``: one entry per class of the dataset (each exactly once, any order)."""

    anchors: tuple[AnchorClassConfig, ...] = KITTI_ANCHORS
    align_center: bool = False  # anchors edge to edge (OpenPCDet) or at cell centres, see anchors.py
    matching: str = "rotated"  # "rotated" BEV IoU, or "nearest_bev" (OpenPCDet's KITTI assigner)
    use_direction_classifier: bool = True
    dir_offset: float = 0.78539
    dir_limit_offset: float = 0.0
    num_dir_bins: int = 2
    class_prior: float = 0.01  # initial foreground probability of every anchor (the cls bias)
    loss: AnchorLossConfig = field(default_factory=AnchorLossConfig)
    decode: AnchorDecodeConfig = field(default_factory=AnchorDecodeConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchors", tuple(_anchor_class(entry) for entry in self.anchors))
        if not self.anchors:
            raise ValueError("AnchorHeadConfig.anchors needs one entry per class")
        if self.matching not in MATCHING_KINDS:
            raise ValueError(f"AnchorHeadConfig.matching must be one of {MATCHING_KINDS}, got {self.matching!r}")
        if self.num_dir_bins < 1:
            raise ValueError(f"AnchorHeadConfig.num_dir_bins must be >= 1, got {self.num_dir_bins}")
        if not 0 < self.class_prior < 1:
            raise ValueError(f"AnchorHeadConfig.class_prior must lie in (0, 1), got {self.class_prior}")


class AnchorPrediction(NamedTuple):
    """Raw conv maps on a ``(B, ., H, W)`` BEV map. Channels are anchor-major: channel ``a * D + d``
    is value ``d`` of anchor type ``a`` (OpenPCDet's layout); :func:`per_anchor` unfolds them."""

    cls_logits: Tensor  # (B, A * C, H, W), C = classes of the ClassTable, in its order
    box_deltas: Tensor  # (B, A * 7, H, W), see box_coder.py
    dir_logits: Optional[Tensor]  # (B, A * num_dir_bins, H, W), None without a direction classifier


class AnchorLoss(NamedTuple):
    """Loss breakdown (weights applied); ``total`` is what to back-propagate."""

    total: Tensor  # ()
    classification: Tensor  # () focal loss
    regression: Tensor  # () smooth-L1 on box deltas
    direction: Tensor  # () direction cross entropy (0 without a direction classifier)

    def terms(self) -> dict[str, Tensor]:
        """The logged parts, summing to ``total``."""
        return {"classification": self.classification, "regression": self.regression, "direction": self.direction}


def per_anchor(maps: Tensor, num_anchor_types: int) -> Tensor:
    """``(B, A * D, H, W)`` anchor-major maps -> ``(B, H * W * A, D)``, rows in anchor order
    (``(row * W + column) * A + type``, as :func:`anchor_grid` flattened)."""
    batch, channels, height, width = maps.shape
    unfolded = maps.view(batch, num_anchor_types, channels // num_anchor_types, height, width)
    return unfolded.permute(0, 3, 4, 1, 2).reshape(batch, height * width * num_anchor_types, -1)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """RetinaNet's focal loss on logits against {0, 1} targets, element-wise (no reduction)."""
    probs = logits.sigmoid()
    p_true = targets * probs + (1 - targets) * (1 - probs)  # probability given to the right answer
    alpha_true = targets * alpha + (1 - targets) * (1 - alpha)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_true * (1 - p_true) ** gamma * cross_entropy


def anchor_loss(
    prediction: AnchorPrediction, targets: AnchorTargets, num_anchor_types: int, config: AnchorLossConfig
) -> AnchorLoss:
    """OpenPCDet's ``AnchorHeadTemplate.get_loss``: every term is summed over a sample's anchors,
    divided by its number of positive anchors (at least 1), then averaged over the batch. Focal loss
    on positives and negatives (ignored anchors weigh 0); smooth-L1 on the box deltas of positives,
    the yaw compared through sin(pred - target); direction cross entropy on positives."""
    logits = per_anchor(prediction.cls_logits, num_anchor_types).float()  # (B, N, C)
    batch, _, num_classes = logits.shape
    positive = targets.positive
    per_positive = 1 / positive.sum(dim=1, keepdim=True).clamp_min(1).float()  # (B, 1)
    one_hot = F.one_hot(targets.labels.clamp_min(0), num_classes).float() * positive[..., None]
    cls_weights = (targets.labels != IGNORED).float() * per_positive  # (B, N)
    focal = sigmoid_focal_loss(logits, one_hot, config.focal_alpha, config.focal_gamma)
    classification = config.cls_weight * (focal * cls_weights[..., None]).sum() / batch

    reg_weights = positive.float() * per_positive  # (B, N)
    deltas = per_anchor(prediction.box_deltas, num_anchor_types).float()  # (B, N, 7)
    target = targets.box_deltas
    # sin(a - b), which OpenPCDet writes sin a cos b - cos a sin b: a yaw off by π costs nothing here.
    difference = torch.cat([deltas[..., :6] - target[..., :6], torch.sin(deltas[..., 6:] - target[..., 6:])],
                           dim=-1) * deltas.new_tensor(config.code_weights)
    smooth_l1 = F.smooth_l1_loss(difference, torch.zeros_like(difference), reduction="none",
                                 beta=config.smooth_l1_beta)
    regression = config.loc_weight * (smooth_l1.sum(dim=-1) * reg_weights).sum() / batch

    direction = regression.new_zeros(())
    if prediction.dir_logits is not None:
        dir_logits = per_anchor(prediction.dir_logits, num_anchor_types).float()  # (B, N, bins)
        cross_entropy = F.cross_entropy(dir_logits.transpose(1, 2), targets.direction_bins, reduction="none")
        direction = config.dir_weight * (cross_entropy * reg_weights).sum() / batch
    return AnchorLoss(classification + regression + direction, classification, regression, direction)


def resolve_anchor_classes(anchors: Sequence[AnchorClassConfig], classes: ClassTable) -> tuple[int, ...]:
    """ClassTable label of each anchor class; every class of the table needs exactly one entry."""
    labels = tuple(int(i) for i in classes.indices([spec.class_name for spec in anchors], "AnchorHeadConfig.anchors"))
    if sorted(labels) != list(range(len(classes))):
        raise ValueError(f"AnchorHeadConfig.anchors must name every class of {list(classes.names)} exactly once, "
                         f"got {[spec.class_name for spec in anchors]}")
    return labels


class AnchorHead(nn.Module):
    """``(B, in_channels, H, W)`` BEV features -> :class:`AnchorPrediction`.

    Anchors lie on the ``(H, W)`` output map over the x/y extent of ``point_cloud_range``; their
    types follow ``config.anchors`` (class by class, size by size, rotation by rotation); class
    channels follow ``classes``, so decoded labels index it directly.
    """

    def __init__(
        self, in_channels: int, classes: ClassTable, point_cloud_range: Sequence[float],
        config: AnchorHeadConfig = AnchorHeadConfig(),
    ) -> None:
        super().__init__()
        self.config = config
        self.classes = classes
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.class_labels = resolve_anchor_classes(config.anchors, classes)  # per entry of config.anchors
        self.num_anchor_types = sum(spec.num_anchor_types for spec in config.anchors)
        self._check_nms()
        types = self.num_anchor_types
        self.conv_cls = nn.Conv2d(in_channels, types * len(classes), 1)
        self.conv_box = nn.Conv2d(in_channels, types * BOX_CODE_SIZE, 1)
        self.conv_dir = (
            nn.Conv2d(in_channels, types * config.num_dir_bins, 1) if config.use_direction_classifier else None
        )
        # A low foreground prior keeps the focal loss of the ~10^5 background anchors small at the start.
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - config.class_prior) / config.class_prior))
        nn.init.normal_(self.conv_box.weight, mean=0.0, std=0.001)
        nn.init.zeros_(self.conv_box.bias)

    def _check_nms(self) -> None:
        nms, agnostic = self.config.decode.nms, self.config.decode.class_agnostic_nms
        needed = 1 if agnostic else len(self.classes)
        if nms.kind == "circle" and len(nms.circle_distances) != needed:
            raise ValueError(
                f"AnchorDecodeConfig: circle NMS needs {needed} circle_distances "
                f"({'class-agnostic' if agnostic else 'one per class'}), got {len(nms.circle_distances)}"
            )

    def forward(self, features: Tensor) -> AnchorPrediction:
        dir_logits = self.conv_dir(features) if self.conv_dir is not None else None
        return AnchorPrediction(self.conv_cls(features), self.conv_box(features), dir_logits)

    def anchors(self, map_size: tuple[int, int], device: Optional[torch.device] = None) -> Tensor:
        """``(H, W, A, 7)`` anchors of an ``(H, W)`` output map."""
        return anchor_grid(self.config.anchors, self.point_cloud_range, map_size, self.config.align_center, device)

    def targets(self, map_size: tuple[int, int], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                device: Optional[torch.device] = None) -> AnchorTargets:
        """Targets on an ``(H, W)`` map for ``gt_boxes[b]`` (M_b, 7|9) with labels ``gt_labels[b]`` (M_b,)."""
        config = self.config
        return assign_anchor_targets(
            self.anchors(map_size, device), config.anchors, self.class_labels, gt_boxes, gt_labels,
            config.matching, config.dir_offset, config.num_dir_bins,
        )

    def loss(self, prediction: AnchorPrediction, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> AnchorLoss:
        logits = prediction.cls_logits
        targets = self.targets(tuple(logits.shape[-2:]), gt_boxes, gt_labels, logits.device)
        return anchor_loss(prediction, targets, self.num_anchor_types, self.config.loss)

    def decode_boxes(self, prediction: AnchorPrediction, rows: Optional[Tensor] = None) -> Tensor:
        """``(B, H * W * A, 7)`` metric boxes of every anchor, or ``(B, K, 7)`` of the anchors ``rows``
        ``(B, K)`` (anchor order, as :func:`per_anchor`); with a direction classifier, the yaw is turned
        into the predicted bin; yaws end in [-π, π)."""
        logits = prediction.cls_logits
        anchors = self.anchors(tuple(logits.shape[-2:]), logits.device).view(-1, BOX_CODE_SIZE)
        deltas = per_anchor(prediction.box_deltas, self.num_anchor_types).float()  # (B, N, 7)
        if rows is not None:
            anchors = anchors[rows]  # (B, K, 7)
            deltas = deltas.gather(1, rows[..., None].expand(-1, -1, BOX_CODE_SIZE))
        boxes = decode_box_deltas(deltas, anchors)
        yaw = boxes[..., 6]
        if prediction.dir_logits is not None:
            config = self.config
            dir_logits = per_anchor(prediction.dir_logits, self.num_anchor_types)
            if rows is not None:
                dir_logits = dir_logits.gather(1, rows[..., None].expand(-1, -1, dir_logits.shape[-1]))
            yaw = apply_direction(yaw, dir_logits.argmax(dim=-1), config.dir_offset, config.dir_limit_offset,
                                  config.num_dir_bins)
        # OpenPCDet leaves the yaw in [dir_offset, dir_offset + 2π); CenterHead's atan2 gives [-π, π]:
        # one convention for every head.
        return torch.cat([boxes[..., :6], limit_period(yaw, 0.5, 2 * math.pi)[..., None]], dim=-1)

    @torch.no_grad()
    def decode(self, prediction: AnchorPrediction) -> list[Detections]:
        """Per-sample detections in metres, labels indexing ``self.classes``: score filter, then one NMS call
        for the batch whose groups are the samples (class-agnostic) or the samples' classes."""
        decode = self.config.decode
        boxes = self.decode_boxes(prediction)  # (B, N, 7)
        scores = per_anchor(prediction.cls_logits, self.num_anchor_types).float().sigmoid()  # (B, N, C)
        batch, anchors, num_classes = scores.shape
        per_sample = 1 if decode.class_agnostic_nms else num_classes  # NMS groups of a sample
        if decode.class_agnostic_nms:
            scores, labels = scores.max(dim=-1)  # (B, N)
            task = torch.zeros_like(labels)
        else:  # every anchor once per class: (B, C * N), class-major within a sample
            boxes = boxes[:, None].expand(-1, num_classes, -1, -1).reshape(batch, num_classes * anchors, -1)
            scores = scores.transpose(1, 2).reshape(batch, num_classes * anchors)
            labels = torch.arange(num_classes, device=scores.device).repeat_interleave(anchors).expand(batch, -1)
            task = labels
        groups = torch.arange(batch, device=scores.device)[:, None] * per_sample + task
        keep = scores > decode.score_threshold
        boxes, scores, labels, task, groups = boxes[keep], scores[keep], labels[keep], task[keep], groups[keep]
        kept = suppress(boxes, scores, decode.nms, task, groups)
        counts = torch.bincount(groups[kept] // per_sample, minlength=batch).tolist()
        return [Detections(*parts) for parts in zip(*(part[kept].split(counts) for part in (boxes, scores, labels)))]

    @torch.no_grad()
    def decode_peaks(self, prediction: AnchorPrediction, max_per_sample: int,
                     score_threshold: float) -> list[Detections]:
        """Class-agnostic peaks of the best anchor score per location (3×3 local maxima,
        :func:`~rdd3d.models.heads.decode.peak_cells`), each the box of its best anchor: the cheap region
        proposals of distillation, without NMS and without decoding any other anchor."""
        logits = prediction.cls_logits.detach()
        batch, _, height, width = logits.shape
        types = self.num_anchor_types
        scores = per_anchor(logits, types).view(batch, height * width, types * len(self.classes))
        best, choice = scores.max(dim=-1)  # (B, H*W) over anchor types and classes
        cells, values, keep = peak_cells(best.sigmoid().view(batch, height, width), max_per_sample, score_threshold)
        choice = choice.gather(1, cells)  # (B, K)
        rows = cells * types + choice // len(self.classes)
        boxes = self.decode_boxes(prediction, rows)
        labels = choice % len(self.classes)
        return [Detections(boxes[b, keep[b]], values[b, keep[b]], labels[b, keep[b]]) for b in range(batch)]
