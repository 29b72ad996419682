"""Detection heads: CenterPoint's center head and SECOND/PointPillars' anchor head (predictions,
targets, losses and decoding)."""

from rdd3d.models.heads.anchor_head import (
    KITTI_ANCHORS,
    AnchorDecodeConfig,
    AnchorHead,
    AnchorHeadConfig,
    AnchorLoss,
    AnchorLossConfig,
    AnchorPrediction,
    anchor_loss,
    per_anchor,
    resolve_anchor_classes,
    sigmoid_focal_loss,
)
from rdd3d.models.heads.anchor_targets import (
    IGNORED,
    NEGATIVE,
    AnchorMatch,
    AnchorTargets,
    assign_anchor_targets,
    match_anchors,
)
from rdd3d.models.heads.anchors import AnchorClassConfig, anchor_grid, anchor_positions
from rdd3d.models.heads.box_coder import (
    apply_direction,
    decode_box_deltas,
    direction_bins,
    encode_box_deltas,
    limit_period,
)
from rdd3d.models.heads.center_head import CenterHead, CenterHeadConfig, TaskHead, resolve_class_groups
from rdd3d.models.heads.decode import DecodeConfig, NMSConfig, decode_detections
from rdd3d.models.heads.losses import CenterLoss, LossConfig, center_loss, clamped_sigmoid, focal_loss, masked_l1
from rdd3d.core.types import Detections
from rdd3d.models.heads.prediction import TaskPrediction, gather_cells
from rdd3d.models.heads.targets import (
    BEVGrid,
    BoxCells,
    TargetConfig,
    TaskTargets,
    assign_targets,
    box_cells,
    box_code_names,
    decode_boxes,
    draw_gaussians,
    encode_boxes,
    gaussian_radius,
)

__all__ = [
    "IGNORED", "KITTI_ANCHORS", "NEGATIVE", "AnchorClassConfig", "AnchorDecodeConfig", "AnchorHead",
    "AnchorHeadConfig", "AnchorLoss", "AnchorLossConfig", "AnchorMatch", "AnchorPrediction", "AnchorTargets",
    "anchor_grid", "anchor_loss", "anchor_positions", "apply_direction", "assign_anchor_targets",
    "decode_box_deltas", "direction_bins", "encode_box_deltas", "limit_period", "match_anchors", "per_anchor",
    "resolve_anchor_classes", "sigmoid_focal_loss",
    "BEVGrid", "BoxCells", "CenterHead", "CenterHeadConfig", "CenterLoss", "DecodeConfig", "Detections",
    "LossConfig", "NMSConfig", "TargetConfig", "TaskHead", "TaskPrediction", "TaskTargets", "assign_targets",
    "box_cells", "box_code_names", "center_loss", "clamped_sigmoid", "decode_boxes", "decode_detections",
    "draw_gaussians", "encode_boxes", "focal_loss", "gather_cells", "gaussian_radius", "masked_l1",
    "resolve_class_groups",
]
