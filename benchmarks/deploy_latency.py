"""Latency of the deployed students: PyTorch eager against onnxruntime fp32 and INT8, 1 and 2 threads.

For every student preset of the synthetic world (weights of ``torch.manual_seed(0)``; latency does not
depend on them, except decoding's, which grows with the boxes above the score threshold: the detections
per frame are recorded), one frame at a time:

* PyTorch eager (``torch.inference_mode``): rdd3d's voxelisation (pre-processing), the rest of the
  forward pass (network; the voxel family builds its rulebooks here), ``Detector.decode`` (decoding);
* onnxruntime fp32 and INT8 (``rdd3d export --int8``): rdd3d_runtime's NumPy voxelisation and, for the
  voxel family, rulebooks (pre-processing), the ONNX files (network), NumPy decoding.

Frames: ``--frames`` of the synthetic validation split and the real fixture frames under
``RDD3D_REAL_DATA`` (the nuScenes keyframe and the KITTI scans, with a zero time-lag column where the
file has none). Per preset and thread count the three pipelines run side by side, frame after frame,
after one warm-up run each, so that a busy machine slows them alike; the figures are medians over the
frames of each set (each part's median on its own, so the parts need not add up to the total). The CPU
the other processes used meanwhile is recorded.

    .venv/bin/python benchmarks/deploy_latency.py --json benchmarks/results/deploy_latency.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from rdd3d.core.fileio import write_json
from rdd3d.data.io import read_point_array
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.engine.threads import machine_busy_seconds
from rdd3d.export import export_detector
from rdd3d.export.quantize import quantize_export
from rdd3d.models.complexity import real_data_root
from rdd3d.models.detector import Detector
from rdd3d.models.presets import build_detector, list_presets, teacher_of
from rdd3d_runtime import ExportedModel

PARTS = ("pre", "network", "decode", "total")


class Timing(NamedTuple):
    pre: float  # seconds
    network: float
    decode: float
    total: float
    detections: int


class OtherProcessesLoad:
    """Cores the other processes of the machine kept busy since it was made (``/proc/stat``; None where
    that cannot be read): this process's own CPU time taken out of the machine's."""

    def __init__(self) -> None:
        self.machine, self.own, self.wall = machine_busy_seconds(), time.process_time(), time.monotonic()

    def busy_cores(self) -> float | None:
        machine = machine_busy_seconds()
        if machine is None or self.machine is None:
            return None
        others = (machine - self.machine) - (time.process_time() - self.own)
        return max(others, 0.0) / (time.monotonic() - self.wall)


def students() -> list[str]:
    return [name for name in list_presets("synthetic") if teacher_of(name) != name]


def real_frames() -> dict[str, np.ndarray]:
    """The real fixture frames in the synthetic world's columns (x y z intensity time_lag); none when the
    fixtures are not there."""
    root = real_data_root()
    frames = {}
    for path in sorted((root / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin")):
        sweep = read_point_array(path, 5)  # x y z intensity ring
        frames[f"nuscenes/{path.name}"] = np.concatenate([sweep[:, :4], np.zeros_like(sweep[:, :1])], axis=1)
    for path in sorted((root / "kitti" / "training" / "velodyne").glob("*.bin")):
        scan = read_point_array(path, 4)  # x y z reflectance
        frames[f"kitti/{path.name}"] = np.concatenate([scan, np.zeros_like(scan[:, :1])], axis=1)
    return frames


def time_pytorch(detector: Detector, points: np.ndarray) -> Timing:
    """Parts split at the end of voxelisation, marked by a forward hook on the detector's voxelizer."""
    marks: dict[str, float] = {}

    def mark_voxelized(*_) -> None:  # a hook that returns None leaves the output alone
        marks["voxelized"] = time.perf_counter()

    hook = detector.voxelizer.register_forward_hook(mark_voxelized)
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            output = detector([torch.from_numpy(points)])
            network_end = time.perf_counter()
            found = detector.decode(output)[0]
            end = time.perf_counter()
    finally:
        hook.remove()
    return Timing(marks["voxelized"] - start, network_end - marks["voxelized"], end - network_end, end - start,
                  len(found.scores))


def time_runtime(model: ExportedModel, points: np.ndarray) -> Timing:
    start = time.perf_counter()
    values = model.inputs(points)
    pre_end = time.perf_counter()
    values = model.run_graphs(values)
    network_end = time.perf_counter()
    found = model.decode(values)
    end = time.perf_counter()
    return Timing(pre_end - start, network_end - pre_end, end - network_end, end - start, len(found.scores))


def median_timing(timings: list[Timing]) -> dict[str, float]:
    """Each part's median over frames, in milliseconds; detections per frame as a mean."""
    medians = {part: 1000 * statistics.median(getattr(t, part) for t in timings) for part in PARTS}
    return {**medians, "detections_per_frame": statistics.mean(t.detections for t in timings)}


