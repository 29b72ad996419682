"""The built-in synthetic LiDAR world: scenes of labelled objects and look-alike clutter on rolling
ground, seen by a vectorised spinning-LiDAR ray caster. See docs/synthetic-world.md."""

from rdd3d.data.synthetic.catalog import CLASS_NAMES, CLASS_SPECS, DISTRACTORS, build_distractor, build_object
from rdd3d.data.synthetic.config import LidarConfig, WorldConfig
from rdd3d.data.synthetic.dataset import CLASS_RANGES, SPLITS, SyntheticDataset, frame_from_scan
from rdd3d.data.synthetic.disk import DatasetFormatError, DiskDataset, simulate, write_dataset
from rdd3d.data.synthetic.ground import Ground
from rdd3d.data.synthetic.lidar import GROUND, POINT_COLUMNS, Scan, scan
from rdd3d.data.synthetic.scene import Actor, Scene, sample_scene

__all__ = [
    "CLASS_NAMES", "CLASS_RANGES", "CLASS_SPECS", "DISTRACTORS", "GROUND", "POINT_COLUMNS", "SPLITS",
    "Actor", "DatasetFormatError", "DiskDataset", "Ground", "LidarConfig", "Scan", "Scene",
    "SyntheticDataset", "WorldConfig",
    "build_distractor", "build_object", "frame_from_scan", "sample_scene", "scan", "simulate", "write_dataset",
]
