"""KITTI object detection AP (2D box, BEV, 3D, AOS), as the official devkit computes it, on CPU.

Semantics follow the KITTI devkit's ``evaluate_object`` and OpenPCDet's ``kitti_object_eval_python``
(``clean_data``, ``compute_statistics``, ``get_thresholds``, ``get_mAP``/``get_mAP_R40``), rewritten
so that every frame is processed at once with numpy and every score threshold at once:

* Difficulty (easy / moderate / hard): ground truth with a 2D box height <= 40 / 25 / 25 px,
  occlusion > 0 / 1 / 2 or truncation > 0.15 / 0.3 / 0.5 is *ignored* (neither found nor missed).
  So are the neighbouring classes (Van for Car, Person_sitting for Pedestrian); other classes and
  DontCare do not take part. Detections of the class whose 2D box is lower than the difficulty's
  minimum height are ignored; so is a detection of *any* class that is that small (the devkit's rule).
* Matching, per frame, ground truth in file order: with ``overlap > min_overlap`` (strict) a ground
  truth takes the free detection of highest overlap (ignored detections only when no other is left);
  a detection matched to an ignored object is neither TP nor FP.
* Score thresholds: at most 41, picked from the true positives' scores so that recall is sampled
  every 1/40 (``get_thresholds``); precision at each, then made monotone (max over higher recalls).
  AP R11 averages the interpolated precision at recall 0, 0.1, ..., 1; AP R40 at 1/40, ..., 1.
* 2D-box metric only: unmatched detections covering a DontCare region (intersection / detection
  area > min_overlap) are not false positives. For BEV and 3D, as in the devkit, DontCare regions
  have no effect.
* BEV overlap: rotated-rectangle IoU on camera ``(x, z, l, w, rotation_y)``; 3D: that overlap times
  the overlap in y (boxes hang from their bottom face upwards, -y), over the union of volumes.
  Computed exactly in float64 (OpenPCDet's GPU kernel is float32: values within ~1e-6 of a
  threshold may fall the other way).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

from rdd3d.core.geometry import (
    axis_aligned_area,
    axis_aligned_intersection,
    bev_iou_from_overlap,
    bev_overlap_area_aligned,
    iou3d_from_overlap,
)
from rdd3d.data.kitti.format import DIFFICULTIES, DONT_CARE, MAX_OCCLUSION, MAX_TRUNCATION, MIN_HEIGHT, KittiObjects

METRICS = ("bbox", "bev", "3d")
NUM_SAMPLE_POINTS = 41
#: Ground truth of the neighbouring class is ignored, not missed, and detections on it are not FPs.
NEIGHBOUR_CLASS = {"car": "van", "pedestrian": "person_sitting"}
#: Minimum overlap per class for (bbox, bev, 3d): "strict" is the official set, "loose" the
#: second set OpenPCDet reports (e.g. Car 3D AP@0.5).
MIN_OVERLAPS = {
    "strict": {
        "Car": (0.7, 0.7, 0.7), "Pedestrian": (0.5, 0.5, 0.5), "Cyclist": (0.5, 0.5, 0.5),
        "Van": (0.7, 0.7, 0.7), "Person_sitting": (0.5, 0.5, 0.5), "Truck": (0.7, 0.7, 0.7),
    },
    "loose": {
        "Car": (0.7, 0.5, 0.5), "Pedestrian": (0.5, 0.25, 0.25), "Cyclist": (0.5, 0.25, 0.25),
        "Van": (0.7, 0.5, 0.5), "Person_sitting": (0.5, 0.25, 0.25), "Truck": (0.5, 0.5, 0.5),
    },
}
_REPORT_ORDER = ("bbox", "bev", "3d", "aos")
_INVALID_ALPHA = -10.0  # a detection without an observation angle: AOS is not computed


@dataclass(frozen=True)
class KittiAP:
    """AP of one class, one metric ("bbox", "bev", "3d" or "aos") and one overlap threshold."""

    class_name: str
    metric: str
    overlap_set: str  # "strict" | "loose"
    min_overlap: float
    r11: np.ndarray  # (3,) easy, moderate, hard; percent
    r40: np.ndarray  # (3,)
    precision: np.ndarray  # (3, 41) interpolated precision (or orientation similarity) per sampled threshold
    recall: np.ndarray  # (3, 41) recall at the same thresholds (0 past the last one)
    num_ground_truth: tuple[int, int, int]  # objects that count, per difficulty


@dataclass(frozen=True)
class KittiResult:
    entries: tuple[KittiAP, ...]

    def entry(self, class_name: str, metric: str = "3d", overlap_set: str = "strict") -> KittiAP:
        for entry in self.entries:
            if (entry.class_name, entry.metric, entry.overlap_set) == (class_name, metric, overlap_set):
                return entry
        have = sorted({(e.class_name, e.metric, e.overlap_set) for e in self.entries})
        raise KeyError(f"no KITTI AP for {(class_name, metric, overlap_set)}; computed: {have}")

    def ap(self, class_name: str, metric: str = "3d", difficulty: str = "moderate",
           recall_positions: int = 40, overlap_set: str = "strict") -> float:
        """AP in percent, e.g. ``ap("Car", "3d", "moderate", 40)`` = Car 3D AP R40 moderate @0.7."""
        if recall_positions not in (11, 40):
            raise ValueError(f"recall_positions must be 11 or 40, got {recall_positions}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        entry = self.entry(class_name, metric, overlap_set)
        values = entry.r40 if recall_positions == 40 else entry.r11
        return float(values[DIFFICULTIES.index(difficulty)])

    def to_dict(self) -> dict[str, float]:
        """Flat results with OpenPCDet's key names (``Car_3d_moderate_R40``; 2D box AP is ``image``);
        the loose set's keys end in ``_loose``."""
        result = {}
        for entry in self.entries:
            metric = "image" if entry.metric == "bbox" else entry.metric
            suffix = "" if entry.overlap_set == "strict" else f"_{entry.overlap_set}"
            for i, difficulty in enumerate(DIFFICULTIES):
                result[f"{entry.class_name}_{metric}_{difficulty}{suffix}"] = float(entry.r11[i])
                result[f"{entry.class_name}_{metric}_{difficulty}_R40{suffix}"] = float(entry.r40[i])
        return result

    def format_table(self) -> str:
        """The text table OpenPCDet prints (easy, moderate, hard per line)."""
        out = io.StringIO()
        keys = dict.fromkeys((e.class_name, e.overlap_set) for e in self.entries)
        for class_name, overlap_set in keys:
            entries = sorted(
                (e for e in self.entries if (e.class_name, e.overlap_set) == (class_name, overlap_set)),
                key=lambda e: _REPORT_ORDER.index(e.metric),
            )
            overlaps = ", ".join(f"{e.min_overlap:.2f}" for e in entries if e.metric != "aos")
            for label, attribute in (("AP", "r11"), ("AP_R40", "r40")):
                out.write(f"{class_name} {label}@{overlaps}:\n")
                for entry in entries:
                    values = ", ".join(f"{v:.4f}" for v in getattr(entry, attribute))
                    out.write(f"{entry.metric:<4} AP:{values}\n")
        return out.getvalue()


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Stacked:
    """All frames' objects one after another, with each object's frame index."""

    objects: KittiObjects
    frame: np.ndarray  # (N,) int64
    names: np.ndarray  # (N,) lower-case class names


