"""nuScenes detection metrics (mAP, TP errors, NDS), numerically identical to nuscenes-devkit 1.2.0.

The devkit keeps one Python object per box and matches in a Python double loop; here boxes are
columns of NumPy arrays (:class:`BoxTable`) and every step is vectorised, while reproducing the
devkit's semantics exactly (``nuscenes/eval/detection/{algo,data_classes,evaluate}.py``,
``nuscenes/eval/common/{utils,loaders}.py``):

* Filtering: a box is kept when its ego distance ``hypot(ego_x, ego_y)`` is strictly below its
  class range and its ``num_pts`` is not 0 (predictions carry -1). The devkit's third filter,
  bicycles and motorcycles inside bike racks, needs the nuScenes database and lives in
  :mod:`rdd3d.evaluation.nuscenes_io`.
* Order: per class, predictions are visited by descending ``(score, position)``, where position
  is the box's index in the devkit's ``EvalBoxes.all`` order (samples in input order, boxes in
  input order): equal scores go to the *later* box first, as the devkit's reversed tuple sort does.
* Matching: each prediction takes the closest not-yet-taken ground truth of its class in its
  sample (XY centre distance; equal distances go to the earlier ground truth) when that distance
  is strictly below the threshold.
* Curves: precision/confidence interpolated at 101 recall points (``np.interp``, right=0), TP
  errors as NaN-aware cumulative means interpolated on the confidence axis; AP drops the bins up
  to ``min_recall`` and clips precision at ``min_precision``; a class TP error is 1 when the
  maximum recall does not pass ``min_recall``.
* Special cases: barrier orientation is compared modulo pi; traffic_cone orientation, velocity and
  attribute errors and barrier velocity and attribute errors are NaN and skipped by the class
  mean; a class without ground truth scores AP 0 and TP errors 1; mAP and NDS average over all
  classes of the configuration.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from rdd3d.data.nuscenes.classes import DETECTION_RANGES

NUSCENES_ATTRIBUTES = (
    "pedestrian.moving", "pedestrian.sitting_lying_down", "pedestrian.standing",
    "cycle.with_rider", "cycle.without_rider",
    "vehicle.moving", "vehicle.parked", "vehicle.stopped",
)
TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
TP_METRIC_SHORT_NAMES = {
    "trans_err": "ATE", "scale_err": "ASE", "orient_err": "AOE", "vel_err": "AVE", "attr_err": "AAE",
}
RECALL_BINS = 101  # the devkit's DetectionMetricData.nelem
NO_ATTRIBUTE = -1  # BoxTable.attribute of a box without attribute ('' in the submission schema)
UNKNOWN_NUM_PTS = -1  # BoxTable.num_pts of a prediction


#: The TP errors the devkit's evaluate.py reports as NaN per class, and the classes whose heading
#: algo.py compares modulo pi.
DEVKIT_TP_NOT_APPLICABLE = {
    "traffic_cone": ("orient_err", "vel_err", "attr_err"),
    "barrier": ("vel_err", "attr_err"),
}
DEVKIT_HALF_PERIOD_CLASSES = ("barrier",)


@dataclass(frozen=True)
class MetricConfig:
    """The devkit's ``DetectionConfig`` plus the special cases its ``evaluate.py`` hard-codes.

    ``class_range`` fixes the classes and their order (labels index it). ``tp_metrics`` are the
    TP errors that enter NDS; ``tp_not_applicable`` maps a class to the TP errors reported as NaN
    for it; ``half_period_orientation`` lists the classes whose heading is compared modulo pi.
    """

    class_range: Mapping[str, float]
    dist_ths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    dist_th_tp: float = 2.0
    min_recall: float = 0.1
    min_precision: float = 0.1
    max_boxes_per_sample: int = 500
    mean_ap_weight: float = 5
    tp_metrics: tuple[str, ...] = TP_METRICS
    tp_not_applicable: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEVKIT_TP_NOT_APPLICABLE))
    half_period_orientation: tuple[str, ...] = DEVKIT_HALF_PERIOD_CLASSES

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_range", dict(self.class_range))
        object.__setattr__(self, "dist_ths", tuple(float(t) for t in self.dist_ths))
        object.__setattr__(self, "tp_metrics", tuple(self.tp_metrics))
        object.__setattr__(self, "tp_not_applicable",
                           {name: tuple(metrics) for name, metrics in self.tp_not_applicable.items()})
        object.__setattr__(self, "half_period_orientation", tuple(self.half_period_orientation))
        if not self.class_range:
            raise ValueError("MetricConfig.class_range: at least one class is needed")
        if any(not r > 0 for r in self.class_range.values()):
            raise ValueError(f"MetricConfig.class_range: ranges must be positive, got {self.class_range}")
        if not self.dist_ths or min(self.dist_ths) <= 0:
            raise ValueError(f"MetricConfig.dist_ths: expected positive thresholds, got {self.dist_ths}")
        if self.dist_th_tp not in self.dist_ths:
            raise ValueError(f"MetricConfig.dist_th_tp={self.dist_th_tp} must be one of dist_ths {self.dist_ths}")
        if not 0 <= self.min_recall <= 1:
            raise ValueError(f"MetricConfig.min_recall must lie in [0, 1], got {self.min_recall}")
        if not 0 <= self.min_precision < 1:
            raise ValueError(f"MetricConfig.min_precision must lie in [0, 1), got {self.min_precision}")
        if self.max_boxes_per_sample < 1:
            raise ValueError(f"MetricConfig.max_boxes_per_sample must be >= 1, got {self.max_boxes_per_sample}")
        unknown = [m for m in self.tp_metrics if m not in TP_METRICS]
        unknown += [m for ms in self.tp_not_applicable.values() for m in ms if m not in TP_METRICS]
        if unknown:
            raise ValueError(f"MetricConfig: unknown TP metrics {unknown}; known: {list(TP_METRICS)}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.class_range)

    def to_dict(self) -> dict:
        """The devkit's ``DetectionConfig.serialize()`` keys, then this class's extra fields."""
        return {
            "class_range": dict(self.class_range),
            "dist_fcn": "center_distance",
            "dist_ths": list(self.dist_ths),
            "dist_th_tp": self.dist_th_tp,
            "min_recall": self.min_recall,
            "min_precision": self.min_precision,
            "max_boxes_per_sample": self.max_boxes_per_sample,
            "mean_ap_weight": self.mean_ap_weight,
            "tp_metrics": list(self.tp_metrics),
            "tp_not_applicable": {name: list(ms) for name, ms in self.tp_not_applicable.items()},
            "half_period_orientation": list(self.half_period_orientation),
        }

    @classmethod
    def from_dict(cls, content: Mapping) -> "MetricConfig":
        """From :meth:`to_dict` output or a devkit configuration JSON (``DetectionConfig.serialize()``)."""
        fields = {k: v for k, v in content.items() if k != "dist_fcn"}
        if content.get("dist_fcn", "center_distance") != "center_distance":
            raise ValueError(f"dist_fcn {content['dist_fcn']!r} is not supported; only 'center_distance' is")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown metric configuration keys {unknown}; known: {sorted(known | {'dist_fcn'})}")
        return cls(**fields)


def detection_cvpr_2019() -> MetricConfig:
    """The devkit's ``config_factory('detection_cvpr_2019')``: the official nuScenes settings."""
    return MetricConfig(class_range=DETECTION_RANGES)


