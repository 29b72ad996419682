"""nuScenes info records: what a dataset needs of each keyframe, read once from the database.

A record (:class:`SampleInfo`) holds the keyframe's LiDAR file, its poses, its previous sweeps
(already as transforms into the keyframe's LiDAR frame) and its ground truth in that frame
(:class:`InfoBoxes`, the :class:`rdd3d.core.types.Boxes3D` convention). Files are JSON, optionally
gzip-compressed (``.json.gz``), never pickle; mmdetection3d's ``.pkl`` infos are read by
:mod:`rdd3d.data.nuscenes.mmdet3d` into the same records. The file format is in docs/data-nuscenes.md.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rdd3d.data.nuscenes.poses import check_pose
from rdd3d.core.fileio import atomic_open

INFO_FORMAT = "rdd3d.nuscenes_infos"
INFO_FORMAT_VERSION = 1
BOX_FORMAT = ("[x, y, z, dx, dy, dz, yaw] in the keyframe's LIDAR_TOP frame: box centre, dx length along "
              "the heading, dy width, dz height, yaw about +z from +x; velocity [vx, vy] m/s in the same frame")


class InfoFileError(ValueError):
    """An info file that cannot be read; the message names the file, the sample and the field."""


@dataclass(frozen=True)
class SweepInfo:
    """One earlier LiDAR sweep of a keyframe."""

    lidar_path: str  # relative to the dataroot
    sweep_to_key: np.ndarray  # (4, 4) float64: this sweep's LiDAR frame -> the keyframe's LiDAR frame
    time_lag: float  # seconds before the keyframe (>= 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sweep_to_key", check_pose(self.sweep_to_key, "sweep_to_key"))
        object.__setattr__(self, "time_lag", float(self.time_lag))
        if not (np.isfinite(self.time_lag) and self.time_lag >= 0):
            raise ValueError(f"time_lag must be a finite number of seconds >= 0, got {self.time_lag}")
        if not isinstance(self.lidar_path, str) or not self.lidar_path:
            raise ValueError(f"lidar_path must be a non-empty path relative to the dataroot, got {self.lidar_path!r}")


@dataclass(frozen=True)
class InfoBoxes:
    """Ground-truth boxes of one keyframe as columns (one row per annotation)."""

    boxes: np.ndarray  # (M, 7) float64 x y z dx dy dz yaw, keyframe LiDAR frame
    velocity: np.ndarray  # (M, 2) float64 vx vy, keyframe LiDAR frame; 0 where unknown
    velocity_valid: np.ndarray  # (M,) bool: False where the devkit had no estimate (NaN, stored as 0)
    names: tuple[str, ...]  # detection class; a dataset leaves out names not among its classes (e.g. "ignore")
    attributes: tuple[str, ...]  # nuScenes attribute name, "" for none or unknown
    num_lidar_pts: np.ndarray  # (M,) int64: LiDAR points inside the box (the annotation's count)
    num_radar_pts: np.ndarray  # (M,) int64

    def __post_init__(self) -> None:
        if not isinstance(self.names, (list, tuple)) or not isinstance(self.attributes, (list, tuple)):
            raise ValueError("names and attributes must be lists of strings, one per box")
        count = len(self.names)
        columns = {"boxes": (np.float64, (count, 7)), "velocity": (np.float64, (count, 2)),
                   "velocity_valid": (bool, (count,)), "num_lidar_pts": (np.int64, (count,)),
                   "num_radar_pts": (np.int64, (count,))}
        for name, (dtype, shape) in columns.items():
            try:
                value = np.asarray(getattr(self, name))
            except ValueError:
                raise ValueError(f"{name}: expected a rectangular array of numbers") from None
            if value.size == 0 and count == 0:
                value = np.zeros(shape, dtype)
            elif value.dtype.kind not in ("b" if dtype is bool else "iuf"):
                raise ValueError(f"{name}: expected {np.dtype(dtype).name} values, got {value.dtype}")
            if value.shape != shape:
                raise ValueError(f"{name}: expected shape {shape} for {count} boxes, got {value.shape}")
            object.__setattr__(self, name, value.astype(dtype))
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "attributes", tuple(self.attributes))
        if len(self.attributes) != count:
            raise ValueError(f"attributes: expected {count} entries, got {len(self.attributes)}")
        if not all(isinstance(n, str) for n in self.names + self.attributes):
            raise ValueError("names and attributes must be strings")
        for name in ("boxes", "velocity"):
            bad = np.flatnonzero(~np.isfinite(getattr(self, name)).all(axis=1))
            if bad.size:
                raise ValueError(f"{name}: box {bad[0]} holds NaN or infinity ({getattr(self, name)[bad[0]].tolist()})")
        bad = np.flatnonzero((self.boxes[:, 3:6] <= 0).any(axis=1))
        if bad.size:
            raise ValueError(f"boxes: box {bad[0]} has a non-positive size {self.boxes[bad[0], 3:6].tolist()}")
        if count and min(self.num_lidar_pts.min(), self.num_radar_pts.min()) < 0:
            raise ValueError("num_lidar_pts and num_radar_pts must be >= 0")

    @classmethod
    def empty(cls) -> "InfoBoxes":
        return cls(np.zeros((0, 7)), np.zeros((0, 2)), np.zeros(0, bool), (), (), np.zeros(0, np.int64),
                   np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class SampleInfo:
    """One nuScenes keyframe (sample): its LiDAR file, poses, previous sweeps and ground truth."""

    token: str  # the sample token (the submission's sample_token)
    lidar_path: str  # LIDAR_TOP keyframe file, relative to the dataroot
    timestamp: float  # seconds (the keyframe's LiDAR timestamp)
    lidar2ego: np.ndarray  # (4, 4) float64
    ego2global: np.ndarray  # (4, 4) float64, the ego pose at the LiDAR timestamp
    sweeps: tuple[SweepInfo, ...] = ()  # newest first
    gt: InfoBoxes = field(default_factory=InfoBoxes.empty)
    scene_name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token:
            raise ValueError(f"token must be a non-empty string, got {self.token!r}")
        if not isinstance(self.lidar_path, str) or not self.lidar_path:
            raise ValueError(f"lidar_path must be a non-empty path relative to the dataroot, got {self.lidar_path!r}")
        object.__setattr__(self, "timestamp", float(self.timestamp))
        object.__setattr__(self, "lidar2ego", check_pose(self.lidar2ego, "lidar2ego"))
        object.__setattr__(self, "ego2global", check_pose(self.ego2global, "ego2global"))
        object.__setattr__(self, "sweeps", tuple(self.sweeps))
        lags = [sweep.time_lag for sweep in self.sweeps]
        if lags != sorted(lags):
            raise ValueError(f"sweeps must be ordered newest first (time lags ascending), got {lags}")

    @property
    def lidar2global(self) -> np.ndarray:  # (4, 4)
        return self.ego2global @ self.lidar2ego


@dataclass(frozen=True)
class NuScenesInfos:
    """The records of one split, with where they came from."""

    samples: tuple[SampleInfo, ...]
    version: str = ""  # e.g. "v1.0-trainval"; "" when unknown
    split: str = ""  # e.g. "train", "mini_val"; "" when unknown
    source: str = ""  # the file they were read from


def write_infos(path: str | os.PathLike, infos: NuScenesInfos) -> Path:
    """Write ``infos`` as JSON, gzip-compressed when ``path`` ends in ``.gz``; atomically."""
    path = Path(path)
    payload = {
        "format": INFO_FORMAT, "format_version": INFO_FORMAT_VERSION, "version": infos.version,
        "split": infos.split, "box_format": BOX_FORMAT, "samples": [_sample_to_json(s) for s in infos.samples],
    }
    text = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    with atomic_open(path, "wb") as handle:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as compressed:
                compressed.write(text)
        else:
            handle.write(text)
    return path


def read_infos(path: str | os.PathLike) -> NuScenesInfos:
    """Read a file written by :func:`write_infos` (``.json`` or ``.json.gz``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nuScenes info file not found (build one with rdd3d.data.nuscenes.build_infos)")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise InfoFileError(f"{path}: cannot read ({error})") from None
    except json.JSONDecodeError as error:
        raise InfoFileError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(data, dict) or data.get("format") != INFO_FORMAT:
        raise InfoFileError(f"{path}: not an rdd3d nuScenes info file (expected top-level \"format\": "
                            f"\"{INFO_FORMAT}\")")
    if data.get("format_version") != INFO_FORMAT_VERSION:
        raise InfoFileError(f"{path}: format_version {data.get('format_version')!r} is not supported "
                            f"(this rdd3d reads version {INFO_FORMAT_VERSION}; rebuild the infos)")
    if not isinstance(data.get("samples"), list):
        raise InfoFileError(f"{path}: field 'samples' must be a list of sample records")
    samples = []
    for index, record in enumerate(data["samples"]):
        token = record.get("token") if isinstance(record, dict) else None
        try:
            samples.append(_sample_from_json(record))
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise InfoFileError(f"{path}: samples[{index}] (token {token!r}): {detail}") from None
    return NuScenesInfos(tuple(samples), str(data.get("version", "")), str(data.get("split", "")), str(path))


def load_infos(path: str | os.PathLike, data_prefix: Mapping[str, str] | None = None) -> NuScenesInfos:
    """Infos from our JSON (``.json``, ``.json.gz``) or an mmdetection3d v1.x ``.pkl`` (read with a
    restricted unpickler, its point files found under ``data_prefix``, see
    :func:`rdd3d.data.nuscenes.mmdet3d.read_mmdet3d_infos`). Our files store each point file's path
    relative to the dataroot, so a ``data_prefix`` given with one is an error."""
    if Path(path).suffix == ".pkl":
        from rdd3d.data.nuscenes.mmdet3d import read_mmdet3d_infos

        return read_mmdet3d_infos(path, data_prefix)
    if data_prefix:
        raise ValueError(f"{path}: data_prefix {dict(data_prefix)} applies to mmdetection3d .pkl info files only; "
                         "rdd3d's info files store each point file's path relative to the dataroot")
    return read_infos(path)


def _sample_to_json(sample: SampleInfo) -> dict[str, Any]:
    gt = sample.gt
    return {
        "token": sample.token, "scene_name": sample.scene_name, "timestamp": sample.timestamp,
        "lidar_path": sample.lidar_path, "lidar2ego": sample.lidar2ego.tolist(),
        "ego2global": sample.ego2global.tolist(),
        "sweeps": [{"lidar_path": s.lidar_path, "sweep_to_key": s.sweep_to_key.tolist(), "time_lag": s.time_lag}
                   for s in sample.sweeps],
        "boxes": gt.boxes.tolist(), "velocity": gt.velocity.tolist(), "velocity_valid": gt.velocity_valid.tolist(),
        "names": list(gt.names), "attributes": list(gt.attributes), "num_lidar_pts": gt.num_lidar_pts.tolist(),
        "num_radar_pts": gt.num_radar_pts.tolist(),
    }


def _sample_from_json(record: dict[str, Any]) -> SampleInfo:
    sweeps = []
    for index, sweep in enumerate(record["sweeps"]):
        try:
            sweeps.append(SweepInfo(sweep["lidar_path"], sweep["sweep_to_key"], sweep["time_lag"]))
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise ValueError(f"sweeps[{index}]: {detail}") from None
    gt = InfoBoxes(record["boxes"], record["velocity"], record["velocity_valid"], record["names"],
                   record["attributes"], record["num_lidar_pts"], record["num_radar_pts"])
    return SampleInfo(record["token"], record["lidar_path"], record["timestamp"], record["lidar2ego"],
                      record["ego2global"], tuple(sweeps), gt, record.get("scene_name", ""))
