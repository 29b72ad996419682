"""The KITTI object detection benchmark read from its official folder layout as :class:`Frame`s.

Layout (docs/data-kitti.md)::

    root/ImageSets/<split>.txt                   one frame id a line (e.g. OpenPCDet's train/val/test)
    root/training|testing/velodyne/<id>.bin      float32 rows x, y, z, reflectance
    root/training|testing/calib/<id>.txt         P2, R0_rect, Tr_velo_to_cam (others ignored)
    root/training|testing/image_2/<id>.png       only its size is read
    root/training/label_2/<id>.txt               ground truth (the testing split has none)

Boxes are converted to the LiDAR frame by :mod:`rdd3d.data.kitti.format`; everything the
KITTI metric needs beyond them (truncation, occlusion, 2D boxes, DontCare regions, other classes)
stays in ``Frame.metadata`` under the keys listed in :data:`METADATA_KEYS`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from rdd3d.data.io import read_points
from rdd3d.core.types import Boxes3D, ClassTable, Frame
from rdd3d.data.kitti.format import (
    KittiCalibration,
    KittiFormatError,
    camera_to_lidar_boxes,
    kitti_difficulty,
    read_calib_file,
    read_image_shape,
    read_label_file,
)

log = logging.getLogger(__name__)

#: The object types of KITTI ``label_2`` files (besides DontCare).
KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc")
DEFAULT_CLASSES = ("Car", "Pedestrian", "Cyclist")
POINT_COLUMNS = ("x", "y", "z", "intensity")  # KITTI's reflectance is our intensity column
#: ``class_ranges`` value of every class. KITTI is scored by its own AP (``evaluation = "kitti"``),
#: which has no range limit; the nuScenes-style metric, if used anyway, then sees every labelled
#: object (KITTI labels reach about 90 m).
UNLIMITED_CLASS_RANGE = 100.0
#: Frame.metadata keys this dataset sets (see docs/data-kitti.md).
METADATA_KEYS = (
    "num_points",  # (M,) int64: points of the loaded (FOV-filtered) cloud inside each box
    "calib",  # KittiCalibration of the frame
    "image_shape",  # (height, width) of image_2, or None when the image is missing
    "kitti_objects",  # KittiObjects: every line of the label file (all types, DontCare included)
    "kitti_dontcare",  # KittiObjects: the DontCare regions only
    "kitti_object_index",  # (M,) int64: each box's row in kitti_objects
    "difficulty",  # (M,) int64: 0 easy, 1 moderate, 2 hard, -1 beyond (GT sampling can exclude them)
)
_FRAME_ID = re.compile(r"[0-9A-Za-z_-]+")

OnMissing = Literal["error", "skip"]


def camera_fov_mask(xyz: np.ndarray, calib: KittiCalibration, image_shape: tuple[int, int]) -> np.ndarray:
    """``(N,)`` bool: LiDAR points in front of the camera (rectified z > 0) that project into image 2
    of ``(height, width)`` pixels — the cloud OpenPCDet and mmdetection3d reduce KITTI scans to."""
    rect = calib.lidar_to_rect(xyz)
    pixels, _ = calib.rect_to_image(rect)
    height, width = image_shape
    in_front = rect[:, 2] > 0
    with np.errstate(invalid="ignore"):  # points at depth 0 project to inf/nan; in_front drops them
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    return in_front & inside


def read_image_set(path: str | os.PathLike) -> list[str]:
    """Frame ids of an ``ImageSets/<split>.txt`` file, one a line; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise KittiFormatError(f"{path}: split file not found (KITTI splits are ImageSets/<split>.txt, one frame id a line)")
    with open(path, encoding="utf-8") as handle:
        ids = [(f"line {number}", line.strip()) for number, line in enumerate(handle, start=1) if line.strip()]
    if not ids:
        raise KittiFormatError(f"{path}: split file lists no frame ids")
    return _checked_ids(ids, str(path))


def _checked_ids(placed_ids: Sequence[tuple[str, str]], source: str) -> list[str]:
    """The ids of ``(place, id)`` pairs (place: "line 3", "entry 1") in order; bad or repeated ids are errors."""
    seen: dict[str, str] = {}
    for place, frame_id in placed_ids:
        if not isinstance(frame_id, str) or not _FRAME_ID.fullmatch(frame_id):
            raise KittiFormatError(
                f"{source}, {place}: {frame_id!r} is not a frame id (expected one token of letters, "
                "digits, '_' or '-', e.g. 000008)"
            )
        if frame_id in seen:
            raise KittiFormatError(f"{source}, {place}: frame id {frame_id} repeats {seen[frame_id]}")
        seen[frame_id] = place
    return list(seen)


