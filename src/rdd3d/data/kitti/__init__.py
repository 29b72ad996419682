"""The KITTI object detection benchmark: frames from the official layout, result files, KITTI AP.
See docs/data-kitti.md."""

from rdd3d.data.kitti.dataset import (
    DEFAULT_CLASSES, KITTI_TYPES, METADATA_KEYS, POINT_COLUMNS, UNLIMITED_CLASS_RANGE, KittiDataset, camera_fov_mask,
    read_image_set,
)
from rdd3d.data.kitti.predictions import (
    USUAL_IMAGE_SHAPE, evaluate_kitti_frames, kitti_detections, kitti_summary, write_kitti_results,
)

__all__ = [
    "DEFAULT_CLASSES", "KITTI_TYPES", "METADATA_KEYS", "POINT_COLUMNS", "UNLIMITED_CLASS_RANGE", "USUAL_IMAGE_SHAPE",
    "KittiDataset", "camera_fov_mask", "evaluate_kitti_frames", "kitti_detections", "kitti_summary",
    "read_image_set", "write_kitti_results",
]
