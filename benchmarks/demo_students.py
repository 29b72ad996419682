"""The demo's student runs under other RDD settings: how fast each student's heatmap loss falls.

Trains CP-Voxel-XXS in the demo's world and budget (its frames, batch 2, the students' learning rate;
``--epochs`` of them) without KD and with RDD under each ``--variant`` (the demo's RDD settings plus the
variant's field changes; ``--set`` changes every run, e.g. the batch size), distilling from a trained
demo teacher, then prints the mean heatmap focal loss of each quarter of training and the final mAP on
the demo's validation frames. Finished runs are reused.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/demo_students.py --teacher runs/demo-idle/teacher/last.pt \\
        --epochs 2 --variant demo --variant logit-only:use_feature=false --variant feature-only:use_logit=false
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rdd3d.demo import FULL, STUDENT, STUDENT_OVERRIDES, demo_config
from rdd3d.engine.runs import train_or_reuse
from rdd3d.engine.run_logging import read_log


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name`` or ``name:field=value,field=value`` (RDDConfig fields) -> name, run-config overrides."""
    name, _, fields = text.partition(":")
    return name, [f"distill.rdd.{item}" for item in fields.split(",") if item]


def heatmap_quarters(log_path: Path) -> list[float]:
    losses = [record["loss/det/heatmap"] for record in read_log(log_path, "train")]
    quarter = max(len(losses) // 4, 1)
    return [sum(losses[i:i + quarter]) / len(losses[i:i + quarter]) for i in range(0, quarter * 4, quarter)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a trained demo teacher checkpoint")
    parser.add_argument("--epochs", type=int, default=FULL.student_epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[],
                        help="name[:rdd_field=value,...] on top of the demo's RDD settings (repeatable)")
    parser.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config override of every run, no KD included, e.g. trainer.batch_size=4 "
                             "(give such runs their own --out)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo-students"))
    args = parser.parse_args()

    runs = {"none": ("none", [])} | {name: ("rdd", overrides) for name, overrides in map(parse_variant, args.variant)}
    print("| student | heatmap loss by quarter of training | mAP |\n|---|---|---:|")
    for name, (method, overrides) in runs.items():
        config = demo_config(args.out / name / f"seed{args.seed}", STUDENT, method, FULL, args.epochs, args.seed,
                             [*STUDENT_OVERRIDES, *args.common, *overrides])
        if method == "rdd":
            config.distill.teacher_checkpoint = str(args.teacher)
        log = train_or_reuse(config).checkpoint.parent / "log.jsonl"
        quarters = " / ".join(f"{value:.2f}" for value in heatmap_quarters(log))
        print(f"| {name} | {quarters} | {100 * read_log(log, 'eval')[-1]['mAP']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
