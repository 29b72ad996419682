"""Reading BEV maps at metric places: rotated box pooling, resampling between grids, box areas (the
Gaussian area of a centre head's heatmap, the anchors inside a box for an anchor head).

Every function takes metric coordinates and the map's own :class:`BEVGeometry`, so a teacher and a
student whose maps differ in voxel size, stride or range are read at the same place in the world.
Bilinear sampling reads a map as ``grid_sample`` with ``align_corners=False`` does, which puts cell ``j``'s
centre at ``j + 0.5`` as :meth:`BEVGeometry.metric_to_cells` does; samples off the map read zeros.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rdd3d.distill.base import BEVGeometry
from rdd3d.models.heads.targets import BEVGrid, box_cells

def _sampling_grid(xy: Tensor, geometry: BEVGeometry, map_size: tuple[int, int]) -> Tensor:
    """``(..., 2)`` metric x, y -> ``grid_sample`` coordinates in [-1, 1] over an ``(H, W)`` map."""
    height, width = map_size
    cells = geometry.metric_to_cells(xy)  # (..., 2) column, row
    return cells * cells.new_tensor([2.0 / width, 2.0 / height]) - 1.0


def sample_points(feature_map: Tensor, geometry: BEVGeometry, xy: Tensor, batch_index: Tensor,
                  scale: float = 1.0) -> Tensor:
    """Bilinear values of ``feature_map`` (B, C, H, W) at metric points ``xy`` (K, P, 2), point set
    ``k`` read in sample ``batch_index[k]``, times ``scale`` -> ``(K, P, C)``, channels last; as
    ``grid_sample`` with ``align_corners=False`` and zero padding reads them (corners off the map count zero).

    One ``embedding_bag`` over the map's cells: each point is the weighted sum of its four corner cells, a
    fused gather with a cheap backward (``grid_sample`` on CPU costs several times more here). A map laid out
    channels-last is read in place; ``scale`` rides on the corner weights, not on a pass over the result."""
    batch, channels, height, width = feature_map.shape
    if batch_index.numel() and int(batch_index.max()) >= batch:
        raise ValueError(f"sample_points: batch_index reaches {int(batch_index.max())} but the map holds "
                         f"{batch} samples")
    count, points = xy.shape[:2]
    position = geometry.metric_to_cells(xy.to(torch.promote_types(xy.dtype, torch.float32))) - 0.5  # (K, P, 2)
    low = position.floor()
    fraction = position - low
    low = low.long()
    corner_index, corner_weight = [], []
    for step_row in (0, 1):
        for step_column in (0, 1):
            column, row = low[..., 0] + step_column, low[..., 1] + step_row
            weight = ((fraction[..., 0] if step_column else 1 - fraction[..., 0])
                      * (fraction[..., 1] if step_row else 1 - fraction[..., 1]))
            on_map = (column >= 0) & (column < width) & (row >= 0) & (row < height)
            flat = (batch_index[:, None] * height + row.clamp(0, height - 1)) * width + column.clamp(0, width - 1)
            corner_index.append(flat)
            corner_weight.append(weight * on_map * scale)
    cells = feature_map.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # (B*H*W, C)
    sampled = F.embedding_bag(torch.stack(corner_index, dim=-1).view(-1, 4), cells, mode="sum",
                              per_sample_weights=torch.stack(corner_weight, dim=-1).view(-1, 4).to(cells.dtype))
    return sampled.view(count, points, channels)


def box_grid_points(boxes: Tensor, grid_size: int) -> Tensor:
    """``(K, 7+)`` metric boxes -> ``(K, grid_size², 2)`` metric x, y: the centres of a ``grid_size ×
    grid_size`` split of each rotated BEV rectangle, row-major with rows across the box (its ``dy``
    axis) and columns along its heading (``dx``)."""
    steps = (torch.arange(grid_size, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid_size - 0.5
    across, along = torch.meshgrid(steps, steps, indexing="ij")  # (g, g) fractions of dy, dx
    local_x = along.reshape(1, -1) * boxes[:, 3:4]  # (K, g²) metres along the heading
    local_y = across.reshape(1, -1) * boxes[:, 4:5]
    cos, sin = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + cos * local_x - sin * local_y
    y = boxes[:, 1:2] + sin * local_x + cos * local_y
    return torch.stack([x, y], dim=-1)


def pool_boxes(
    feature_map: Tensor, geometry: BEVGeometry, boxes: Tensor, batch_index: Tensor, grid_size: int = 7
) -> Tensor:
    """Rotated BEV grid pooling: ``feature_map`` (B, C, H, W) read bilinearly at ``grid_size²`` points
    spread over each metric box (x, y, dx, dy, yaw of ``boxes`` (K, 7+)) in sample ``batch_index`` (K,)
    -> ``(K, C, grid_size, grid_size)``, laid out as :func:`box_grid_points`."""
    if grid_size < 1:
        raise ValueError(f"pool_boxes: grid_size must be >= 1, got {grid_size}")
    if boxes.ndim != 2 or boxes.shape[1] < 7 or batch_index.shape != boxes.shape[:1]:
        raise ValueError(f"pool_boxes: needs boxes (K, 7+) and batch_index (K,), got {tuple(boxes.shape)} and "
                         f"{tuple(batch_index.shape)}")
    return pool_boxes_channels_last(feature_map, geometry, boxes, batch_index, grid_size).transpose(1, 2).unflatten(
        2, (grid_size, grid_size))


def pool_boxes_channels_last(
    feature_map: Tensor, geometry: BEVGeometry, boxes: Tensor, batch_index: Tensor, grid_size: int = 7,
    scale: float = 1.0,
) -> Tensor:
    """:func:`pool_boxes` laid out ``(K, grid_size², C)``, times ``scale``: channels last, as a channel softmax
    reads them fastest."""
    if grid_size < 1:
        raise ValueError(f"pool_boxes: grid_size must be >= 1, got {grid_size}")
    if boxes.ndim != 2 or boxes.shape[1] < 7 or batch_index.shape != boxes.shape[:1]:
        raise ValueError(f"pool_boxes: needs boxes (K, 7+) and batch_index (K,), got {tuple(boxes.shape)} and "
                         f"{tuple(batch_index.shape)}")
    return sample_points(feature_map, geometry, box_grid_points(boxes, grid_size), batch_index, scale)


def resample_to(feature_map: Tensor, source: BEVGeometry, target: BEVGeometry, map_size: tuple[int, int]) -> Tensor:
    """``feature_map`` (B, C, h, w) on ``source``'s grid, read bilinearly at the cell centres of an
    ``(H, W)`` map on ``target``'s grid -> ``(B, C, H, W)``; the map itself when the grids are one."""
    if source == target and tuple(feature_map.shape[-2:]) == tuple(map_size):
        return feature_map
    height, width = map_size
    dtype = torch.promote_types(feature_map.dtype, torch.float32)
    rows = torch.arange(height, device=feature_map.device, dtype=dtype) + 0.5
    columns = torch.arange(width, device=feature_map.device, dtype=dtype) + 0.5
    cells = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), dim=-1)  # (H, W, 2) column, row
    xy = cells * cells.new_tensor(target.cell_size) + cells.new_tensor(target.point_cloud_range[:2])
    grid = _sampling_grid(xy, source, tuple(feature_map.shape[-2:]))
    grid = grid.to(feature_map.dtype).expand(feature_map.shape[0], -1, -1, -1)
    return F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class MapArea(NamedTuple):
    """The cells of each box's area on one map, flat over all boxes (:func:`gaussian_areas`,
    :func:`anchor_areas`). Its size follows the boxes (an untrained student's huge boxes cover at most
    the map), never a padded window."""

    owner: Tensor  # (A,) long: the box each cell belongs to
    flat_index: Tensor  # (A,) long: row * W + column on the map
    count: Tensor  # (K,) long: cells of each box's area
    on_map: Tensor  # (K,) bool: the box has an area on the map (see each constructor)


