"""nuScenes-style mAP and NDS for any dataset of :class:`Frame`s (the synthetic world first).

The computation is the devkit-identical one of :mod:`rdd3d.evaluation.nuscenes_metrics`, fed
directly from boxes in our convention (centre, ``dx`` length along the heading, ``dy`` width,
``yaw``; OpenPCDet's) without a JSON detour:

* matching and class ranges use the box centre in the LiDAR frame (the sensor is the ego);
* ground truth needs ``frame.metadata["num_points"]``; boxes without points are left out;
* velocity comes from the boxes' ``vx, vy``; boxes without velocity columns have unknown (NaN)
  velocity, which the devkit counts as the worst velocity error when nothing else is known;
* there are no attributes: the attribute error is not computed and NDS averages
  ``mean_ap_weight`` x mAP with the four other TP scores;
* the devkit's per-class special cases carry over by name (``barrier`` orientation modulo pi,
  no orientation/velocity error for ``traffic_cone``, no velocity error for ``barrier``) and can be
  changed through :func:`frame_metric_config`.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from rdd3d.core.types import Boxes3D, Detections, Frame
from rdd3d.evaluation.base import EVALUATIONS, Evaluation
from rdd3d.evaluation.nuscenes_metrics import (
    DEVKIT_HALF_PERIOD_CLASSES, DEVKIT_TP_NOT_APPLICABLE, NO_ATTRIBUTE, TP_METRICS, UNKNOWN_NUM_PTS, BoxTable,
    MetricConfig, NuScenesMetrics, evaluate_detections,
)

#: Our datasets carry no attributes: the attribute error is left out of NDS.
FRAME_TP_METRICS = tuple(m for m in TP_METRICS if m != "attr_err")


class DetectionsLike(Protocol):
    """One frame's detections, e.g. :class:`rdd3d.models.heads.prediction.Detections`."""

    boxes: Any  # Boxes3D, or an array / tensor (K, 7|9) in the Boxes3D convention
    scores: Any  # (K,)
    labels: Any  # (K,) indices into the frames' ClassTable


def frame_metric_config(class_ranges: Mapping[str, float], class_names: Sequence[str], *,
                        not_applicable: Mapping[str, Sequence[str]] = DEVKIT_TP_NOT_APPLICABLE,
                        half_period_orientation: Sequence[str] = DEVKIT_HALF_PERIOD_CLASSES,
                        max_boxes_per_sample: int = 500) -> MetricConfig:
    """nuScenes settings for ``class_names`` (in label order) with these ranges and special cases."""
    missing = [name for name in class_names if name not in class_ranges]
    if missing:
        raise ValueError(f"class_ranges has no range for {missing}; it covers {list(class_ranges)}")
    return MetricConfig(
        class_range={name: float(class_ranges[name]) for name in class_names},
        max_boxes_per_sample=max_boxes_per_sample,
        tp_metrics=FRAME_TP_METRICS,
        tp_not_applicable={name: tuple(m) for name, m in not_applicable.items() if name in class_names},
        half_period_orientation=tuple(name for name in half_period_orientation if name in class_names),
    )


def evaluate_frames(frames: Sequence[Frame], detections: Sequence[DetectionsLike],
                    class_ranges: Mapping[str, float] | None = None, *,
                    config: MetricConfig | None = None) -> NuScenesMetrics:
    """mAP, TP errors and NDS of ``detections[i]`` against ``frames[i]``.

    Give ``class_ranges`` (e.g. ``SyntheticDataset.class_ranges``) for the default settings of
    :func:`frame_metric_config`, or a full ``config`` whose classes are the frames' classes.
    """
    if len(frames) != len(detections):
        raise ValueError(f"{len(frames)} frames but {len(detections)} detections; one per frame is needed")
    if not frames:
        raise ValueError("evaluate_frames needs at least one frame")
    classes = frames[0].classes
    for frame in frames:
        if frame.classes != classes:
            raise ValueError(f"frame {frame.frame_id} has classes {list(frame.classes.names)}, "
                             f"frame {frames[0].frame_id} has {list(classes.names)}; they must agree")
    if config is None:
        if class_ranges is None:
            raise ValueError("evaluate_frames needs class_ranges or a config")
        config = frame_metric_config(class_ranges, classes.names)
    if config.class_names != classes.names:
        raise ValueError(f"config classes {list(config.class_names)} differ from the frames' "
                         f"{list(classes.names)} (labels index both)")
    return evaluate_detections(frames_to_table(frames), detections_to_table(frames, detections), config)


def frame_summary(result: NuScenesMetrics, classes: Sequence[str]) -> dict[str, float]:
    """The scalars to log after :func:`evaluate_frames`: ``mAP``, ``NDS``, ``err/<TP metric>`` and
    ``AP/<class>`` (the class's AP averaged over the distance thresholds)."""
    values = {"mAP": result.mean_ap, "NDS": result.nd_score}
    values.update({f"err/{name}": value for name, value in result.tp_errors.items()})
    values.update({f"AP/{name}": value for name, value in result.mean_dist_aps.items()})
    return values


def frame_summary_names(classes: Sequence[str]) -> tuple[str, ...]:
    """The keys :func:`frame_summary` gives for ``classes``."""
    return ("mAP", "NDS", *(f"err/{name}" for name in FRAME_TP_METRICS), *(f"AP/{name}" for name in classes))


