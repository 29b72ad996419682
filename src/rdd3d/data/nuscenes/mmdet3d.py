"""Read mmdetection3d v1.x nuScenes info files (``nuscenes_infos_*.pkl``) without trusting pickle.

A pickle can name any importable callable and have it called while loading (``os.system`` through
``__reduce__``): loading a downloaded ``.pkl`` with :func:`pickle.load` runs whatever it says.
mmdetection3d's infos hold only dicts, lists, strings, numbers and NumPy arrays and scalars, so
:class:`RestrictedUnpickler` resolves only the globals those need and refuses every other one,
naming the file and the global. The records are converted to :class:`SampleInfo` (the format is in
docs/data-nuscenes.md), their boxes into the 1.x convention whichever of mmdetection3d's two conventions
they hold (:mod:`rdd3d.data.nuscenes.box_convention`); info files of its other datasets are refused by name.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from rdd3d.data.nuscenes.box_convention import (
    AMBIGUOUS, PRE_V1, V1, convention_evidence, from_pre_v1,
)
from rdd3d.data.nuscenes.infos import InfoBoxes, InfoFileError, NuScenesInfos, SampleInfo, SweepInfo
from rdd3d.data.nuscenes.poses import check_pose, invert_pose

log = logging.getLogger(__name__)

#: The globals a pickle of plain containers and NumPy arrays/scalars needs (NumPy 1.x and 2.x
#: module names; ``_codecs.encode`` is how protocol 2, mmengine's default, stores bytes).
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("collections", "OrderedDict"),
})
#: mmdetection3d's nuScenes label order, used when a file's metainfo has no ``categories``.
MMDET3D_CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian",
                   "traffic_cone", "barrier")
#: Where mmdetection3d's NuScenesDataset looks for LiDAR files (its default ``data_prefix`` and that of its
#: nuScenes configs), relative to its ``data_root``: ``pts`` for keyframes, ``sweeps`` for sweeps.
MMDET3D_DATA_PREFIX = {"pts": "samples/LIDAR_TOP", "sweeps": "sweeps/LIDAR_TOP"}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`ALLOWED_GLOBALS`."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and NumPy arrays/scalars."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refused to load the global {module}.{name}; info files are read with a restricted "
                "unpickler that builds only dicts, lists, numbers, strings and NumPy arrays (a pickle naming other "
                "globals can run code)"
            )
        return super().find_class(module, name)


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: info file not found")
    with open(path, "rb") as handle:
        try:
            return RestrictedUnpickler(handle, str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise InfoFileError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None


def read_mmdet3d_infos(path: str | os.PathLike, data_prefix: Mapping[str, str] | None = None) -> NuScenesInfos:
    """An mmdetection3d v1.x nuScenes info ``.pkl`` -> :class:`NuScenesInfos`.

    Point files are found as mmdetection3d finds them (:func:`lidar_file`) under ``data_prefix``
    (:data:`MMDET3D_DATA_PREFIX` where a key is not given); the records' paths are relative to the
    dataroot. Boxes are returned in the 1.x convention: a file whose boxes are in the pre-1.0 one is
    converted, one whose boxes do not tell is refused (:func:`in_v1_convention`). Boxes of label -1
    (categories outside the classes) are left out, as :func:`build_infos` does; velocity NaN becomes 0
    with ``velocity_valid`` False; attributes are "" (v1.x LiDAR instances carry none). Old (v0.x)
    nuScenes info files (``infos`` and ``metadata`` at the top) and info files of mmdetection3d's
    other datasets (KITTI's first) are refused with a message saying what they are.
    """
    prefix = checked_data_prefix(data_prefix)
    data = restricted_load(path)
    _refuse_other_datasets(path, data)
    if isinstance(data, dict) and "infos" in data and "data_list" not in data:
        raise InfoFileError(f"{path}: an mmdetection3d v0.x info file ('infos'/'metadata'); convert it with "
                            "mmdetection3d's tools/dataset_converters/update_infos_to_v2.py (rdd3d then tells its "
                            "box convention from the boxes) or build rdd3d infos from the dataroot "
                            "(rdd3d.data.nuscenes.build_infos)")
    if not isinstance(data, dict) or not isinstance(data.get("data_list"), list):
        raise InfoFileError(f"{path}: expected an mmdetection3d v1.x info file (a dict with 'metainfo' and "
                            "'data_list')")
    metainfo = data.get("metainfo") or {}
    categories = metainfo.get("categories") or {name: label for label, name in enumerate(MMDET3D_CLASSES)}
    label_names = {int(label): name for name, label in categories.items() if int(label) >= 0}
    samples = []
    for index, record in enumerate(data["data_list"]):
        token = record.get("token") if isinstance(record, dict) else None
        try:
            samples.append(_sample_from_mmdet3d(record, label_names, prefix))
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise InfoFileError(f"{path}: data_list[{index}] (token {token!r}): {detail}") from None
    return NuScenesInfos(in_v1_convention(path, tuple(samples)), str(metainfo.get("version", "")), "", str(path))


def checked_data_prefix(data_prefix: Mapping[str, str] | None) -> dict[str, str]:
    """``data_prefix`` over :data:`MMDET3D_DATA_PREFIX`; a key other than ``pts`` and ``sweeps`` (what
    LiDAR files need) or a value other than a string is an error."""
    given = dict(data_prefix or {})
    unknown = sorted(set(given) - set(MMDET3D_DATA_PREFIX))
    if unknown:
        raise ValueError(f"data_prefix: unknown keys {unknown}; LiDAR files need only 'pts' (keyframes) and "
                         "'sweeps' (folders relative to the dataroot, or absolute)")
    for key, folder in given.items():
        if not isinstance(folder, str):
            raise ValueError(f"data_prefix.{key}: expected a folder (a string, '' for the dataroot itself), "
                             f"got {folder!r}")
    return {**MMDET3D_DATA_PREFIX, **given}


def lidar_file(stored: str, folder: str) -> str:
    """Where mmdetection3d 1.x reads a LiDAR file: the file name of the path the info file stores, in
    ``folder`` (a ``data_prefix`` entry, relative to the dataroot unless absolute). Its converter stores
    keyframes as bare file names and sweeps as the converting machine's paths
    (``./data/nuscenes/sweeps/LIDAR_TOP/<name>``): only the name is kept of either."""
    name = _stored_path(stored).name
    return str(PurePosixPath(folder) / name) if folder else name


def _stored_path(stored: str) -> PurePosixPath:
    """A path as an info file stores it (written on Linux or Windows)."""
    return PurePosixPath(str(stored).replace("\\", "/"))


def in_v1_convention(path: str | os.PathLike, samples: tuple[SampleInfo, ...]) -> tuple[SampleInfo, ...]:
    """``samples`` with their boxes in mmdetection3d's 1.x convention, told from the boxes themselves
    (:class:`~rdd3d.data.nuscenes.box_convention.ConventionEvidence`): unchanged when they are in it,
    converted (with a warning) when they are in the pre-1.0 one; an :class:`InfoFileError` with the counts
    when the evidence is split or there is none. A file without boxes (a test split) is returned as is."""
    annotated = [sample.gt for sample in samples if len(sample.gt)]
    if not annotated:
        return samples
    evidence = convention_evidence(np.concatenate([gt.boxes for gt in annotated]),
                                   [name for gt in annotated for name in gt.names],
                                   np.concatenate([gt.velocity for gt in annotated]),
                                   np.concatenate([gt.velocity_valid for gt in annotated]))
    verdict = evidence.verdict()
    if verdict == V1:
        return samples
    if verdict == PRE_V1:
        log.warning("%s: boxes in mmdetection3d's pre-1.0 convention [x, y, z, w, l, h, -yaw - pi/2] (as "
                    "update_infos_to_v2.py keeps them), converted to [x, y, z, l, w, h, yaw]; %s", path,
                    evidence.describe())
        return tuple(replace(sample, gt=replace(sample.gt, boxes=from_pre_v1(sample.gt.boxes))) if len(sample.gt)
                     else sample for sample in samples)
    found = "the evidence disagrees" if verdict == AMBIGUOUS else "no box shows it"
    raise InfoFileError(
        f"{path}: cannot tell which of mmdetection3d's nuScenes box conventions the boxes follow, {found} "
        f"({evidence.describe()}). mmdetection3d writes [x, y, z, l, w, h, yaw] since v1.0 and wrote "
        "[x, y, z, w, l, h, -yaw - pi/2] before; update_infos_to_v2.py keeps old boxes in the new layout. "
        "Build rdd3d infos from the dataroot instead (`rdd3d nuscenes-infos`)")


def _refuse_other_datasets(path: str | os.PathLike, data: Any) -> None:
    """mmdetection3d writes the info files of all its datasets in one layout: name what another one's is."""
    records, dataset, layout = [], None, "v1.x"
    if isinstance(data, list):  # v0.x KITTI infos: a list of frames with 'image', 'point_cloud', 'calib'
        records, layout = data, "v0.x"
        if records and isinstance(records[0], dict) and {"image", "point_cloud", "calib"} <= set(records[0]):
            dataset = "kitti"
    elif isinstance(data, dict) and isinstance(data.get("data_list"), list):
        records = data["data_list"]
        metainfo = data.get("metainfo") if isinstance(data.get("metainfo"), dict) else {}
        dataset = metainfo.get("dataset")
        lidar = records[0].get("lidar_points") if records and isinstance(records[0], dict) else None
        if dataset is None and isinstance(lidar, dict) and "Tr_velo_to_cam" in lidar:  # KITTI's calibration
            dataset = "kitti"
    if dataset == "kitti":
        ids = ", ".join(_kitti_frame_id(record) for record in records[:3] if isinstance(record, dict))
        count = "1 frame" if len(records) == 1 else f"{len(records)} frames"
        raise InfoFileError(
            f"{path}: an mmdetection3d {layout} KITTI info file ({count}, the first {ids}), not "
            "nuScenes infos. rdd3d reads KITTI from the benchmark's own folders, not from info files: set "
            "data.dataset=kitti and data.root to the folder holding training/{velodyne,calib,label_2,image_2} and "
            "ImageSets/<split>.txt (rdd3d.data.kitti.KittiDataset, docs/data-kitti.md); this file's frame ids, one "
            "a line, make its ImageSets/<split>.txt")
    if dataset is not None and dataset != "nuscenes":
        raise InfoFileError(f"{path}: an mmdetection3d info file of dataset {dataset!r} (metainfo.dataset); rdd3d "
                            "reads nuScenes info files here (KITTI from its folders: docs/data-kitti.md)")


def _kitti_frame_id(record: dict) -> str:
    """A KITTI frame id (``000008``) from a v1.x record's ``sample_idx`` or a v0.x one's ``image.image_idx``."""
    image = record.get("image") if isinstance(record.get("image"), dict) else {}
    index = record.get("sample_idx", image.get("image_idx"))
    return f"{int(index):06d}" if isinstance(index, (int, np.integer)) else repr(index)


def _sample_from_mmdet3d(record: dict, label_names: dict[int, str], prefix: Mapping[str, str]) -> SampleInfo:
    lidar = record["lidar_points"]
    lidar2ego = check_pose(lidar["lidar2ego"], "lidar_points.lidar2ego")
    ego2global = check_pose(record["ego2global"], "ego2global")
    global2key = invert_pose(ego2global @ lidar2ego)
    timestamp = float(record["timestamp"])
    sweeps = []
    for index, sweep in enumerate(record.get("lidar_sweeps", [])):
        where = f"lidar_sweeps[{index}]"
        sweep_lidar = sweep["lidar_points"]
        sweep2global = check_pose(sweep["ego2global"], f"{where}.ego2global") @ check_pose(
            sweep_lidar["lidar2ego"], f"{where}.lidar_points.lidar2ego")
        stored = sweep_lidar["lidar_path"]
        # mmdetection3d reads a sweep that is an earlier keyframe (stored under samples/) from data_prefix.pts
        folder = prefix["pts"] if "samples" in _stored_path(stored).parts else prefix["sweeps"]
        sweeps.append(SweepInfo(lidar_file(stored, folder), global2key @ sweep2global,
                                timestamp - float(sweep["timestamp"])))
    return SampleInfo(record["token"], lidar_file(lidar["lidar_path"], prefix["pts"]), timestamp,
                      lidar2ego, ego2global, tuple(sweeps), _instances(record.get("instances", []), label_names))


def _instances(instances: list, label_names: dict[int, str]) -> InfoBoxes:
    """mmdetection3d v1.x ``instances``: ``bbox_3d`` = [x, y, z, l, w, h, yaw] (gravity centre, LiDAR
    frame), ``bbox_label_3d``, ``velocity`` [vx, vy], ``num_lidar_pts``, ``num_radar_pts``."""
    kept = [item for item in instances if int(item["bbox_label_3d"]) in label_names]
    if not kept:
        return InfoBoxes.empty()
    boxes = np.array([np.asarray(item["bbox_3d"], dtype=np.float64)[:7] for item in kept])
    velocity = np.array([np.asarray(item.get("velocity", (np.nan, np.nan)), dtype=np.float64) for item in kept])
    valid = np.isfinite(velocity).all(axis=1)
    return InfoBoxes(
        boxes=boxes, velocity=np.where(valid[:, None], velocity, 0.0), velocity_valid=valid,
        names=tuple(label_names[int(item["bbox_label_3d"])] for item in kept), attributes=("",) * len(kept),
        num_lidar_pts=np.array([int(item["num_lidar_pts"]) for item in kept], dtype=np.int64),
        num_radar_pts=np.array([int(item["num_radar_pts"]) for item in kept], dtype=np.int64),
    )