def _window_cells(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every cell of each box's window, columns ``low[:, 0]..high[:, 0]`` and rows ``low[:, 1]..high[:, 1]``
    (``(K, 2)`` long, inclusive; an empty window where high < low) -> owner, column, row, all ``(A_window,)``."""
    span = (high - low + 1).clamp_min(0)  # (K, 2)
    window = span[:, 0] * span[:, 1]
    owner = torch.repeat_interleave(torch.arange(low.shape[0], device=low.device), window)  # (A_window,)
    local = torch.arange(owner.shape[0], device=low.device) - (window.cumsum(0) - window)[owner]
    return owner, low[owner, 0] + local % span[owner, 0], low[owner, 1] + local // span[owner, 0]


def gaussian_areas(boxes: Tensor, grid: BEVGrid, gaussian_overlap: float = 0.1, min_radius: int = 2) -> MapArea:
    """Gaussian areas of ``(K, 7+)`` metric boxes on ``grid``; centre cell and radius as CenterPoint's
    targets place them (:func:`rdd3d.models.heads.targets.box_cells`): the cells at most the radius
    from the centre cell (``Δcolumn² + Δrow² <= r²``) that lie on the map. Every area holds at least its
    (clamped) centre cell; ``on_map``: the box centre lies on the map."""
    cells = box_cells(boxes, grid, gaussian_overlap, min_radius)
    radius = cells.radius.clamp_max(grid.height + grid.width)  # a wider disc adds no cell of the map
    column, row = cells.cell[:, 0], cells.cell[:, 1]
    low = torch.stack([(column - radius).clamp_min(0), (row - radius).clamp_min(0)], dim=1)  # (K, 2)
    high = torch.stack([(column + radius).clamp_max(grid.width - 1), (row + radius).clamp_max(grid.height - 1)], dim=1)
    owner, columns, rows = _window_cells(low, high)  # the window around each disc, cut to the map
    in_disc = (columns - column[owner]) ** 2 + (rows - row[owner]) ** 2 <= radius[owner] ** 2
    owner = owner[in_disc]
    flat_index = rows[in_disc] * grid.width + columns[in_disc]
    return MapArea(owner, flat_index, torch.bincount(owner, minlength=boxes.shape[0]), cells.inside)


def _nearest(values: Tensor, positions: Tensor) -> Tensor:
    """Index of the nearest of the ascending ``positions`` (n,) to each of ``values`` (K,)."""
    above = torch.searchsorted(positions, values.contiguous()).clamp_max(positions.shape[0] - 1)
    below = (above - 1).clamp_min(0)
    return torch.where((values - positions[below]).abs() <= (positions[above] - values).abs(), below, above)


def anchor_areas(boxes: Tensor, anchors: Tensor) -> MapArea:
    """The anchor locations inside ``(K, 7+)`` metric boxes: the cells ``(row, column)`` of an ``(H, W, A, 7)``
    anchor grid whose anchor centre lies in the box's rotated BEV rectangle (edges included). The anchor
    types of a location share its centre (x from the column, y from the row, as
    :func:`rdd3d.models.heads.anchor_grid` lays them out), so a cell stands for its ``A`` anchors.

    A box holding no anchor centre (smaller than the anchor spacing) takes the location nearest its
    centre when that centre lies within half a spacing of it along both axes, so small objects are
    seen too; ``on_map``: the box has at least one location."""
    xs, ys = anchors[0, :, 0, 0].contiguous(), anchors[:, 0, 0, 1].contiguous()  # (W,) (H,) ascending
    centres = anchors[..., :2]
    if not (torch.equal(centres[..., 0], xs[None, :, None].expand_as(centres[..., 0]))
            and torch.equal(centres[..., 1], ys[:, None, None].expand_as(centres[..., 1]))):
        raise ValueError("anchor_areas: the anchors' x must follow the column and y the row, every anchor type of "
                         "a location sharing its centre (rdd3d.models.heads.anchor_grid's layout)")
    boxes = boxes.to(anchors.dtype)
    x, y, half_length, half_width, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3] / 2, boxes[:, 4] / 2, boxes[:, 6]
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    reach_x = (half_length * cos).abs() + (half_width * sin).abs()  # half the axis-aligned extent
    reach_y = (half_length * sin).abs() + (half_width * cos).abs()
    low = torch.stack([torch.searchsorted(xs, (x - reach_x).contiguous()),
                       torch.searchsorted(ys, (y - reach_y).contiguous())], dim=1)  # (K, 2) column, row
    high = torch.stack([torch.searchsorted(xs, (x + reach_x).contiguous(), right=True),
                        torch.searchsorted(ys, (y + reach_y).contiguous(), right=True)], dim=1) - 1
    owner, columns, rows = _window_cells(low, high)
    dx, dy = xs[columns] - x[owner], ys[rows] - y[owner]
    along, across = dx * cos[owner] + dy * sin[owner], -dx * sin[owner] + dy * cos[owner]
    inside = (along.abs() <= half_length[owner]) & (across.abs() <= half_width[owner])
    owner, columns, rows = owner[inside], columns[inside], rows[inside]

    # Boxes between anchor centres: the nearest location, if the centre lies within half a spacing of it.
    empty = torch.bincount(owner, minlength=boxes.shape[0]) == 0
    near_column, near_row = _nearest(x, xs), _nearest(y, ys)

    def within_half_spacing(values: Tensor, positions: Tensor, index: Tensor) -> Tensor:
        spacing = (positions[-1] - positions[0]) / (positions.shape[0] - 1) if positions.shape[0] > 1 else math.inf
        return (values - positions[index]).abs() <= spacing / 2

    fallback = torch.nonzero(empty & within_half_spacing(x, xs, near_column) & within_half_spacing(y, ys, near_row),
                             as_tuple=True)[0]
    owner = torch.cat([owner, fallback])
    flat_index = torch.cat([rows, near_row[fallback]]) * xs.shape[0] + torch.cat([columns, near_column[fallback]])
    count = torch.bincount(owner, minlength=boxes.shape[0])
    return MapArea(owner, flat_index, count, count > 0)


def gather_area(feature_map: Tensor, area: MapArea, batch_index: Tensor) -> Tensor:
    """``feature_map`` (B, C, H, W) at the areas' cells, box ``k``'s in sample ``batch_index[k]`` -> ``(A, C)``."""
    batch, channels, height, width = feature_map.shape
    cells = feature_map.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # (B*H*W, C)
    return cells[batch_index[area.owner] * (height * width) + area.flat_index]


def area_sum(values: Tensor, area: MapArea) -> Tensor:
    """``(A, C)`` values at the areas' cells -> ``(K,)`` sum over each box's cells and the channels."""
    return values.new_zeros(area.count.shape[0]).index_add(0, area.owner, values.sum(dim=1))


def area_mean(values: Tensor, area: MapArea) -> Tensor:
    """``(A, C)`` values at the areas' cells -> ``(K,)`` mean over each box's cells and the channels."""
    return area_sum(values, area) / (area.count.clamp_min(1) * values.shape[1])