def _stack(frames: Sequence[KittiObjects], with_score: bool) -> _Stacked:
    names = tuple(name for frame in frames for name in frame.names)

    def column(attribute: str, width: int) -> np.ndarray:
        parts = [getattr(frame, attribute).reshape(-1, width) for frame in frames]
        return np.concatenate(parts) if parts else np.zeros((0, width))

    objects = KittiObjects(
        names, column("truncated", 1)[:, 0], column("occluded", 1)[:, 0], column("alpha", 1)[:, 0],
        column("bbox", 4), column("dimensions_hwl", 3), column("location", 3), column("rotation_y", 1)[:, 0],
        column("score", 1)[:, 0] if with_score else None,
    )
    frame = np.repeat(np.arange(len(frames)), [len(f) for f in frames])
    return _Stacked(objects, frame, np.array([n.lower() for n in names], dtype=object))


def _check_inputs(ground_truth, detections, classes, metrics, overlap_sets) -> None:
    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth frames but {len(detections)} detection frames")
    for index, frame in enumerate(detections):
        if frame.score is None:
            raise ValueError(f"detections of frame {index} have no scores (KittiObjects.score is None)")
    for name in classes:
        if name not in MIN_OVERLAPS["strict"]:
            raise ValueError(f"unknown KITTI class {name!r}; known: {list(MIN_OVERLAPS['strict'])}")
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"unknown KITTI metric {metric!r}; known: {list(METRICS)}")
    for overlap_set in overlap_sets:
        if overlap_set not in MIN_OVERLAPS:
            raise ValueError(f"unknown overlap set {overlap_set!r}; known: {list(MIN_OVERLAPS)}")