@dataclass(frozen=True)
class BoxTable:
    """Boxes of many samples as columns, one row per box (ground truth or predictions).

    ``sample_tokens`` lists every sample, also those without boxes, in input order; ``sample``
    indexes it. ``translation`` is the frame boxes are matched in (global for nuScenes),
    ``ego_translation`` the box centre relative to the ego vehicle (only used for class ranges).
    ``size`` follows nuScenes' (w, l, h). ``label`` indexes the :class:`MetricConfig` classes;
    ``attribute`` is any integer code shared by ground truth and predictions, ``NO_ATTRIBUTE`` for
    none. NaN velocity means "unknown", as in the devkit.
    """

    sample_tokens: tuple[str, ...]
    sample: np.ndarray  # (N,) int64
    translation: np.ndarray  # (N, 3) float64
    size: np.ndarray  # (N, 3) float64, w l h
    yaw: np.ndarray  # (N,) float64
    velocity: np.ndarray  # (N, 2) float64
    ego_translation: np.ndarray  # (N, 3) float64
    label: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64; -1 for ground truth
    attribute: np.ndarray  # (N,) int64
    num_pts: np.ndarray  # (N,) int64; UNKNOWN_NUM_PTS for predictions

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_tokens", tuple(self.sample_tokens))
        n = len(np.asarray(self.sample))
        columns = {
            "sample": (np.int64, (n,)), "translation": (np.float64, (n, 3)), "size": (np.float64, (n, 3)),
            "yaw": (np.float64, (n,)), "velocity": (np.float64, (n, 2)),
            "ego_translation": (np.float64, (n, 3)), "label": (np.int64, (n,)),
            "score": (np.float64, (n,)), "attribute": (np.int64, (n,)), "num_pts": (np.int64, (n,)),
        }
        for name, (dtype, shape) in columns.items():
            value = np.asarray(getattr(self, name), dtype=dtype)
            if value.size == 0:
                value = value.reshape(shape)
            if value.shape != shape:
                raise ValueError(f"BoxTable.{name}: expected shape {shape}, got {value.shape}")
            object.__setattr__(self, name, value)
        if n and (self.sample.min() < 0 or self.sample.max() >= len(self.sample_tokens)):
            raise ValueError(f"BoxTable.sample: indices must lie in 0..{len(self.sample_tokens) - 1}")
        if len(set(self.sample_tokens)) != len(self.sample_tokens):
            raise ValueError("BoxTable.sample_tokens: sample tokens must be unique")

    def __len__(self) -> int:
        return self.sample.shape[0]

    def select(self, mask_or_index: np.ndarray) -> "BoxTable":
        """The chosen rows, same samples."""
        return BoxTable(self.sample_tokens, **{name: getattr(self, name)[mask_or_index] for name in _ROW_COLUMNS})

    def with_samples(self, sample_tokens: tuple[str, ...]) -> "BoxTable":
        """Same rows, ``sample`` re-indexed onto ``sample_tokens`` (which must hold all of ours)."""
        position = {token: i for i, token in enumerate(sample_tokens)}
        missing = [t for t in self.sample_tokens if t not in position]
        if missing:
            raise ValueError(f"sample {missing[0]!r} is not among the {len(sample_tokens)} given samples")
        remap = np.array([position[t] for t in self.sample_tokens], dtype=np.int64)
        columns = {name: getattr(self, name) for name in _ROW_COLUMNS}
        columns["sample"] = remap[self.sample] if len(self) else self.sample
        return BoxTable(tuple(sample_tokens), **columns)


