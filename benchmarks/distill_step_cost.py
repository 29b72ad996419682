"""What distillation adds to a training step, pair by pair (CPU): the plain student step, the teacher's
forward and the distillation step, measured side by side on one synthetic batch.

    overhead = distillation step - plain student step - teacher forward, as a share of the plain step

Steps are forward + loss + backward (no optimiser update, the same on both sides); the plain and the
distillation step alternate, so that a slower moment of the machine hits both. The teacher's forward is
timed alone as the distiller runs it (inference mode, ``distill.teacher_precision``, channels-last), in fp32
beside it, and after a student forward whose voxels and rulebooks it reuses, as inside the step; the
``method`` share subtracts that last one, so it is the method's own work without the credit of the shared
rulebooks. ``--trained DIR`` reads ``DIR/<preset>/best.pt`` (or ``last.pt``) for the trained rows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_step_cost.py --threads 1 2 \\
        --trained runs/speed-models --json benchmarks/results/distill_step_cost.json
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.methods import DistillConfig, build_method
from rdd3d.distill.precision import teacher_dtype
from rdd3d.distill.rdd import RDDConfig
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.core.fileio import write_json
from rdd3d.models.detector import detection_loss_terms, shared_voxel_structure
from rdd3d.models.presets import build_detector

PAIRS = (("cp-voxel", "cp-voxel-xxs"), ("cp-voxel", "cp-voxel-s"), ("cp-pillar", "cp-pillar-v0.64"),
         ("second", "second-xs"))
METHODS = ("rdd", "rdd-peaks", "pp-logit")


def _model(preset: str, trained: Path | None):
    if trained is None:
        return build_detector(preset, "synthetic")
    for name in ("best.pt", "last.pt"):
        if (trained / preset / name).exists():
            return detector_from_checkpoint(trained / preset / name)[0]
    raise SystemExit(f"--trained {trained}: no {preset}/best.pt or {preset}/last.pt")


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure_pair(teacher_preset: str, student_preset: str, method: str, batch, trained: Path | None,
                 steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    teacher, student = _model(teacher_preset, trained), _model(student_preset, trained)
    config = (DistillConfig(method="rdd", rdd=RDDConfig(proposals="peaks")) if method == "rdd-peaks"
              else DistillConfig(method=method))
    losses = build_method(config, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, student, losses, teacher_precision=config.teacher_precision).train()
    dtype = teacher_dtype(config.teacher_precision, torch.device("cpu"))

    def plain_step():
        distiller.zero_grad(set_to_none=True)
        sum(detection_loss_terms(student, student(batch.points), batch).values()).backward()

    def distillation_step():
        distiller.zero_grad(set_to_none=True)
        sum(distiller(batch).values()).backward()

    def teacher_forward(autocast_dtype):
        with torch.inference_mode(), (torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None
                                      else contextlib.nullcontext()):
            teacher(batch.points)

    def teacher_after_student() -> float:
        """The teacher's forward as the step runs it: after the student, reusing its voxels and rulebooks."""
        with shared_voxel_structure():
            with torch.no_grad():
                student(batch.points)
            return _seconds(lambda: teacher_forward(dtype))

    times: dict[str, list[float]] = {"plain": [], "distillation": [], "teacher": [], "teacher_fp32": [],
                                     "teacher_in_step": []}
    for step in range(warmup + steps):
        measured = {"plain": _seconds(plain_step), "distillation": _seconds(distillation_step),
                    "teacher": _seconds(lambda: teacher_forward(dtype)),
                    "teacher_fp32": _seconds(lambda: teacher_forward(None)),
                    "teacher_in_step": teacher_after_student()}
        if step >= warmup:
            for name, value in measured.items():
                times[name].append(value)
    median = {name: statistics.median(values) for name, values in times.items()}
    overhead = median["distillation"] - median["plain"] - median["teacher"]
    # The same without the credit of shared rulebooks: what the method's own work costs.
    method_cost = median["distillation"] - median["plain"] - median["teacher_in_step"]
    result = {"teacher": teacher_preset, "student": student_preset, "method": method,
              "trained": trained is not None, "threads": torch.get_num_threads(), "batch": batch.batch_size,
              "steps": steps, **{f"{name}_s": value for name, value in median.items()},
              "overhead_s": overhead, "overhead_share": overhead / median["plain"],
              "method_share": method_cost / median["plain"]}
    if config.method == "rdd":
        pairs = losses[0].last_pairs
        result.update(pairs=pairs.proposals.num_boxes, kept=int((pairs.weights > 0).sum()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--trained", type=Path, help="folder of <preset>/best.pt: also measure trained models")
    parser.add_argument("--pairs", nargs="+", help="teacher:student pairs (default: the four of the issue)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="rdd, rdd-peaks (RDD with proposals=peaks) and/or any method of rdd3d distill")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default="outputs/benchmarks/distill_step_cost.json")
    args = parser.parse_args()
    pairs = [tuple(pair.split(":")) for pair in args.pairs] if args.pairs else PAIRS
    frames = SyntheticDataset("train", size=args.batch)
    batch = collate_frames([frames[i] for i in range(args.batch)])
    rows = []
    print(f"{'threads':>7} {'models':9} {'teacher -> student':32} {'method':9} {'plain':>7} {'teacher':>8} "
          f"{'(fp32)':>7} {'(step)':>7} {'distil':>7} {'overhead':>9} {'method':>7}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for trained in ([None, args.trained] if args.trained else [None]):
            for teacher, student in pairs:
                for method in args.methods:
                    row = measure_pair(teacher, student, method, batch, trained, args.steps, args.warmup)
                    rows.append(row)
                    print(f"{threads:>7} {'trained' if trained else 'untrained':9} {teacher + ' -> ' + student:32} "
                          f"{method:9} {row['plain_s']:7.3f} {row['teacher_s']:8.3f} {row['teacher_fp32_s']:7.3f} "
                          f"{row['teacher_in_step_s']:7.3f} {row['distillation_s']:7.3f} {row['overhead_share']:9.2f} "
                          f"{row['method_share']:7.2f}", flush=True)
    write_json(args.json, {"unit": "seconds per step (median)", "rows": rows})


if __name__ == "__main__":
    main()
