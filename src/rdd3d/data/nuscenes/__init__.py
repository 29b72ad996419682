"""nuScenes: info files built with the devkit (or read from mmdetection3d's .pkl through a restricted
unpickler), multi-sweep frames with CBGS, the detection classes and their ranges. The submission export is
:mod:`rdd3d.evaluation.nuscenes_export`. See docs/data-nuscenes.md.

The devkit (``pip install 'rdd3d[nuscenes]'``) is imported only by :func:`build_infos`."""

from rdd3d.data.nuscenes.build import TABLES, VERSION_SPLITS, BuildReport, build_infos, info_file_name
from rdd3d.data.nuscenes.classes import DETECTION_RANGES, NUSCENES_CLASSES
from rdd3d.data.nuscenes.dataset import (
    DEFAULT_CLASSES, EGO_RADIUS, METADATA_KEYS, POINT_COLUMNS, LidarPose, NuScenesDataset, cbgs_indices,
)
from rdd3d.data.nuscenes.infos import (
    InfoBoxes, InfoFileError, NuScenesInfos, SampleInfo, SweepInfo, load_infos, read_infos, write_infos,
)
from rdd3d.data.nuscenes.mmdet3d import RestrictedUnpickler, UnsafePickleError, read_mmdet3d_infos, restricted_load

__all__ = [
    "DEFAULT_CLASSES", "DETECTION_RANGES", "EGO_RADIUS", "METADATA_KEYS", "NUSCENES_CLASSES", "POINT_COLUMNS",
    "TABLES", "VERSION_SPLITS", "BuildReport", "InfoBoxes", "InfoFileError", "LidarPose", "NuScenesDataset",
    "NuScenesInfos", "RestrictedUnpickler", "SampleInfo", "SweepInfo", "UnsafePickleError", "build_infos",
    "cbgs_indices", "info_file_name", "load_infos", "read_infos", "read_mmdet3d_infos", "restricted_load",
    "write_infos",
]
