"""Per-step cost of RDD next to plain student training, on a synthetic batch (CPU).

    .venv/bin/python benchmarks/rdd_step_cost.py --teacher cp-pillar --student cp-pillar-v0.64 --batch 2 --steps 5
"""
import argparse
import statistics
import time

import torch

from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.proposals import select_proposals
from rdd3d.distill.rdd import RDDConfig, RDDLoss
from rdd3d.engine.detection_task import detection_loss_terms
from rdd3d.fileio import write_json
from rdd3d.models.presets import build_detector


def clock(times, name, fn):
    start = time.perf_counter()
    result = fn()
    times.setdefault(name, []).append(time.perf_counter() - start)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default="cp-pillar")
    parser.add_argument("--student", default="cp-pillar-v0.64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default="outputs/benchmarks/rdd_step_cost.json", help="where to write the medians")
    args = parser.parse_args()
    torch.manual_seed(0)
    frames = SyntheticDataset("train", size=args.batch)
    batch = collate_frames([frames[i] for i in range(args.batch)])
    teacher = build_detector(args.teacher, "synthetic")
    student = build_detector(args.student, "synthetic")
    config = RDDConfig()
    loss = RDDLoss(config, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, student, [loss]).train()
    plain, distil = {}, {}
    for step in range(args.warmup + args.steps):
        record = step >= args.warmup
        p, d = (plain, distil) if record else ({}, {})
        # Plain student training step.
        distiller.zero_grad(set_to_none=True)
        output = clock(p, "student forward", lambda: student(batch.points))
        terms = clock(p, "detection loss", lambda: detection_loss_terms(student, output, batch))
        clock(p, "backward", lambda: sum(terms.values()).backward())
        # Distillation step, its parts timed one by one.
        distiller.zero_grad(set_to_none=True)
        start = time.perf_counter()
        views = clock(d, "teacher+student forward", lambda: distiller.step_views(batch))
        terms = clock(d, "detection loss", lambda: detection_loss_terms(student, views.student.output, batch))
        clock(d, "decode teacher", views.teacher.detections)
        clock(d, "decode student", views.student.detections)
        clock(d, "  of which select proposals (both)", lambda: [select_proposals(v.detections(), config.score_threshold,
                                                     config.nms_iou, config.max_proposals)
                                                     for v in (views.teacher, views.student)])
        rdd = clock(d, "rdd loss (select+psi+pool+losses)", lambda: loss(views))
        clock(d, "backward", lambda: sum({**terms, **rdd}.values()).backward())
        # The separately timed selection is repeated inside the loss: count it once.
        d.setdefault("total", []).append(time.perf_counter() - start - d["  of which select proposals (both)"][-1])
        if record:
            pairs = loss.last_pairs
            d.setdefault("pairs", []).append(pairs.proposals.num_boxes)
            d.setdefault("kept", []).append(float(pairs.weights.sum()))
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, {args.steps} steps (median s), "
          f"{torch.get_num_threads()} threads")
    for name, values in plain.items():
        print(f"  plain   {name:34s} {statistics.median(values):.3f}")
    print(f"  plain   {'total':34s} {sum(statistics.median(v) for v in plain.values()):.3f}")
    for name, values in distil.items():
        print(f"  distil  {name:34s} {statistics.median(values):.3f}")
    teacher = statistics.median(distil["teacher+student forward"]) - statistics.median(plain["student forward"])
    print(f"  teacher forward (difference)             {teacher:.3f}")
    medians = {"plain": {k: statistics.median(v) for k, v in plain.items()},
               "distil": {k: statistics.median(v) for k, v in distil.items()}, "teacher_forward": teacher,
               "teacher": args.teacher, "student": args.student, "batch": args.batch, "threads": torch.get_num_threads()}
    write_json(args.json, medians)


if __name__ == "__main__":
    main()
