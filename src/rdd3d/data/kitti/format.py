"""KITTI object files and frames: ``label_2`` lines, the difficulty of a labelled object, ``calib`` files,
camera <-> LiDAR boxes.

KITTI conventions (the object devkit's readme):

* ``label_2`` line: ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]``.
  ``(x, y, z)`` is the **bottom centre** of the box in the rectified camera-0 frame (x right, y
  down, z forward); ``h, w, l`` its height, width, length; ``rotation_y`` the heading about the
  camera's y axis (0 along +x); ``alpha`` the observation angle; ``(x1, y1, x2, y2)`` the 2D box in
  image 2, pixels. Result files add a 16th field, the score.
* ``calib`` file: ``KEY: v1 v2 ...`` lines; ``P2`` (3x4) projects rectified camera coordinates
  into image 2, ``R0_rect`` (3x3) rectifies camera 0, ``Tr_velo_to_cam`` (3x4) maps LiDAR to
  (unrectified) camera 0.

LiDAR boxes are :class:`rdd3d.core.types.Boxes3D` (centre, ``dx = l``, ``dy = w``, ``dz = h``,
``yaw = -rotation_y - pi/2``), converted as OpenPCDet converts them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from rdd3d.core.types import Boxes3D
from rdd3d.core.fileio import atomic_open

LABEL_FIELDS = (
    "type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2",
    "h", "w", "l", "x", "y", "z", "rotation_y", "score",
)
NUM_LABEL_FIELDS = 15  # ground truth; detections carry a 16th, the score
DONT_CARE = "DontCare"
#: KITTI's difficulty levels and the limits of each (the object devkit's): a labelled object of a level has a
#: 2D box higher than MIN_HEIGHT, occlusion at most MAX_OCCLUSION and truncation at most MAX_TRUNCATION.
DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)  # px, ground truth and detections
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
#: The calibration matrices we read and their shapes.
CALIB_MATRICES = {"P2": (3, 4), "R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4)}


class KittiFormatError(ValueError):
    """A KITTI file that cannot be read; the message names the file, the line and what was expected."""


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles mapped to ``[-pi, pi)``."""
    return np.remainder(np.asarray(angle, dtype=np.float64) + np.pi, 2 * np.pi) - np.pi


@dataclass(frozen=True)
class KittiObjects:
    """The objects of one frame: ground truth (``score`` is None) or detections, column-wise."""

    names: tuple[str, ...]
    truncated: np.ndarray  # (N,) 0..1; -1 for DontCare and detections
    occluded: np.ndarray  # (N,) int 0..3; -1 for DontCare and detections
    alpha: np.ndarray  # (N,) observation angle; -10 when unknown
    bbox: np.ndarray  # (N, 4) x1 y1 x2 y2 in image 2, pixels
    dimensions_hwl: np.ndarray  # (N, 3) height, width, length, metres
    location: np.ndarray  # (N, 3) bottom centre, rectified camera frame
    rotation_y: np.ndarray  # (N,)
    score: np.ndarray | None = None  # (N,) detections only

    def __post_init__(self) -> None:
        names = tuple(str(name) for name in self.names)
        n = len(names)
        columns = {
            "truncated": (self.truncated, (n,), np.float64),
            "occluded": (self.occluded, (n,), np.int64),
            "alpha": (self.alpha, (n,), np.float64),
            "bbox": (self.bbox, (n, 4), np.float64),
            "dimensions_hwl": (self.dimensions_hwl, (n, 3), np.float64),
            "location": (self.location, (n, 3), np.float64),
            "rotation_y": (self.rotation_y, (n,), np.float64),
        }
        if self.score is not None:
            columns["score"] = (self.score, (n,), np.float64)
        for name, (value, shape, dtype) in columns.items():
            array = np.asarray(value, dtype=np.float64)
            if n == 0:
                array = array.reshape(shape)
            if array.shape != shape:
                raise ValueError(f"KittiObjects.{name} must have shape {shape} for {n} objects, got {array.shape}")
            if not np.isfinite(array).all():
                index = int(np.argwhere(~np.isfinite(array.reshape(n, -1)))[0, 0])
                raise ValueError(f"KittiObjects.{name} of object {index} ({names[index]}) is not finite")
            object.__setattr__(self, name, array.astype(dtype))
        object.__setattr__(self, "names", names)

    @classmethod
    def empty(cls, with_score: bool = False) -> "KittiObjects":
        return cls((), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros((0, 3)),
                   np.zeros((0, 3)), np.zeros(0), np.zeros(0) if with_score else None)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def is_dontcare(self) -> np.ndarray:  # (N,) bool
        return np.array([name == DONT_CARE for name in self.names], dtype=bool)

    @property
    def bbox_height(self) -> np.ndarray:  # (N,)
        return self.bbox[:, 3] - self.bbox[:, 1]

    def select(self, mask_or_index) -> "KittiObjects":
        index = np.arange(len(self))[mask_or_index]
        return KittiObjects(
            tuple(self.names[i] for i in index), self.truncated[index], self.occluded[index],
            self.alpha[index], self.bbox[index], self.dimensions_hwl[index], self.location[index],
            self.rotation_y[index], None if self.score is None else self.score[index],
        )


