"""Greedy non-maximum suppression for BEV boxes, on whatever device the boxes live.

Every kind follows OpenPCDet/CenterPoint: candidates sorted by descending score (optionally cut
to ``pre_max_size``), each kept box suppresses every lower-scoring one it overlaps, and at most
``post_max_size`` survivors are returned. Return value: indices into the input, best first.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from rdd3d.evaluation.geometry import bev_iou, nearest_bev_iou


#: Candidates whose overlaps are computed together. Only rows still alive when their block comes up are
#: compared, so clustered candidates (a blob of cells around each object) are suppressed before they
#: cost anything; the kept set is exactly that of the full matrix.
_ROWS_PER_BLOCK = 64


def _greedy_nms(
    boxes: Tensor,
    scores: Tensor,
    suppresses: Callable[[Tensor, Tensor], Tensor],
    pre_max_size: Optional[int],
    post_max_size: Optional[int],
) -> Tensor:
    """``suppresses(row_boxes, column_boxes)`` gives the (R, C) bool matrix "row box suppresses column box"."""
    order = torch.argsort(scores, descending=True, stable=True)[:pre_max_size]
    if order.numel() == 0:
        return order
    sorted_boxes = boxes[order]
    limit = len(order) if post_max_size is None else post_max_size
    removed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for start in range(0, len(order), _ROWS_PER_BLOCK):
        if len(kept) >= limit:
            break
        alive = np.flatnonzero(~removed[start:]) + start  # this block's live rows, then every later candidate
        rows = alive[alive < start + _ROWS_PER_BLOCK]
        if len(rows) == 0:
            continue
        # The greedy pass is sequential; it walks a small bool matrix on the CPU whatever the device.
        overlaps = suppresses(sorted_boxes[torch.as_tensor(rows, device=order.device)],
                              sorted_boxes[torch.as_tensor(alive, device=order.device)]).cpu().numpy()
        for row, position in enumerate(rows):
            if removed[position]:
                continue
            kept.append(int(position))
            removed[alive[overlaps[row]]] = True
    kept_positions = torch.as_tensor(kept, dtype=torch.long, device=order.device)
    return order[kept_positions][:post_max_size]


def rotated_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    pre_max_size: Optional[int] = None,
    post_max_size: Optional[int] = None,
) -> Tensor:
    """``(N, 7+)`` boxes, ``(N,)`` scores: a kept box suppresses those with rotated BEV IoU > ``iou_threshold``."""
    return _iou_nms(bev_iou, boxes, scores, iou_threshold, pre_max_size, post_max_size)


def nearest_bev_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    pre_max_size: Optional[int] = None,
    post_max_size: Optional[int] = None,
) -> Tensor:
    """Axis-aligned NMS: each box's yaw snapped to the nearest axis (OpenPCDet's ``nearest_bev``), then
    a kept box suppresses those with axis-aligned BEV IoU > ``iou_threshold``."""
    return _iou_nms(nearest_bev_iou, boxes, scores, iou_threshold, pre_max_size, post_max_size)


def _iou_nms(iou: Callable[[Tensor, Tensor], Tensor], boxes: Tensor, scores: Tensor, iou_threshold: float,
             pre_max_size: Optional[int], post_max_size: Optional[int]) -> Tensor:
    return _greedy_nms(boxes, scores, lambda rows, columns: iou(rows, columns) > iou_threshold, pre_max_size,
                       post_max_size)


def circle_nms(
    boxes: Tensor,
    scores: Tensor,
    dist_thresh: float,
    pre_max_size: Optional[int] = None,
    post_max_size: Optional[int] = None,
) -> Tensor:
    """CenterPoint's circle NMS: a kept box suppresses those whose BEV centre lies within a
    *squared* distance ``dist_thresh`` (m^2, inclusive) of its own."""

    def close(rows: Tensor, columns: Tensor) -> Tensor:
        return ((rows[:, None, :2] - columns[None, :, :2]) ** 2).sum(dim=-1) <= dist_thresh

    return _greedy_nms(boxes, scores, close, pre_max_size, post_max_size)
