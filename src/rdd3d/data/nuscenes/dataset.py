"""nuScenes keyframes as :class:`Frame`s: the keyframe and its earlier sweeps merged, boxes with velocity.

Points: the keyframe's LIDAR_TOP points and those of up to ``max_sweeps - 1`` earlier sweeps (the
newest first, as CenterPoint reads them), each sweep moved into the keyframe's LiDAR frame; columns
x, y, z, intensity (0-255, as stored), time_lag (seconds before the keyframe, 0 for its own points).
A sweep's points within 1 m of its sensor in x and y are dropped first (CenterPoint's
``remove_close``: returns from the ego vehicle's own roof, which would smear across the merged
cloud as the car moves); the keyframe keeps all its points. See docs/data-nuscenes.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rdd3d.data.io import read_point_array
from rdd3d.data.nuscenes.classes import DETECTION_RANGES
from rdd3d.data.nuscenes.infos import SampleInfo, load_infos
from rdd3d.data.nuscenes.poses import transform_points
from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud

#: The 10 detection classes in OpenPCDet's CenterPoint label order, which the nuScenes detector presets
#: use too (``rdd3d.models.presets.NUSCENES.classes``).
DEFAULT_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                   "pedestrian", "traffic_cone")
POINT_COLUMNS = ("x", "y", "z", "intensity", "time_lag")
#: nuScenes LIDAR_TOP .pcd.bin files: float32 rows of these columns (the ring index is not used).
POINT_FILE_COLUMNS = ("x", "y", "z", "intensity", "ring")
EGO_RADIUS = 1.0  # metres: sweep points with |x| and |y| below this are the ego vehicle's
#: Frame.metadata keys this dataset sets (per-box arrays follow the boxes through Frame.select_boxes).
METADATA_KEYS = (
    "sample_token",  # str, also the frame id
    "timestamp",  # float seconds
    "pose",  # LidarPose: lidar2ego and ego2global, what rdd3d.evaluation.nuscenes_export needs
    "num_points",  # (M,) int64 num_lidar_pts + num_radar_pts: the devkit evaluation's num_pts
    "num_lidar_pts",  # (M,) int64
    "num_radar_pts",  # (M,) int64
    "velocity_valid",  # (M,) bool: False where the annotation had no velocity (stored as 0)
    "attributes",  # (M,) object array of nuScenes attribute names ("" for none)
)


@dataclass(frozen=True)
class LidarPose:
    """Where a keyframe's LiDAR was: its calibration and the ego pose (each (4, 4) float64)."""

    lidar2ego: np.ndarray
    ego2global: np.ndarray

    @property
    def lidar2global(self) -> np.ndarray:
        return self.ego2global @ self.lidar2ego


def cbgs_indices(sample_names: Sequence[Sequence[str]], classes: Sequence[str],
                 rng: np.random.Generator) -> np.ndarray:
    """Class-balanced grouping and sampling (CBGS, Zhu et al. 2019, as CenterPoint trains nuScenes).

    Each sample counts once for every class it holds a box of; with ``D`` such (sample, class)
    pairs over the ``K`` classes that occur, every class draws ``D // K`` samples, with replacement,
    from the samples holding it. Rare classes' samples repeat, frequent ones' are thinned, and each
    class's share of the draws is ``1 / K``. Returns the sample indices, class after class.
    """
    holders = [[i for i, names in enumerate(sample_names) if name in names] for name in classes]
    holders = [indices for indices in holders if indices]
    if not holders:
        return np.arange(len(sample_names), dtype=np.int64)
    draws = sum(len(indices) for indices in holders) // len(holders)
    return np.concatenate([rng.choice(np.array(indices), size=draws, replace=True) for indices in holders]).astype(
        np.int64)


