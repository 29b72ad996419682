"""Exact overlap of rotated boxes, vectorised over all pairs, in plain PyTorch (CPU or CUDA).

Boxes follow :mod:`rdd3d.core.types` (OpenPCDet): ``(x, y, z, dx, dy, dz, yaw, ...)`` with
``(x, y, z)`` the centre, ``dx`` the length along the heading and ``yaw`` counter-clockwise about
+z. The bird's-eye-view (BEV) rectangle of a box is ``(x, y, dx, dy, yaw)`` (columns 0, 1, 3, 4, 6).

The intersection of two convex quadrilaterals is a convex polygon whose vertices are among
(a) the corners of each rectangle lying inside the other and (b) the crossings of their edges.
All 24 candidates are computed for every pair at once, invalid ones masked, the valid ones sorted
by angle around their mean and the area taken with the shoelace formula. Work is done in float64
so that results agree with an exact polygon library to ~1e-12; a point within a scale-relative
tolerance of a boundary counts as on it, which makes identical, touching and nested boxes and
parallel edges come out right.

Inputs may be torch tensors or numpy arrays; results are torch tensors on the inputs' device,
float64 if an input was float64, else float32.
"""

from __future__ import annotations

import numpy as np
import torch

#: Columns of a box that make its BEV rectangle (x, y, length, width, angle).
BEV_COLUMNS = (0, 1, 3, 4, 6)
#: Relative tolerance for "on the boundary" (times the coordinates' magnitude).
_REL_TOL = 1e-9
#: Pairs computed at once (about 4 KB of temporaries each: ~65 MB a chunk).
_PAIRS_PER_CHUNK = 1 << 14

_CORNER_SIGNS = ((0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5))  # counter-clockwise


def _as_tensor(boxes, name: str, min_columns: int) -> torch.Tensor:
    tensor = torch.as_tensor(boxes)
    if tensor.ndim != 2 or tensor.shape[1] < min_columns:
        raise ValueError(f"{name} must be (N, >={min_columns}), got shape {tuple(tensor.shape)}")
    return tensor


def _result_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


def _check_pair(boxes_a, boxes_b, min_columns: int) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    a = _as_tensor(boxes_a, "boxes_a", min_columns)
    b = _as_tensor(boxes_b, "boxes_b", min_columns)
    if a.device != b.device:
        raise ValueError(f"boxes_a is on {a.device} but boxes_b on {b.device}")
    return a, b, _result_dtype(a, b)


def rect_corners(rects: torch.Tensor) -> torch.Tensor:
    """``(..., 5)`` rectangles (cx, cy, length, width, angle) -> ``(..., 4, 2)`` corners,
    counter-clockwise starting at (+length/2, +width/2) in the rectangle's own frame."""
    signs = rects.new_tensor(_CORNER_SIGNS)  # (4, 2)
    local = signs * rects[..., None, 2:4]  # (..., 4, 2)
    cos, sin = torch.cos(rects[..., None, 4]), torch.sin(rects[..., None, 4])
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return torch.stack([x, y], dim=-1) + rects[..., None, 0:2]