def frames_to_table(frames: Sequence[Frame]) -> BoxTable:
    """Ground truth of ``frames`` as a :class:`BoxTable` (one sample per frame)."""
    num_pts = []
    for frame in frames:
        count = frame.metadata.get("num_points")
        if count is None or np.shape(count) != (len(frame.boxes),):
            raise ValueError(f"frame {frame.frame_id}: metadata['num_points'] must hold one point count per "
                             f"box ({len(frame.boxes)}), got {None if count is None else np.shape(count)}")
        num_pts.append(np.asarray(count, dtype=np.int64))
    boxes = [frame.boxes for frame in frames]
    labels = [frame.labels for frame in frames]
    return _table(frames, boxes, labels, [-np.ones(len(b)) for b in boxes], num_pts)


def detections_to_table(frames: Sequence[Frame], detections: Sequence[DetectionsLike]) -> BoxTable:
    """Detections, one per frame, as a :class:`BoxTable` on the frames' samples."""
    boxes, labels, scores = [], [], []
    for frame, found in zip(frames, detections):
        where = f"detections of frame {frame.frame_id}"
        try:
            frame_boxes = found.boxes if isinstance(found.boxes, Boxes3D) else Boxes3D(as_numpy(found.boxes))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        frame_scores = as_numpy(found.scores).astype(np.float64).reshape(-1)
        frame_labels = as_numpy(found.labels).astype(np.int64).reshape(-1)
        if not len(frame_boxes) == len(frame_scores) == len(frame_labels):
            raise ValueError(f"{where}: {len(frame_boxes)} boxes, {len(frame_scores)} scores and "
                             f"{len(frame_labels)} labels; they must match")
        if not np.isfinite(frame_scores).all():
            raise ValueError(f"{where}: score {int(np.argmin(np.isfinite(frame_scores)))} is not finite")
        if len(frame_labels) and not (0 <= frame_labels.min() and frame_labels.max() < len(frame.classes)):
            raise ValueError(f"{where}: labels must lie in 0..{len(frame.classes) - 1} "
                             f"({list(frame.classes.names)}), got {sorted(set(frame_labels.tolist()))}")
        boxes.append(frame_boxes)
        scores.append(frame_scores)
        labels.append(frame_labels)
    return _table(frames, boxes, labels, scores, [np.full(len(b), UNKNOWN_NUM_PTS) for b in boxes])


def detections_from_table(table: BoxTable, frames: Sequence[Frame], class_names: Sequence[str]) -> list[Detections]:
    """The inverse of :func:`detections_to_table`: the rows of ``table`` (each frame's LiDAR frame, labels
    indexing ``class_names``) as one :class:`Detections` per frame, labels indexing the frame's classes;
    boxes carry velocity unless one of the frame's is unknown (NaN). A frame whose sample the table does not
    list, or a class the frame does not know, is an error."""
    position = {token: index for index, token in enumerate(table.sample_tokens)}
    found = []
    for frame in frames:
        if frame.frame_id not in position:
            raise ValueError(f"the results list no sample {frame.frame_id!r} (they list {len(position)} samples, "
                             f"e.g. {list(position)[:3]}): made for other frames?")
        rows = table.sample == position[frame.frame_id]
        labels = frame.classes.indices([class_names[label] for label in table.label[rows]],
                                       source=f"results of sample {frame.frame_id}")
        boxes = np.column_stack([table.translation[rows], table.size[rows][:, [1, 0, 2]], table.yaw[rows]])
        if np.isfinite(table.velocity[rows]).all():
            boxes = np.column_stack([boxes, table.velocity[rows]])
        found.append(Detections(torch.from_numpy(boxes.astype(np.float32)),
                                torch.from_numpy(table.score[rows].astype(np.float32)), torch.from_numpy(labels)))
    return found


def _table(frames: Sequence[Frame], boxes: list[Boxes3D], labels: list[np.ndarray],
           scores: list[np.ndarray], num_pts: list[np.ndarray]) -> BoxTable:
    tokens = [frame.frame_id for frame in frames]
    if len(set(tokens)) != len(tokens):
        raise ValueError("frame ids must be unique: they name the samples of the evaluation")
    tensor = np.concatenate([b.tensor[:, :7] for b in boxes]).astype(np.float64)
    velocity = np.concatenate([b.tensor[:, 7:9] if b.has_velocity else np.full((len(b), 2), np.nan)
                               for b in boxes]).astype(np.float64)
    centre = tensor[:, 0:3]
    return BoxTable(
        sample_tokens=tuple(tokens), sample=np.repeat(np.arange(len(boxes)), [len(b) for b in boxes]),
        translation=centre, size=tensor[:, [4, 3, 5]],  # nuScenes (w, l, h) = our (dy, dx, dz)
        yaw=tensor[:, 6], velocity=velocity, ego_translation=centre, label=np.concatenate(labels),
        score=np.concatenate(scores), attribute=np.full(len(tensor), NO_ATTRIBUTE), num_pts=np.concatenate(num_pts),
    )


def as_numpy(value: Any) -> np.ndarray:
    """An array from a NumPy array, a list or a (CPU or CUDA) tensor."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


EVALUATIONS.register(Evaluation(
    "nuscenes", lambda dataset, frames, detections: evaluate_frames(frames, detections, dataset.class_ranges),
    frame_summary, frame_summary_names,
))
