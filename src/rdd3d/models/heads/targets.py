"""CenterNet/CenterPoint target assignment on a BEV feature map (OpenPCDet's ``CenterHead`` semantics).

Map coordinates: a box centre ``x`` lies at the continuous cell coordinate
``(x - x_min) / (voxel_size_x * feature_stride)`` along the map's width (and the
same for ``y`` along its height); its cell is the integer part, its regression
target the fractional part. The heatmap of a box is a Gaussian around its cell
whose radius comes from the box's BEV size in cells (CornerNet's radius formula,
``min_overlap`` 0.1, at least ``min_radius`` 2 cells), merged by maximum.
A box whose centre lies off the map gets no target (OpenPCDet clamps it onto the
border, but its data pipeline has removed such boxes before).

Box code, in this order (the head's regression channels follow it):
``offset_x, offset_y, z, log dx, log dy, log dz, cos yaw, sin yaw[, vx, vy]``.

Half-period classes (``CenterHeadConfig.half_period_classes``, e.g. a barrier, which looks the same
turned by π) are coded as ``cos 2 yaw, sin 2 yaw`` instead, and decoded as ``atan2(sin, cos) / 2``: a yaw and
the yaw + π give one target, so the head is not asked to average two opposite ones (which drives
(cos, sin) to 0 and leaves the decoded yaw random), and the code stays continuous across the turn.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

BOX_CODE_NAMES = ("offset_x", "offset_y", "z", "log_dx", "log_dy", "log_dz", "cos_yaw", "sin_yaw")
VELOCITY_CODE_NAMES = ("vx", "vy")


def box_code_names(with_velocity: bool) -> tuple[str, ...]:
    return BOX_CODE_NAMES + (VELOCITY_CODE_NAMES if with_velocity else ())


@dataclass(frozen=True)
class BEVGrid:
    """Where a ``(height, width)`` BEV feature map lies in the LiDAR frame; rows run along y, columns along x."""

    x_min: float
    y_min: float
    cell_x: float  # metres per cell along x (voxel size x * feature stride)
    cell_y: float
    height: int
    width: int

    @classmethod
    def from_voxels(
        cls,
        point_cloud_range: Sequence[float],
        voxel_size: Sequence[float],
        feature_stride: float,
        map_size: tuple[int, int],
    ) -> "BEVGrid":
        """``point_cloud_range`` (x_min, y_min, z_min, x_max, y_max, z_max); ``map_size`` (H, W)."""
        return cls(
            x_min=float(point_cloud_range[0]), y_min=float(point_cloud_range[1]),
            cell_x=float(voxel_size[0]) * feature_stride, cell_y=float(voxel_size[1]) * feature_stride,
            height=int(map_size[0]), width=int(map_size[1]),
        )

    def to_cells(self, xy: Tensor) -> Tensor:  # (N, 2) metres -> (N, 2) continuous (column, row)
        origin = xy.new_tensor([self.x_min, self.y_min])
        return (xy - origin) / xy.new_tensor([self.cell_x, self.cell_y])

    def to_metres(self, cells: Tensor) -> Tensor:  # (..., 2) continuous (column, row) -> metres
        origin = cells.new_tensor([self.x_min, self.y_min])
        return cells * cells.new_tensor([self.cell_x, self.cell_y]) + origin


@dataclass(frozen=True)
class TargetConfig:
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objects: int = 500  # per sample and task; boxes beyond it are ignored, as in OpenPCDet


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.1) -> Tensor:
    """CornerNet's radius (as CenterPoint/OpenPCDet compute it, including the ``/ 2`` of the third root):
    the smallest of three roots bounding how far a box of ``height x width`` cells may shift and
    still overlap its ground truth by ``min_overlap``. Float, not yet truncated or clamped."""
    size_sum, area = height + width, height * width
    b1, c1 = size_sum, area * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * size_sum, (1 - min_overlap) * area
    r2 = (b2 + torch.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * size_sum, (min_overlap - 1) * area
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


class BoxCells(NamedTuple):
    """Where boxes fall on a map: what the target assigner (and RDD's logit loss) work with."""

    centre: Tensor  # (N, 2) float continuous (column, row), clamped onto the map
    cell: Tensor  # (N, 2) long (column, row) of the centre cell
    radius: Tensor  # (N,) long Gaussian radius in cells
    inside: Tensor  # (N,) bool: the centre lies on the map


def box_cells(boxes: Tensor, grid: BEVGrid, gaussian_overlap: float = 0.1, min_radius: int = 2) -> BoxCells:
    """Centre cell and Gaussian radius of ``(N, 7+)`` metric boxes on ``grid``."""
    centre = grid.to_cells(boxes[:, 0:2])
    upper = centre.new_tensor([grid.width, grid.height])
    inside = ((centre >= 0) & (centre <= upper)).all(dim=1)
    # OpenPCDet clamps to half a cell inside the far edge so that the integer cell stays on the map.
    centre = torch.minimum(centre.clamp_min(0), upper - 0.5)
    size_in_cells = boxes[:, 3:5] / boxes.new_tensor([grid.cell_x, grid.cell_y])
    radius = gaussian_radius(size_in_cells[:, 0], size_in_cells[:, 1], gaussian_overlap)
    radius = radius.long().clamp_min(min_radius)
    return BoxCells(centre, centre.long(), radius, inside)


def draw_gaussians(heatmap: Tensor, classes: Tensor, cells: Tensor, radii: Tensor) -> Tensor:
    """Max-merge one Gaussian per box into ``heatmap`` (C, H, W) in place and return it.

    ``classes`` (N,) channel, ``cells`` (N, 2) long (column, row), ``radii`` (N,) long. Each
    Gaussian spans ``(2r + 1)^2`` cells, sigma ``(2r + 1) / 6``, value 1 at the centre cell.
    """
    if classes.numel() == 0:
        return heatmap
    _, height, width = heatmap.shape
    largest = int(radii.max())
    steps = torch.arange(-largest, largest + 1, device=heatmap.device)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")  # (D, D)
    sigma = (2 * radii + 1).to(heatmap.dtype) / 6  # (N,)
    values = torch.exp(-(dx ** 2 + dy ** 2)[None].to(heatmap.dtype) / (2 * sigma[:, None, None] ** 2))  # (N, D, D)
    columns = cells[:, 0, None, None] + dx  # (N, D, D)
    rows = cells[:, 1, None, None] + dy
    keep = (
        (dx.abs()[None] <= radii[:, None, None]) & (dy.abs()[None] <= radii[:, None, None])
        & (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
    )
    flat = (classes[:, None, None] * height + rows) * width + columns
    heatmap.view(-1).scatter_reduce_(0, flat[keep], values[keep], reduce="amax")
    return heatmap


def half_period_mask(labels: Tensor, half_period_labels: Sequence[int]) -> Tensor:
    """Which of ``labels`` (ClassTable indices, any shape) belong to a half-period class, whose yaw is coded
    modulo π (module docstring)."""
    return torch.isin(labels, labels.new_tensor(tuple(half_period_labels)))


def yaw_periods(half_period: Tensor) -> Tensor:
    """How many turns of the coded angle one turn of the yaw makes: 2 where ``half_period`` (bool), else 1."""
    return 1 + half_period.long()


def encode_boxes(boxes: Tensor, cells: BoxCells, with_velocity: bool, half_period: Tensor | None = None) -> Tensor:
    """``(N, 7|9)`` metric boxes -> ``(N, code size)`` regression targets (see the module docstring);
    ``half_period`` (N,) bool marks the boxes whose yaw is coded modulo π."""
    angle = boxes[:, 6:7]
    if half_period is not None:
        angle = angle * yaw_periods(half_period)[:, None].to(angle.dtype)
    parts = [
        cells.centre - cells.cell.to(cells.centre.dtype), boxes[:, 2:3], boxes[:, 3:6].log(),
        torch.cos(angle), torch.sin(angle),
    ]
    if with_velocity:
        parts.append(boxes[:, 7:9])
    return torch.cat(parts, dim=1)


#: Decoded sizes are kept within [1 mm, 1 km]: an early or diverging head can predict log sizes whose
#: exponential overflows to inf or underflows to 0, which no box (nor the metrics) can hold.
LOG_SIZE_RANGE = (math.log(1e-3), math.log(1e3))


def decode_boxes(codes: Tensor, cells: Tensor, grid: BEVGrid, half_period: Tensor | None = None) -> Tensor:
    """Inverse of :func:`encode_boxes`: ``(..., 8|10)`` codes predicted at ``(..., 2)`` (column, row)
    cells -> ``(..., 7|9)`` metric boxes; ``half_period`` (...,) bool marks the boxes of half-period
    classes, whose yaw comes back in [-π/2, π/2]."""
    xy = grid.to_metres(cells.to(codes.dtype) + codes[..., 0:2])
    yaw = torch.atan2(codes[..., 7:8], codes[..., 6:7])
    if half_period is not None:
        yaw = yaw / yaw_periods(half_period)[..., None].to(yaw.dtype)
    sizes = codes[..., 3:6].clamp(*LOG_SIZE_RANGE).exp()
    return torch.cat([xy, codes[..., 2:3], sizes, yaw, codes[..., 8:]], dim=-1)


class TaskTargets(NamedTuple):
    """Targets of one class group for a batch."""

    heatmap: Tensor  # (B, C_task, H, W)
    box_codes: Tensor  # (B, max_objects, code size)
    indices: Tensor  # (B, max_objects) long, flat cell index row * W + column
    mask: Tensor  # (B, max_objects) bool: the slot holds a box


def _single_task_targets(
    boxes: Tensor, classes: Tensor, half_period: Tensor, num_classes: int, grid: BEVGrid, config: TargetConfig,
    with_velocity: bool,
) -> TaskTargets:
    """One sample, one task: ``boxes`` (N, 7|9) with task-local ``classes`` (N,) and ``half_period`` (N,)
    bool. Unbatched TaskTargets."""
    boxes, classes, half_period = (part[: config.max_objects] for part in (boxes, classes, half_period))
    count = boxes.shape[0]
    cells = box_cells(boxes, grid, config.gaussian_overlap, config.min_radius)
    heatmap = boxes.new_zeros(num_classes, grid.height, grid.width)
    inside = cells.inside
    draw_gaussians(heatmap, classes[inside], cells.cell[inside], cells.radius[inside])

    code_size = len(box_code_names(with_velocity))
    box_codes = boxes.new_zeros(config.max_objects, code_size)
    box_codes[:count] = encode_boxes(boxes, cells, with_velocity, half_period) * inside[:, None]
    indices = torch.zeros(config.max_objects, dtype=torch.long, device=boxes.device)
    indices[:count] = torch.where(inside, cells.cell[:, 1] * grid.width + cells.cell[:, 0], 0)
    mask = torch.zeros(config.max_objects, dtype=torch.bool, device=boxes.device)
    mask[:count] = inside
    return TaskTargets(heatmap, box_codes, indices, mask)


def assign_targets(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    task_labels: Sequence[Sequence[int]],
    grid: BEVGrid,
    config: TargetConfig = TargetConfig(),
    with_velocity: bool = False,
    half_period_labels: Sequence[int] = (),
) -> list[TaskTargets]:
    """Targets for every task of a batch.

    ``gt_boxes[b]`` (M_b, 7|9) metric boxes and ``gt_labels[b]`` (M_b,) their labels (ClassTable
    indices) of sample b; ``task_labels[t]`` the ClassTable labels of task t, in its heatmap order;
    boxes of ``half_period_labels`` have their yaw coded modulo π (module docstring).
    """
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"assign_targets: {len(gt_boxes)} box tensors but {len(gt_labels)} label tensors")
    per_task: list[list[TaskTargets]] = [[] for _ in task_labels]
    for sample, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        if boxes.ndim != 2 or boxes.shape[1] not in (7, 9) or boxes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"assign_targets: sample {sample} needs boxes (M, 7|9) and labels (M,), "
                f"got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        if with_velocity and boxes.shape[1] != 9:
            raise ValueError(f"assign_targets: the head predicts velocity but sample {sample}'s boxes have no vx, vy")
        half_period = half_period_mask(labels, half_period_labels)  # (M,)
        for task, members in enumerate(task_labels):
            is_member = labels[:, None] == labels.new_tensor(members)[None, :]  # (M, C_task)
            in_task = is_member.any(dim=1)
            local_classes = is_member[in_task].long().argmax(dim=1)
            per_task[task].append(_single_task_targets(boxes[in_task], local_classes, half_period[in_task],
                                                       len(members), grid, config, with_velocity))
    return [TaskTargets(*(torch.stack(field) for field in zip(*samples))) for samples in per_task]
