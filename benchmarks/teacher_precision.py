"""The frozen teacher in reduced precision: its forward time and its mAP against fp32 (CPU).

Per checkpoint: the forward of two validation frames as the distiller used to run its teacher (fp32,
contiguous layout, ``no_grad``), then in fp32 and under bf16 autocast as it runs it now (inference mode,
the 2D convolutions channels-last); medians of ``--repeats`` after a warm-up. Then the mAP of both on the
checkpoint's validation frames (outputs cast to fp32 before decoding).

    .venv/bin/python benchmarks/teacher_precision.py runs/speed-models/cp-voxel/best.pt \\
        --json benchmarks/results/teacher_precision.json
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_map

from rdd3d.data.collate import collate_frames
from rdd3d.engine.measure import validation_frames
from rdd3d.engine.datasets import evaluate, summary_metrics
from rdd3d.engine.detection_task import predict
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.core.fileio import write_json
from rdd3d.models.detector import channels_last_convolutions


class Reduced(nn.Module):
    """A detector whose forward runs under autocast at ``dtype`` (None: fp32) and returns fp32 outputs."""

    def __init__(self, detector: nn.Module, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.detector, self.dtype = detector, dtype

    def forward(self, points):
        with torch.autocast("cpu", dtype=self.dtype) if self.dtype else contextlib.nullcontext():
            output = self.detector(points)
        return tree_map(lambda x: x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x, output)

    def decode(self, output):
        return self.detector.decode(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--frames", type=int, default=60, help="validation frames scored")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="outputs/benchmarks/teacher_precision.json")
    args = parser.parse_args()
    rows = []
    for checkpoint in args.checkpoints:
        detector, config = detector_from_checkpoint(checkpoint)
        frames, dataset = validation_frames(config)
        frames = frames[:args.frames]
        batch = collate_frames(frames[:2])
        row = {"checkpoint": str(checkpoint), "preset": config.model.preset, "frames": len(frames),
               "threads": torch.get_num_threads()}

        def forward_seconds(model: nn.Module, context) -> float:
            times = []
            with context():
                for repeat in range(args.repeats + 1):
                    start = time.perf_counter()
                    model(batch.points)
                    if repeat:
                        times.append(time.perf_counter() - start)
            return statistics.median(times)

        # As the distiller ran its teacher before: fp32, contiguous layout, under no_grad.
        row["fp32_no_grad_contiguous_forward_s"] = forward_seconds(detector.eval(), torch.no_grad)
        channels_last_convolutions(detector)
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            model = Reduced(detector, dtype).eval()
            row[f"{name}_forward_s"] = forward_seconds(model, torch.inference_mode)
            metrics = summary_metrics(dataset, evaluate(dataset, frames, predict(model, frames, torch.device("cpu"))))
            row[f"{name}_mAP"] = metrics["mAP"]
        row["time_ratio"] = row["bf16_forward_s"] / row["fp32_forward_s"]
        row["time_ratio_to_before"] = row["bf16_forward_s"] / row["fp32_no_grad_contiguous_forward_s"]
        row["mAP_difference"] = row["bf16_mAP"] - row["fp32_mAP"]
        rows.append(row)
        print(f"{row['preset']:12} forward fp32 as before {row['fp32_no_grad_contiguous_forward_s']:.3f} s, fp32 "
              f"{row['fp32_forward_s']:.3f} s, bf16 {row['bf16_forward_s']:.3f} s ({row['time_ratio']:.2f}x, "
              f"{row['time_ratio_to_before']:.2f}x of before); mAP fp32 {100 * row['fp32_mAP']:.2f}, bf16 {100 * row['bf16_mAP']:.2f} "
              f"({100 * row['mAP_difference']:+.2f} points)", flush=True)
    write_json(args.json, {"batch": 2, "rows": rows})


if __name__ == "__main__":
    main()
