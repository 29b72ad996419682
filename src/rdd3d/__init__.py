"""rdd3d: Representation Disparity-aware Distillation for LiDAR 3D object detection."""

__version__ = "0.1.0"
