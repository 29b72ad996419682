"""Bird's-eye-view overlap of rotated boxes in NumPy (float64), as rdd3d's ``rdd3d.core.geometry``.

A box is ``(x, y, z, dx, dy, dz, yaw, ...)``; its BEV rectangle is columns 0, 1, 3, 4, 6. The overlap of
two rectangles is the convex polygon of the corners of each inside the other and the crossings of their
edges: all 24 candidates are computed for every pair, the valid ones sorted by angle about their mean,
and the area taken with the shoelace formula. A point within a small scale-relative tolerance of a
boundary counts as on it, so that identical, touching and nested boxes come out right.
"""

from __future__ import annotations

import numpy as np

_REL_TOL = 1e-9
_CORNER_SIGNS = np.array([(0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5)])  # counter-clockwise


def _rects(boxes: np.ndarray) -> np.ndarray:
    return boxes[:, [0, 1, 3, 4, 6]].astype(np.float64)


def _corners(rects: np.ndarray) -> np.ndarray:
    """``(N, 5)`` -> ``(N, 4, 2)`` corners, counter-clockwise."""
    local = _CORNER_SIGNS[None] * rects[:, None, 2:4]
    cos, sin = np.cos(rects[:, None, 4]), np.sin(rects[:, None, 4])
    return np.stack([local[..., 0] * cos - local[..., 1] * sin, local[..., 0] * sin + local[..., 1] * cos],
                    axis=-1) + rects[:, None, 0:2]


def _inside(points: np.ndarray, rects: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """``(N, P, 2)`` points in ``(N, 5)`` rectangles, boundary included -> ``(N, P)``."""
    shifted = points - rects[:, None, 0:2]
    cos, sin = np.cos(rects[:, None, 4]), np.sin(rects[:, None, 4])
    along = shifted[..., 0] * cos + shifted[..., 1] * sin
    across = -shifted[..., 0] * sin + shifted[..., 1] * cos
    return ((np.abs(along) <= rects[:, None, 2] / 2 + tol[:, None])
            & (np.abs(across) <= rects[:, None, 3] / 2 + tol[:, None]))


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _edge_crossings(corners_a: np.ndarray, corners_b: np.ndarray, tol: np.ndarray):
    """Crossings of each edge of a with each edge of b: ``(N, 16, 2)`` points and validity."""
    start_a, start_b = corners_a[:, :, None, :], corners_b[:, None, :, :]
    edge_a = np.roll(corners_a, -1, axis=1)[:, :, None, :] - start_a
    edge_b = np.roll(corners_b, -1, axis=1)[:, None, :, :] - start_b
    length_a, length_b = np.linalg.norm(edge_a, axis=-1), np.linalg.norm(edge_b, axis=-1)
    denominator = _cross(edge_a, edge_b)  # (N, 4, 4)
    parallel = np.abs(denominator) <= 1e-12 * length_a * length_b  # their shared stretch is made of corners
    safe = np.where(parallel, 1.0, denominator)
    gap = start_b - start_a
    along_a, along_b = _cross(gap, edge_b) / safe, _cross(gap, edge_a) / safe
    tol_a = tol[:, None, None] / np.maximum(length_a, 1e-300)
    tol_b = tol[:, None, None] / np.maximum(length_b, 1e-300)
    valid = (~parallel & (along_a >= -tol_a) & (along_a <= 1 + tol_a) & (along_b >= -tol_b)
             & (along_b <= 1 + tol_b))
    points = start_a + along_a[..., None] * edge_a
    return points.reshape(-1, 16, 2), valid.reshape(-1, 16)


def bev_overlap_aligned(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """``(N, 7+)`` and ``(N, 7+)`` boxes -> ``(N,)`` BEV intersection area of box i of a with box i of b."""
    rects_a, rects_b = _rects(boxes_a), _rects(boxes_b)
    corners_a, corners_b = _corners(rects_a), _corners(rects_b)
    scale = np.maximum(np.abs(corners_a).max(axis=(1, 2)), np.abs(corners_b).max(axis=(1, 2)))
    tol = _REL_TOL * (1.0 + scale)
    crossings, crossing_valid = _edge_crossings(corners_a, corners_b, tol)
    points = np.concatenate([corners_a, corners_b, crossings], axis=1)  # (N, 24, 2)
    valid = np.concatenate([_inside(corners_a, rects_b, tol), _inside(corners_b, rects_a, tol), crossing_valid],
                           axis=1)
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    centre = (points * valid[..., None]).sum(axis=1) / count
    offset = points - centre[:, None, :]
    angle = np.where(valid, np.arctan2(offset[..., 1], offset[..., 0]), 10.0)  # invalid ones sort last
    order = np.argsort(angle, axis=1, kind="stable")
    ring = np.take_along_axis(points, order[..., None], axis=1)
    ring_valid = np.take_along_axis(valid, order, axis=1)
    ring = np.where(ring_valid[..., None], ring, ring[:, :1, :])  # invalid slots repeat the first vertex
    following = np.roll(ring, -1, axis=1)
    return np.abs(_cross(ring, following).sum(axis=1)) / 2


def bev_iou_aligned(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """``(N, 7+)`` and ``(N, 7+)`` -> ``(N,)`` rotated BEV IoU of box i of a with box i of b."""
    overlap = bev_overlap_aligned(boxes_a, boxes_b)
    a, b = boxes_a.astype(np.float64), boxes_b.astype(np.float64)
    union = a[:, 3] * a[:, 4] + b[:, 3] * b[:, 4] - overlap
    return overlap / np.maximum(union, 1e-300)


def nearest_axis_aligned_bev(boxes: np.ndarray) -> np.ndarray:
    """``(N, 7+)`` -> ``(N, 4)`` ``(x1, y1, x2, y2)`` after snapping each yaw to the nearest axis."""
    yaw = np.remainder(boxes[:, 6] + np.pi / 4, np.pi) - np.pi / 4  # in [-pi/4, 3pi/4)
    across = np.abs(yaw) > np.pi / 4  # nearer +-pi/2: the length lies along y
    size = np.where(across[:, None], boxes[:, [4, 3]], boxes[:, [3, 4]])
    return np.concatenate([boxes[:, :2] - size / 2, boxes[:, :2] + size / 2], axis=1)
