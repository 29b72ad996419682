"""Build info files from a nuScenes dataroot with the official devkit (imported lazily).

For every keyframe of every scene of a split (splits from ``nuscenes.utils.splits``), in scene order
then time order: the LIDAR_TOP file, its calibration and ego pose, up to ``max_sweeps`` earlier LiDAR
sweeps (following ``sample_data.prev``; keyframes of earlier samples count as sweeps too) and the
annotations in the keyframe's LiDAR frame. See docs/data-nuscenes.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from rdd3d.data.nuscenes.infos import InfoBoxes, NuScenesInfos, SampleInfo, SweepInfo, write_infos
from rdd3d.data.nuscenes.poses import invert_pose, pose_matrix, quaternion_matrix, transform_boxes

log = logging.getLogger(__name__)

OnMissing = Literal["error", "skip"]

#: The devkit's table files; NuScenes() reads all of them.
TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
          "scene", "sample", "sample_data", "sample_annotation", "map")
#: The predefined splits of each release (``nuscenes.utils.splits.create_splits_scenes``).
VERSION_SPLITS = {
    "v1.0-trainval": ("train", "val"),
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-test": ("test",),
}


@dataclass
class BuildReport:
    """What :func:`build_infos` wrote and what it left out."""

    files: dict[str, Path] = field(default_factory=dict)  # split -> info file
    samples: dict[str, int] = field(default_factory=dict)  # split -> samples written
    skipped_samples: int = 0  # keyframes whose LiDAR file is missing (on_missing="skip")
    skipped_sweeps: int = 0  # sweeps whose LiDAR file is missing (on_missing="skip")
    dropped_annotations: int = 0  # annotations of categories outside the 10 detection classes
    missing_examples: list[str] = field(default_factory=list)  # the first few missing files


def info_file_name(split: str, compress: bool = False) -> str:
    return f"nuscenes_infos_{split}.json" + (".gz" if compress else "")


def build_infos(dataroot: str | os.PathLike, version: str = "v1.0-trainval", out_dir: str | os.PathLike | None = None,
                max_sweeps: int = 10, on_missing: OnMissing = "error", compress: bool = False,
                verbose: bool = False) -> BuildReport:
    """Write ``<out_dir>/nuscenes_infos_<split>.json`` (``.json.gz`` with ``compress``) for every
    predefined split of ``version`` and return what was written.

    ``out_dir`` defaults to ``dataroot``. ``max_sweeps`` earlier sweeps are stored per keyframe
    (a dataset merges up to ``max_sweeps + 1`` sweeps, keyframe included). A missing table is an
    error naming it; a missing LiDAR file is an error naming it (``on_missing="error"``) or is left
    out and counted in the report and one warning (``"skip"``: a missing keyframe file drops its
    sample, a missing sweep file drops that sweep). A progress bar shows on a terminal; ``verbose``
    adds the devkit's loading messages.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    if version not in VERSION_SPLITS:
        raise ValueError(f"unknown nuScenes version {version!r}; known: {list(VERSION_SPLITS)}")
    dataroot = Path(dataroot)
    nusc = open_nuscenes(dataroot, version, verbose)
    from nuscenes.utils.splits import create_splits_scenes

    scene_names = create_splits_scenes()
    report = BuildReport()
    out_dir = Path(out_dir) if out_dir is not None else dataroot
    for split in VERSION_SPLITS[version]:
        wanted = set(scene_names[split])
        scenes = [scene for scene in nusc.scene if scene["name"] in wanted]
        samples = []
        for scene in tqdm(scenes, desc=f"nuScenes infos {split}", unit="scene", disable=None, leave=False):
            token = scene["first_sample_token"]
            while token:
                sample = nusc.get("sample", token)
                info = _sample_info(nusc, dataroot, sample, scene["name"], max_sweeps, on_missing, report)
                if info is not None:
                    samples.append(info)
                token = sample["next"]
        path = write_infos(out_dir / info_file_name(split, compress), NuScenesInfos(tuple(samples), version, split))
        report.files[split], report.samples[split] = path, len(samples)
    if report.skipped_samples or report.skipped_sweeps:
        log.warning("nuScenes %s: skipped %d keyframes and %d sweeps whose LiDAR file is missing (first: %s)",
                    version, report.skipped_samples, report.skipped_sweeps, ", ".join(report.missing_examples))
    return report