# ---------------------------------------------------------------- label_2 files


def parse_label_lines(lines: Iterable[str], source: str = "<labels>") -> KittiObjects:
    """Parse ``label_2`` lines (15 fields) or result lines (16, with score); blank lines are skipped.

    All lines of one file must have the same number of fields. Errors name ``source`` and the line.
    """
    rows: list[list[float]] = []
    names: list[str] = []
    width = None
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (NUM_LABEL_FIELDS, NUM_LABEL_FIELDS + 1):
            raise KittiFormatError(
                f"{source}, line {line_number}: expected {NUM_LABEL_FIELDS} fields (ground truth) or "
                f"{NUM_LABEL_FIELDS + 1} (with a score), got {len(fields)}: {line.strip()!r}"
            )
        if width is not None and len(fields) != width:
            raise KittiFormatError(
                f"{source}, line {line_number}: has {len(fields)} fields but earlier lines have {width}; "
                "a file holds either ground truth (15) or detections with scores (16)"
            )
        width = len(fields)
        values = []
        for name, text in zip(LABEL_FIELDS[1:], fields[1:]):
            try:
                values.append(float(text))
            except ValueError:
                raise KittiFormatError(
                    f"{source}, line {line_number}: field {name!r} is {text!r}, expected a number"
                ) from None
        if not np.isfinite(values).all():
            bad = LABEL_FIELDS[1 + int(np.argmin(np.isfinite(values)))]
            raise KittiFormatError(f"{source}, line {line_number}: field {bad!r} is not finite")
        if values[1] != int(values[1]):
            raise KittiFormatError(f"{source}, line {line_number}: field 'occluded' is {fields[2]!r}, expected an integer")
        names.append(fields[0])
        rows.append(values)
    if not rows:
        return KittiObjects.empty()
    table = np.array(rows, dtype=np.float64)  # (N, 14 or 15)
    return KittiObjects(
        tuple(names), table[:, 0], table[:, 1], table[:, 2], table[:, 3:7], table[:, 7:10],
        table[:, 10:13], table[:, 13], table[:, 14] if width == NUM_LABEL_FIELDS + 1 else None,
    )


def read_label_file(path: str | os.PathLike) -> KittiObjects:
    """Read a ``label_2`` (or result) file; an empty file is a frame without objects."""
    path = Path(path)
    if not path.is_file():
        raise KittiFormatError(f"{path}: label file not found")
    with open(path, encoding="utf-8") as handle:
        return parse_label_lines(handle, source=str(path))


def format_label_lines(objects: KittiObjects) -> list[str]:
    """KITTI text lines (with the score when the objects carry one), as the object devkit reads them."""
    lines = []
    for i, name in enumerate(objects.names):
        numbers = [*objects.bbox[i], *objects.dimensions_hwl[i], *objects.location[i], objects.rotation_y[i]]
        line = f"{name} {objects.truncated[i]:.2f} {objects.occluded[i]:d} {objects.alpha[i]:.4f} "
        line += " ".join(f"{value:.4f}" for value in numbers)
        if objects.score is not None:
            line += f" {objects.score[i]:.8g}"
        lines.append(line)
    return lines