def _check_sizes(stacked: _Stacked, index: np.ndarray, what: str) -> None:
    dims = stacked.objects.dimensions_hwl[index]
    bad = index[(dims <= 0).any(axis=1)]
    if bad.size:
        i = int(bad[0])
        frame = int(stacked.frame[i])
        position = i - int(np.searchsorted(stacked.frame, frame))
        raise ValueError(
            f"{what} {position} ({stacked.objects.names[i]}) of frame {frame} has non-positive "
            f"dimensions h, w, l = {stacked.objects.dimensions_hwl[i].tolist()}; BEV/3D overlap needs positive sizes"
        )


# ---------------------------------------------------------------- overlaps


def _same_frame_pairs(frame_a: np.ndarray, index_a: np.ndarray, frame_b: np.ndarray, index_b: np.ndarray,
                      num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """All (a, b) with a in index_a, b in index_b of the same frame; ordered by a, then b."""
    counts_b = np.bincount(frame_b[index_b], minlength=num_frames)
    starts_b = np.cumsum(counts_b) - counts_b
    repeats = counts_b[frame_a[index_a]]
    pair_a = np.repeat(index_a, repeats)
    offset = np.arange(repeats.sum()) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    pair_b = index_b[np.repeat(starts_b[frame_a[index_a]], repeats) + offset]
    return pair_a, pair_b


def _geometry_boxes(objects: KittiObjects) -> np.ndarray:
    """Camera boxes -> (N, 7) boxes for :mod:`geometry`: BEV on (x, z), heading -rotation_y, up = -y."""
    x, y, z = objects.location.T
    h, w, l = objects.dimensions_hwl.T
    return np.column_stack([x, z, h / 2 - y, l, w, h, -objects.rotation_y])


def _pair_overlaps(metrics: Sequence[str], gt: _Stacked, det: _Stacked, pair_gt: np.ndarray,
                   pair_det: np.ndarray) -> dict[str, np.ndarray]:
    """Overlap of each (ground truth, detection) pair under each metric -> {metric: (P,) float64}."""
    result = {}
    if "bbox" in metrics:
        a, b = torch.from_numpy(gt.objects.bbox[pair_gt]), torch.from_numpy(det.objects.bbox[pair_det])
        inter = axis_aligned_intersection(a, b)
        union = axis_aligned_area(a) + axis_aligned_area(b) - inter
        result["bbox"] = torch.where(inter > 0, inter / union, torch.zeros_like(inter)).numpy()
    if {"bev", "3d"} & set(metrics):
        boxes_gt = torch.from_numpy(_geometry_boxes(gt.objects))[pair_gt]
        boxes_det = torch.from_numpy(_geometry_boxes(det.objects))[pair_det]
        # Boxes whose circumscribed circles are apart cannot overlap: only the others are computed.
        reach = torch.hypot(boxes_gt[:, 3], boxes_gt[:, 4]) / 2 + torch.hypot(boxes_det[:, 3], boxes_det[:, 4]) / 2
        near = torch.hypot(*(boxes_gt[:, :2] - boxes_det[:, :2]).T) < reach
        near &= torch.from_numpy(det.names[pair_det] != DONT_CARE.lower())  # no 3D box (sizes -1)
        boxes_gt, boxes_det = boxes_gt[near], boxes_det[near]
        area = bev_overlap_area_aligned(boxes_gt, boxes_det)
        for metric, iou in (("bev", bev_iou_from_overlap), ("3d", iou3d_from_overlap)):
            if metric in metrics:
                result[metric] = np.zeros(len(pair_gt))
                result[metric][near.numpy()] = iou(area, boxes_gt, boxes_det).numpy()
    return result


def _dontcare_cover(gt: _Stacked, det: _Stacked, num_frames: int) -> np.ndarray:
    """(D,) largest share of each detection's 2D box covered by one DontCare region of its frame."""
    cover = np.zeros(len(det.objects))
    regions = np.flatnonzero(np.array(gt.objects.names, dtype=object) == DONT_CARE)
    pair_det, pair_dc = _same_frame_pairs(det.frame, np.arange(len(det.objects)), gt.frame, regions, num_frames)
    if len(pair_det):
        boxes = torch.from_numpy(det.objects.bbox[pair_det])
        inter = axis_aligned_intersection(boxes, torch.from_numpy(gt.objects.bbox[pair_dc]))
        area = axis_aligned_area(boxes)
        share = torch.where(inter > 0, inter / area, torch.zeros_like(inter)).numpy()
        np.maximum.at(cover, pair_det, share)
    return cover


# ---------------------------------------------------------------- ignore rules


def _ignored(gt: _Stacked, det: _Stacked, class_name: str, difficulty: int) -> tuple[np.ndarray, np.ndarray]:
    """``clean_data``: per ground truth and detection 0 = counts, 1 = ignored, -1 = not this class."""
    current = class_name.lower()
    objects = gt.objects
    same = gt.names == current
    neighbour = gt.names == NEIGHBOUR_CLASS.get(current, None)
    too_hard = (
        (objects.occluded > MAX_OCCLUSION[difficulty])
        | (objects.truncated > MAX_TRUNCATION[difficulty])
        | (objects.bbox_height <= MIN_HEIGHT[difficulty])
    )
    ignored_gt = np.where(same & ~too_hard, 0, np.where(neighbour | same, 1, -1)).astype(np.int8)
    small = np.abs(det.objects.bbox_height) < MIN_HEIGHT[difficulty]
    ignored_det = np.where(small, 1, np.where(det.names == current, 0, -1)).astype(np.int8)
    return ignored_gt, ignored_det


# ---------------------------------------------------------------- matching


@dataclass(frozen=True)
class _Candidates:
    """Ground truths that have candidate detections, in devkit processing order, and their candidates
    (detections of overlap > min_overlap, ascending index) padded to a rectangle."""

    gt: np.ndarray  # (R,) ground-truth index
    det: np.ndarray  # (R, C) index into the compact detection arrays (0 where padding)
    real: np.ndarray  # (R, C) False for padding
    overlap: np.ndarray  # (R, C)
    steps: tuple[np.ndarray, ...]  # rows that are the k-th such ground truth of their frame


def _candidates(pair_gt, pair_det, pair_overlap, gt_frame: np.ndarray) -> _Candidates:
    rows_gt, starts, counts = np.unique(pair_gt, return_index=True, return_counts=True)
    width = int(counts.max()) if counts.size else 0
    row = np.repeat(np.arange(len(rows_gt)), counts)
    column = np.arange(len(pair_gt)) - np.repeat(starts, counts)
    det = np.zeros((len(rows_gt), width), dtype=np.int64)
    real = np.zeros((len(rows_gt), width), dtype=bool)
    overlap = np.zeros((len(rows_gt), width))
    det[row, column], real[row, column], overlap[row, column] = pair_det, True, pair_overlap
    frame = gt_frame[rows_gt]
    first_of_frame = np.flatnonzero(np.r_[True, frame[1:] != frame[:-1]])
    rank = np.arange(len(rows_gt)) - np.repeat(first_of_frame, np.diff(np.r_[first_of_frame, len(rows_gt)]))
    steps = tuple(np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1 if rank.size else 0))
    return _Candidates(rows_gt, det, real, overlap, steps)