_ROW_COLUMNS = ("sample", "translation", "size", "yaw", "velocity", "ego_translation",
                "label", "score", "attribute", "num_pts")


@dataclass(frozen=True)
class MetricCurves:
    """The devkit's ``DetectionMetricData``: 101-point curves of one class at one threshold."""

    recall: np.ndarray  # (101,)
    precision: np.ndarray  # (101,)
    confidence: np.ndarray  # (101,)
    trans_err: np.ndarray  # (101,)
    vel_err: np.ndarray  # (101,)
    scale_err: np.ndarray  # (101,)
    orient_err: np.ndarray  # (101,)
    attr_err: np.ndarray  # (101,)

    @classmethod
    def no_predictions(cls) -> "MetricCurves":
        ones = np.ones(RECALL_BINS)
        return cls(np.linspace(0, 1, RECALL_BINS), np.zeros(RECALL_BINS), np.zeros(RECALL_BINS),
                   ones, ones.copy(), ones.copy(), ones.copy(), ones.copy())

    @property
    def max_recall_ind(self) -> int:
        """Index of the last non-zero confidence (0 when there is none)."""
        non_zero = np.nonzero(self.confidence)[0]
        return int(non_zero[-1]) if len(non_zero) else 0


def calc_ap(curves: MetricCurves, min_recall: float, min_precision: float) -> float:
    """Area under the precision curve above ``min_recall``, precision clipped at ``min_precision``."""
    precision = curves.precision[round(100 * min_recall) + 1:] - min_precision
    precision[precision < 0] = 0
    return float(np.mean(precision)) / (1.0 - min_precision)


