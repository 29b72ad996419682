"""Time our nuScenes metrics against nuscenes-devkit's accumulate / calc_ap / calc_tp.

Both get the same synthetic scene: ``--samples`` samples, each with about ``--gt`` ground-truth
boxes (nuScenes-like class mix) and exactly ``--preds`` predictions (noisy detections of the
ground truth, duplicates and false positives). Ours runs ``evaluate_detections`` on the whole scene
(filtering included). The devkit runs the loop of ``DetectionEval.evaluate`` on the first
``--devkit-samples`` samples, already filtered and already turned into ``DetectionBox`` objects
(neither is timed); its time on the whole scene is extrapolated linearly in the number of samples
(its cost is per-sample work) and labelled as such. Times are reported as CPU time of this
process (steady on a shared machine) and wall time. Ours is also timed on the subset, and both
results on it are compared. Finally the predictions of the first ``--read-samples`` samples are
written as a submission file and our reader (JSON parsing plus validation) is timed on it.

    .venv/bin/python benchmarks/bench_nuscenes_eval.py            # 6,000 x 200, devkit on 300
    .venv/bin/python benchmarks/bench_nuscenes_eval.py --samples 600 --devkit-samples 100
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rdd3d.data.nuscenes.classes import NUSCENES_CLASSES
from rdd3d.evaluation.nuscenes_io import read_results, table_to_eval_boxes, write_results
from rdd3d.evaluation.nuscenes_metrics import (
    TP_METRICS, BoxTable, MetricConfig, detection_cvpr_2019, evaluate_detections,
)
from rdd3d.core.fileio import write_json

# Rough share of each class among nuScenes annotations (car, truck, bus, trailer, construction
# vehicle, pedestrian, motorcycle, bicycle, traffic cone, barrier).
CLASS_SHARES = np.array([0.40, 0.07, 0.02, 0.02, 0.01, 0.20, 0.01, 0.01, 0.12, 0.14])


def synthetic_scene(n_samples: int, gt_per_sample: int, preds_per_sample: int, seed: int) -> tuple[BoxTable, BoxTable]:
    rng = np.random.default_rng(seed)
    n_gt = rng.poisson(gt_per_sample, size=n_samples)
    gt_sample = np.repeat(np.arange(n_samples), n_gt)
    tokens = tuple(f"sample-{i:05d}" for i in range(n_samples))
    gt = _random_boxes(rng, tokens, gt_sample)

    # Detections: each ground truth found 0, 1 or 2 times with noise; false positives fill up.
    found = rng.choice([0, 1, 2], size=len(gt_sample), p=[0.2, 0.65, 0.15])
    source = np.repeat(np.arange(len(gt_sample)), found)
    per_sample = np.bincount(gt_sample[source], minlength=n_samples)
    keep = np.arange(len(source)) - np.repeat(np.cumsum(per_sample) - per_sample, per_sample) < preds_per_sample
    source = source[keep]
    n_fp = preds_per_sample - np.bincount(gt_sample[source], minlength=n_samples)
    fp_sample = np.repeat(np.arange(n_samples), n_fp)
    fp = _random_boxes(rng, tokens, fp_sample)
    n_tp = len(source)
    noise = np.c_[rng.normal(0, 0.6, size=(n_tp, 2)), rng.normal(0, 0.2, size=n_tp)]
    pred = BoxTable(
        tokens,
        sample=np.r_[gt.sample[source], fp.sample],
        translation=np.r_[gt.translation[source] + noise, fp.translation],
        size=np.r_[gt.size[source] * rng.uniform(0.8, 1.2, size=(n_tp, 3)), fp.size],
        yaw=np.r_[gt.yaw[source] + rng.normal(0, 0.3, size=n_tp), fp.yaw],
        velocity=np.r_[gt.velocity[source] + rng.normal(0, 0.5, size=(n_tp, 2)), fp.velocity],
        ego_translation=np.r_[gt.ego_translation[source] + noise, fp.ego_translation],
        label=np.r_[gt.label[source], fp.label],
        score=np.round(np.r_[rng.uniform(0.3, 1.0, size=n_tp), rng.uniform(0.0, 0.6, size=len(fp_sample))], 3),
        attribute=np.r_[gt.attribute[source], fp.attribute],
        num_pts=np.full(n_tp + len(fp_sample), -1),
    )
    order = np.lexsort((rng.random(len(pred)), pred.sample))  # per sample, classes interleaved
    return gt, pred.select(order)


def _random_boxes(rng: np.random.Generator, tokens: tuple[str, ...], sample: np.ndarray) -> BoxTable:
    n = len(sample)
    radius, angle = 55 * np.sqrt(rng.random(n)), rng.uniform(-np.pi, np.pi, size=n)
    ego = np.c_[radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-1, 1, size=n)]
    return BoxTable(
        tokens, sample=sample,
        translation=ego, size=rng.uniform(0.5, 6, size=(n, 3)), yaw=rng.uniform(-np.pi, np.pi, size=n),
        velocity=rng.normal(0, 3, size=(n, 2)), ego_translation=ego,
        label=rng.choice(len(NUSCENES_CLASSES), size=n, p=CLASS_SHARES),
        score=-np.ones(n), attribute=rng.integers(-1, 8, size=n), num_pts=rng.integers(0, 100, size=n),
    )


def first_samples(boxes: BoxTable, n_samples: int) -> BoxTable:
    return replace(boxes.select(boxes.sample < n_samples), sample_tokens=boxes.sample_tokens[:n_samples])


class Timing(NamedTuple):
    wall: float  # seconds on the clock
    cpu: float  # seconds of this process's CPU: steadier than wall time on a shared machine


def timed(function, *args) -> tuple[object, Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, Timing(time.perf_counter() - wall, time.process_time() - cpu)


def best_of(repeats: int, function, *args) -> tuple[object, Timing]:
    runs = [timed(function, *args) for _ in range(repeats)]
    return runs[0][0], Timing(min(t.wall for _, t in runs), min(t.cpu for _, t in runs))


def devkit_boxes(boxes: BoxTable, config: MetricConfig):
    """The devkit's EvalBoxes, range/point-filtered by its own filter_eval_boxes (no bike racks here)."""
    from nuscenes.eval.common.loaders import filter_eval_boxes

    class NoBikeRacks:  # filter_eval_boxes reads bike racks from the database
        def get(self, table: str, token: str) -> dict:
            return {"anns": []}

    return filter_eval_boxes(NoBikeRacks(), table_to_eval_boxes(boxes, config), dict(config.class_range))


