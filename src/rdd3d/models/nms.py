"""Greedy non-maximum suppression for BEV boxes, on whatever device the boxes live.

Every kind follows OpenPCDet/CenterPoint: candidates sorted by descending score (optionally cut
to ``pre_max_size``), each kept box suppresses every lower-scoring one it overlaps, and at most
``post_max_size`` survivors are returned.

``groups`` runs many independent suppressions in one call (the tasks and samples of a batch, as
torchvision's ``batched_nms``): a box only ever suppresses boxes of its own group, and the size limits
hold per group. One call costs a few vectorised overlap computations for the whole batch instead of a
few per group; on a CPU the overlap's dozens of small tensor operations, not its arithmetic, are the
price of an NMS. Return value: indices into the input, by ascending group, best first within a group.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from rdd3d.core.geometry import axis_aligned_area, axis_aligned_intersection, bev_iou_aligned, \
    nearest_axis_aligned_bev

#: Ranks compared together: the candidates of rank [start, start + this) of every group against every
#: later candidate of their group still alive. Rows suppressed by an earlier block cost nothing, so a
#: blob of cells around each object is suppressed before its overlaps are computed; the kept set is
#: exactly that of the full overlap matrix.
_ROWS_PER_BLOCK = 64

#: ``suppresses(a, b)``: for aligned input indices, whether box a (the higher-scoring) suppresses box b.
PairTest = Callable[[Tensor, Tensor], Tensor]


def _rank_in_group(groups: Tensor) -> Tensor:
    """Position of each entry among the entries of its group, for ``groups`` sorted ascending."""
    positions = torch.arange(len(groups), device=groups.device)
    starts = torch.ones_like(groups, dtype=torch.bool)
    starts[1:] = groups[1:] != groups[:-1]
    first = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=0).values
    return positions - first


def _by_group(members: np.ndarray, group_of: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Indices into ``members`` (positions sorted by group) laid out as a ``(len(slots), widest)`` table,
    one row per group of ``slots``, padded with -1."""
    slot = np.searchsorted(slots, group_of[members])
    starts = np.searchsorted(slot, np.arange(len(slots)))
    column = np.arange(len(members)) - starts[slot]
    table = np.full((len(slots), int(column.max()) + 1), -1, dtype=np.int64)
    table[slot, column] = np.arange(len(members))
    return table


def _close_pairs(rows: np.ndarray, columns: np.ndarray, group_of: np.ndarray, centres: Tensor,
                 reach: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (index into ``rows``, index into ``columns``) of the same group, the column after the row,
    whose centres lie within their two reaches: the only ones the exact test needs. Computed group by
    group in one batched distance, so that a batch of many groups costs no cross-group distances."""
    slots = np.unique(group_of[rows])
    in_slots = np.flatnonzero(np.isin(group_of[columns], slots))  # indices into the caller's columns
    row_table = _by_group(rows, group_of, slots)
    column_table = _by_group(columns[in_slots], group_of, slots)
    # Positions in the sorted candidates, -1 for padding (before every real position).
    row_position, column_position = (
        torch.as_tensor(np.where(table >= 0, members[table], -1), device=centres.device)
        for table, members in ((row_table, rows), (column_table, columns[in_slots])))
    row_at, column_at = row_position.clamp_min(0), column_position.clamp_min(0)
    near = torch.cdist(centres[row_at], centres[column_at]) <= reach[row_at][:, :, None] + reach[column_at][:, None, :]
    near &= (row_position[:, :, None] >= 0) & (row_position[:, :, None] < column_position[:, None, :])
    slot, row, column = (part.cpu().numpy() for part in near.nonzero(as_tuple=True))
    return row_table[slot, row], in_slots[column_table[slot, column]]


def _greedy_nms(
    scores: Tensor,
    groups: Optional[Tensor],
    centres: Tensor,
    reach: Tensor,
    suppresses: PairTest,
    pre_max_size: Optional[int],
    post_max_size: Optional[int],
) -> Tensor:
    """Boxes whose centres lie more than ``reach[a] + reach[b]`` apart never suppress each other; the
    exact ``suppresses`` test runs only on the pairs closer than that."""
    device = scores.device
    groups = torch.zeros_like(scores, dtype=torch.long) if groups is None else groups.to(device=device,
                                                                                             dtype=torch.long)
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(groups[by_score], stable=True)]  # by group, best first within it
    rank = _rank_in_group(groups[order])
    if pre_max_size is not None:
        order, rank = order[rank < pre_max_size], rank[rank < pre_max_size]
    if order.numel() == 0:
        return order
    sorted_groups = groups[order]
    sorted_centres, sorted_reach = centres[order].double(), reach[order].double()
    group_of = sorted_groups.cpu().numpy()
    rank_of = rank.cpu().numpy()
    num_groups = int(group_of.max()) + 1
    limit = len(order) if post_max_size is None else post_max_size
    kept_count = np.zeros(num_groups, dtype=np.int64)
    removed = np.zeros(len(order), dtype=bool)
    kept = np.zeros(len(order), dtype=bool)
    for start in range(0, int(rank_of.max()) + 1, _ROWS_PER_BLOCK):
        open_group = kept_count[group_of] < limit
        alive = np.flatnonzero(~removed & open_group & (rank_of >= start))
        rows = alive[rank_of[alive] < start + _ROWS_PER_BLOCK]
        if len(rows) == 0:
            if not open_group.any():
                break
            continue
        pair_rows, pair_columns = _close_pairs(rows, alive, group_of, sorted_centres, sorted_reach)
        hit = suppresses(order[torch.as_tensor(rows[pair_rows], device=device)],
                         order[torch.as_tensor(alive[pair_columns], device=device)])
        # The greedy pass is sequential; it walks the few close pairs on the CPU whatever the device.
        hit = hit.cpu().numpy()
        pair_rows, pair_columns = pair_rows[hit], pair_columns[hit]
        bounds = np.searchsorted(pair_rows, np.arange(len(rows) + 1))  # pairs come row by row
        for row, position in enumerate(rows):
            group = group_of[position]
            if removed[position] or kept_count[group] >= limit:
                continue
            kept[position] = True
            kept_count[group] += 1
            removed[alive[pair_columns[bounds[row]:bounds[row + 1]]]] = True
    return order[torch.as_tensor(np.flatnonzero(kept), dtype=torch.long, device=device)]


def _half_diagonals(boxes: Tensor) -> Tensor:
    """Radius of each box's BEV circumcircle: two boxes farther apart than the sum cannot overlap."""
    return torch.hypot(boxes[:, 3], boxes[:, 4]) / 2


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, pre_max_size: Optional[int] = None,
                post_max_size: Optional[int] = None, groups: Optional[Tensor] = None) -> Tensor:
    """``(N, 7+)`` boxes, ``(N,)`` scores: a kept box suppresses those with rotated BEV IoU > ``iou_threshold``."""
    bounds = _IoUBound(boxes)

    def suppresses(a: Tensor, b: Tensor) -> Tensor:
        # The exact overlap (dozens of operations a pair) only where a cheap bound leaves the answer open.
        result = bounds.at_most(a, b) > iou_threshold
        open_pairs = result.nonzero().flatten()
        result[open_pairs] = bev_iou_aligned(boxes[a[open_pairs]], boxes[b[open_pairs]]) > iou_threshold
        return result

    return _greedy_nms(scores, groups, boxes[:, :2], _half_diagonals(boxes), suppresses, pre_max_size,
                       post_max_size)