def write_label_file(path: str | os.PathLike, objects: KittiObjects) -> None:
    """Write one frame's objects in KITTI format, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in format_label_lines(objects))


def kitti_difficulty(objects: KittiObjects) -> np.ndarray:
    """``(N,)`` int64 per object: 0 easy, 1 moderate, 2 hard (the easiest level whose height, occlusion
    and truncation limits it meets, as the metric applies them), -1 beyond hard (OpenPCDet's
    ``difficulty`` -1, which its ground-truth sampler filters out)."""
    level = np.full(len(objects.names), -1, dtype=np.int64)
    for difficulty in reversed(range(len(DIFFICULTIES))):
        meets = ((objects.occluded <= MAX_OCCLUSION[difficulty]) & (objects.truncated <= MAX_TRUNCATION[difficulty])
                 & (objects.bbox_height > MIN_HEIGHT[difficulty]))
        level[meets] = difficulty
    return level


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class KittiCalibration:
    """The matrices of a KITTI ``calib`` file that LiDAR detection needs."""

    p2: np.ndarray  # (3, 4) rectified camera -> image 2 (homogeneous)
    r0_rect: np.ndarray  # (3, 3) camera 0 -> rectified camera 0
    tr_velo_to_cam: np.ndarray  # (3, 4) LiDAR -> camera 0

    def __post_init__(self) -> None:
        for name, key in (("p2", "P2"), ("r0_rect", "R0_rect"), ("tr_velo_to_cam", "Tr_velo_to_cam")):
            matrix = np.asarray(getattr(self, name), dtype=np.float64)
            if matrix.shape != CALIB_MATRICES[key]:
                raise ValueError(f"KittiCalibration.{name} must be {CALIB_MATRICES[key]}, got {matrix.shape}")
            object.__setattr__(self, name, matrix)

    def lidar_to_rect(self, xyz: np.ndarray) -> np.ndarray:
        """``(N, 3)`` LiDAR points -> ``(N, 3)`` rectified camera coordinates."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        camera = xyz @ self.tr_velo_to_cam[:, :3].T + self.tr_velo_to_cam[:, 3]
        return camera @ self.r0_rect.T

    def rect_to_lidar(self, xyz: np.ndarray) -> np.ndarray:
        """``(N, 3)`` rectified camera coordinates -> ``(N, 3)`` LiDAR points (inverse of ``lidar_to_rect``)."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        camera = np.linalg.solve(self.r0_rect, xyz.T)  # (3, N)
        return np.linalg.solve(self.tr_velo_to_cam[:, :3], camera - self.tr_velo_to_cam[:, 3:]).T

    def rect_to_image(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 3)`` rectified camera coordinates -> ``(N, 2)`` pixels (u, v) in image 2 and ``(N,)`` depth."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        projected = xyz @ self.p2[:, :3].T + self.p2[:, 3]  # (N, 3)
        return projected[:, :2] / projected[:, 2:3], projected[:, 2]


def parse_calib_lines(lines: Iterable[str], source: str = "<calib>") -> KittiCalibration:
    """Parse ``KEY: values`` lines; other keys are allowed and ignored, missing matrices are errors."""
    found: dict[str, np.ndarray] = {}
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, colon, rest = line.partition(":")
        key = key.strip()
        if not colon or not key:
            raise KittiFormatError(f"{source}, line {line_number}: expected 'KEY: values', got {line.strip()!r}")
        if key not in CALIB_MATRICES:
            continue
        shape = CALIB_MATRICES[key]
        try:
            values = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            raise KittiFormatError(f"{source}, line {line_number}: {key} holds a value that is not a number") from None
        if values.size != shape[0] * shape[1] or not np.isfinite(values).all():
            raise KittiFormatError(
                f"{source}, line {line_number}: {key} needs {shape[0] * shape[1]} finite numbers "
                f"({shape[0]}x{shape[1]}), got {values.size}"
            )
        found[key] = values.reshape(shape)
    missing = [key for key in CALIB_MATRICES if key not in found]
    if missing:
        raise KittiFormatError(f"{source}: calibration matrix {', '.join(missing)} missing (needs {list(CALIB_MATRICES)})")
    return KittiCalibration(found["P2"], found["R0_rect"], found["Tr_velo_to_cam"])


def read_calib_file(path: str | os.PathLike) -> KittiCalibration:
    path = Path(path)
    if not path.is_file():
        raise KittiFormatError(f"{path}: calibration file not found")
    with open(path, encoding="utf-8") as handle:
        return parse_calib_lines(handle, source=str(path))


def read_image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of a PNG image, read from its header (KITTI images differ in size)."""
    path = Path(path)
    with open(path, "rb") as handle:
        header = handle.read(24)
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise KittiFormatError(f"{path}: not a PNG image (KITTI image_2 files are PNG)")
    width, height = struct.unpack(">II", header[16:24])
    return int(height), int(width)


# ---------------------------------------------------------------- boxes between frames


class CameraBoxes(NamedTuple):
    """Boxes in KITTI's rectified camera frame, as ``label_2`` stores them."""

    location: np.ndarray  # (N, 3) bottom centre
    dimensions_hwl: np.ndarray  # (N, 3)
    rotation_y: np.ndarray  # (N,)