def devkit_evaluate(gt_boxes, pred_boxes):
    """The body of the devkit's DetectionEval.evaluate: accumulate, calc_ap, calc_tp."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
    from nuscenes.eval.detection.data_classes import DetectionMetrics

    cfg = config_factory("detection_cvpr_2019")
    metrics = DetectionMetrics(cfg)
    for name in cfg.class_names:
        curves = {th: accumulate(gt_boxes, pred_boxes, name, cfg.dist_fcn_callable, th) for th in cfg.dist_ths}
        for th in cfg.dist_ths:
            metrics.add_label_ap(name, th, calc_ap(curves[th], cfg.min_recall, cfg.min_precision))
        for metric in TP_METRICS:
            if (name == "traffic_cone" and metric in ("attr_err", "vel_err", "orient_err")) or \
                    (name == "barrier" and metric in ("attr_err", "vel_err")):
                tp = np.nan
            else:
                tp = calc_tp(curves[cfg.dist_th_tp], cfg.min_recall, metric)
            metrics.add_label_tp(name, metric, tp)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--preds", type=int, default=200, help="predictions per sample")
    parser.add_argument("--gt", type=int, default=40, help="mean ground-truth boxes per sample")
    parser.add_argument("--devkit-samples", type=int, default=300)
    parser.add_argument("--read-samples", type=int, default=1000, help="samples in the timed submission file")
    parser.add_argument("--repeats", type=int, default=3, help="our timing is the best of this many runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/nuscenes_eval.json"))
    args = parser.parse_args()

    config = detection_cvpr_2019()
    gt, pred = synthetic_scene(args.samples, args.gt, args.preds, args.seed)
    _, ours_full = best_of(args.repeats, evaluate_detections, gt, pred, config)

    gt_sub, pred_sub = first_samples(gt, args.devkit_samples), first_samples(pred, args.devkit_samples)
    ours_metrics, ours_sub = best_of(args.repeats, evaluate_detections, gt_sub, pred_sub, config)
    devkit_metrics, devkit_sub = timed(devkit_evaluate, devkit_boxes(gt_sub, config), devkit_boxes(pred_sub, config))
    difference = max(abs(ours_metrics.nd_score - devkit_metrics.nd_score),
                     abs(ours_metrics.mean_ap - devkit_metrics.mean_ap),
                     *(abs(ours_metrics.label_aps[c][th] - devkit_metrics.get_label_ap(c, th))
                       for c in config.class_names for th in config.dist_ths))
    scale = args.samples / args.devkit_samples
    devkit_full = Timing(devkit_sub.wall * scale, devkit_sub.cpu * scale)

    submission = args.out.with_name(args.out.stem + "_submission.json")
    write_results(submission, first_samples(pred, args.read_samples), config, {"use_lidar": True})
    _, reading = timed(read_results, submission, config)
    submission_mb = submission.stat().st_size / 1e6
    submission.unlink()

    result = {
        "samples": args.samples, "predictions": len(pred), "ground_truth": len(gt),
        "ours": ours_full._asdict(),
        "devkit_samples": args.devkit_samples, "ours_subset": ours_sub._asdict(), "devkit_subset": devkit_sub._asdict(),
        "devkit_extrapolated": devkit_full._asdict(),
        "speedup_subset_cpu": devkit_sub.cpu / ours_sub.cpu,
        "speedup_full_extrapolated_cpu": devkit_full.cpu / ours_full.cpu,
        "read_samples": args.read_samples, "read_submission": reading._asdict(), "submission_megabytes": submission_mb,
        "max_abs_difference_on_subset": difference, "mAP_subset": ours_metrics.mean_ap,
        "NDS_subset": ours_metrics.nd_score, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": os.getloadavg()[0],
    }
    print(f"ours, {args.samples} samples x {args.preds} predictions ({len(pred):,} boxes, {len(gt):,} GT): "
          f"{ours_full.cpu:.2f} s CPU ({ours_full.wall:.2f} s wall)")
    print(f"subset of {args.devkit_samples} samples: ours {ours_sub.cpu:.3f} s CPU, devkit {devkit_sub.cpu:.2f} s CPU "
          f"-> {devkit_sub.cpu / ours_sub.cpu:.0f}x (largest |difference| {difference:.1e})")
    print(f"devkit extrapolated to {args.samples} samples: {devkit_full.cpu:.0f} s CPU -> "
          f"{devkit_full.cpu / ours_full.cpu:.0f}x (extrapolated, linear in samples)")
    print(f"reading and validating a submission of {args.read_samples} samples ({submission_mb:.0f} MB): "
          f"{reading.cpu:.1f} s CPU ({reading.wall:.1f} s wall)")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