def calc_tp(curves: MetricCurves, min_recall: float, metric_name: str) -> float:
    """Mean TP error between ``min_recall`` (excluded) and the maximum recall reached (included)."""
    first = round(100 * min_recall) + 1
    last = curves.max_recall_ind
    if last < first:
        return 1.0  # recall never passes min_recall: the worst error
    return float(np.mean(getattr(curves, metric_name)[first:last + 1]))


@dataclass(frozen=True)
class NuScenesMetrics:
    """Per-class APs and TP errors; the summaries are derived as in the devkit's ``DetectionMetrics``."""

    config: MetricConfig
    label_aps: dict[str, dict[float, float]]  # class -> distance threshold -> AP
    label_tp_errors: dict[str, dict[str, float]]  # class -> TP metric -> error (NaN: not applicable)
    curves: dict[tuple[str, float], MetricCurves] = field(repr=False, compare=False)
    eval_time: float = field(default=0.0, compare=False)

    @property
    def mean_dist_aps(self) -> dict[str, float]:
        return {name: float(np.mean(list(aps.values()))) for name, aps in self.label_aps.items()}

    @property
    def mean_ap(self) -> float:
        return float(np.mean(list(self.mean_dist_aps.values())))

    @property
    def tp_errors(self) -> dict[str, float]:
        """Per TP metric, the mean over classes that have it (NaN when none has)."""
        errors = {}
        for metric in self.config.tp_metrics:
            values = np.array([self.label_tp_errors[name][metric] for name in self.config.class_names])
            errors[metric] = float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else math.nan
        return errors

    @property
    def tp_scores(self) -> dict[str, float]:
        # max(0.0, nan) is 0.0 in Python: an all-NaN metric scores 0, as in the devkit.
        return {metric: max(0.0, 1.0 - error) for metric, error in self.tp_errors.items()}

    @property
    def nd_score(self) -> float:
        scores = self.tp_scores
        total = self.config.mean_ap_weight * self.mean_ap + float(np.sum(list(scores.values())))
        return total / float(self.config.mean_ap_weight + len(scores))

    def to_dict(self) -> dict:
        """The keys of the devkit's ``DetectionMetrics.serialize()`` (NaN stays NaN, as there)."""
        return {
            "label_aps": {name: dict(aps) for name, aps in self.label_aps.items()},
            "mean_dist_aps": self.mean_dist_aps,
            "mean_ap": self.mean_ap,
            "label_tp_errors": {name: dict(errors) for name, errors in self.label_tp_errors.items()},
            "tp_errors": self.tp_errors,
            "tp_scores": self.tp_scores,
            "nd_score": self.nd_score,
            "eval_time": self.eval_time,
            "cfg": self.config.to_dict(),
        }

    def format_table(self) -> str:
        """The summary and per-class table the devkit prints, as aligned text."""
        short = [TP_METRIC_SHORT_NAMES[m] for m in self.config.tp_metrics]
        lines = [f"mAP:  {self.mean_ap:.4f}"]
        lines += [f"m{s}: {self.tp_errors[m]:.4f}" for s, m in zip(short, self.config.tp_metrics)]
        lines += [f"NDS:  {self.nd_score:.4f}", f"Eval time: {self.eval_time:.1f}s", "",
                  "Per-class results:", f"{'Object Class':<22}" + "".join(f"{h:>8}" for h in ["AP", *short])]
        for name, ap in self.mean_dist_aps.items():
            errors = [self.label_tp_errors[name][m] for m in self.config.tp_metrics]
            lines.append(f"{name:<22}" + "".join(f"{v:>8.3f}" for v in [ap, *errors]))
        return "\n".join(lines)


def filter_boxes(boxes: BoxTable, config: MetricConfig) -> BoxTable:
    """The devkit's range and point filters: keep ``ego distance < class range`` and ``num_pts != 0``."""
    return boxes.select(_filter_mask(boxes, config))