def camera_to_lidar_boxes(boxes: CameraBoxes | KittiObjects, calib: KittiCalibration) -> Boxes3D:
    """Camera boxes (e.g. the non-DontCare objects of a label file) -> LiDAR :class:`Boxes3D`."""
    height, width, length = np.asarray(boxes.dimensions_hwl, dtype=np.float64).reshape(-1, 3).T
    centre = calib.rect_to_lidar(boxes.location)
    centre[:, 2] += height / 2  # the LiDAR z axis points up: bottom centre -> centre
    yaw = wrap_angle(-np.asarray(boxes.rotation_y, dtype=np.float64) - np.pi / 2)
    return Boxes3D(np.column_stack([centre, length, width, height, yaw]))


def lidar_to_camera_boxes(boxes: Boxes3D, calib: KittiCalibration) -> CameraBoxes:
    """LiDAR :class:`Boxes3D` -> camera boxes (inverse of :func:`camera_to_lidar_boxes`)."""
    tensor = boxes.tensor.astype(np.float64)
    bottom = tensor[:, 0:3].copy()
    bottom[:, 2] -= tensor[:, 5] / 2
    hwl = tensor[:, [5, 4, 3]]
    return CameraBoxes(calib.lidar_to_rect(bottom), hwl, wrap_angle(-tensor[:, 6] - np.pi / 2))


def camera_box_corners(boxes: CameraBoxes | KittiObjects) -> np.ndarray:
    """``(N, 8, 3)`` corners of camera boxes: four bottom corners then the four top ones."""
    height, width, length = np.asarray(boxes.dimensions_hwl, dtype=np.float64).reshape(-1, 3).T
    x_sign = np.array([0.5, -0.5, -0.5, 0.5, 0.5, -0.5, -0.5, 0.5])
    z_sign = np.array([0.5, 0.5, -0.5, -0.5, 0.5, 0.5, -0.5, -0.5])
    y_sign = np.array([0, 0, 0, 0, -1, -1, -1, -1])  # y points down: the top is at -h
    x, y, z = length[:, None] * x_sign, height[:, None] * y_sign, width[:, None] * z_sign  # (N, 8) each
    cos, sin = np.cos(boxes.rotation_y)[:, None], np.sin(boxes.rotation_y)[:, None]
    corners = np.stack([x * cos + z * sin, y, -x * sin + z * cos], axis=-1)  # rotation about +y
    return corners + np.asarray(boxes.location, dtype=np.float64)[:, None, :]


def image_boxes(boxes: CameraBoxes | KittiObjects, calib: KittiCalibration, image_shape: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` 2D boxes (x1, y1, x2, y2): the 3D corners projected through ``P2``, enclosed and
    clipped to an image of ``(height, width)`` pixels, as OpenPCDet does for LiDAR detections."""
    corners = camera_box_corners(boxes)  # (N, 8, 3)
    pixels, _ = calib.rect_to_image(corners.reshape(-1, 3))
    pixels = pixels.reshape(-1, 8, 2)
    height, width = image_shape
    low = np.clip(pixels.min(axis=1), 0, [width - 1, height - 1])
    high = np.clip(pixels.max(axis=1), 0, [width - 1, height - 1])
    return np.concatenate([low, high], axis=1)


def observation_angle(boxes: CameraBoxes | KittiObjects) -> np.ndarray:
    """KITTI's ``alpha``: ``rotation_y`` minus the viewing ray's angle, in ``[-pi, pi)``."""
    location = np.asarray(boxes.location, dtype=np.float64).reshape(-1, 3)
    return wrap_angle(np.asarray(boxes.rotation_y) - np.arctan2(location[:, 0], location[:, 2]))


def detections_from_lidar_boxes(
    boxes: Boxes3D,
    scores: np.ndarray,
    names: Sequence[str],
    calib: KittiCalibration,
    image_shape: tuple[int, int],
) -> KittiObjects:
    """LiDAR detections -> KITTI detections: camera-frame boxes, ``alpha``, and the 2D box from the
    projected 3D corners (clipped to the image). Truncation and occlusion are -1, as in result files."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes) or len(names) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores and {len(names)} names")
    camera = lidar_to_camera_boxes(boxes, calib)
    unknown = -np.ones(len(boxes))
    return KittiObjects(
        tuple(names), unknown, unknown, observation_angle(camera), image_boxes(camera, calib, image_shape),
        camera.dimensions_hwl, camera.location, camera.rotation_y, scores,
    )