def open_nuscenes(dataroot: Path, version: str, verbose: bool = False):
    """The devkit's ``NuScenes`` for ``dataroot``/``version``, after checking every table file exists."""
    table_root = dataroot / version
    if not table_root.is_dir():
        raise FileNotFoundError(f"{dataroot}: no nuScenes table folder {version!r} (check dataroot and version)")
    missing = [name for name in TABLES if not (table_root / f"{name}.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{table_root}: nuScenes table {missing[0]}.json is missing "
                                f"(all of {', '.join(t + '.json' for t in TABLES)} are needed)")
    try:
        from nuscenes import NuScenes
    except ImportError as error:
        raise ImportError("building nuScenes infos needs nuscenes-devkit: pip install 'rdd3d[nuscenes]'") from error
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
    except AssertionError as error:  # the devkit asserts on missing map files and broken tables
        raise ValueError(f"{dataroot} ({version}): the nuScenes devkit refused the dataroot: {error}") from None


def _record_pose(record: dict) -> np.ndarray:
    return pose_matrix(record["translation"], record["rotation"])


def _sensor_poses(nusc, sample_data: dict) -> tuple[np.ndarray, np.ndarray]:
    """(lidar2ego, ego2global) of one sample_data record."""
    calibration = nusc.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
    ego = nusc.get("ego_pose", sample_data["ego_pose_token"])
    return _record_pose(calibration), _record_pose(ego)


def _sample_info(nusc, dataroot: Path, sample: dict, scene_name: str, max_sweeps: int, on_missing: OnMissing,
                 report: BuildReport) -> SampleInfo | None:
    if "LIDAR_TOP" not in sample["data"]:
        raise ValueError(f"{dataroot}: sample {sample['token']} has no LIDAR_TOP keyframe in sample_data")
    key = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    if not _file_present(dataroot, key, f"keyframe of sample {sample['token']}", on_missing, report):
        report.skipped_samples += 1
        return None
    lidar2ego, ego2global = _sensor_poses(nusc, key)
    global2key = invert_pose(ego2global @ lidar2ego)
    sweeps = []
    previous = key["prev"]
    while previous and len(sweeps) < max_sweeps:
        record = nusc.get("sample_data", previous)
        previous = record["prev"]
        if not _file_present(dataroot, record, f"sweep of sample {sample['token']}", on_missing, report):
            report.skipped_sweeps += 1
            continue
        sweep_lidar2ego, sweep_ego2global = _sensor_poses(nusc, record)
        sweeps.append(SweepInfo(record["filename"], global2key @ sweep_ego2global @ sweep_lidar2ego,
                                (key["timestamp"] - record["timestamp"]) / 1e6))
    return SampleInfo(sample["token"], key["filename"], key["timestamp"] / 1e6, lidar2ego, ego2global,
                      tuple(sweeps), _annotations(nusc, sample, global2key, report), scene_name)


def _file_present(dataroot: Path, record: dict, what: str, on_missing: OnMissing, report: BuildReport) -> bool:
    path = dataroot / record["filename"]
    if path.is_file():
        return True
    if on_missing == "error":
        raise FileNotFoundError(f"{path}: LiDAR file of the {what} is missing (on_missing='skip' leaves it out)")
    if len(report.missing_examples) < 3:
        report.missing_examples.append(str(path))
    return False


def _annotations(nusc, sample: dict, global2key: np.ndarray, report: BuildReport) -> InfoBoxes:
    """The sample's annotations of the 10 detection classes in the keyframe's LiDAR frame."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    records, names = [], []
    for token in sample["anns"]:
        record = nusc.get("sample_annotation", token)
        name = category_to_detection_name(record["category_name"])
        if name is None:
            report.dropped_annotations += 1
            continue
        records.append(record)
        names.append(name)
    if not records:
        return InfoBoxes.empty()
    attributes = []
    for record in records:
        if len(record["attribute_tokens"]) > 1:
            raise ValueError(f"sample_annotation {record['token']}: more than one attribute "
                             f"({len(record['attribute_tokens'])}); the detection task allows one")
        attributes.append(nusc.get("attribute", record["attribute_tokens"][0])["name"]
                          if record["attribute_tokens"] else "")
    rotations = quaternion_matrix([record["rotation"] for record in records])  # (M, 3, 3) box -> global
    global_velocity = np.array([nusc.box_velocity(record["token"])[:2] for record in records])  # (M, 2)
    valid = np.isfinite(global_velocity).all(axis=1)
    centres, yaws, velocity = transform_boxes(global2key, np.array([record["translation"] for record in records]),
                                              rotations[:, :, 0], np.where(valid[:, None], global_velocity, 0.0))
    wlh = np.array([record["size"] for record in records], dtype=np.float64)
    return InfoBoxes(
        boxes=np.concatenate([centres, wlh[:, [1, 0, 2]], yaws[:, None]], axis=1),  # nuScenes (w, l, h) -> dx dy dz
        velocity=velocity, velocity_valid=valid, names=tuple(names), attributes=tuple(attributes),
        num_lidar_pts=np.array([record["num_lidar_pts"] for record in records], dtype=np.int64),
        num_radar_pts=np.array([record["num_radar_pts"] for record in records], dtype=np.int64),
    )
