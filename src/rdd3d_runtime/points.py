"""Reading a point cloud for an exported model: float32 rows with the manifest's columns."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

FLOAT32_BYTES = 4


def _named_layout(path: Path) -> tuple[str, int] | None:
    """What a raw file's name says it is and its float32 column count (nuScenes' LiDAR files, KITTI's velodyne
    scans); None if its name says nothing. A wrong count would read values across rows without a word whenever
    the byte count happens to divide."""
    if path.name.endswith(".pcd.bin"):
        return "a nuScenes LiDAR file (*.pcd.bin)", 5
    if path.suffix == ".bin" and path.parent.name in ("velodyne", "velodyne_reduced"):
        return "a KITTI velodyne scan (velodyne/*.bin)", 4
    return None


class PointFileError(ValueError):
    """A point file that is missing or does not hold rows of the model's columns."""


def read_points(path: str | Path, columns: Sequence[str]) -> np.ndarray:
    """``(N, len(columns))`` float32 points from a ``.bin`` file (raw little-endian float32 rows, as KITTI
    and nuScenes store them) or a ``.npy`` file (an ``(N, C)`` array)."""
    path = Path(path)
    if not path.is_file():
        raise PointFileError(f"{path}: point file not found")
    width = len(columns)
    if path.suffix == ".npy":
        points = np.load(path, allow_pickle=False)
        if points.ndim != 2 or points.shape[1] != width:
            raise PointFileError(f"{path}: holds an array of shape {points.shape}; the model reads (N, {width}) "
                                 f"points with columns {tuple(columns)}")
        return np.ascontiguousarray(points, dtype=np.float32)
    if path.suffix != ".bin":
        raise PointFileError(f"{path}: unknown point file type {path.suffix!r}; expected .bin (float32 rows) "
                             f"or .npy")
    layout = _named_layout(path)
    if layout is not None and layout[1] != width:
        raise PointFileError(f"{path}: {layout[0]} holds {layout[1]} float32 columns, but the model reads {width} "
                             f"{tuple(columns)}: convert the file to the model's columns first")
    size = path.stat().st_size
    if size % (FLOAT32_BYTES * width):
        raise PointFileError(
            f"{path}: {size} bytes is not a whole number of rows of {width} float32 columns {tuple(columns)} "
            f"({FLOAT32_BYTES * width} bytes a row): the file has other columns than the model reads")
    return np.fromfile(path, dtype="<f4").reshape(-1, width)
