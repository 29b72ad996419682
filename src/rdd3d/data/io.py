"""Reading and writing raw point files (KITTI/nuScenes-style little-endian float32 ``.bin``).

A raw file does not say how many columns its rows have. Read with the wrong count, its values are read
across rows without a word whenever the byte count happens to divide (a 5-column nuScenes file of 4k
points divides into 4 columns too). So reading checks what it can: the count against the layout a file's
name tells (:func:`known_format`), then the values of the columns it is told the names of against what
such a column can hold (coordinates within :data:`MAX_COORDINATE`, :data:`NON_NEGATIVE_COLUMNS`), and its
error names the column counts under which the values would be plausible.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from rdd3d.core.types import PointCloud
from rdd3d.core.fileio import write_bytes

log = logging.getLogger(__name__)

OnBadFile = Literal["raise", "skip"]

#: Metres. No LiDAR returns points 100 km away; coordinates beyond that mean the file is misread.
MAX_COORDINATE = 1e5
#: Columns no LiDAR file fills with negative values (an intensity, a ring index, a time lag); negative ones
#: mean rows read across each other. A ring index is a whole number too.
NON_NEGATIVE_COLUMNS = ("intensity", "reflectance", "ring", "time_lag")
WHOLE_NUMBER_COLUMNS = ("ring",)


class PointFileError(ValueError):
    """A point file that cannot be turned into a point cloud; the message names file and problem."""


@dataclass(frozen=True)
class PointFileFormat:
    """A kind of point file whose name tells its layout."""

    description: str  # what such a file is, for messages
    columns: tuple[str, ...]  # its float32 columns


NUSCENES_LIDAR = PointFileFormat("a nuScenes LiDAR file (*.pcd.bin)", ("x", "y", "z", "intensity", "ring"))
KITTI_VELODYNE = PointFileFormat("a KITTI velodyne scan (velodyne/*.bin)", ("x", "y", "z", "reflectance"))


def known_format(path: Path) -> PointFileFormat | None:
    """The layout ``path``'s name tells: nuScenes names its LiDAR files ``*.pcd.bin``, KITTI keeps its
    scans in ``velodyne/`` (``velodyne_reduced/`` once cropped to the camera's view); None otherwise."""
    if path.name.endswith(".pcd.bin"):
        return NUSCENES_LIDAR
    if path.suffix == ".bin" and path.parent.name in ("velodyne", "velodyne_reduced"):
        return KITTI_VELODYNE
    return None


def read_point_array(path: str | os.PathLike, num_columns: int, dtype=np.float32,
                     columns: Sequence[str] = ()) -> np.ndarray:
    """Read an ``(N, num_columns)`` array from a raw binary file, validating it fully.

    ``columns`` names the leading columns, whose values are then checked (module docstring).
    """
    path = Path(path)
    if path.is_dir():
        raise PointFileError(f"{path}: is a directory, not a point file")
    if not path.is_file():
        raise PointFileError(f"{path}: point file not found")
    layout = known_format(path)
    if layout is not None and num_columns != len(layout.columns):
        raise PointFileError(
            f"{path}: {layout.description} holds {len(layout.columns)} float32 columns "
            f"({', '.join(layout.columns)}), not the {num_columns} it was to be read as"
        )
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
    problem = _implausible_values(points, columns)
    if problem:
        widths = [width for width in range(3, 9) if width != num_columns and _reads_plausibly(raw, width, columns)]
        instead = f"; read as {' or '.join(map(str, widths))} columns its values are plausible" if widths else ""
        raise PointFileError(f"{path}: {problem}: its rows are probably not {num_columns} float32 columns wide (a "
                             f"wrong column count reads values across rows){instead}")
    return points.astype(np.float32, copy=False)


def _implausible_values(points: np.ndarray, columns: Sequence[str]) -> str | None:
    """What no LiDAR file holds in the named columns of ``points``, in words; None if nothing."""
    for index, name in enumerate(columns[: points.shape[1]]):
        values = points[:, index]
        rules = [("negative", values < 0)] if name in NON_NEGATIVE_COLUMNS else []
        rules += [("not a whole number", values != np.round(values))] if name in WHOLE_NUMBER_COLUMNS else []
        for rule, broken in rules:
            bad = np.flatnonzero(broken)
            if bad.size:
                return (f"column {index + 1} ({name}) is {rule} at {bad.size} of {len(values)} points (the first: "
                        f"point {bad[0]}, {values[bad[0]]:g}), which no LiDAR writes")
    return None


def _reads_plausibly(raw: np.ndarray, width: int, columns: Sequence[str]) -> bool:
    """Whether ``raw`` read as ``width`` columns has plausible values in a checked column."""
    checked = [name for name in columns[:width] if name in NON_NEGATIVE_COLUMNS + WHOLE_NUMBER_COLUMNS]
    if raw.size % width or not checked:
        return False
    points = raw.reshape(-1, width)
    return bool((np.abs(points[:, :3]) <= MAX_COORDINATE).all()) and _implausible_values(points, columns) is None


def read_points(
    path: str | os.PathLike,
    file_columns: int,
    columns: Sequence[str] = ("x", "y", "z", "intensity"),
    on_bad_file: OnBadFile = "raise",
) -> PointCloud | None:
    """Read a point file with ``file_columns`` float32 columns and keep the first ``len(columns)``, the
    columns ``columns`` names (their values are checked, see the module docstring).

    With ``on_bad_file="skip"`` a bad file is logged and ``None`` returned instead of raising.
    """
    if file_columns < len(columns):
        raise ValueError(f"{path}: asked for columns {tuple(columns)} from a file of {file_columns} columns")
    try:
        array = read_point_array(path, file_columns, columns=columns)
    except PointFileError as error:
        if on_bad_file == "skip":
            log.warning("skipping bad point file: %s", error)
            return None
        raise
    return PointCloud(array[:, : len(columns)], tuple(columns))


def write_points(path: str | os.PathLike, cloud: PointCloud) -> None:
    """Write the cloud as raw little-endian float32 rows, atomically."""
    write_bytes(path, np.ascontiguousarray(cloud.points, dtype="<f4").tobytes())
