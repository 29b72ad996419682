"""Datasets, the synthetic LiDAR world, transforms and voxelisation (the records they pass are in
:mod:`rdd3d.core.types`).

What a training loop of one's own needs: :class:`DetectionBatch` (the batch every detector and the
distiller read: ``points``, ``gt_boxes``, ``gt_labels``, ``frame_ids``, ``point_columns``, ``metadata``),
:func:`collate_frames`, :class:`TrainingFrames` (cropping and augmentation), point files
(:func:`read_points`, :func:`write_points`) and the synthetic world (:class:`SyntheticDataset`).
Datasets: :mod:`.synthetic`, :mod:`.nuscenes`, :mod:`.kitti`.
"""

from rdd3d.data.collate import DetectionBatch, TrainingFrames, collate_frames
from rdd3d.data.io import PointFileError, read_points, write_points
from rdd3d.data.synthetic import SyntheticDataset

__all__ = ["DetectionBatch", "PointFileError", "SyntheticDataset", "TrainingFrames", "collate_frames", "read_points",
           "write_points"]
