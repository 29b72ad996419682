"""Training cost per frame of the demo's three runs (its compact world, its batch size), on CPU.

Times full optimiser steps (forward, loss, backward, AdamW) of the teacher, the student without KD
and the student with RDD (the demo's settings, under a trained demo teacher), median after two
warm-up steps. Multiply by the demo's frame budget to see where its minutes go.

    .venv/bin/python benchmarks/demo_step_cost.py --teacher runs/demo/teacher/last.pt --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rdd3d.data.synthetic import WorldConfig
from rdd3d.demo import FULL, STUDENT, TEACHER, demo_config
from rdd3d.engine.detection_task import DetectorTraining
from rdd3d.engine.runs import build_model, distillation_trainee
from rdd3d.core.fileio import write_json

from distill_pair import synthetic_batches  # benchmarks/ is the script's directory


def ms_per_frame(trainee: torch.nn.Module, batches: list, batch_size: int, warmup: int = 2) -> float:
    optimizer = torch.optim.AdamW([p for p in trainee.parameters() if p.requires_grad], 1e-3)
    times = []
    for batch in batches:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sum(trainee(batch).values()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[warmup:]) / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("runs/demo/teacher/last.pt"),
                        help="a teacher checkpoint of the same world (the RDD student distils from it): the demo's, "
                             "or with --full-world e.g. runs/benchmark/teachers-cpu/cp-voxel/last.pt")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--full-world", action="store_true",
                        help="the synthetic world's full range (+-41.6 m) instead of the demo's inner ring")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run, after 2 warm-up steps")
    parser.add_argument("--json", default="outputs/benchmarks/demo_step_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    batch_size = FULL.batch_size
    teacher_config = demo_config(Path("unused"), TEACHER, "none", FULL, FULL.teacher_epochs, seed=0)
    rdd_config = demo_config(Path("unused"), STUDENT, "rdd", FULL, FULL.student_epochs, seed=0)
    rdd_config.distill.teacher_checkpoint = str(args.teacher)
    student_config = demo_config(Path("unused"), STUDENT, "none", FULL, FULL.student_epochs, seed=0)
    if args.full_world:
        for config in (teacher_config, rdd_config, student_config):
            config.model.overrides, config.data.world = {}, WorldConfig()
    teacher = build_model(teacher_config)
    batches = synthetic_batches(teacher_config.data.world, teacher.point_cloud_range, batch_size, args.steps + 2)

    results = {
        "teacher": ms_per_frame(DetectorTraining(teacher), batches, batch_size),
        "student": ms_per_frame(DetectorTraining(build_model(student_config)), batches, batch_size),
        "student+rdd": ms_per_frame(distillation_trainee(rdd_config, torch.device("cpu")).train(), batches,
                                    batch_size),
    }
    budget = {"teacher": FULL.teacher_epochs, "student": FULL.student_epochs, "student+rdd": FULL.student_epochs}
    world = "full world" if args.full_world else "demo world"
    print(f"demo training cost, {world}, batch {batch_size}, {args.threads} threads (median of {args.steps} steps)")
    print("| run | ms / frame | frames in the budget | minutes |\n|---|---:|---:|---:|")
    for name, cost in results.items():
        frames_trained = budget[name] * FULL.train_frames
        print(f"| {name} | {cost:.0f} | {frames_trained} | {cost * frames_trained / 60000:.1f} |")
    write_json(args.json, {"world": world, "threads": args.threads, "batch_size": batch_size, "ms_per_frame": results,
                           "budget": FULL.__dict__})


if __name__ == "__main__":
    main()
