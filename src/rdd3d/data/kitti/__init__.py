"""The KITTI object detection benchmark: frames from the official layout and its files (labels, calibration,
difficulty: :mod:`.format`). KITTI result files and KITTI AP are in :mod:`rdd3d.evaluation.kitti_predictions`.
See docs/data-kitti.md."""

from rdd3d.data.kitti.dataset import (
    DEFAULT_CLASSES, KITTI_TYPES, METADATA_KEYS, POINT_COLUMNS, UNLIMITED_CLASS_RANGE, KittiDataset, camera_fov_mask,
    read_image_set,
)

__all__ = [
    "DEFAULT_CLASSES", "KITTI_TYPES", "METADATA_KEYS", "POINT_COLUMNS", "UNLIMITED_CLASS_RANGE", "KittiDataset",
    "camera_fov_mask", "read_image_set",
]
