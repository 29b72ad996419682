"""Greedy BEV non-maximum suppression in NumPy, per task, as rdd3d's ``rdd3d.models.nms``: candidates by
descending score (cut to ``pre_max_size``), each kept box suppresses every lower-scoring one it overlaps,
at most ``post_max_size`` kept.

Which box would suppress which is computed for all candidate pairs at once, before the greedy pass, and
only for pairs whose centres lie within reach (boxes whose BEV circumcircles do not meet cannot overlap):
a few vectorised calls instead of one per kept box, whose fixed cost dominated with hundreds of boxes.
"""

from __future__ import annotations

import numpy as np

from rdd3d_runtime.geometry import bev_iou_aligned, nearest_axis_aligned_bev
from rdd3d_runtime.manifest import NMSSpec

#: Candidates whose distances to the later ones are computed in one go (a block x candidates matrix).
_ROWS_PER_BLOCK = 512
#: Pairs whose exact overlap is computed in one go (24 polygon vertices each).
_PAIRS_PER_CHUNK = 32768


def _reach(boxes: np.ndarray, nms: NMSSpec, task: int) -> np.ndarray:
    """Per box a radius: two boxes whose centres lie farther apart than the sum never suppress each other."""
    if nms.kind == "circle":  # half the distance each, with room for rounding: the exact test decides
        return np.full(len(boxes), np.sqrt(max(nms.circle_distances[task], 0.0)) / 2 * (1 + 1e-6) + 1e-9)
    return np.hypot(boxes[:, 3], boxes[:, 4]).astype(np.float64) / 2  # the BEV circumcircle


def _close_pairs(centres: np.ndarray, reach: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of centres within ``reach[i] + reach[j]`` of each other, by ascending i."""
    rows, columns = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(centres), _ROWS_PER_BLOCK):
        stop = min(start + _ROWS_PER_BLOCK, len(centres))
        dx = centres[start:stop, 0, None] - centres[None, start:, 0]
        dy = centres[start:stop, 1, None] - centres[None, start:, 1]
        near = dx * dx + dy * dy <= np.square(reach[start:stop, None] + reach[None, start:])
        near &= np.arange(start, stop)[:, None] < np.arange(start, len(centres))[None, :]
        row, column = np.nonzero(near)
        rows.append(row + start)
        columns.append(column + start)
    return np.concatenate(rows), np.concatenate(columns)


def _suppresses(boxes: np.ndarray, first: np.ndarray, second: np.ndarray, nms: NMSSpec, task: int) -> np.ndarray:
    """For aligned index arrays, whether box ``first[k]`` suppresses box ``second[k]``."""
    if nms.kind == "circle":
        centres = boxes[:, :2].astype(np.float64)
        return ((centres[first] - centres[second]) ** 2).sum(axis=1) <= nms.circle_distances[task]
    if nms.kind == "nearest_bev":
        snapped = nearest_axis_aligned_bev(boxes)
        low = np.maximum(snapped[first, :2], snapped[second, :2])
        high = np.minimum(snapped[first, 2:], snapped[second, 2:])
        overlap = np.clip(high - low, 0, None).prod(axis=1)
        areas = (snapped[:, 2] - snapped[:, 0]) * (snapped[:, 3] - snapped[:, 1])
        union = np.maximum(areas[first] + areas[second] - overlap, np.finfo(snapped.dtype).tiny)
        return (overlap > 0) & (overlap / union > nms.iou_threshold)
    result = np.empty(len(first), dtype=bool)
    for start in range(0, len(first), _PAIRS_PER_CHUNK):
        chunk = slice(start, start + _PAIRS_PER_CHUNK)
        result[chunk] = bev_iou_aligned(boxes[first[chunk]], boxes[second[chunk]]) > nms.iou_threshold
    return result


def _greedy(boxes: np.ndarray, nms: NMSSpec, task: int) -> np.ndarray:
    """Positions kept among ``boxes``, which come best first."""
    rows, columns = _close_pairs(boxes[:, :2].astype(np.float64), _reach(boxes, nms, task))
    hit = _suppresses(boxes, rows, columns, nms, task)
    rows, columns = rows[hit], columns[hit]
    bounds = np.searchsorted(rows, np.arange(len(boxes) + 1))  # the pairs of box i: bounds[i]..bounds[i + 1]
    limit = len(boxes) if nms.post_max_size is None else nms.post_max_size
    removed = np.zeros(len(boxes), dtype=bool)
    kept: list[int] = []
    for position in range(len(boxes)):
        if removed[position]:
            continue
        kept.append(position)
        if len(kept) >= limit:
            break
        removed[columns[bounds[position]:bounds[position + 1]]] = True
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
        kept.append(order[_greedy(boxes[order], nms, int(task))])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