class NuScenesDataset:
    """Frames of one nuScenes info file (ours, or mmdetection3d's ``.pkl``).

    ``max_sweeps`` LiDAR sweeps are merged per frame, keyframe included (CenterPoint's 10).
    ``data_prefix`` (mmdetection3d ``.pkl`` infos only) says where their point files lie, as
    mmdetection3d's dataset option of that name does (``pts``, ``sweeps``; relative to ``dataroot``).
    ``load_interval`` keeps every k-th sample; ``use_cbgs`` then replaces the sample order by
    :func:`cbgs_indices` (seeded by ``cbgs_seed``). Boxes of names outside ``classes`` are left
    out; so are boxes without LiDAR points when ``drop_empty_boxes`` (training targets; keep them
    for validation frames, which the devkit scores by ``num_points`` = LiDAR + radar points).
    """

    evaluation = "nuscenes"  # the metric that applies (devkit-identical mAP/NDS)

    def __init__(self, info_file: str | os.PathLike, dataroot: str | os.PathLike, max_sweeps: int = 10,
                 use_cbgs: bool = False, classes: Sequence[str] = DEFAULT_CLASSES, load_interval: int = 1, *,
                 drop_empty_boxes: bool = True, cbgs_seed: int = 0,
                 data_prefix: Mapping[str, str] | None = None) -> None:
        if max_sweeps < 1:
            raise ValueError(f"max_sweeps counts the keyframe too and must be >= 1, got {max_sweeps}")
        if load_interval < 1:
            raise ValueError(f"load_interval must be >= 1, got {load_interval}")
        unknown = [name for name in classes if name not in DETECTION_RANGES]
        if unknown or not classes:
            raise ValueError(f"NuScenesDataset classes must be nuScenes detection classes {list(DETECTION_RANGES)}, "
                             f"got {list(classes)}")
        self.info_file, self.dataroot = Path(info_file), Path(dataroot)
        self.max_sweeps, self.drop_empty_boxes = max_sweeps, drop_empty_boxes
        if not self.dataroot.is_dir():
            raise FileNotFoundError(f"{self.dataroot}: nuScenes dataroot not found")
        self.classes = ClassTable(tuple(classes))
        self.class_ranges = {name: float(DETECTION_RANGES[name]) for name in self.classes.names}
        infos = load_infos(info_file, data_prefix)
        self.version, self.split = infos.version, infos.split
        self.infos: tuple[SampleInfo, ...] = infos.samples[::load_interval]
        if use_cbgs:
            names = [np.asarray(info.gt.names)[self._target_mask(info)] for info in self.infos]
            self.indices = cbgs_indices([set(n.tolist()) for n in names], self.classes.names,
                                        np.random.default_rng(cbgs_seed))
        else:
            self.indices = np.arange(len(self.infos), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Frame:
        return self.frame(self.infos[self.indices[index]])

    def _target_mask(self, info: SampleInfo) -> np.ndarray:  # (M,) bool: boxes that become targets
        keep = np.isin(np.asarray(info.gt.names, dtype=object), self.classes.names)
        if self.drop_empty_boxes:
            keep &= info.gt.num_lidar_pts > 0
        return keep

    def points(self, info: SampleInfo) -> PointCloud:
        """The keyframe's points and its sweeps', in the keyframe's LiDAR frame (module docstring)."""
        key = read_point_array(self.dataroot / info.lidar_path, len(POINT_FILE_COLUMNS),
                               columns=POINT_FILE_COLUMNS)[:, :4]
        clouds = [np.concatenate([key, np.zeros((len(key), 1), np.float32)], axis=1)]
        for sweep in info.sweeps[:self.max_sweeps - 1]:
            points = read_point_array(self.dataroot / sweep.lidar_path, len(POINT_FILE_COLUMNS),
                                      columns=POINT_FILE_COLUMNS)[:, :4]
            points = points[~((np.abs(points[:, 0]) < EGO_RADIUS) & (np.abs(points[:, 1]) < EGO_RADIUS))]
            points[:, :3] = transform_points(sweep.sweep_to_key, points[:, :3])
            clouds.append(np.concatenate([points, np.full((len(points), 1), sweep.time_lag, np.float32)], axis=1))
        return PointCloud(np.concatenate(clouds), POINT_COLUMNS)

    def frame(self, info: SampleInfo) -> Frame:
        gt = info.gt
        keep = self._target_mask(info)
        boxes = Boxes3D(np.concatenate([gt.boxes, gt.velocity], axis=1)[keep])
        labels = self.classes.indices([gt.names[i] for i in np.flatnonzero(keep)], source=f"sample {info.token}")
        metadata = {
            "sample_token": info.token, "timestamp": info.timestamp, "pose": LidarPose(info.lidar2ego, info.ego2global),
            "num_points": (gt.num_lidar_pts + gt.num_radar_pts)[keep], "num_lidar_pts": gt.num_lidar_pts[keep],
            "num_radar_pts": gt.num_radar_pts[keep], "velocity_valid": gt.velocity_valid[keep],
            "attributes": np.array(gt.attributes, dtype=object)[keep],
        }
        return Frame(info.token, self.points(info), boxes, labels, self.classes, metadata)