class _IoUBound:
    """An upper bound of two rotated boxes' BEV IoU: their axis-aligned bounding boxes' intersection I
    bounds the true one, so IoU <= I / (A + B - I) (A, B the true areas), and IoU <= min(A, B) / max(A, B)."""

    def __init__(self, boxes: Tensor) -> None:
        boxes = boxes.double()
        cos, sin = torch.cos(boxes[:, 6]).abs(), torch.sin(boxes[:, 6]).abs()
        half_extent = torch.stack([boxes[:, 3] * cos + boxes[:, 4] * sin,
                                   boxes[:, 3] * sin + boxes[:, 4] * cos], dim=1) / 2
        self.low, self.high = boxes[:, :2] - half_extent, boxes[:, :2] + half_extent
        self.area = boxes[:, 3] * boxes[:, 4]

    def at_most(self, a: Tensor, b: Tensor) -> Tensor:
        overlap = (torch.minimum(self.high[a], self.high[b]) - torch.maximum(self.low[a], self.low[b])).clamp_min(0)
        box_overlap = torch.minimum(overlap.prod(dim=1), torch.minimum(self.area[a], self.area[b]))
        # Slack above float32 rounding, so that the bound never falls below the exact value as a caller sees it.
        return box_overlap / (self.area[a] + self.area[b] - box_overlap).clamp_min(1e-300) * (1 + 1e-6) + 1e-12


def nearest_bev_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, pre_max_size: Optional[int] = None,
                    post_max_size: Optional[int] = None, groups: Optional[Tensor] = None) -> Tensor:
    """Axis-aligned NMS: each box's yaw snapped to the nearest axis (OpenPCDet's ``nearest_bev``), then
    a kept box suppresses those with axis-aligned BEV IoU > ``iou_threshold``."""
    snapped = nearest_axis_aligned_bev(boxes)

    def suppresses(a: Tensor, b: Tensor) -> Tensor:
        overlap = axis_aligned_intersection(snapped[a], snapped[b])
        union = axis_aligned_area(snapped[a]) + axis_aligned_area(snapped[b]) - overlap
        return (overlap > 0) & (overlap / union.clamp_min(torch.finfo(union.dtype).tiny) > iou_threshold)

    return _greedy_nms(scores, groups, boxes[:, :2], _half_diagonals(boxes), suppresses, pre_max_size,
                       post_max_size)


def circle_nms(boxes: Tensor, scores: Tensor, dist_thresh: float | Tensor, pre_max_size: Optional[int] = None,
               post_max_size: Optional[int] = None, groups: Optional[Tensor] = None) -> Tensor:
    """CenterPoint's circle NMS: a kept box suppresses those whose BEV centre lies within a
    *squared* distance ``dist_thresh`` (m^2, inclusive) of its own. ``dist_thresh`` may be one value per
    box (the same within a group: CenterPoint's distance is per task)."""
    thresholds = torch.as_tensor(dist_thresh, dtype=torch.float64, device=boxes.device).expand(len(boxes))
    centres = boxes[:, :2].double()

    def suppresses(a: Tensor, b: Tensor) -> Tensor:
        return ((centres[a] - centres[b]) ** 2).sum(dim=-1) <= thresholds[a]

    # Half the distance each, with room for rounding: the exact test above decides.
    reach = thresholds.clamp_min(0).sqrt() / 2 * (1 + 1e-6) + 1e-9
    return _greedy_nms(scores, groups, centres, reach, suppresses, pre_max_size, post_max_size)
