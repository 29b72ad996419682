"""CenterPoint head: predictions, targets, losses and decoding."""

from rdd3d.models.heads.center_head import CenterHead, CenterHeadConfig, TaskHead, resolve_class_groups
from rdd3d.models.heads.decode import DecodeConfig, NMSConfig, decode_detections
from rdd3d.models.heads.losses import CenterLoss, LossConfig, center_loss, clamped_sigmoid, focal_loss, masked_l1
from rdd3d.models.heads.prediction import Detections, TaskPrediction, gather_cells
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
    "BEVGrid", "BoxCells", "CenterHead", "CenterHeadConfig", "CenterLoss", "DecodeConfig", "Detections",
    "LossConfig", "NMSConfig", "TargetConfig", "TaskHead", "TaskPrediction", "TaskTargets", "assign_targets",
    "box_cells", "box_code_names", "center_loss", "clamped_sigmoid", "decode_boxes", "decode_detections",
    "draw_gaussians", "encode_boxes", "focal_loss", "gather_cells", "gaussian_radius", "masked_l1",
    "resolve_class_groups",
]
