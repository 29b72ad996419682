"""Time the KITTI evaluation (bbox, BEV, 3D, AOS; R11 and R40; strict and loose) on a KITTI-val-sized
synthetic input: jittered copies of most ground-truth objects plus false positives.

    .venv/bin/python benchmarks/bench_kitti_eval.py            # 3,769 frames, 30 detections each
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from rdd3d.data.kitti.format import KittiObjects
from rdd3d.evaluation.kitti_metrics import evaluate_kitti
from rdd3d.core.fileio import write_json

GROUND_TRUTH_NAMES = ("Car",) * 6 + ("Van", "Pedestrian", "Pedestrian", "Cyclist", "DontCare")
DETECTION_NAMES = ("Car", "Pedestrian", "Cyclist")


def random_objects(rng: np.random.Generator, count: int, names: tuple[str, ...], scored: bool) -> KittiObjects:
    """Objects in front of a camera with focal length ~700 px, their 2D boxes from a pinhole projection."""
    x, z, y = rng.uniform(-20, 20, count), rng.uniform(5, 70, count), rng.uniform(1.4, 1.8, count)
    hwl = np.column_stack([rng.uniform(1.4, 1.8, count), rng.uniform(1.5, 1.9, count), rng.uniform(3.5, 4.5, count)])
    u, half_h, half_w = 600 + 700 * x / z, 350 * hwl[:, 0] / z, 350 * hwl[:, 2] / z
    bbox = np.column_stack([u - half_w, 180 - half_h, u + half_w, 180 + half_h])
    return KittiObjects(tuple(rng.choice(names, count)), rng.choice([0.0, 0.1, 0.4], count),
                        rng.integers(0, 3, count), rng.uniform(-3, 3, count), bbox, hwl,
                        np.column_stack([x, y, z]), rng.uniform(-3, 3, count),
                        rng.uniform(0, 1, count) if scored else None)


def detections_for(rng: np.random.Generator, truth: KittiObjects, per_frame: int) -> KittiObjects:
    """~80% of the (non-DontCare) objects found with small errors, then false positives up to ``per_frame``."""
    found = truth.select((rng.uniform(size=len(truth)) < 0.8) & ~truth.is_dontcare)
    count = len(found)
    hits = KittiObjects(found.names, found.truncated, found.occluded, found.alpha,
                        found.bbox + rng.normal(0, 2, (count, 4)),
                        np.abs(found.dimensions_hwl + rng.normal(0, 0.05, (count, 3))) + 0.1,
                        found.location + rng.normal(0, 0.15, (count, 3)),
                        found.rotation_y + rng.normal(0, 0.05, count), rng.uniform(0.3, 1, count))
    extra = random_objects(rng, max(0, per_frame - count), DETECTION_NAMES, scored=True)
    fields = ("truncated", "occluded", "alpha", "bbox", "dimensions_hwl", "location", "rotation_y", "score")
    return KittiObjects(hits.names + extra.names,
                        *(np.concatenate([getattr(hits, name), getattr(extra, name)]) for name in fields))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=3769)
    parser.add_argument("--detections", type=int, default=30, help="detections per frame")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/kitti_eval.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    truth = [random_objects(rng, int(rng.integers(2, 16)), GROUND_TRUTH_NAMES, scored=False)
             for _ in range(args.frames)]
    found = [detections_for(rng, frame, args.detections) for frame in truth]
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = evaluate_kitti(truth, found)
        times.append(time.perf_counter() - started)
    row = {"frames": args.frames, "ground_truth": sum(map(len, truth)), "detections": sum(map(len, found)),
           "best_s": min(times), "times_s": times, "car_3d_moderate_r40": result.ap("Car"),
           "machine": platform.platform()}
    print(f"{row['frames']} frames, {row['ground_truth']} ground-truth objects, {row['detections']} detections: "
          f"best of {args.repeats} {row['best_s']:.2f} s (Car 3D moderate R40 {row['car_3d_moderate_r40']:.1f})")
    write_json(args.out, row)


if __name__ == "__main__":
    main()
