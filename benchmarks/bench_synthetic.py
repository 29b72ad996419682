"""Generation cost and content of the synthetic LiDAR world with its default (or overridden) settings.

Times ``--frames`` frames of one split, one at a time in this process (single-threaded NumPy work),
split into scene sampling, ray casting and frame assembly; prints ms/frame and points/frame, then
per-class box counts, points per box and the share of boxes that got no point (all boxes, and those
within the class's evaluation range); writes it all as JSON.

    .venv/bin/python benchmarks/bench_synthetic.py                      # 50 frames, defaults
    .venv/bin/python benchmarks/bench_synthetic.py --frames 20 --beams 16 --sweeps 1
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np

from rdd3d.data.synthetic import (
    CLASS_NAMES, CLASS_RANGES, SPLITS, LidarConfig, SyntheticDataset, WorldConfig, frame_from_scan, sample_scene, scan,
)
from rdd3d.core.fileio import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--split", default="train", choices=sorted(SPLITS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beams", type=int, help="override LidarConfig.beams")
    parser.add_argument("--sweeps", type=int, help="override LidarConfig.num_sweeps")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/synthetic.json"))
    args = parser.parse_args()

    lidar_changes = {k: v for k, v in (("beams", args.beams), ("num_sweeps", args.sweeps)) if v is not None}
    config = WorldConfig(lidar=LidarConfig(**lidar_changes))
    dataset = SyntheticDataset(args.split, args.frames, args.seed, config)
    timings, points, key_points, labels, counts, distances = [], [], [], [], [], []
    for index in range(args.frames):
        rng = dataset.frame_rng(index)
        start = time.perf_counter()
        scene = sample_scene(config, rng)
        sampled = time.perf_counter()
        sweeps = scan(scene, config.lidar, rng)
        cast = time.perf_counter()
        frame = frame_from_scan(dataset.frame_id(index), scene, sweeps, dataset.classes)
        done = time.perf_counter()
        timings.append((sampled - start, cast - sampled, done - cast))
        points.append(len(frame.points))
        key_points.append(int((frame.points.column("time_lag") == 0).sum()))
        labels.append(frame.labels)
        counts.append(frame.metadata["num_points"])
        distances.append(np.hypot(frame.boxes.centers[:, 0], frame.boxes.centers[:, 1]))

    ms = 1000 * np.array(timings)  # (F, 3) scene, scan, assemble
    total = ms.sum(axis=1)
    labels, counts, distances = np.concatenate(labels), np.concatenate(counts), np.concatenate(distances)
    per_class = {}
    for label, name in enumerate(CLASS_NAMES):
        mine = labels == label
        in_range = mine & (distances <= CLASS_RANGES[name])
        per_class[name] = {
            "boxes_per_frame": float(mine.sum() / args.frames),
            "in_range_per_frame": float(in_range.sum() / args.frames),
            "in_range_median_points": float(np.median(counts[in_range])) if in_range.any() else 0.0,
            "in_range_empty_share": float((counts[in_range] == 0).mean()) if in_range.any() else 0.0,
            "empty_share": float((counts[mine] == 0).mean()) if mine.any() else 0.0,
        }
    result = {
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
        "frames": args.frames,
        "world_config": dataclasses.asdict(config),
        "ms_per_frame": {"mean": float(total.mean()), "median": float(np.median(total)),
                         "p90": float(np.percentile(total, 90)),
                         "scene_mean": float(ms[:, 0].mean()), "scan_mean": float(ms[:, 1].mean()),
                         "assemble_mean": float(ms[:, 2].mean())},
        "points_per_frame": {"mean": float(np.mean(points)), "min": int(np.min(points)), "max": int(np.max(points)),
                             "key_sweep_mean": float(np.mean(key_points))},
        "boxes_per_frame": float(len(labels) / args.frames),
        "empty_box_share": float((counts == 0).mean()),
        "per_class": per_class,
    }

    print(f"{args.frames} frames, {config.lidar.beams} beams, {config.lidar.num_sweeps} sweep(s), "
          f"azimuth step {config.lidar.azimuth_resolution_deg} deg")
    timing = result["ms_per_frame"]
    print(f"ms/frame     mean {timing['mean']:.1f}  median {timing['median']:.1f}  p90 {timing['p90']:.1f}  "
          f"(scene {timing['scene_mean']:.1f}, scan {timing['scan_mean']:.1f}, assemble {timing['assemble_mean']:.1f})")
    cloud = result["points_per_frame"]
    print(f"points/frame mean {cloud['mean']:.0f}  min {cloud['min']}  max {cloud['max']}  "
          f"(key sweep {cloud['key_sweep_mean']:.0f})")
    print(f"boxes/frame  {result['boxes_per_frame']:.1f}, {100 * result['empty_box_share']:.0f}% with no point")
    print("per class (in range = within its evaluation range, as nuScenes filters):")
    print(f"{'class':<14}{'boxes/frame':>12}{'in range':>10}{'median pts':>12}{'empty':>8}{'empty (all)':>13}")
    for name, row in per_class.items():
        print(f"{name:<14}{row['boxes_per_frame']:>12.2f}{row['in_range_per_frame']:>10.2f}"
              f"{row['in_range_median_points']:>12.0f}{100 * row['in_range_empty_share']:>7.0f}%"
              f"{100 * row['empty_share']:>12.0f}%")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
