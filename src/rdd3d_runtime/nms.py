"""Greedy BEV non-maximum suppression in NumPy, per task, as rdd3d's ``rdd3d.models.nms``: candidates by
descending score (cut to ``pre_max_size``), each kept box suppresses every lower-scoring one it overlaps,
at most ``post_max_size`` kept."""

from __future__ import annotations

import numpy as np

from rdd3d_runtime.geometry import bev_iou_aligned, nearest_axis_aligned_bev
from rdd3d_runtime.manifest import NMSSpec


def _suppresses(boxes: np.ndarray, best: int, others: np.ndarray, nms: NMSSpec, task: int) -> np.ndarray:
    """Whether box ``best`` suppresses each of the boxes ``others`` (indices into ``boxes``)."""
    if nms.kind == "circle":
        distance = ((boxes[others, :2].astype(np.float64) - boxes[best, :2].astype(np.float64)) ** 2).sum(axis=1)
        return distance <= nms.circle_distances[task]
    if nms.kind == "nearest_bev":
        snapped = nearest_axis_aligned_bev(boxes[np.concatenate([[best], others])])
        low = np.maximum(snapped[0, :2], snapped[1:, :2])
        high = np.minimum(snapped[0, 2:], snapped[1:, 2:])
        overlap = np.clip(high - low, 0, None).prod(axis=1)
        areas = (snapped[:, 2] - snapped[:, 0]) * (snapped[:, 3] - snapped[:, 1])
        union = np.maximum(areas[0] + areas[1:] - overlap, np.finfo(snapped.dtype).tiny)
        return (overlap > 0) & (overlap / union > nms.iou_threshold)
    # rotated: only boxes whose circumcircles meet can overlap; the exact IoU decides for those
    radius = np.hypot(boxes[:, 3], boxes[:, 4]).astype(np.float64) / 2
    gap = np.hypot(*(boxes[others, :2].astype(np.float64) - boxes[best, :2].astype(np.float64)).T)
    result = np.zeros(len(others), dtype=bool)
    near = np.flatnonzero(gap <= radius[others] + radius[best])
    if len(near):
        pairs = others[near]
        result[near] = bev_iou_aligned(np.repeat(boxes[best:best + 1], len(pairs), axis=0),
                                       boxes[pairs]) > nms.iou_threshold
    return result


def _greedy(boxes: np.ndarray, order: np.ndarray, nms: NMSSpec, task: int) -> np.ndarray:
    removed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for position, index in enumerate(order):
        if removed[position]:
            continue
        kept.append(index)
        if nms.post_max_size is not None and len(kept) >= nms.post_max_size:
            break
        later = position + 1 + np.flatnonzero(~removed[position + 1:])
        if len(later):
            removed[later[_suppresses(boxes, index, order[later], nms, task)]] = True
    return np.asarray(kept, dtype=np.int64)


def suppress(boxes: np.ndarray, scores: np.ndarray, tasks: np.ndarray, nms: NMSSpec) -> np.ndarray:
    """Indices kept, task by task in ascending order, best first within a task; a box only suppresses
    boxes of its own task."""
    kept = []
    for task in np.unique(tasks):
        members = np.flatnonzero(tasks == task)
        order = members[np.argsort(-scores[members], kind="stable")]
        if nms.kind == "none":
            kept.append(order)
            continue
        if nms.pre_max_size is not None:
            order = order[:nms.pre_max_size]
        kept.append(_greedy(boxes, order, nms, int(task)))
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