@dataclass(frozen=True)
class _Counts:
    tp: np.ndarray  # (T,)
    fp: np.ndarray  # (T,)
    fn: np.ndarray  # (T,)
    similarity: np.ndarray  # (T,) summed orientation similarity of the true positives


def _true_positive_scores(cand: _Candidates, ignored_gt, ignored_det, score) -> np.ndarray:
    """First pass (``compute_fp=False``): every ground truth takes its free candidate of highest
    score; the scores of the true positives that result."""
    assigned = np.zeros(len(score), dtype=bool)
    found_scores = []
    for rows in cand.steps:
        det = cand.det[rows]  # (G, C)
        free = cand.real[rows] & ~assigned[det]
        found = free.any(axis=1)
        chosen = np.take_along_axis(det, np.where(free, score[det], -np.inf).argmax(axis=1)[:, None], 1)[:, 0]
        assigned[chosen[found]] = True
        positive = found & (ignored_gt[cand.gt[rows]] == 0) & (ignored_det[chosen] == 0)
        found_scores.append(score[chosen[positive]])
    return np.concatenate(found_scores) if found_scores else np.zeros(0)


def _counts_at_thresholds(cand: _Candidates, thresholds, ignored_gt, ignored_det, score, num_valid_gt,
                          fp_exempt, gt_alpha, det_alpha) -> _Counts:
    """Second pass (``compute_fp=True``) for every threshold at once: detections scoring below it
    are dropped; a ground truth takes the free counting candidate of highest overlap, else the first
    free ignored one."""
    num_t = len(thresholds)
    assigned = np.zeros((num_t, len(score)), dtype=bool)
    tp, matched_valid_gt, similarity = np.zeros(num_t), np.zeros(num_t), np.zeros(num_t)
    for rows in cand.steps:
        det = cand.det[rows]  # (G, C)
        free = cand.real[rows] & ~assigned[:, det] & (score[det] >= thresholds[:, None, None])  # (T, G, C)
        counting = free & (ignored_det[det] == 0)
        best = np.where(counting, cand.overlap[rows], -np.inf).argmax(axis=2)
        pick = np.where(counting.any(axis=2), best, free.argmax(axis=2))  # (T, G)
        chosen = det[np.arange(len(rows)), pick]  # (T, G)
        found = free.any(axis=2)
        t_index, g_index = np.nonzero(found)
        assigned[t_index, chosen[t_index, g_index]] = True
        valid_gt = ignored_gt[cand.gt[rows]] == 0  # (G,)
        positive = found & valid_gt & (ignored_det[chosen] == 0)
        tp += positive.sum(axis=1)
        matched_valid_gt += (found & valid_gt).sum(axis=1)
        delta = gt_alpha[cand.gt[rows]] - det_alpha[chosen]
        similarity += np.where(positive, (1.0 + np.cos(delta)) / 2.0, 0.0).sum(axis=1)
    counted = (ignored_det == 0) & ~fp_exempt
    fp = (counted & (score >= thresholds[:, None]) & ~assigned).sum(axis=1)
    return _Counts(tp, fp.astype(np.float64), num_valid_gt - matched_valid_gt, similarity)


