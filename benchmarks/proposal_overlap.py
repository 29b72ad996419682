"""Do heatmap peaks select the regions NMS selects? RDD's two proposal sources side by side, on trained
models and the synthetic validation frames.

For each checkpoint, per frame: the ``nms`` proposals (decoded detections, class-agnostic rotated NMS at
0.2, the best 100) and the ``peaks`` proposals (3×3 peaks of the class-agnostic score map, the best 100),
both above score 0.1. A proposal of one set is matched when the other set holds a box of BEV IoU >= 0.5
with it. Prints and writes, per model: proposals per frame of each source, the share of NMS proposals a
peak matches (recall) and the share of peaks an NMS proposal matches (precision); both also weighted by
score, and the recall within score bands (NMS keeps many low-score boxes that peaks do not).

    .venv/bin/python benchmarks/proposal_overlap.py runs/speed-models/*/best.pt \\
        --json benchmarks/results/proposal_overlap.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rdd3d.data.collate import collate_frames
from rdd3d.distill.base import BEVGeometry, ModelView
from rdd3d.distill.proposals import peak_proposals, select_proposals
from rdd3d.distill.rdd import RDDConfig
from rdd3d.engine.measure import validation_frames
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.core.geometry import bev_iou
from rdd3d.core.fileio import write_json


BANDS = ((0.1, 0.2), (0.2, 0.3), (0.3, 1.0))


def _matched(boxes: torch.Tensor, others: torch.Tensor, iou: float) -> torch.Tensor:
    if len(boxes) == 0 or len(others) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    return (bev_iou(boxes[:, :7].double(), others[:, :7].double()) >= iou).any(dim=1)


@torch.no_grad()
def overlap(checkpoint: Path, frames: int, batch_size: int, iou: float) -> dict:
    detector, config = detector_from_checkpoint(checkpoint)
    val, _ = validation_frames(config)
    val = val[:frames]
    rdd = RDDConfig()
    geometry = BEVGeometry.of(detector)
    counts = {"nms": 0, "peaks": 0, "nms_matched": 0, "peaks_matched": 0}
    bands = {band: [0, 0] for band in BANDS}  # NMS proposals in the band, and how many a peak matches
    scores = {"nms": 0.0, "peaks": 0.0, "nms_matched": 0.0, "peaks_matched": 0.0}
    for start in range(0, len(val), batch_size):
        batch = collate_frames(val[start:start + batch_size])
        view = ModelView(detector, detector(batch.points), {}, geometry)
        by_source = {
            "nms": select_proposals(view.detections(), rdd.score_threshold, rdd.nms_iou, rdd.max_proposals),
            "peaks": peak_proposals(view, rdd.score_threshold, rdd.max_proposals),
        }
        for sample in range(batch.batch_size):
            sets = {name: p.subset(p.batch_index == sample) for name, p in by_source.items()}
            for name, other in (("nms", "peaks"), ("peaks", "nms")):
                matched = _matched(sets[name].boxes, sets[other].boxes, iou)
                counts[name] += len(matched)
                counts[f"{name}_matched"] += int(matched.sum())
                scores[name] += float(sets[name].scores.sum())
                scores[f"{name}_matched"] += float(sets[name].scores[matched].sum())
                if name == "nms":
                    for low, high in BANDS:
                        inside = (sets[name].scores > low) & (sets[name].scores <= high)
                        bands[(low, high)][0] += int(inside.sum())
                        bands[(low, high)][1] += int(matched[inside].sum())
    return {
        "checkpoint": str(checkpoint), "preset": config.model.preset, "frames": len(val), "iou": iou,
        "nms_per_frame": counts["nms"] / len(val), "peaks_per_frame": counts["peaks"] / len(val),
        "recall": counts["nms_matched"] / max(counts["nms"], 1),
        "precision": counts["peaks_matched"] / max(counts["peaks"], 1),
        "score_weighted_recall": scores["nms_matched"] / max(scores["nms"], 1e-12),
        "score_weighted_precision": scores["peaks_matched"] / max(scores["peaks"], 1e-12),
        "recall_by_score": [{"scores": [low, high], "nms_per_frame": count / len(val),
                             "recall": matched / max(count, 1)} for (low, high), (count, matched) in bands.items()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--frames", type=int, default=40, help="validation frames per model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--json", default="outputs/benchmarks/proposal_overlap.json")
    args = parser.parse_args()
    rows = []
    print(f"{'model':18} {'nms/frame':>9} {'peaks/frame':>11} {'recall':>7} {'precision':>9} "
          f"{'recall(score)':>13} {'precision(score)':>16}  recall in score bands " + " ".join(
              f"({low},{high}]" for low, high in BANDS))
    for checkpoint in args.checkpoints:
        row = overlap(checkpoint, args.frames, args.batch, args.iou)
        rows.append(row)
        print(f"{row['preset']:18} {row['nms_per_frame']:9.1f} {row['peaks_per_frame']:11.1f} {row['recall']:7.3f} "
              f"{row['precision']:9.3f} {row['score_weighted_recall']:13.3f} {row['score_weighted_precision']:16.3f}  "
              + " ".join(f"{band['recall']:.2f} ({band['nms_per_frame']:.0f}/frame)" for band in row["recall_by_score"]),
              flush=True)
    write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
