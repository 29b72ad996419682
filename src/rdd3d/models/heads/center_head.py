"""CenterPoint's center-based head (OpenPCDet's ``CenterHead``): a shared 3x3 conv, then one
:class:`TaskHead` per class group predicting a heatmap and the box code at every BEV cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from rdd3d.core.types import ClassTable
from rdd3d.models.heads.decode import DecodeConfig, decode_detections, decode_peaks
from rdd3d.models.heads.losses import CenterLoss, LossConfig, center_loss
from rdd3d.core.types import Detections
from rdd3d.models.heads.prediction import TaskPrediction
from rdd3d.models.heads.targets import BEVGrid, TargetConfig, TaskTargets, assign_targets, box_code_names


@dataclass(frozen=True)
class CenterHeadConfig:
    """``class_groups``: one tuple of class names per task, together naming every class of the dataset once.
    ``half_period_classes``: classes that look the same turned by π (a barrier), whose yaw is learnt and
    decoded modulo π (:mod:`rdd3d.models.heads.targets`); () codes every yaw over the full circle."""

    class_groups: tuple[tuple[str, ...], ...]
    head_channels: int = 64
    hidden_convs_per_branch: int = 1  # 3x3 Conv-BN-ReLU layers before each branch's output conv
    with_velocity: bool = False
    heatmap_init_bias: float = -2.19  # sigmoid(-2.19) ~ 0.1: a low prior on every cell being a centre
    targets: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    half_period_classes: tuple[str, ...] = ()


def _conv_bn_relu(in_channels: int, channels: int) -> list[nn.Module]:
    # CenterPoint configs set USE_BIAS_BEFORE_NORM: the convs keep a bias even before BatchNorm.
    return [nn.Conv2d(in_channels, channels, 3, padding=1, bias=True), nn.BatchNorm2d(channels), nn.ReLU()]


def _branch(channels: int, out_channels: int, hidden_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hidden_convs):
        layers += _conv_bn_relu(channels, channels)
    layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=True))
    return nn.Sequential(*layers)


def _kaiming_init(branch: nn.Sequential) -> None:
    for module in branch.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
            nn.init.zeros_(module.bias)


class TaskHead(nn.Module):
    """One class group's branches (OpenPCDet's ``SeparateHead``)."""

    def __init__(self, channels: int, num_classes: int, hidden_convs: int, with_velocity: bool,
                 heatmap_init_bias: float) -> None:
        super().__init__()
        self.heatmap = _branch(channels, num_classes, hidden_convs)
        self.center = _branch(channels, 2, hidden_convs)
        self.center_z = _branch(channels, 1, hidden_convs)
        self.dim = _branch(channels, 3, hidden_convs)
        self.rot = _branch(channels, 2, hidden_convs)
        self.velocity = _branch(channels, 2, hidden_convs) if with_velocity else None
        nn.init.constant_(self.heatmap[-1].bias, heatmap_init_bias)
        for branch in (self.center, self.center_z, self.dim, self.rot, self.velocity):
            if branch is not None:
                _kaiming_init(branch)

    def forward(self, x: Tensor) -> TaskPrediction:  # x (B, channels, H, W)
        velocity = self.velocity(x) if self.velocity is not None else None
        return TaskPrediction(self.heatmap(x), self.center(x), self.center_z(x), self.dim(x), self.rot(x), velocity)


def resolve_class_groups(groups: Sequence[Sequence[str]], classes: ClassTable) -> tuple[tuple[int, ...], ...]:
    """Class names per task -> ClassTable labels per task; every class must appear exactly once."""
    source = "CenterHeadConfig.class_groups"
    labels = tuple(tuple(int(i) for i in classes.indices(group, source=source)) for group in groups)
    flat = [label for group in labels for label in group]
    if any(len(group) == 0 for group in labels) or sorted(flat) != list(range(len(classes))):
        raise ValueError(
            f"{source} must name every class of {list(classes.names)} exactly once in non-empty groups, "
            f"got {[list(g) for g in groups]}"
        )
    return labels


class CenterHead(nn.Module):
    """``(B, in_channels, H, W)`` BEV features -> one :class:`TaskPrediction` per class group.

    The map's geometry (``point_cloud_range``, ``voxel_size`` and the map's ``feature_stride`` in
    voxels) places cells in metres for targets and decoding.
    """

    def __init__(
        self,
        in_channels: int,
        classes: ClassTable,
        point_cloud_range: Sequence[float],
        voxel_size: Sequence[float],
        feature_stride: float,
        config: CenterHeadConfig,
    ) -> None:
        super().__init__()
        self.config = config
        self.classes = classes
        self.task_labels = resolve_class_groups(config.class_groups, classes)
        self.half_period_labels = tuple(int(label) for label in classes.indices(
            config.half_period_classes, source="CenterHeadConfig.half_period_classes"))
        config.decode.check_num_tasks(len(self.task_labels))
        config.loss.check_code_size(len(box_code_names(config.with_velocity)))
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.feature_stride = float(feature_stride)
        self.shared_conv = nn.Sequential(*_conv_bn_relu(in_channels, config.head_channels))
        self.tasks = nn.ModuleList(
            TaskHead(config.head_channels, len(labels), config.hidden_convs_per_branch, config.with_velocity,
                     config.heatmap_init_bias)
            for labels in self.task_labels
        )

    def forward(self, features: Tensor) -> tuple[TaskPrediction, ...]:
        shared = self.shared_conv(features)  # (B, head_channels, H, W)
        return tuple(task(shared) for task in self.tasks)

    def grid(self, map_size: tuple[int, int]) -> BEVGrid:
        """Geometry of an ``(H, W)`` output map of this head."""
        return BEVGrid.from_voxels(self.point_cloud_range, self.voxel_size, self.feature_stride, map_size)

    def targets(
        self, map_size: tuple[int, int], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]
    ) -> list[TaskTargets]:
        """Targets on an ``(H, W)`` output map for ``gt_boxes[b]`` (M_b, 7|9) with labels ``gt_labels[b]`` (M_b,)."""
        return assign_targets(gt_boxes, gt_labels, self.task_labels, self.grid(map_size), self.config.targets,
                              self.config.with_velocity, self.half_period_labels)

    def loss(
        self, predictions: Sequence[TaskPrediction], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]
    ) -> CenterLoss:
        map_size = tuple(predictions[0].heatmap.shape[-2:])
        return center_loss(predictions, self.targets(map_size, gt_boxes, gt_labels), self.config.loss)

    @torch.no_grad()
    def decode(self, predictions: Sequence[TaskPrediction]) -> list[Detections]:
        """Per-sample detections in metres, labels indexing ``self.classes``."""
        grid = self.grid(tuple(predictions[0].heatmap.shape[-2:]))
        return decode_detections(predictions, grid, self.task_labels, self.config.decode, self.half_period_labels)

    @torch.no_grad()
    def decode_peaks(self, predictions: Sequence[TaskPrediction], max_per_sample: int,
                     score_threshold: float) -> list[Detections]:
        """Class-agnostic heatmap peaks as boxes (:func:`~rdd3d.models.heads.decode.decode_peaks`): the cheap
        region proposals of distillation, without NMS."""
        grid = self.grid(tuple(predictions[0].heatmap.shape[-2:]))
        return decode_peaks(predictions, grid, self.task_labels, max_per_sample, score_threshold,
                            self.half_period_labels)