class KittiDataset:
    """Frames of a KITTI split: points (FOV-filtered by default), LiDAR boxes of ``classes``, and the
    KITTI ground truth in ``metadata`` for :func:`rdd3d.evaluation.kitti_predictions.evaluate_kitti_frames`.

    ``split`` names ``root/ImageSets/<split>.txt``; split ``"test"`` reads ``root/testing`` (no
    labels), every other split ``root/training``. ``frame_ids`` replaces the split file. A frame
    whose velodyne, calib or (training) label file is missing raises (``on_missing="error"``) or
    is left out with one warning for all of them (``"skip"``), when the dataset is built.
    """

    evaluation = "kitti"  # the metric that applies: KITTI AP (rdd3d.evaluation.kitti_predictions)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: Sequence[str] = DEFAULT_CLASSES,
        *,
        frame_ids: Sequence[str] | None = None,
        fov_only: bool = True,
        on_missing: OnMissing = "error",
        point_dir: str = "velodyne",
    ) -> None:
        unknown = [name for name in classes if name not in KITTI_TYPES]
        if unknown or not classes:
            raise ValueError(f"KittiDataset classes must be KITTI object types {list(KITTI_TYPES)}, got {list(classes)}")
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.root, self.split, self.fov_only, self.point_dir = Path(root), split, fov_only, point_dir
        self.classes = ClassTable(tuple(classes))
        self.class_ranges = {name: UNLIMITED_CLASS_RANGE for name in self.classes.names}
        self.has_labels = split != "test"
        self.folder = self.root / ("testing" if split == "test" else "training")
        if not self.folder.is_dir():
            raise KittiFormatError(f"{self.folder}: KITTI folder not found (expected root/training and root/testing)")
        if frame_ids is None:
            ids = read_image_set(self.root / "ImageSets" / f"{split}.txt")
        else:
            if isinstance(frame_ids, str):
                raise TypeError(f"frame_ids must be a list of frame ids, got the string {frame_ids!r}")
            ids = _checked_ids([(f"entry {n}", i) for n, i in enumerate(frame_ids, start=1)], "frame_ids")
        self.frame_ids = self._complete_frames(ids, on_missing)
        without_image = [self.path(i, "image_2") for i in self.frame_ids if not self.path(i, "image_2").is_file()]
        if without_image:
            log.warning(
                "KITTI %s: %d of %d frames have no image_2 PNG (first: %s); their clouds are not cropped to "
                "the camera's field of view and their predictions' 2D boxes are clipped to the usual image size",
                split, len(without_image), len(self.frame_ids), ", ".join(map(str, without_image[:3])),
            )

    def path(self, frame_id: str, kind: str) -> Path:
        """The file of ``frame_id`` in folder ``kind``: ``velodyne`` (read from ``point_dir``),
        ``calib``, ``label_2`` or ``image_2``."""
        suffix = {"calib": ".txt", "label_2": ".txt", "image_2": ".png"}.get(kind, ".bin")
        folder = self.point_dir if kind == "velodyne" else kind
        return self.folder / folder / f"{frame_id}{suffix}"

    def _complete_frames(self, ids: list[str], on_missing: OnMissing) -> list[str]:
        """``ids`` less the frames missing a required file (or an error naming the first such file)."""
        kinds = ("velodyne", "calib", "label_2") if self.has_labels else ("velodyne", "calib")
        missing: dict[str, list[Path]] = {}
        for frame_id in ids:
            absent = [path for path in (self.path(frame_id, kind) for kind in kinds) if not path.is_file()]
            if absent:
                missing[frame_id] = absent
        if not missing:
            return ids
        first = [str(path) for paths in list(missing.values())[:3] for path in paths]
        if on_missing == "error":
            raise KittiFormatError(
                f"{first[0]}: file not found ({len(missing)} of {len(ids)} frames of split {self.split!r} lack "
                f"a {'/'.join(kinds)} file; on_missing='skip' leaves such frames out)"
            )
        log.warning("KITTI %s: skipping %d of %d frames with missing files (first: %s)",
                    self.split, len(missing), len(ids), ", ".join(first))
        return [frame_id for frame_id in ids if frame_id not in missing]

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> Frame:
        frame_id = self.frame_ids[index]
        points = read_points(self.path(frame_id, "velodyne"), len(POINT_COLUMNS), POINT_COLUMNS)
        calib = read_calib_file(self.path(frame_id, "calib"))
        image_path = self.path(frame_id, "image_2")
        image_shape = read_image_shape(image_path) if image_path.is_file() else None
        if self.fov_only and image_shape is not None:
            points = points.select(camera_fov_mask(points.xyz, calib, image_shape))
        metadata: dict = {"calib": calib, "image_shape": image_shape}
        if not self.has_labels:
            metadata.update(num_points=np.zeros(0, dtype=np.int64), difficulty=np.zeros(0, dtype=np.int64))
            return Frame(frame_id, points, Boxes3D.empty(), np.zeros(0, dtype=np.int64), self.classes, metadata)
        label_path = self.path(frame_id, "label_2")
        objects = read_label_file(label_path)
        keep = np.flatnonzero([name in self.classes.names for name in objects.names])
        bad = keep[(objects.dimensions_hwl[keep] <= 0).any(axis=1)]
        if bad.size:
            raise KittiFormatError(
                f"{label_path}: object {int(bad[0]) + 1} ({objects.names[bad[0]]}) has h, w, l = "
                f"{objects.dimensions_hwl[bad[0]].tolist()}; a labelled object needs positive sizes"
            )
        boxes = camera_to_lidar_boxes(objects.select(keep), calib)
        metadata.update(
            num_points=boxes.contains_points(points.xyz).sum(axis=0).astype(np.int64),
            kitti_objects=objects,
            kitti_dontcare=objects.select(objects.is_dontcare),
            kitti_object_index=keep.astype(np.int64),
            difficulty=kitti_difficulty(objects.select(keep)),
        )
        labels = self.classes.indices([objects.names[i] for i in keep], source=str(label_path))
        return Frame(frame_id, points, boxes, labels, self.classes, metadata)
