"""Reading and writing raw point files (KITTI/nuScenes-style little-endian float32 ``.bin``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from rdd3d.core.types import PointCloud
from rdd3d.core.fileio import write_bytes

log = logging.getLogger(__name__)

OnBadFile = Literal["raise", "skip"]

#: Metres. No LiDAR returns points 100 km away; coordinates beyond that mean the file is misread.
MAX_COORDINATE = 1e5


class PointFileError(ValueError):
    """A point file that cannot be turned into a point cloud; the message names file and problem."""


def read_point_array(path: str | os.PathLike, num_columns: int, dtype=np.float32) -> np.ndarray:
    """Read an ``(N, num_columns)`` array from a raw binary file, validating it fully."""
    path = Path(path)
    if path.is_dir():
        raise PointFileError(f"{path}: is a directory, not a point file")
    if not path.is_file():
        raise PointFileError(f"{path}: point file not found")
    raw = np.fromfile(path, dtype=dtype)
    if raw.size == 0:
        raise PointFileError(f"{path}: point file is empty")
    if path.stat().st_size % (np.dtype(dtype).itemsize * num_columns):
        raise PointFileError(
            f"{path}: size {path.stat().st_size} bytes is not a multiple of "
            f"{num_columns} columns x {np.dtype(dtype).itemsize} bytes; wrong column count or a truncated file"
        )
    points = raw.reshape(-1, num_columns)
    finite = np.isfinite(points)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        count = int((~finite.all(axis=1)).sum())
        raise PointFileError(
            f"{path}: {count} point(s) hold NaN or Inf (first at point {row}, column {col})"
        )
    far = np.abs(points[:, :3]) > MAX_COORDINATE
    if far.any():
        row, col = np.argwhere(far)[0]
        raise PointFileError(
            f"{path}: {int(far.any(axis=1).sum())} point(s) lie beyond ±{MAX_COORDINATE:g} m (first at point {row}, "
            f"{'xyz'[col]} = {points[row, col]:g}): not metres of a LiDAR sweep; wrong column count or a damaged file"
        )
    return points.astype(np.float32, copy=False)


def read_points(
    path: str | os.PathLike,
    file_columns: int,
    columns: Sequence[str] = ("x", "y", "z", "intensity"),
    on_bad_file: OnBadFile = "raise",
) -> PointCloud | None:
    """Read a point file with ``file_columns`` float32 columns and keep the first ``len(columns)``.

    With ``on_bad_file="skip"`` a bad file is logged and ``None`` returned instead of raising.
    """
    if file_columns < len(columns):
        raise ValueError(f"{path}: asked for columns {tuple(columns)} from a file of {file_columns} columns")
    try:
        array = read_point_array(path, file_columns)
    except PointFileError as error:
        if on_bad_file == "skip":
            log.warning("skipping bad point file: %s", error)
            return None
        raise
    return PointCloud(array[:, : len(columns)], tuple(columns))


def write_points(path: str | os.PathLike, cloud: PointCloud) -> None:
    """Write the cloud as raw little-endian float32 rows, atomically."""
    write_bytes(path, np.ascontiguousarray(cloud.points, dtype="<f4").tobytes())