def untrained(preset: str) -> Detector:
    torch.manual_seed(0)
    return build_detector(preset, "synthetic").eval()


def measure_detector(label: str, preset: str, detector: Detector, frame_sets: dict[str, list[np.ndarray]],
                     threads: tuple[int, ...], calibration_frames: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        export_detector(detector, folder, preset, "synthetic")
        quantize_export(folder, calibration_frames)
        for count in threads:
            torch.set_num_threads(count)
            pipelines: dict[str, Callable[[np.ndarray], Timing]] = {"pytorch": lambda p: time_pytorch(detector, p)}
            for precision in ("fp32", "int8"):
                model = ExportedModel(folder, threads=count, precision=precision)
                pipelines[f"onnxruntime {precision}"] = lambda p, model=model: time_runtime(model, p)
            first = next(iter(frame_sets.values()))[0]
            for run in pipelines.values():
                run(first)  # warm-up: allocations, onnxruntime's first-run set-up
            for frame_set, frames in frame_sets.items():
                load = OtherProcessesLoad()
                timings = {name: [] for name in pipelines}
                for points in frames:
                    for name, run in pipelines.items():
                        timings[name].append(run(points))
                rows.append({"preset": label, "frames": frame_set, "num_frames": len(frames), "threads": count,
                             "other_processes_busy_cores": load.busy_cores(),
                             **{name: median_timing(found) for name, found in timings.items()}})
                print_row(rows[-1])
    return rows


def _cell(timing: dict[str, float]) -> str:
    return f"{timing['total']:.0f} ({timing['pre']:.0f} + {timing['network']:.0f} + {timing['decode']:.0f})"


TABLE_HEADER = ("| preset | frames | threads | PyTorch ms (pre + network + decode) | onnxruntime fp32 ms | "
                "onnxruntime INT8 ms | fp32 / PyTorch | INT8 / fp32 | other processes' cores |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def print_row(row: dict) -> None:
    pytorch, fp32, int8 = row["pytorch"], row["onnxruntime fp32"], row["onnxruntime int8"]
    print(f"| {row['preset']} | {row['frames']} ({row['num_frames']}) | {row['threads']} | {_cell(pytorch)} | "
          f"{_cell(fp32)} | {_cell(int8)} | {fp32['total'] / pytorch['total']:.2f} | "
          f"{int8['total'] / fp32['total']:.2f} | {_load(row['other_processes_busy_cores'])} |", flush=True)


def _load(cores: float | None) -> str:
    return "?" if cores is None else f"{cores:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=students(), help="default: every student preset")
    parser.add_argument("--checkpoints", nargs="*", default=[], type=Path,
                        help="trained checkpoints (synthetic world) measured after the presets")
    parser.add_argument("--frames", type=int, default=10, help="frames of the synthetic validation split")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calibration-frames", type=int, default=8,
                        help="synthetic frames that calibrate INT8 (its latency does not depend on them)")
    parser.add_argument("--json", default="outputs/benchmarks/deploy_latency.json")
    args = parser.parse_args()
    validation = SyntheticDataset("val", size=args.frames)
    frame_sets = {"synthetic": [validation[i].points.points for i in range(args.frames)]}
    real = real_frames()
    if real:
        frame_sets["real"] = list(real.values())
    else:
        print(f"no real fixture frames under {real_data_root()} (set RDD3D_REAL_DATA): synthetic frames only")
    load = OtherProcessesLoad()
    print(TABLE_HEADER)
    detectors = [(preset, preset, untrained(preset)) for preset in args.presets]
    for checkpoint in args.checkpoints:
        detector, config = detector_from_checkpoint(checkpoint)
        if config.data.dataset != "synthetic":
            parser.error(f"{checkpoint}: a detector of {config.data.dataset}; the frames here are the synthetic "
                         "world's")
        detectors.append((f"{config.model.preset} (trained: {checkpoint})", config.model.preset, detector))
    rows = [row for label, preset, detector in detectors
            for row in measure_detector(label, preset, detector, frame_sets, tuple(args.threads),
                                        args.calibration_frames)]
    elapsed, others = time.monotonic() - load.wall, load.busy_cores()
    print(f"other processes kept {_load(others)} of {os.cpu_count()} cores busy on average during the "
          f"{elapsed / 60:.1f} min run")
    write_json(args.json, {
        "command": " ".join(["benchmarks/deploy_latency.py", *sys.argv[1:]]),
        "cpu_cores": os.cpu_count(), "other_processes_busy_cores": others, "wall_minutes": elapsed / 60,
        "weights": "presets: untrained, torch.manual_seed(0); checkpoints: trained", "real_frames": list(real), "rows": rows,
    })


if __name__ == "__main__":
    main()
