"""From CenterPoint head maps to boxes: top-K cells, score and range filters, per-task NMS; and the
cheaper class-agnostic heatmap peaks that serve as distillation proposals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rdd3d.core.types import Detections
from rdd3d.models.heads.prediction import TaskPrediction, gather_cells
from rdd3d.models.heads.targets import BEVGrid, decode_boxes, half_period_mask
from rdd3d.models.nms import circle_nms, nearest_bev_nms, rotated_nms

NMS_KINDS = ("rotated", "nearest_bev", "circle", "none")


@dataclass(frozen=True)
class NMSConfig:
    """Per-task NMS. ``rotated``: BEV IoU above ``iou_threshold`` suppresses (OpenPCDet's nuScenes
    CenterPoint: 0.2, 1000 before, 83 after). ``nearest_bev``: axis-aligned IoU after snapping each yaw
    to the nearest axis (the RDD paper's KITTI setting, at 0.5). ``circle``: CenterPoint's, a squared centre distance of at
    most ``circle_distances[task]`` m^2 suppresses. ``none``: keep everything."""

    kind: Literal["rotated", "nearest_bev", "circle", "none"] = "rotated"
    iou_threshold: float = 0.2
    pre_max_size: Optional[int] = 1000
    post_max_size: Optional[int] = 83
    circle_distances: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in NMS_KINDS:
            raise ValueError(f"NMSConfig.kind must be one of {NMS_KINDS}, got {self.kind!r}")
        if self.kind == "circle" and not self.circle_distances:
            raise ValueError("NMSConfig.circle_distances needs one squared distance per task for circle NMS")


@dataclass(frozen=True)
class DecodeConfig:
    max_per_task: int = 500  # top-K over class x H x W of each task
    score_threshold: float = 0.1  # keep scores strictly above
    post_center_range: Optional[tuple[float, ...]] = None  # x_min y_min z_min x_max y_max z_max; None: no filter
    nms: NMSConfig = field(default_factory=NMSConfig)
    # After merging the tasks: keep the best N of a sample (the paper's nuScenes test setting: 100, no NMS)
    max_per_sample: Optional[int] = None

    def __post_init__(self) -> None:
        if self.max_per_sample is not None and self.max_per_sample < 1:
            raise ValueError(f"DecodeConfig.max_per_sample must be >= 1 (or None), got {self.max_per_sample}")
        if self.post_center_range is not None and len(self.post_center_range) != 6:
            raise ValueError(
                f"DecodeConfig.post_center_range needs 6 values (x_min y_min z_min x_max y_max z_max), "
                f"got {self.post_center_range}"
            )

    def check_num_tasks(self, num_tasks: int) -> None:
        if self.nms.kind == "circle" and len(self.nms.circle_distances) != num_tasks:
            raise ValueError(
                f"NMSConfig.circle_distances has {len(self.nms.circle_distances)} values for {num_tasks} class groups"
            )


class _Candidates(NamedTuple):
    """Top-K cells of one task for a batch; ``keep`` marks those past the score and range filters."""

    boxes: Tensor  # (B, K, 7|9)
    scores: Tensor  # (B, K)
    labels: Tensor  # (B, K) ClassTable index
    keep: Tensor  # (B, K) bool


def _top_candidates(prediction: TaskPrediction, grid: BEVGrid, config: DecodeConfig, task_labels: Sequence[int],
                    half_period_labels: Sequence[int]) -> _Candidates:
    probs = prediction.heatmap.sigmoid()
    _, num_classes, height, width = probs.shape
    count = min(config.max_per_task, num_classes * height * width)
    scores, flat = probs.flatten(1).topk(count)  # (B, K) over class x H x W
    cell_index = flat % (height * width)
    cells = torch.stack([cell_index % width, cell_index // width], dim=-1)  # (B, K, 2) column, row
    labels = torch.as_tensor(task_labels, dtype=torch.long, device=flat.device)[flat // (height * width)]
    boxes = decode_boxes(gather_cells(prediction.box_code(), cell_index), cells, grid,
                         half_period_mask(labels, half_period_labels))
    keep = scores > config.score_threshold
    if config.post_center_range is not None:
        limits = boxes.new_tensor(config.post_center_range)
        keep &= ((boxes[..., :3] >= limits[:3]) & (boxes[..., :3] <= limits[3:])).all(dim=-1)
    return _Candidates(boxes, scores, labels, keep)


def suppress(boxes: Tensor, scores: Tensor, nms: NMSConfig, task: int | Tensor = 0,
             groups: Optional[Tensor] = None) -> Tensor:
    """Indices kept by the NMS, by ascending group (one per sample and task; None: one group), best first
    within a group. ``task``: the task of every box (one value or one per box), which picks circle NMS's
    distance."""
    if nms.kind == "rotated":
        return rotated_nms(boxes, scores, nms.iou_threshold, nms.pre_max_size, nms.post_max_size, groups)
    if nms.kind == "nearest_bev":
        return nearest_bev_nms(boxes, scores, nms.iou_threshold, nms.pre_max_size, nms.post_max_size, groups)
    if nms.kind == "circle":
        distances = boxes.new_tensor(nms.circle_distances, dtype=torch.float64)[torch.as_tensor(task,
                                                                                              device=boxes.device)]
        return circle_nms(boxes, scores, distances, nms.pre_max_size, nms.post_max_size, groups)
    by_score = torch.argsort(scores, descending=True, stable=True)
    if groups is None:
        return by_score
    return by_score[torch.argsort(groups[by_score], stable=True)]


def decode_detections(
    predictions: Sequence[TaskPrediction],
    grid: BEVGrid,
    task_labels: Sequence[Sequence[int]],
    config: DecodeConfig = DecodeConfig(),
    half_period_labels: Sequence[int] = (),
) -> list[Detections]:
    """One :class:`Detections` per sample; tasks concatenated in order, ``labels`` are ClassTable indices
    (``task_labels[t]`` maps task t's heatmap channels to them); boxes labelled one of
    ``half_period_labels`` have their yaw decoded modulo π."""
    config.check_num_tasks(len(predictions))
    num_tasks = len(predictions)
    # Every task of every sample at once: group sample * num_tasks + task, so that one NMS call serves the
    # batch and its output comes sample by sample, tasks in order, best first within a task.
    candidates = [_top_candidates(prediction, grid, config, labels, half_period_labels)
                  for prediction, labels in zip(predictions, task_labels, strict=True)]
    device = candidates[0].scores.device
    boxes, scores, labels, keep = (torch.cat(parts, dim=1) for parts in zip(
        *((found.boxes, found.scores, found.labels, found.keep) for found in candidates)))  # (B, T*K, ...)
    task = torch.cat([torch.full_like(found.labels, index) for index, found in enumerate(candidates)], dim=1)
    batch = scores.shape[0]
    groups = torch.arange(batch, device=device)[:, None] * num_tasks + task
    boxes, scores, labels, task, groups = boxes[keep], scores[keep], labels[keep], task[keep], groups[keep]
    kept = suppress(boxes, scores, config.nms, task, groups)
    counts = torch.bincount(groups[kept] // num_tasks, minlength=batch).tolist()
    merged = [Detections(*parts) for parts in zip(*(part[kept].split(counts) for part in (boxes, scores, labels)))]
    if config.max_per_sample is None:
        return merged
    capped = []
    for found in merged:
        best = found.scores.argsort(descending=True, stable=True)[:config.max_per_sample]
        capped.append(Detections(*(part[best] for part in found)))
    return capped


def peak_cells(scores: Tensor, max_per_sample: int, score_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Local maxima of class-agnostic ``(B, H, W)`` score maps: cells not beaten by a neighbour of their
    3×3 window (CenterNet's max-pool peaks), the ``max_per_sample`` best of a sample, scoring strictly
    above ``score_threshold`` -> ``(B, K)`` flat cell indices, their scores and a ``keep`` mask.

    Cells that tie with their best neighbour all count as peaks (an untrained head's flat map has many);
    which of equal scores the top-K keeps is left to ``torch.topk``."""
    pooled = F.max_pool2d(scores[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
    peaks = torch.where(scores >= pooled, scores, torch.full_like(scores, -1.0)).flatten(1)  # (B, H*W)
    count = min(max_per_sample, peaks.shape[1])
    values, cells = peaks.topk(count, dim=1, sorted=True)
    return cells, values, values > score_threshold


def decode_peaks(
    predictions: Sequence[TaskPrediction],
    grid: BEVGrid,
    task_labels: Sequence[Sequence[int]],
    max_per_sample: int = 100,
    score_threshold: float = 0.1,
    half_period_labels: Sequence[int] = (),
) -> list[Detections]:
    """Region proposals straight from the heatmaps: per cell the best class of every task (one score map
    for the sample, class-agnostic), its 3×3 peaks (:func:`peak_cells`), and the boxes of only those cells,
    from the regression maps of the task whose class won. Best first; ``labels`` are ClassTable indices.

    A cheap stand-in for :func:`decode_detections` followed by class-agnostic NMS when the boxes only name
    regions (RDD's proposals): no NMS, no box decoded that is not kept. Boxes labelled one of
    ``half_period_labels`` have their yaw decoded modulo π."""
    best_per_task = [prediction.heatmap.detach().sigmoid().max(dim=1) for prediction in predictions]
    task_scores = torch.stack([best.values for best in best_per_task], dim=1)  # (B, T, H, W)
    scores, task = task_scores.max(dim=1)  # (B, H, W)
    cells, values, keep = peak_cells(scores, max_per_sample, score_threshold)  # (B, K)
    width = scores.shape[-1]
    column_row = torch.stack([cells % width, cells // width], dim=-1)  # (B, K, 2)
    winner = task.flatten(1).gather(1, cells)  # (B, K) task of each peak
    codes = None
    labels = torch.zeros_like(cells)
    for index, (prediction, best, labels_of_task) in enumerate(zip(predictions, best_per_task, task_labels,
                                                                  strict=True)):
        here = winner == index
        task_codes = gather_cells(prediction.box_code().detach(), cells)  # (B, K, D)
        codes = task_codes if codes is None else torch.where(here[..., None], task_codes, codes)
        local = best.indices.flatten(1).gather(1, cells)
        global_labels = torch.as_tensor(labels_of_task, dtype=torch.long, device=cells.device)[local]
        labels = torch.where(here, global_labels, labels)
    boxes = decode_boxes(codes, column_row, grid, half_period_mask(labels, half_period_labels))  # (B, K, 7|9)
    return [Detections(boxes[b, keep[b]], values[b, keep[b]], labels[b, keep[b]]) for b in range(boxes.shape[0])]