def sample_thresholds(scores: np.ndarray, num_valid_gt: int, num_points: int = NUM_SAMPLE_POINTS) -> np.ndarray:
    """The devkit's ``getThresholds``: walking the true positives' scores from the highest, keep a
    score each time recall reaches the next of ``num_points`` evenly spaced positions (at most
    ``num_points`` scores, descending)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    kept, current_recall = [], 0.0
    for i, value in enumerate(scores):
        left = (i + 1) / num_valid_gt
        last = i == len(scores) - 1
        right = left if last else (i + 2) / num_valid_gt
        if (right - current_recall) < (current_recall - left) and not last:
            continue
        kept.append(value)
        current_recall += 1.0 / (num_points - 1.0)
    return np.array(kept, dtype=np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _monotone(values: np.ndarray) -> np.ndarray:
    """(41,) values with each replaced by the max over itself and all later (higher-recall) entries."""
    return np.maximum.accumulate(values[::-1])[::-1]


def average_precision(precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(..., 41)`` interpolated precision -> (AP R11, AP R40) in percent: the mean over samples
    0, 4, ..., 40 (recall 0, 0.1, ..., 1) and over samples 1..40 (recall 1/40, ..., 1)."""
    return precision[..., ::4].sum(axis=-1) / 11 * 100, precision[..., 1:].sum(axis=-1) / 40 * 100


# ---------------------------------------------------------------- evaluation