def evaluate_detections(ground_truth: BoxTable, predictions: BoxTable, config: MetricConfig) -> NuScenesMetrics:
    """mAP, TP errors and NDS of ``predictions`` against ``ground_truth`` (unfiltered tables).

    Both must cover the same samples (the devkit's rule: every ground-truth sample has an entry in
    the results, possibly empty); a sample may hold at most ``config.max_boxes_per_sample``
    predictions.
    """
    start = time.perf_counter()
    _check_tables(ground_truth, predictions, config)
    # The devkit's EvalBoxes.all order (samples in input order, then boxes) breaks score ties.
    position = np.empty(len(predictions), dtype=np.int64)
    position[np.argsort(predictions.sample, kind="stable")] = np.arange(len(predictions))
    keep = _filter_mask(predictions, config)
    predictions = predictions.with_samples(ground_truth.sample_tokens).select(keep)
    position = position[keep]
    ground_truth = filter_boxes(ground_truth, config)

    n_classes = len(config.class_names)
    # Per class, descending (score, position): the devkit's reversed sort of (score, index) tuples.
    by_rank = np.lexsort((-position, -predictions.score, predictions.label))  # (P,)
    class_bounds = np.searchsorted(predictions.label[by_rank], np.arange(n_classes + 1))
    matches = _match_all_thresholds(ground_truth, predictions, by_rank, n_classes, config.dist_ths)  # (T, P)

    n_gt = np.bincount(ground_truth.label, minlength=n_classes)
    label_aps: dict[str, dict[float, float]] = {}
    label_tp_errors: dict[str, dict[str, float]] = {}
    curves: dict[tuple[str, float], MetricCurves] = {}
    for c, name in enumerate(config.class_names):
        ranked = by_rank[class_bounds[c]:class_bounds[c + 1]]
        period = np.pi if name in config.half_period_orientation else 2 * np.pi
        for t, threshold in enumerate(config.dist_ths):
            curves[name, threshold] = _accumulate(
                ground_truth, predictions, ranked, matches[t][ranked], int(n_gt[c]), period)
        label_aps[name] = {th: calc_ap(curves[name, th], config.min_recall, config.min_precision)
                           for th in config.dist_ths}
        not_applicable = config.tp_not_applicable.get(name, ())
        label_tp_errors[name] = {
            metric: math.nan if metric in not_applicable
            else calc_tp(curves[name, config.dist_th_tp], config.min_recall, metric)
            for metric in config.tp_metrics
        }
    return NuScenesMetrics(config, label_aps, label_tp_errors, curves, time.perf_counter() - start)


def _check_tables(ground_truth: BoxTable, predictions: BoxTable, config: MetricConfig) -> None:
    n_classes = len(config.class_names)
    for role, table in (("ground truth", ground_truth), ("predictions", predictions)):
        if len(table) and (table.label.min() < 0 or table.label.max() >= n_classes):
            raise ValueError(f"{role}: labels must index the {n_classes} classes {list(config.class_names)}")
    gt_samples, pred_samples = set(ground_truth.sample_tokens), set(predictions.sample_tokens)
    missing = [t for t in ground_truth.sample_tokens if t not in pred_samples]
    if missing:
        raise ValueError(f"predictions have no entry for ground-truth sample {missing[0]!r} "
                         f"({len(missing)} such samples); every ground-truth sample needs one, possibly empty")
    extra = [t for t in predictions.sample_tokens if t not in gt_samples]
    if extra:
        raise ValueError(f"predictions hold sample {extra[0]!r} which is not in the ground truth "
                         f"({len(extra)} such samples)")
    check_boxes_per_sample(predictions, config)


def check_boxes_per_sample(predictions: BoxTable, config: MetricConfig) -> None:
    """The devkit's limit of ``max_boxes_per_sample`` predictions per sample."""
    counts = np.bincount(predictions.sample, minlength=len(predictions.sample_tokens))
    if len(counts) and counts.max() > config.max_boxes_per_sample:
        worst = int(np.argmax(counts))
        raise ValueError(f"sample {predictions.sample_tokens[worst]!r} has {counts[worst]} predictions; "
                         f"at most max_boxes_per_sample={config.max_boxes_per_sample} are allowed")


def _filter_mask(boxes: BoxTable, config: MetricConfig) -> np.ndarray:  # (N,) bool
    ranges = np.array([config.class_range[name] for name in config.class_names], dtype=np.float64)
    ego_dist = np.sqrt(np.sum(boxes.ego_translation[:, :2] ** 2, axis=1))
    return (ego_dist < ranges[boxes.label]) & (boxes.num_pts != 0)


def _xy_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (M, >=2), (M, >=2) -> (M,)
    delta = a[:, :2] - b[:, :2]
    return np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1])


