"""Anchor-head decoding in NumPy (SECOND, PointPillars), as rdd3d's ``AnchorHead.decode`` for one frame.

Anchor ``row = (map_row * W + map_column) * A + type`` sits at the map location's x, y with the type's
z, size and yaw (``rdd3d.models.heads.anchors``). Its scores are the sigmoid of its class logits; those
strictly above the threshold are kept, and only their boxes are decoded (the decoding is per anchor, so
this gives the boxes rdd3d decodes for every anchor): SECOND's residual code relative to the anchor, the
yaw turned into the direction classifier's bin, then brought into [-pi, pi). One NMS over all kept
anchors with their best class (class-agnostic), or one per class with each anchor once per class.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from rdd3d_runtime.decode import Detections, sigmoid
from rdd3d_runtime.manifest import AnchorDecodeSpec
from rdd3d_runtime.nms import suppress

BOX_CODE_SIZE = 7


def anchor_positions(low: float, high: float, count: int, align_center: bool) -> np.ndarray:
    """``(count,)`` float64 anchor coordinates along one axis of the output map."""
    steps = np.arange(count, dtype=np.float64)
    if align_center:
        return low + (steps + 0.5) * ((high - low) / count)
    return low + steps * ((high - low) / (count - 1))  # rdd3d refuses maps of fewer than 2 cells


def anchors_at(rows: np.ndarray, map_size: tuple[int, int], spec: AnchorDecodeSpec) -> np.ndarray:
    """``(K,)`` anchor rows of an ``(H, W)`` map -> their ``(K, 7)`` float32 anchors x y z dx dy dz yaw."""
    height, width = map_size
    x0, y0, x1, y1 = spec.anchor_range
    types = np.asarray(spec.anchor_types, dtype=np.float64)  # (A, 5) z dx dy dz yaw
    cell, kind = np.divmod(rows, len(types))
    xs = anchor_positions(x0, x1, width, spec.align_center)[cell % width]
    ys = anchor_positions(y0, y1, height, spec.align_center)[cell // width]
    return np.concatenate([xs[:, None], ys[:, None], types[kind]], axis=1).astype(np.float32)


def _at_anchors(maps: np.ndarray, rows: np.ndarray, num_types: int) -> np.ndarray:
    """``(1, A * D, H, W)`` anchor-major maps -> ``(K, D)`` values of the anchor rows ``rows``."""
    _, channels, height, width = maps.shape
    by_type = maps[0].reshape(num_types, channels // num_types, height * width)
    cell, kind = np.divmod(rows, num_types)
    return by_type[kind, :, cell]


def _limit_period(values: np.ndarray, offset: float, period: float) -> np.ndarray:
    """``values`` moved by whole periods into ``[-offset * period, (1 - offset) * period)``."""
    period = np.float32(period)
    return values - np.floor(values / period + np.float32(offset)) * period


def decode_box_deltas(deltas: np.ndarray, anchors: np.ndarray, spec: AnchorDecodeSpec) -> np.ndarray:
    """``(K, 7)`` box deltas relative to ``(K, 7)`` anchors -> boxes (``rdd3d.models.heads.box_coder``)."""
    sizes = anchors[:, 3:6]
    diagonal = np.hypot(sizes[:, 0:1], sizes[:, 1:2])
    return np.concatenate([
        deltas[:, 0:2] * diagonal + anchors[:, 0:2],
        deltas[:, 2:3] * sizes[:, 2:3] + anchors[:, 2:3],
        np.exp(np.clip(deltas[:, 3:6], *np.float32(spec.log_size_range))) * sizes,
        deltas[:, 6:7] + anchors[:, 6:7],
    ], axis=1)


def _turn_into_bins(yaw: np.ndarray, bins: np.ndarray, spec: AnchorDecodeSpec) -> np.ndarray:
    """The regression fixes the yaw modulo a bin's width; the classifier picks which turn."""
    width = np.float32(2 * math.pi / spec.num_dir_bins)
    offset = np.float32(spec.dir_offset)
    return _limit_period(yaw - offset, spec.dir_limit_offset, width) + offset + width * bins.astype(np.float32)


def decode_anchor_head(maps: Mapping[str, np.ndarray], spec: AnchorDecodeSpec) -> Detections:
    """The detections of one frame from the head's ``(1, ., H, W)`` output maps, by output name."""
    cls_logits = maps[spec.cls_logits]
    num_types = len(spec.anchor_types)
    _, channels, height, width = cls_logits.shape
    num_classes = channels // num_types
    # (A, C, H*W) -> (H*W, A, C) -> (N, C): anchor rows in map order
    scores = sigmoid(cls_logits[0].reshape(num_types, num_classes, -1).transpose(2, 0, 1).reshape(-1, num_classes))
    if spec.class_agnostic_nms:
        labels = scores.argmax(axis=1)
        scores = np.take_along_axis(scores, labels[:, None], axis=1)[:, 0]
        rows = np.arange(len(scores))
        groups = np.zeros(len(scores), dtype=np.int64)
    else:  # every anchor once per class, class-major
        labels = np.repeat(np.arange(num_classes), len(scores))
        rows = np.tile(np.arange(len(scores)), num_classes)
        scores = scores.T.reshape(-1)
        groups = labels
    keep = scores > spec.score_threshold
    rows, scores, labels, groups = rows[keep], scores[keep], labels[keep].astype(np.int64), groups[keep]

    deltas = _at_anchors(maps[spec.box_deltas], rows, num_types)
    boxes = decode_box_deltas(deltas, anchors_at(rows, (height, width), spec), spec)
    yaw = boxes[:, 6]
    if spec.dir_logits is not None:
        bins = _at_anchors(maps[spec.dir_logits], rows, num_types).argmax(axis=1)
        yaw = _turn_into_bins(yaw, bins, spec)
    # rdd3d's one yaw convention for every head: [-pi, pi)
    boxes[:, 6] = _limit_period(yaw, 0.5, 2 * math.pi)
    kept = suppress(boxes, scores, groups, spec.nms)
    return Detections(boxes[kept], scores[kept], labels[kept])
