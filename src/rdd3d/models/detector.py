"""The LiDAR detectors of rdd3d (CenterPoint voxel/pillar, SECOND, PointPillars), assembled from the
building blocks.

The detector reads raw points and voxelises them itself, on the points' device, so that a teacher
and a student of different voxel or pillar sizes read the same batch::

    points ─ voxelizer ─ encoder ─┬─ backbone_3d (voxel family: sparse 3D convs, height compression)
                                  └─ scatter     (pillar family: pillars onto a BEV canvas)
           ─ backbone_2d (BEV backbone + neck; its output is the map distillation taps)
           ─ head (CenterHead: CenterPoint; AnchorHead: SECOND, PointPillars)

Submodules carry these names, so distillation hooks find them with ``model.get_submodule(name)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from rdd3d.core.types import KNOWN_POINT_COLUMNS, ClassTable
from rdd3d.data.collate import DetectionBatch
from rdd3d.data.voxelize import VoxelBatch, Voxelizer, shared_voxelisation
from rdd3d.models.backbones2d import BEVBackbone, BEVBackboneConfig
from rdd3d.models.backbones3d import BEVMap, VoxelBackBone8x, VoxelResBackBone8x
from rdd3d.models.encoders import MeanVFE, PillarVFE, PointPillarScatter
from rdd3d.models.heads import (
    AnchorHead, AnchorHeadConfig, AnchorLoss, AnchorPrediction, CenterHead, CenterHeadConfig, CenterLoss, Detections,
    TaskPrediction,
)
from rdd3d.models.sparse.backends import BACKEND_NAMES
from rdd3d.models.sparse.rulebook import shared_rulebooks

ENCODER_KINDS = ("mean_vfe", "pillar")
#: Sparse 3D backbones of the voxel family: CenterPoint's residual one, SECOND's plain one.
BACKBONE_3D_KINDS = {"voxel_res": VoxelResBackBone8x, "voxel": VoxelBackBone8x}


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that defines a detector (presets in :mod:`rdd3d.models.presets` build these).

    ``point_columns`` names the columns of the input points, in order; the detector reads all of them.
    ``encoder`` picks the family: ``"mean_vfe"`` (voxels, the sparse 3D backbone ``backbone_3d`` at
    ``backbone_3d_width``) or ``"pillar"`` (pillars through a PointNet of ``pillar_filters``, scattered
    to BEV). A pillar's z size must span the whole z range. The type of ``head`` picks the head.
    """

    classes: tuple[str, ...]  # the dataset's classes in label order
    point_cloud_range: tuple[float, float, float, float, float, float]  # x0 y0 z0 x1 y1 z1, metres
    voxel_size: tuple[float, float, float]  # x y z, metres
    max_points_per_voxel: int
    max_voxels_train: int
    max_voxels_test: int
    point_columns: tuple[str, ...]
    encoder: str  # "mean_vfe" | "pillar"
    backbone_2d: BEVBackboneConfig
    head: CenterHeadConfig | AnchorHeadConfig
    pillar_filters: tuple[int, ...] = (64, 64)  # pillar family only
    backbone_3d: str = "voxel_res"  # voxel family only: "voxel_res" (CenterPoint) | "voxel" (SECOND)
    backbone_3d_width: float = 1.0  # voxel family only
    sparse_backend: str = "auto"  # "auto" | "torch" | "spconv" (voxel family only)

    def __post_init__(self) -> None:
        for name in ("classes", "point_cloud_range", "voxel_size", "point_columns", "pillar_filters"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.encoder not in ENCODER_KINDS:
            raise ValueError(f"DetectorConfig.encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}")
        if self.backbone_3d not in BACKBONE_3D_KINDS:
            raise ValueError(f"DetectorConfig.backbone_3d must be one of {list(BACKBONE_3D_KINDS)}, "
                             f"got {self.backbone_3d!r}")
        if not isinstance(self.head, (CenterHeadConfig, AnchorHeadConfig)):
            raise ValueError(f"DetectorConfig.head must be a CenterHeadConfig or an AnchorHeadConfig, "
                             f"got {type(self.head).__name__}")
        if isinstance(self.head, CenterHeadConfig) and not set(self.head.half_period_classes) <= set(self.classes):
            raise ValueError(f"DetectorConfig.head.half_period_classes must be classes of the detector "
                             f"{list(self.classes)}, got {list(self.head.half_period_classes)}")
        if self.sparse_backend not in BACKEND_NAMES:
            raise ValueError(
                f"DetectorConfig.sparse_backend must be one of {BACKEND_NAMES}, got {self.sparse_backend!r}"
            )
        if self.point_columns[:3] != ("x", "y", "z") or not set(self.point_columns) <= set(KNOWN_POINT_COLUMNS):
            raise ValueError(
                f"DetectorConfig.point_columns must start with x, y, z and use only {KNOWN_POINT_COLUMNS}, "
                f"got {self.point_columns}"
            )
        if self.max_voxels_train < 1 or self.max_voxels_test < 1 or self.max_points_per_voxel < 1:
            raise ValueError(
                "DetectorConfig.max_points_per_voxel, max_voxels_train and max_voxels_test must be >= 1, got "
                f"{self.max_points_per_voxel}, {self.max_voxels_train}, {self.max_voxels_test}"
            )
        z_extent = self.point_cloud_range[5] - self.point_cloud_range[2]
        if self.encoder == "pillar" and abs(self.voxel_size[2] - z_extent) > 1e-6:
            raise ValueError(
                f"DetectorConfig: a pillar's z size must span the z range ({z_extent} m), "
                f"got voxel_size {self.voxel_size}"
            )
        if self.encoder == "pillar" and not self.pillar_filters:
            raise ValueError("DetectorConfig.pillar_filters must name at least one layer width")
        if self.backbone_3d_width <= 0:
            raise ValueError(f"DetectorConfig.backbone_3d_width must be > 0, got {self.backbone_3d_width}")


@contextlib.contextmanager
def shared_voxel_structure() -> Iterator[None]:
    """Detectors run inside the block on the same point tensors and the same voxel grid voxelise once and
    build each sparse-convolution rulebook once (a teacher and its width-compressed student)."""
    with shared_voxelisation(), shared_rulebooks():
        yield


def channels_last_convolutions(model: nn.Module) -> nn.Module:
    """Lay ``model``'s 2D convolution weights out channels-last (NHWC), in place: oneDNN's CPU convolutions
    run fastest on it, and their outputs follow it. Sparse 3D weights keep their layout."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.to(memory_format=torch.channels_last)
    return model


class DetectorOutput(NamedTuple):
    # CenterHead: one TaskPrediction per class group; AnchorHead: one AnchorPrediction
    predictions: tuple[TaskPrediction, ...] | AnchorPrediction
    bev_features: Tensor  # (B, C, H, W) BEV neck output (backbone_2d), the map distillation taps


class Voxelization(nn.Module):
    """Raw point clouds -> :class:`VoxelBatch` on their device; ``max_voxels`` follows train/eval mode.
    A module (without parameters) so that hooks can tap it like any other stage."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        common = (config.voxel_size, config.point_cloud_range, config.max_points_per_voxel)
        self.train_voxelizer = Voxelizer(*common, max_voxels=config.max_voxels_train)
        self.test_voxelizer = Voxelizer(*common, max_voxels=config.max_voxels_test)
        self.grid_size = self.train_voxelizer.grid_size  # (nx, ny, nz)

    def forward(self, points: Sequence[Tensor]) -> VoxelBatch:
        voxelizer = self.train_voxelizer if self.training else self.test_voxelizer
        return voxelizer.voxelize_batch(points)


class Detector(nn.Module):
    """``forward(points)``: per-sample ``(N_i, len(config.point_columns))`` float32 points -> :class:`DetectorOutput`."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.voxel_size = config.voxel_size
        self.point_cloud_range = config.point_cloud_range
        self.voxelizer = Voxelization(config)
        grid_size = self.voxelizer.grid_size
        num_columns = len(config.point_columns)
        if config.encoder == "mean_vfe":
            self.encoder = MeanVFE(num_columns)
            self.backbone_3d = BACKBONE_3D_KINDS[config.backbone_3d](
                num_columns, grid_size, width=config.backbone_3d_width, backend=config.sparse_backend
            )
            bev_channels, bev_stride = self.backbone_3d.out_channels, self.backbone_3d.stride
        else:
            self.encoder = PillarVFE(num_columns, config.pillar_filters, config.voxel_size, config.point_cloud_range)
            self.scatter = PointPillarScatter(self.encoder.out_channels, grid_size)
            bev_channels, bev_stride = self.scatter.out_channels, 1  # one canvas cell per pillar
        self.backbone_2d = BEVBackbone(bev_channels, config.backbone_2d)
        #: Voxels (or pillars) per cell of the neck's output map along x and y.
        self.feature_stride = bev_stride * self.backbone_2d.stride
        classes = ClassTable(config.classes)
        if isinstance(config.head, AnchorHeadConfig):
            self.head = AnchorHead(self.backbone_2d.out_channels, classes, config.point_cloud_range, config.head)
        else:
            self.head = CenterHead(
                self.backbone_2d.out_channels, classes, config.point_cloud_range, config.voxel_size,
                self.feature_stride, config.head,
            )

    @property
    def classes(self) -> ClassTable:
        return self.head.classes

    def forward(self, points: Sequence[Tensor]) -> DetectorOutput:
        self._check_points(points)
        voxels = self.voxelizer(points)
        with shared_rulebooks():  # layers of one geometry on the same sites build one rulebook
            bev = self._bev_map(voxels).features  # (B, C_bev, ny / s, nx / s)
        neck = self.backbone_2d(bev).features  # (B, C_neck, H, W)
        return DetectorOutput(self.head(neck), neck)

    def _bev_map(self, voxels: VoxelBatch) -> BEVMap:
        if self.config.encoder == "mean_vfe":
            voxel_features = self.encoder(voxels.features, voxels.num_points)  # (V, C)
            return self.backbone_3d(voxel_features, voxels.coords, voxels.batch_size)
        pillar_features = self.encoder(voxels.features, voxels.num_points, voxels.coords)  # (V, C)
        return self.scatter(pillar_features, voxels.coords, voxels.batch_size)

    def _check_points(self, points: Sequence[Tensor]) -> None:
        columns = self.config.point_columns
        for sample, cloud in enumerate(points):
            if cloud.ndim != 2 or cloud.shape[1] != len(columns):
                raise ValueError(
                    f"Detector: sample {sample} has points of shape {tuple(cloud.shape)}; this detector "
                    f"reads (N, {len(columns)}) points with columns {columns}"
                )

    def loss(self, output: DetectorOutput, gt_boxes: Sequence[Tensor],
             gt_labels: Sequence[Tensor]) -> CenterLoss | AnchorLoss:
        """``gt_boxes[b]`` (M_b, 7|9) metric boxes, ``gt_labels[b]`` (M_b,) labels indexing ``classes``."""
        return self.head.loss(output.predictions, gt_boxes, gt_labels)

    def decode(self, output: DetectorOutput) -> list[Detections]:
        """Per-sample boxes in metres, scores and labels (no gradient)."""
        return self.head.decode(output.predictions)

    def decode_peaks(self, output: DetectorOutput, max_per_sample: int, score_threshold: float) -> list[Detections]:
        """Per-sample boxes at the head's class-agnostic score peaks, without NMS: distillation's cheap
        region proposals (no gradient)."""
        return self.head.decode_peaks(output.predictions, max_per_sample, score_threshold)


def detection_loss_terms(detector: nn.Module, output, batch: DetectionBatch) -> dict[str, Tensor]:
    """The detector's loss split into logged terms that sum to its total."""
    loss = detector.loss(output, batch.gt_boxes, batch.gt_labels)
    return {f"det/{name}": value for name, value in loss.terms().items()}
