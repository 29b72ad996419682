"""LiDAR detections on :class:`~rdd3d.data.kitti.KittiDataset` frames -> KITTI result files (and back) and
KITTI AP (the ``"kitti"`` evaluation).

The conversion is :func:`rdd3d.data.kitti.format.detections_from_lidar_boxes` (camera-frame
box, ``alpha``, 2D box from the projected corners) with each frame's calibration and image size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rdd3d.core.types import Boxes3D, Detections, Frame
from rdd3d.data.kitti.format import (
    KittiCalibration, KittiObjects, camera_to_lidar_boxes, detections_from_lidar_boxes, read_label_file,
    write_label_file,
)
from rdd3d.evaluation.base import EVALUATIONS, Evaluation
from rdd3d.evaluation.detection_metrics import DetectionsLike, as_numpy
from rdd3d.evaluation.kitti_metrics import METRICS, KittiResult, evaluate_kitti

#: (height, width) of most KITTI object images; 2D boxes of frames without image_2 are clipped to it.
USUAL_IMAGE_SHAPE = (375, 1242)


def kitti_detections(frame: Frame, detections: DetectionsLike) -> KittiObjects:
    """One frame's LiDAR detections (``boxes`` (K, 7|9), ``scores``, ``labels`` into ``frame.classes``)
    as KITTI detections in the frame's camera frame, with scores."""
    calib = frame_calibration(frame)
    boxes = detections.boxes if isinstance(detections.boxes, Boxes3D) else Boxes3D(as_numpy(detections.boxes))
    labels = as_numpy(detections.labels).astype(np.int64).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(frame.classes)):
        raise ValueError(f"detections of frame {frame.frame_id}: labels must lie in 0..{len(frame.classes) - 1} "
                         f"({list(frame.classes.names)}), got {sorted(set(labels.tolist()))}")
    names = [frame.classes.name(label) for label in labels]
    image_shape = frame.metadata.get("image_shape") or USUAL_IMAGE_SHAPE
    return detections_from_lidar_boxes(boxes, as_numpy(detections.scores), names, calib, image_shape)


def frame_calibration(frame: Frame) -> KittiCalibration:
    """A KITTI frame's calibration; an error naming the frame for a frame of another dataset."""
    if "calib" not in frame.metadata:
        raise ValueError(f"frame {frame.frame_id}: metadata has no 'calib'; KITTI results need a KittiDataset frame")
    return frame.metadata["calib"]


def write_kitti_results(out_dir: str | os.PathLike, frames: Sequence[Frame],
                        detections: Sequence[DetectionsLike]) -> list[Path]:
    """Write ``<out_dir>/<frame_id>.txt`` per frame (KITTI ``label_2`` lines with a 16th field, the
    score; an empty file for a frame without detections), as the KITTI server and devkit read them."""
    if len(frames) != len(detections):
        raise ValueError(f"{len(frames)} frames but {len(detections)} detections; one per frame is needed")
    paths = []
    for frame, found in zip(frames, detections):
        path = Path(out_dir) / f"{frame.frame_id}.txt"
        write_label_file(path, kitti_detections(frame, found))
        paths.append(path)
    return paths


def read_kitti_results(path: str | os.PathLike, frames: Sequence[Frame]) -> list[Detections]:
    """KITTI result files of ``frames`` (``label_2`` lines with a 16th field, the score) as LiDAR detections,
    one per frame: ``path`` is a folder of ``<frame_id>.txt`` (what :func:`write_kitti_results` writes) or,
    for a single frame, its file. Objects of types outside a frame's classes are left out, as KITTI AP
    leaves them out of the classes it scores."""
    path = Path(path)
    if not path.is_dir() and len(frames) != 1:
        raise ValueError(f"{path}: KITTI results of {len(frames)} frames are a folder of <frame_id>.txt files")
    found = []
    for frame in frames:
        calib = frame_calibration(frame)
        results = path / f"{frame.frame_id}.txt" if path.is_dir() else path
        objects = read_label_file(results)
        if objects.score is None and len(objects):
            raise ValueError(f"{results}: KITTI ground-truth lines (15 fields), not results: a result line carries a "
                             "16th field, the score")
        kept = objects.select(np.array([name in frame.classes.names for name in objects.names], dtype=bool))
        boxes = camera_to_lidar_boxes(kept, calib).tensor
        scores = kept.score if kept.score is not None else np.zeros(0)
        found.append(Detections(torch.from_numpy(boxes), torch.from_numpy(scores.astype(np.float32)),
                                torch.from_numpy(frame.classes.indices(kept.names, source=str(results)))))
    return found


def evaluate_kitti_frames(
    frames: Sequence[Frame],
    detections: Sequence[DetectionsLike],
    metrics: Sequence[str] = METRICS,
    overlap_sets: Sequence[str] = ("strict", "loose"),
) -> KittiResult:
    """KITTI AP of ``detections[i]`` against the label file of ``frames[i]`` (its
    ``metadata["kitti_objects"]``, all of it: DontCare regions, Van and Person_sitting take part as
    the devkit lets them), for the frames' classes."""
    if len(frames) != len(detections):
        raise ValueError(f"{len(frames)} frames but {len(detections)} detections; one per frame is needed")
    if not frames:
        raise ValueError("evaluate_kitti_frames needs at least one frame")
    ground_truth = []
    for frame in frames:
        if "kitti_objects" not in frame.metadata:
            raise ValueError(f"frame {frame.frame_id}: no KITTI ground truth (metadata['kitti_objects']); "
                             "only KittiDataset frames of a labelled split can be scored")
        ground_truth.append(frame.metadata["kitti_objects"])
    predicted = [kitti_detections(frame, found) for frame, found in zip(frames, detections)]
    return evaluate_kitti(ground_truth, predicted, frames[0].classes.names, metrics, overlap_sets)


def kitti_summary(result: KittiResult, classes: Sequence[str]) -> dict[str, float]:
    """The scalars to log after a KITTI evaluation, as fractions (0..1) like the nuScenes summary:
    ``mAP`` = mean over ``classes`` of the moderate 3D AP R40 (official thresholds), ``AP/<class>``
    that AP per class, ``AP_bev/<class>`` the moderate BEV AP R40."""
    values = {f"AP/{name}": result.ap(name, "3d", "moderate", 40) / 100 for name in classes}
    values.update({f"AP_bev/{name}": result.ap(name, "bev", "moderate", 40) / 100 for name in classes})
    return {"mAP": float(np.mean([values[f"AP/{name}"] for name in classes])), **values}


def kitti_summary_names(classes: Sequence[str]) -> tuple[str, ...]:
    """The keys :func:`kitti_summary` gives for ``classes``."""
    return ("mAP", *(f"{kind}/{name}" for kind in ("AP", "AP_bev") for name in classes))


EVALUATIONS.register(Evaluation(
    "kitti", lambda dataset, frames, detections: evaluate_kitti_frames(frames, detections), kitti_summary,
    kitti_summary_names,
))
