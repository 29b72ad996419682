"""Read mmdetection3d v1.x nuScenes info files (``nuscenes_infos_*.pkl``) without trusting pickle.

A pickle can name any importable callable and have it called while loading (``os.system`` through
``__reduce__``): loading a downloaded ``.pkl`` with :func:`pickle.load` runs whatever it says.
mmdetection3d's infos hold only dicts, lists, strings, numbers and NumPy arrays and scalars, so
:class:`RestrictedUnpickler` resolves only the globals those need and refuses every other one,
naming the file and the global. The records are converted to :class:`SampleInfo` (the format is in
docs/data-nuscenes.md).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from rdd3d.data.nuscenes.infos import InfoBoxes, InfoFileError, NuScenesInfos, SampleInfo, SweepInfo
from rdd3d.data.nuscenes.poses import check_pose, invert_pose

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


def read_mmdet3d_infos(path: str | os.PathLike) -> NuScenesInfos:
    """An mmdetection3d v1.x nuScenes info ``.pkl`` -> :class:`NuScenesInfos`.

    Boxes of label -1 (categories outside the classes) are left out, as :func:`build_infos` does;
    velocity NaN becomes 0 with ``velocity_valid`` False; attributes are "" (v1.x LiDAR instances
    carry none). Old (v0.x) info files, with ``infos`` and ``metadata`` at the top, are refused:
    their box convention changed between mmdetection3d releases.
    """
    data = restricted_load(path)
    if isinstance(data, dict) and "infos" in data and "data_list" not in data:
        raise InfoFileError(f"{path}: an mmdetection3d v0.x info file ('infos'/'metadata'); convert it with "
                            "mmdetection3d's tools/dataset_converters/update_infos_to_v2.py or build rdd3d infos "
                            "from the dataroot (rdd3d.data.nuscenes.build_infos)")
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
            samples.append(_sample_from_mmdet3d(record, label_names))
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise InfoFileError(f"{path}: data_list[{index}] (token {token!r}): {detail}") from None
    return NuScenesInfos(tuple(samples), str(metainfo.get("version", "")), "", str(path))


def _relative_lidar_path(path: str, default_folder: str) -> str:
    """A path as mmdetection3d stored it -> relative to the dataroot: from its last ``samples`` or
    ``sweeps`` folder on (``./data/nuscenes/sweeps/LIDAR_TOP/x.bin`` -> ``sweeps/LIDAR_TOP/x.bin``);
    a bare file name is put in ``default_folder``."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] in ("samples", "sweeps"):
            return "/".join(parts[index:])
    return f"{default_folder}/{parts[-1]}" if len(parts) == 1 else "/".join(parts)


def _sample_from_mmdet3d(record: dict, label_names: dict[int, str]) -> SampleInfo:
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
        sweeps.append(SweepInfo(_relative_lidar_path(sweep_lidar["lidar_path"], "sweeps/LIDAR_TOP"),
                                global2key @ sweep2global, timestamp - float(sweep["timestamp"])))
    return SampleInfo(record["token"], _relative_lidar_path(lidar["lidar_path"], "samples/LIDAR_TOP"), timestamp,
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
