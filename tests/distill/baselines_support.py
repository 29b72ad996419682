"""Tiny teacher/student views for the baseline tests: a 1×1-conv "neck" and a real CenterHead on
16×16 (teacher) or 10×10 (coarse student) BEV maps, with ground truth and preset detections."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from rdd3d.data.collate import DetectionBatch
from rdd3d.core.types import ClassTable
from rdd3d.distill.base import BEVGeometry, DistillStep, ModelView
from rdd3d.models.detector import DetectorOutput
from rdd3d.models.heads import CenterHead, CenterHeadConfig, DecodeConfig, Detections, TaskPrediction

CLASSES = ("car", "pedestrian", "cone")
GROUPS = (("car",), ("pedestrian", "cone"))
#: 0.5 m cells over x, y in [0, 8): 16 x 16.
TEACHER_GRID = BEVGeometry((0.0, 0.0, -2.0, 8.0, 8.0, 2.0), (0.25, 0.25, 4.0), 2.0)
TEACHER_SIZE = (16, 16)
#: 1 m cells over [-1, 9): 10 x 10, covering the teacher's map (every teacher cell centre lies between
#: coarse cell centres, so bilinear reading is exact for linear maps).
COARSE_GRID = BEVGeometry((-1.0, -1.0, -2.0, 9.0, 9.0, 2.0), (0.5, 0.5, 4.0), 2.0)
COARSE_SIZE = (10, 10)
INPUT_CHANNELS = 4


class TinyDetector(nn.Module):
    """Input map -> 1×1 conv + ReLU "neck" -> CenterPoint head; decodes and assigns targets like CenterPoint."""

    def __init__(self, channels: int, geometry: BEVGeometry, heatmap_init_bias: float = 0.0) -> None:
        super().__init__()
        self.point_cloud_range, self.voxel_size = geometry.point_cloud_range, geometry.voxel_size
        self.feature_stride = geometry.feature_stride
        self.backbone_2d = nn.Sequential(nn.Conv2d(INPUT_CHANNELS, channels, 1), nn.ReLU())
        config = CenterHeadConfig(class_groups=GROUPS, head_channels=8, heatmap_init_bias=heatmap_init_bias,
                                  decode=DecodeConfig(max_per_task=20))  # few candidates: a fast NMS
        self.head = CenterHead(channels, ClassTable(CLASSES), geometry.point_cloud_range, geometry.voxel_size,
                               geometry.feature_stride, config)

    def forward(self, inputs: Tensor) -> DetectorOutput:
        neck = self.backbone_2d(inputs)
        return DetectorOutput(self.head(neck), neck)

    def decode(self, output: DetectorOutput) -> list[Detections]:
        return self.head.decode(output.predictions)


def run(model: TinyDetector, inputs: Tensor) -> ModelView:
    """The model's view of one step (gradients recorded, as a student's; teachers are detached by the losses)."""
    output = model(inputs)
    return ModelView(model, output, {"bev": output.bev_features, "head": output.predictions},
                     BEVGeometry.of(model))


def map_view(bev: Tensor, heads: Sequence[TaskPrediction], geometry: BEVGeometry,
             detections: Sequence[Detections] = (), model: nn.Module | None = None) -> ModelView:
    """A view of hand-made maps; ``detections`` stand for the model's decoded output, ``model`` (if
    given) for its target assigner."""
    return ModelView(model or nn.Identity(), None, {"bev": bev, "head": tuple(heads)}, geometry,
                     _decoded=list(detections) or None)


def heads_from_probabilities(car: Tensor, others: Tensor) -> tuple[TaskPrediction, TaskPrediction]:
    """Task predictions whose heatmaps have the given probabilities ((B, 1, H, W) and (B, 2, H, W)),
    box codes zero (size e⁰ = 1 m)."""
    def task(probabilities: Tensor) -> TaskPrediction:
        batch, _, height, width = probabilities.shape
        zeros = probabilities.new_zeros
        return TaskPrediction(torch.logit(probabilities), zeros(batch, 2, height, width),
                              zeros(batch, 1, height, width), zeros(batch, 3, height, width),
                              torch.cat([probabilities.new_ones(batch, 1, height, width),
                                         zeros(batch, 1, height, width)], dim=1), None)

    return task(car), task(others)


def step_of(teacher: ModelView, student: ModelView, gt_boxes: Sequence[Tensor],
            gt_labels: Sequence[Tensor]) -> DistillStep:
    batch = DetectionBatch([torch.zeros(0, 3) for _ in gt_boxes], list(gt_boxes), list(gt_labels),
                           [f"frame{i}" for i in range(len(gt_boxes))], ("x", "y", "z"))
    return DistillStep(batch, teacher, student)


def box(x: float, y: float, length: float = 2.0, width: float = 1.0, yaw: float = 0.0) -> list[float]:
    return [x, y, 0.0, length, width, 1.5, yaw]


def make_identity(adapter: nn.Module) -> nn.Module:
    """ψ(x) = x for x >= 0: identity 1×1 conv, BatchNorm at its initial statistics without eps, eval mode."""
    conv, norm = adapter[0], adapter[1]
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels, conv.in_channels)[:, :, None, None])
    norm.eps = 0.0
    return adapter.eval()


def linear_map(geometry: BEVGeometry, size: tuple[int, int], channels: int) -> Tensor:
    """(1, C, H, W) map whose channel c is 2 + 0.1 (c + 1) x + 0.05 y at each cell centre (positive on our grids)."""
    height, width = size
    cell_x, cell_y = geometry.cell_size
    x = geometry.point_cloud_range[0] + (torch.arange(width) + 0.5) * cell_x
    y = geometry.point_cloud_range[1] + (torch.arange(height) + 0.5) * cell_y
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([2 + (c + 1) * 0.1 * xx + 0.05 * yy for c in range(channels)])[None]


def cell_of(geometry: BEVGeometry, x: float, y: float) -> tuple[int, int]:
    """(row, column) of the cell holding metric (x, y)."""
    cell_x, cell_y = geometry.cell_size
    return (math.floor((y - geometry.point_cloud_range[1]) / cell_y),
            math.floor((x - geometry.point_cloud_range[0]) / cell_x))
