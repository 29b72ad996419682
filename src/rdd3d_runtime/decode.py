"""CenterPoint decoding in NumPy, as rdd3d's ``decode_detections`` for one frame: per task the top-K
cells over class x H x W, the score and centre-range filters, the box code turned into metres, NMS per
task; tasks concatenated in order, then optionally the best ``max_per_sample``."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from rdd3d_runtime.manifest import CenterDecodeSpec, TaskSpec
from rdd3d_runtime.nms import suppress


class Detections(NamedTuple):
    boxes: np.ndarray  # (M, 7|9) float32: x y z dx dy dz yaw [vx vy]
    scores: np.ndarray  # (M,) float32
    labels: np.ndarray  # (M,) int64, class-table indices


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def decode_boxes(codes: np.ndarray, columns: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                 spec: CenterDecodeSpec) -> np.ndarray:
    """``(K, 8|10)`` box codes at cells ``(column, row)`` of boxes labelled ``labels`` (K,) -> ``(K, 7|9)``
    metric boxes; the yaw of a half-period class is coded as twice the angle."""
    cells = np.stack([columns, rows], axis=1).astype(np.float32)
    xy = (cells + codes[:, 0:2]) * np.float32(spec.cell_size) + np.float32(spec.map_origin)
    sizes = np.exp(np.clip(codes[:, 3:6], *np.float32(spec.log_size_range)))
    periods = np.where(np.isin(labels, spec.half_period_labels), 2, 1).astype(np.float32)
    yaw = np.arctan2(codes[:, 7:8], codes[:, 6:7]) / periods[:, None]
    return np.concatenate([xy, codes[:, 2:3], sizes, yaw, codes[:, 8:]], axis=1).astype(np.float32)


def _task_candidates(maps: Mapping[str, np.ndarray], task: TaskSpec, spec: CenterDecodeSpec) -> Detections:
    probs = sigmoid(maps[task.heatmap][0])  # (C, H, W)
    _, height, width = probs.shape
    flat = probs.reshape(-1)
    top = np.argsort(-flat, kind="stable")[:min(spec.max_per_task, flat.size)]
    scores = flat[top]
    cell = top % (height * width)
    codes = np.concatenate([maps[name][0] for name in task.box_code], axis=0).reshape(-1, height * width)
    labels = np.asarray(task.labels, dtype=np.int64)[top // (height * width)]
    boxes = decode_boxes(codes[:, cell].T, cell % width, cell // width, labels, spec)
    keep = scores > spec.score_threshold
    if spec.post_center_range is not None:
        limits = np.float32(spec.post_center_range)
        keep &= np.all((boxes[:, :3] >= limits[:3]) & (boxes[:, :3] <= limits[3:]), axis=1)
    return Detections(boxes[keep], scores[keep], labels[keep])


def decode_center_head(maps: Mapping[str, np.ndarray], spec: CenterDecodeSpec) -> Detections:
    """The detections of one frame from the head's ``(1, ., H, W)`` output maps, by output name."""
    found = [_task_candidates(maps, task, spec) for task in spec.tasks]
    boxes, scores, labels = (np.concatenate(parts) for parts in zip(*found))
    tasks = np.concatenate([np.full(len(part.scores), index) for index, part in enumerate(found)])
    kept = suppress(boxes, scores, tasks, spec.nms)
    if spec.max_per_sample is not None:
        kept = kept[np.argsort(-scores[kept], kind="stable")[:spec.max_per_sample]]
    return Detections(boxes[kept], scores[kept], labels[kept])
