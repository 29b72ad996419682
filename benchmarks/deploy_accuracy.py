"""Accuracy of an exported detector: mAP through PyTorch, onnxruntime fp32 and onnxruntime INT8.

Per checkpoint: ``rdd3d export`` of its detector with the INT8 copy of the dense part (``--int8``,
calibrated on ``--calibration-frames`` frames of the synthetic training split) as ``rdd3d export --int8``
writes it (weights one scale per output channel, the head's output convolutions fp32) and in two
variants (one weight scale per tensor; the output convolutions INT8 too), then the detections of the
checkpoint's validation frames through PyTorch (``Detector.decode``) and through ``rdd3d_runtime`` with
each file, each scored with rdd3d's evaluation (``evaluate`` / ``summary_metrics``). Also how many
of PyTorch's boxes the runtime finds again (same label, BEV IoU at least 0.99 / 0.5).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deploy_accuracy.py runs/deploy-student/best.pt \\
        --json benchmarks/results/deploy_accuracy.json
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from rdd3d.core.fileio import write_json
from rdd3d.core.geometry import bev_iou
from rdd3d.core.types import Detections
from rdd3d.engine.datasets import evaluate, summary_metrics
from rdd3d.engine.detection_task import predict
from rdd3d.engine.measure import validation_frames
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.export import export_detector
from rdd3d.export.quantize import quantize_export
from rdd3d_runtime import ExportedModel
from rdd3d_runtime.manifest import DEFAULT_CALIBRATION_FRAMES

#: INT8 variants: quantize_export's options; the first is what ``rdd3d export --int8`` writes.
INT8_VARIANTS = {
    "onnxruntime int8": {},
    "onnxruntime int8, weights per tensor": {"per_channel": False},
    "onnxruntime int8, head outputs int8": {"quantize_outputs": True},
}


def runtime_detections(model: ExportedModel, frames) -> list[Detections]:
    detections = []
    for frame in frames:
        found = model.predict(frame.points.points)
        detections.append(Detections(*(torch.from_numpy(np.ascontiguousarray(part)) for part in found)))
    return detections


def share_found_again(reference: list[Detections], found: list[Detections], iou_threshold: float) -> float:
    """Share of the reference boxes, over all frames, that a found box of the same label overlaps at BEV IoU
    >= ``iou_threshold`` (1.0 where the reference has none)."""
    total = hits = 0
    for expected, mine in zip(reference, found, strict=True):
        total += len(expected.scores)
        if len(expected.scores) and len(mine.scores):
            iou = bev_iou(mine.boxes, expected.boxes)  # (found, reference)
            iou[mine.labels[:, None] != expected.labels[None, :]] = 0
            hits += int((iou.amax(dim=0) >= iou_threshold).sum())
    return hits / total if total else 1.0


def measure(checkpoint: Path, frames_wanted: int | None, calibration_frames: int) -> dict:
    detector, config = detector_from_checkpoint(checkpoint)
    frames, dataset = validation_frames(config)
    frames = frames[:frames_wanted]
    detections = {"pytorch": predict(detector, frames, torch.device("cpu"), batch_size=1)}
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "fp32"
        export_detector(detector, exported, config.model.preset, config.data.dataset)
        detections["onnxruntime fp32"] = runtime_detections(ExportedModel(exported), frames)
        int8_settings = {}
        for index, (pipeline, options) in enumerate(INT8_VARIANTS.items()):
            folder = shutil.copytree(exported, Path(scratch) / f"int8_{index}")
            int8_settings[pipeline] = dataclasses.asdict(quantize_export(folder, calibration_frames, **options).int8)
            detections[pipeline] = runtime_detections(ExportedModel(folder, precision="int8"), frames)
    rows = {}
    for pipeline in detections:
        metrics = summary_metrics(dataset, evaluate(dataset, frames, detections[pipeline]))
        rows[pipeline] = {
            "mAP": metrics["mAP"], "NDS": metrics.get("NDS"),
            "detections_per_frame": sum(len(found.scores) for found in detections[pipeline]) / len(frames),
            "pytorch_boxes_found_iou_0.99": share_found_again(detections["pytorch"], detections[pipeline], 0.99),
            "pytorch_boxes_found_iou_0.5": share_found_again(detections["pytorch"], detections[pipeline], 0.5),
            "metrics": metrics,
        }
    return {"checkpoint": str(checkpoint), "preset": config.model.preset, "dataset": config.data.dataset,
            "validation_frames": len(frames), "calibration_frames": calibration_frames, "int8": int8_settings,
            "pipelines": rows}


def print_table(result: dict) -> None:
    print(f"\n{result['preset']} ({result['checkpoint']}), {result['validation_frames']} validation frames, INT8 "
          f"calibrated on {result['calibration_frames']} synthetic frames")
    print("| pipeline | mAP | NDS | detections / frame | PyTorch's boxes found (IoU >= 0.99 / 0.5) |")
    print("| --- | --- | --- | --- | --- |")
    for pipeline, row in result["pipelines"].items():
        nds = "–" if row["NDS"] is None else f"{100 * row['NDS']:.2f}"
        print(f"| {pipeline} | {100 * row['mAP']:.2f} | {nds} | {row['detections_per_frame']:.1f} | "
              f"{100 * row['pytorch_boxes_found_iou_0.99']:.1f} % / {100 * row['pytorch_boxes_found_iou_0.5']:.1f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints of `rdd3d train` / `rdd3d distill`")
    parser.add_argument("--frames", type=int, help="validation frames scored (default: the run's eval frames)")
    parser.add_argument("--calibration-frames", type=int, default=DEFAULT_CALIBRATION_FRAMES)
    parser.add_argument("--json", default="outputs/benchmarks/deploy_accuracy.json")
    args = parser.parse_args()
    results = []
    for checkpoint in args.checkpoints:
        results.append(measure(checkpoint, args.frames, args.calibration_frames))
        print_table(results[-1])
    write_json(args.json, {"command": " ".join(["benchmarks/deploy_accuracy.py", *sys.argv[1:]]),
                           "threads": torch.get_num_threads(), "results": results})


if __name__ == "__main__":
    main()