def _inside(points: torch.Tensor, rects: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """``(..., P, 2)`` points in ``(..., 5)`` rectangles (boundary included) -> ``(..., P)`` bool."""
    shifted = points - rects[..., None, 0:2]
    cos, sin = torch.cos(rects[..., None, 4]), torch.sin(rects[..., None, 4])
    along = shifted[..., 0] * cos + shifted[..., 1] * sin
    across = -shifted[..., 0] * sin + shifted[..., 1] * cos
    return (along.abs() <= rects[..., None, 2] / 2 + tol) & (across.abs() <= rects[..., None, 3] / 2 + tol)


def _edge_crossings(corners_a: torch.Tensor, corners_b: torch.Tensor, tol: torch.Tensor):
    """Crossings of every edge of a with every edge of b: ``(..., 16, 2)`` points and validity."""
    start_a, start_b = corners_a[..., :, None, :], corners_b[..., None, :, :]  # (..., 4, 1, 2) (..., 1, 4, 2)
    edge_a = torch.roll(corners_a, -1, dims=-2)[..., :, None, :] - start_a
    edge_b = torch.roll(corners_b, -1, dims=-2)[..., None, :, :] - start_b

    def cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    denom = cross(edge_a, edge_b)  # (..., 4, 4)
    gap = start_b - start_a
    # Parallel edges never cross at a single point; their shared stretch is covered by corners.
    parallel = denom.abs() <= 1e-12 * edge_a.norm(dim=-1) * edge_b.norm(dim=-1)
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t = cross(gap, edge_b) / safe  # position along edge a
    u = cross(gap, edge_a) / safe  # position along edge b
    # Tolerances in parameter space: tol (a length) divided by the edge length.
    tol_a = tol[..., None, None] / edge_a.norm(dim=-1).clamp_min(1e-300)
    tol_b = tol[..., None, None] / edge_b.norm(dim=-1).clamp_min(1e-300)
    valid = ~parallel & (t >= -tol_a) & (t <= 1 + tol_a) & (u >= -tol_b) & (u <= 1 + tol_b)
    points = start_a + t[..., None] * edge_a
    batch = points.shape[:-3]
    return points.reshape(*batch, 16, 2), valid.reshape(*batch, 16)


def rect_intersection_area(rects_a: torch.Tensor, rects_b: torch.Tensor) -> torch.Tensor:
    """Exact intersection area of rectangles ``(..., 5)`` and ``(..., 5)`` (broadcast) -> ``(...)``.

    Rectangles are ``(cx, cy, length, width, angle)``; computed in float64.
    """
    rects_a, rects_b = torch.broadcast_tensors(rects_a.double(), rects_b.double())
    corners_a, corners_b = rect_corners(rects_a), rect_corners(rects_b)  # (..., 4, 2)
    scale = torch.maximum(corners_a.abs().amax(dim=(-1, -2)), corners_b.abs().amax(dim=(-1, -2)))
    tol = _REL_TOL * (1.0 + scale)  # (...)

    crossings, crossing_valid = _edge_crossings(corners_a, corners_b, tol)
    points = torch.cat([corners_a, corners_b, crossings], dim=-2)  # (..., 24, 2)
    valid = torch.cat(
        [_inside(corners_a, rects_b, tol[..., None]), _inside(corners_b, rects_a, tol[..., None]), crossing_valid],
        dim=-1,
    )  # (..., 24)

    count = valid.sum(dim=-1, keepdim=True).clamp_min(1)
    centre = (points * valid[..., None]).sum(dim=-2) / count  # (..., 2)
    offset = points - centre[..., None, :]
    angle = torch.atan2(offset[..., 1], offset[..., 0]).masked_fill(~valid, 10.0)  # invalid sort last
    order = angle.argsort(dim=-1)
    ring = torch.gather(points, -2, order[..., None].expand_as(points))
    ring_valid = torch.gather(valid, -1, order)
    # Invalid slots repeat the first vertex: they add nothing and close the polygon.
    ring = torch.where(ring_valid[..., None], ring, ring[..., :1, :])
    following = torch.roll(ring, -1, dims=-2)
    twice_area = (ring[..., 0] * following[..., 1] - ring[..., 1] * following[..., 0]).sum(dim=-1)
    return twice_area.abs() / 2


def _in_chunks(fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Apply an aligned function to rows (a_i, b_i) a chunk at a time -> ``(N,)`` float64."""
    if a.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=a.device)
    step = _PAIRS_PER_CHUNK
    return torch.cat([fn(a[i : i + step], b[i : i + step]) for i in range(0, a.shape[0], step)])


def _all_pairs(fn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Apply an aligned function to every pair (a_i, b_j) -> ``(N, M)`` float64. Pairs whose
    circumscribed circles do not meet cannot overlap: they are skipped and left at 0."""
    radius_a = torch.hypot(a[:, 3], a[:, 4]).double() / 2
    radius_b = torch.hypot(b[:, 3], b[:, 4]).double() / 2
    near = torch.cdist(a[:, :2].double(), b[:, :2].double()) < radius_a[:, None] + radius_b[None, :]
    rows, cols = near.nonzero(as_tuple=True)
    result = torch.zeros(near.shape, dtype=torch.float64, device=a.device)
    result[rows, cols] = _in_chunks(fn, a[rows], b[cols])
    return result


def _bev_rects(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[..., list(BEV_COLUMNS)]


def _bev_area_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return rect_intersection_area(_bev_rects(a), _bev_rects(b))


def bev_iou_from_overlap(overlap: torch.Tensor, boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """BEV IoU from a precomputed BEV intersection area; boxes ``(..., 7+)`` broadcast with it."""
    a, b = torch.as_tensor(boxes_a).double(), torch.as_tensor(boxes_b).double()
    union = a[..., 3] * a[..., 4] + b[..., 3] * b[..., 4] - overlap
    return overlap / union.clamp_min(1e-300)


def iou3d_from_overlap(overlap: torch.Tensor, boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """3D IoU from a precomputed BEV intersection area: times the z-overlap, over the union of volumes."""
    a, b = torch.as_tensor(boxes_a).double(), torch.as_tensor(boxes_b).double()
    top = torch.minimum(a[..., 2] + a[..., 5] / 2, b[..., 2] + b[..., 5] / 2)
    bottom = torch.maximum(a[..., 2] - a[..., 5] / 2, b[..., 2] - b[..., 5] / 2)
    inter = overlap * (top - bottom).clamp_min(0)
    union = a[..., 3] * a[..., 4] * a[..., 5] + b[..., 3] * b[..., 4] * b[..., 5] - inter
    return inter / union.clamp_min(1e-300)


def _bev_iou_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return bev_iou_from_overlap(_bev_area_aligned(a, b), a, b)


def _iou3d_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return iou3d_from_overlap(_bev_area_aligned(a, b), a, b)


def _aligned(fn, boxes_a, boxes_b, min_columns: int) -> torch.Tensor:
    a, b, dtype = _check_pair(boxes_a, boxes_b, min_columns)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"aligned boxes need equal counts, got {a.shape[0]} and {b.shape[0]}")
    return _in_chunks(fn, a, b).to(dtype)


def bev_overlap_area(boxes_a, boxes_b) -> torch.Tensor:
    """``(N, 7+)`` and ``(M, 7+)`` boxes -> ``(N, M)`` area of their BEV rectangles' intersection."""
    a, b, dtype = _check_pair(boxes_a, boxes_b, 7)
    return _all_pairs(_bev_area_aligned, a, b).to(dtype)


def bev_iou(boxes_a, boxes_b) -> torch.Tensor:
    """``(N, 7+)`` and ``(M, 7+)`` boxes -> ``(N, M)`` exact IoU of their rotated BEV rectangles."""
    a, b, dtype = _check_pair(boxes_a, boxes_b, 7)
    return _all_pairs(_bev_iou_aligned, a, b).to(dtype)


def iou3d(boxes_a, boxes_b) -> torch.Tensor:
    """``(N, 7+)`` and ``(M, 7+)`` boxes -> ``(N, M)`` 3D IoU: BEV overlap x z-overlap / union of volumes."""
    a, b, dtype = _check_pair(boxes_a, boxes_b, 7)
    return _all_pairs(_iou3d_aligned, a, b).to(dtype)


def bev_overlap_area_aligned(boxes_a, boxes_b) -> torch.Tensor:
    """``(N, 7+)`` and ``(N, 7+)`` -> ``(N,)`` BEV intersection area of box i of a with box i of b."""
    return _aligned(_bev_area_aligned, boxes_a, boxes_b, 7)


def bev_iou_aligned(boxes_a, boxes_b) -> torch.Tensor:
    """``(N, 7+)`` and ``(N, 7+)`` -> ``(N,)`` BEV IoU of box i of a with box i of b."""
    return _aligned(_bev_iou_aligned, boxes_a, boxes_b, 7)


def iou3d_aligned(boxes_a, boxes_b) -> torch.Tensor:
    """``(N, 7+)`` and ``(N, 7+)`` -> ``(N,)`` 3D IoU of box i of a with box i of b."""
    return _aligned(_iou3d_aligned, boxes_a, boxes_b, 7)


def axis_aligned_intersection(boxes_a, boxes_b) -> torch.Tensor:
    """Axis-aligned boxes ``(..., 4)`` and ``(..., 4)`` as ``(x1, y1, x2, y2)``, broadcast against
    each other -> ``(...)`` intersection area (0 when they do not overlap)."""
    a, b = torch.as_tensor(boxes_a), torch.as_tensor(boxes_b)
    dtype = _result_dtype(a, b)
    a, b = a[..., :4].to(dtype), b[..., :4].to(dtype)
    low = torch.maximum(a[..., :2], b[..., :2])
    high = torch.minimum(a[..., 2:], b[..., 2:])
    return (high - low).clamp_min(0).prod(dim=-1)


def axis_aligned_area(boxes) -> torch.Tensor:
    """``(..., 4)`` boxes ``(x1, y1, x2, y2)`` -> ``(...)`` areas."""
    boxes = torch.as_tensor(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def axis_aligned_iou(boxes_a, boxes_b) -> torch.Tensor:
    """Axis-aligned ``(N, 4)`` and ``(M, 4)`` boxes ``(x1, y1, x2, y2)`` -> ``(N, M)`` IoU."""
    a, b, dtype = _check_pair(boxes_a, boxes_b, 4)
    a, b = a.to(dtype), b.to(dtype)
    inter = axis_aligned_intersection(a[:, None, :], b[None, :, :])
    union = axis_aligned_area(a)[:, None] + axis_aligned_area(b)[None, :] - inter
    return torch.where(inter > 0, inter / union.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(inter))


def nearest_axis_aligned_bev(boxes) -> torch.Tensor:
    """``(N, 7+)`` boxes -> ``(N, 4)`` BEV boxes ``(x1, y1, x2, y2)`` after snapping each yaw to the
    nearest multiple of pi/2 (OpenPCDet's cheap stand-in for rotated IoU, e.g. in NMS)."""
    boxes = _as_tensor(boxes, "boxes", 7)
    yaw = torch.remainder(boxes[:, 6] + np.pi / 4, np.pi) - np.pi / 4  # in [-pi/4, 3pi/4)
    across = yaw.abs() > np.pi / 4  # closer to +-pi/2: length lies along y
    size = torch.where(across[:, None], boxes[:, [4, 3]], boxes[:, [3, 4]])
    return torch.cat([boxes[:, :2] - size / 2, boxes[:, :2] + size / 2], dim=1)


def nearest_bev_iou(boxes_a, boxes_b) -> torch.Tensor:
    """``(N, 7+)`` and ``(M, 7+)`` -> ``(N, M)`` axis-aligned IoU of the yaw-snapped BEV boxes."""
    return axis_aligned_iou(nearest_axis_aligned_bev(boxes_a), nearest_axis_aligned_bev(boxes_b))