def _candidate_pairs(gt: BoxTable, pred: BoxTable, pred_order: np.ndarray, max_dist: float,
                     chunk_pairs: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (prediction, ground truth) pairs of one class and sample closer than ``max_dist``.

    ``pred_order`` lists predictions by (class, sample, rank). Returns, sorted by (position in
    ``pred_order``, distance, ground-truth row): that position, the ground-truth row, the distance.
    """
    n_samples = len(gt.sample_tokens)
    gt_key = gt.label * n_samples + gt.sample
    gt_rows = np.argsort(gt_key, kind="stable")  # ground truth by (class, sample, row)
    gt_key = gt_key[gt_rows]
    pred_key = (pred.label * n_samples + pred.sample)[pred_order]
    first = np.searchsorted(gt_key, pred_key, side="left")
    counts = np.searchsorted(gt_key, pred_key, side="right") - first
    ends = np.cumsum(counts)
    pieces = []
    chunk_start = 0
    while chunk_start < len(pred_order):  # bounded memory: about chunk_pairs pairs at a time
        budget = ends[chunk_start] - counts[chunk_start] + chunk_pairs
        chunk_end = max(int(np.searchsorted(ends, budget, side="right")), chunk_start + 1)
        n = counts[chunk_start:chunk_end]
        owner = np.repeat(np.arange(chunk_start, chunk_end), n)  # position in pred_order per pair
        within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        gt_row = gt_rows[first[owner] + within]
        dist = _xy_distance(pred.translation[pred_order[owner]], gt.translation[gt_row])
        close = dist < max_dist
        pieces.append((owner[close], gt_row[close], dist[close]))
        chunk_start = chunk_end
    if not pieces:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    owner, gt_row, dist = (np.concatenate(column) for column in zip(*pieces))
    order = np.lexsort((dist, owner))  # stable: equal distances keep the ground-truth row order
    return owner[order], gt_row[order], dist[order]


def _match_all_thresholds(gt: BoxTable, pred: BoxTable, by_rank: np.ndarray, n_classes: int,
                          thresholds: tuple[float, ...]) -> np.ndarray:
    """``(T, P)`` ground-truth row matched to each prediction at each threshold, -1 for none."""
    n_samples = len(gt.sample_tokens)
    group = pred.label * n_samples + pred.sample  # (P,) class and sample
    pred_order = by_rank[np.argsort(group[by_rank], kind="stable")]  # by (class, sample, rank)
    owner, gt_row, dist = _candidate_pairs(gt, pred, pred_order, max(thresholds))
    # One greedy pass for all thresholds: the pairs of threshold t are the subset dist < t of the
    # same sorted list; slots (threshold, ground-truth row) keep the thresholds independent.
    subsets = [np.flatnonzero(dist < th) for th in thresholds]
    pair_threshold = np.repeat(np.arange(len(thresholds)), [len(s) for s in subsets])
    pair_owner = np.concatenate([owner[s] for s in subsets])
    pair_gt = np.concatenate([gt_row[s] for s in subsets])
    matches = np.full((len(thresholds), len(pred)), -1, dtype=np.int64)
    if not len(pair_owner):
        return matches
    new_entry = np.r_[True, (pair_owner[1:] != pair_owner[:-1]) | (pair_threshold[1:] != pair_threshold[:-1])]
    entry_start = np.flatnonzero(new_entry)
    entry_threshold = pair_threshold[entry_start]
    entry_pred = pred_order[pair_owner[entry_start]]
    entry_group = entry_threshold * (n_classes * n_samples) + group[entry_pred]
    chosen = _greedy_first_free(entry_group, entry_start, np.r_[entry_start[1:], len(pair_owner)],
                                pair_threshold * len(gt) + pair_gt, len(thresholds) * len(gt))
    hit = chosen >= 0
    matches[entry_threshold[hit], entry_pred[hit]] = pair_gt[chosen[hit]]
    return matches


def _greedy_first_free(entry_group: np.ndarray, entry_start: np.ndarray, entry_stop: np.ndarray,
                       pair_slot: np.ndarray, n_slots: int) -> np.ndarray:
    """Sequential greedy assignment, run for all groups at once.

    Entries (a prediction with its candidate pairs ``entry_start:entry_stop``, best first) are
    sorted by group and, within a group, in processing order. Each entry takes its first pair whose
    slot is still free. Groups share no slot, so turn k handles the k-th entry of every group.
    Returns, per entry, the chosen pair index or -1.
    """
    n = len(entry_group)
    group_first = np.r_[True, entry_group[1:] != entry_group[:-1]]
    turn = np.arange(n) - np.maximum.accumulate(np.where(group_first, np.arange(n), 0))
    by_turn = np.argsort(turn, kind="stable")
    turn_bounds = np.searchsorted(turn[by_turn], np.arange(turn.max() + 2))
    taken = np.zeros(n_slots, dtype=bool)
    chosen = np.full(n, -1, dtype=np.int64)
    for k in range(len(turn_bounds) - 1):
        active = by_turn[turn_bounds[k]:turn_bounds[k + 1]]
        lengths = entry_stop[active] - entry_start[active]
        offsets = np.cumsum(lengths) - lengths
        pairs = np.repeat(entry_start[active] - offsets, lengths) + np.arange(lengths.sum())
        candidate = np.where(taken[pair_slot[pairs]], len(pairs), np.arange(len(pairs)))
        first_free = np.minimum.reduceat(candidate, offsets)
        found = first_free < len(pairs)
        picked = pairs[first_free[found]]
        taken[pair_slot[picked]] = True
        chosen[active[found]] = picked
    return chosen


def _cummean(x: np.ndarray) -> np.ndarray:
    """NaN-aware cumulative mean; all-NaN gives ones (the devkit's ``cummean``)."""
    if np.isnan(x).all():
        return np.ones(len(x))
    sums = np.nancumsum(x.astype(float))
    counts = np.cumsum(~np.isnan(x))
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts != 0)


def _accumulate(gt: BoxTable, pred: BoxTable, ranked: np.ndarray, matched_gt: np.ndarray,
                n_positives: int, period: float) -> MetricCurves:
    """The devkit's ``accumulate`` for one class and threshold, given the greedy matches.

    ``ranked`` are the class's predictions in visiting order, ``matched_gt`` their matched
    ground-truth rows (-1: false positive).
    """
    is_tp = matched_gt >= 0
    if n_positives == 0 or not is_tp.any():
        return MetricCurves.no_predictions()
    tp = np.cumsum(is_tp).astype(float)
    fp = np.cumsum(~is_tp).astype(float)
    scores = pred.score[ranked]
    recall_grid = np.linspace(0, 1, RECALL_BINS)
    recall = tp / float(n_positives)
    precision = np.interp(recall_grid, recall, tp / (fp + tp), right=0)
    confidence = np.interp(recall_grid, recall, scores, right=0)

    p, g = ranked[is_tp], matched_gt[is_tp]
    errors = _match_errors(gt, pred, g, p, period)
    match_conf = scores[is_tp][::-1]  # ascending, as np.interp needs
    resampled = {name: np.interp(confidence[::-1], match_conf, _cummean(err)[::-1])[::-1]
                 for name, err in errors.items()}
    return MetricCurves(recall=recall_grid, precision=precision, confidence=confidence, **resampled)


def _match_errors(gt: BoxTable, pred: BoxTable, g: np.ndarray, p: np.ndarray,
                  period: float) -> dict[str, np.ndarray]:
    """TP errors of matched pairs (ground-truth rows ``g``, prediction rows ``p``), each (M,)."""
    trans = _xy_distance(pred.translation[p], gt.translation[g])
    vel = _xy_distance(pred.velocity[p], gt.velocity[g])
    gt_size, pred_size = gt.size[g], pred.size[p]
    intersection = np.prod(np.minimum(gt_size, pred_size), axis=1)
    union = np.prod(gt_size, axis=1) + np.prod(pred_size, axis=1) - intersection
    diff = (gt.yaw[g] - pred.yaw[p] + period / 2) % period - period / 2
    diff = np.where(diff > np.pi, diff - 2 * np.pi, diff)
    gt_attr = gt.attribute[g]
    accuracy = np.where(gt_attr == NO_ATTRIBUTE, np.nan, (gt_attr == pred.attribute[p]).astype(float))
    return {"trans_err": trans, "vel_err": vel, "scale_err": 1 - intersection / union,
            "orient_err": np.abs(diff), "attr_err": 1 - accuracy}