def evaluate_kitti(
    ground_truth: Sequence[KittiObjects],
    detections: Sequence[KittiObjects],
    classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
    metrics: Sequence[str] = METRICS,
    overlap_sets: Sequence[str] = ("strict", "loose"),
) -> KittiResult:
    """KITTI AP of ``detections`` against ``ground_truth`` (one :class:`KittiObjects` per frame, in
    the same order; detections must carry scores). AOS is added when "bbox" is evaluated and every
    detection has an observation angle (alpha != -10). A class without any ground truth that counts
    at a difficulty gets AP 0 there."""
    _check_inputs(ground_truth, detections, classes, metrics, overlap_sets)
    num_frames = len(ground_truth)
    gt, det = _stack(ground_truth, with_score=False), _stack(detections, with_score=True)
    wanted = {name.lower() for name in classes}
    wanted |= {NEIGHBOUR_CLASS[name] for name in wanted if name in NEIGHBOUR_CLASS}
    gt_index = np.flatnonzero(np.isin(gt.names, list(wanted)))
    # Detections of other classes still matter when they are small (the devkit ignores, not drops, them).
    det_index = np.flatnonzero(
        np.isin(det.names, [name.lower() for name in classes]) | (np.abs(det.objects.bbox_height) < max(MIN_HEIGHT))
    )
    if {"bev", "3d"} & set(metrics):
        _check_sizes(gt, gt_index, "ground-truth object")
        _check_sizes(det, det_index[det.names[det_index] != DONT_CARE.lower()], "detection")
    pair_gt, pair_det = _same_frame_pairs(gt.frame, gt_index, det.frame, det_index, num_frames)
    compute_aos = "bbox" in metrics and bool(np.all(det.objects.alpha != _INVALID_ALPHA))
    dontcare_cover = _dontcare_cover(gt, det, num_frames) if "bbox" in metrics else None

    overlaps_by_metric = _pair_overlaps(metrics, gt, det, pair_gt, pair_det)
    entries = []
    for metric in metrics:
        overlaps = overlaps_by_metric[metric]
        for class_name in classes:
            for overlap_set in overlap_sets:
                min_overlap = MIN_OVERLAPS[overlap_set][class_name][METRICS.index(metric)]
                curves = [
                    _difficulty_curves(gt, det, class_name, d, metric, min_overlap, pair_gt, pair_det, overlaps,
                                       dontcare_cover)
                    for d in range(len(DIFFICULTIES))
                ]
                precision = np.stack([c.precision for c in curves])
                recall = np.stack([c.recall for c in curves])
                num_gt = tuple(c.num_valid_gt for c in curves)
                entries.append(KittiAP(class_name, metric, overlap_set, min_overlap, *average_precision(precision),
                                       precision, recall, num_gt))
                if metric == "bbox" and compute_aos:
                    orientation = np.stack([c.orientation for c in curves])
                    entries.append(KittiAP(class_name, "aos", overlap_set, min_overlap,
                                           *average_precision(orientation), orientation, recall, num_gt))
    return KittiResult(tuple(entries))


class _Curves(NamedTuple):
    precision: np.ndarray  # (41,) interpolated
    recall: np.ndarray  # (41,)
    orientation: np.ndarray  # (41,) interpolated orientation similarity
    num_valid_gt: int


def _difficulty_curves(gt: _Stacked, det: _Stacked, class_name: str, difficulty: int, metric: str,
                       min_overlap: float, pair_gt, pair_det, overlaps, dontcare_cover) -> _Curves:
    """The curves of one class at one difficulty under one metric and overlap threshold."""
    ignored_gt, ignored_det = _ignored(gt, det, class_name, difficulty)
    num_valid_gt = int((ignored_gt == 0).sum())
    empty = np.zeros(NUM_SAMPLE_POINTS)
    if num_valid_gt == 0:
        return _Curves(empty, empty, empty, 0)
    # Compact arrays over the detections that take part (ignored_det != -1).
    active = np.flatnonzero(ignored_det != -1)
    compact = np.full(len(ignored_det), -1)
    compact[active] = np.arange(len(active))
    keep = (overlaps > min_overlap) & (ignored_gt[pair_gt] != -1) & (compact[pair_det] >= 0)
    cand = _candidates(pair_gt[keep], compact[pair_det[keep]], overlaps[keep], gt.frame)
    score, ign_det = det.objects.score[active], ignored_det[active]

    thresholds = sample_thresholds(_true_positive_scores(cand, ignored_gt, ign_det, score), num_valid_gt)
    fp_exempt = np.zeros(len(active), dtype=bool)
    if metric == "bbox":
        fp_exempt = dontcare_cover[active] > min_overlap
    counts = _counts_at_thresholds(cand, thresholds, ignored_gt, ign_det, score, num_valid_gt, fp_exempt,
                                   gt.objects.alpha, det.objects.alpha[active])
    num_t = len(thresholds)
    precision, recall, orientation = empty.copy(), empty.copy(), empty.copy()
    precision[:num_t] = _ratio(counts.tp, counts.tp + counts.fp)
    recall[:num_t] = _ratio(counts.tp, counts.tp + counts.fn)
    orientation[:num_t] = _ratio(counts.similarity, counts.tp + counts.fp)
    return _Curves(_monotone(precision), _monotone(recall), _monotone(orientation), num_valid_gt)
