"""How hard each distillation term pulls on the student, next to the detection loss.

A loss value says little about its effect (RDD's feature term compares channel softmaxes whose entries
are about 1/C); the gradient it sends into the student does. For a few training batches this prints,
per loss term, the norm of its gradient on the student's neck map (the "bev" tap), on its class maps
(CenterPoint heatmap logits, or an anchor head's class logits) and on its box-regression maps, averaged
over the batches.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_gradient_scale.py \
        --teacher runs/benchmark/teachers-cpu/cp-voxel/last.pt \
        --student runs/benchmark/table3-cpu/cp-voxel-xxs-from-cp-voxel/none/seed0/last.pt \
        --variant rdd --variant rdd:feature_distance=kl,logit_norm=l1 --variant pp-logit:weight=7
"""
import argparse

import torch

from rdd3d.distill.distiller import Distiller
from rdd3d.distill.methods import DistillConfig, build_method
from rdd3d.core.config_loading import build_config
from rdd3d.core.fileio import write_json
from rdd3d.models.heads.anchor_head import AnchorPrediction

from distill_pair import teacher_student_batches  # benchmarks/ is the script's directory


def parse_variant(text: str) -> tuple[str, DistillConfig]:
    """``method[:option=value,...]`` -> (label, config), through the run config's own typed overrides."""
    method, _, options = text.partition(":")
    block = method.replace("-", "_")
    overrides = [f"method={method}", *(f"{block}.{option}" for option in options.split(",") if option)]
    return text, build_config(DistillConfig, overrides=overrides)


def head_maps(head) -> dict[str, list[torch.Tensor]]:
    """The head's class maps ("heatmap": CenterPoint heatmaps or anchor class logits) and its box maps."""
    if isinstance(head, AnchorPrediction):
        return {"heatmap": [head.cls_logits], "box": [head.box_deltas]}
    return {"heatmap": [task.heatmap for task in head],
            "box": [part for task in head for part in task[1:] if part is not None]}


def gradient_norms(term: torch.Tensor, targets: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    flat = [tensor for tensors in targets.values() for tensor in tensors]
    grads = torch.autograd.grad(term, flat, retain_graph=True, allow_unused=True)
    norms, start = {}, 0
    for name, tensors in targets.items():
        pieces = [g for g in grads[start:start + len(tensors)] if g is not None]
        norms[name] = float(torch.sqrt(sum((g ** 2).sum() for g in pieces))) if pieces else 0.0
        start += len(tensors)
    return norms


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (rdd3d train)")
    parser.add_argument("--student", default="cp-voxel-xxs", help="student preset (untrained) or checkpoint")
    parser.add_argument("--variant", action="append", default=[],
                        help="method[:option=value,...], e.g. rdd:feature_distance=kl (repeatable)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--json", default="outputs/benchmarks/distill_gradient_scale.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, student, batches = teacher_student_batches(args.teacher, args.student, args.batch, args.batches)
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for label, config in map(parse_variant, args.variant or ["rdd"]):
        losses = build_method(config, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
        distiller = Distiller(teacher, student, losses).train()
        for batch in batches:
            step = distiller.step_views(batch)
            targets = {"bev": [step.student.tap("bev", "benchmark")],
                       **head_maps(step.student.tap("head", "benchmark"))}
            terms = distiller.detection_loss(student, step.student.output, batch)
            for loss in distiller.losses:
                terms.update(loss(step))
            for name, term in terms.items():
                norms = {"value": term.item(), **gradient_norms(term, targets)}
                row = rows.setdefault((label, name), {})
                for key, value in norms.items():
                    row.setdefault(key, []).append(value)
    table = [{"variant": label, "term": name, **{k: sum(v) / len(v) for k, v in row.items()}}
             for (label, name), row in rows.items()]
    width = max(len(row["variant"]) for row in table)
    print(f"{'variant':<{width}} {'term':<22} {'value':>9} {'|g| bev':>9} {'|g| heatmap':>11} {'|g| box':>9}")
    for row in table:
        print(f"{row['variant']:<{width}} {row['term']:<22} {row['value']:9.3g} {row['bev']:9.3g} "
              f"{row['heatmap']:11.3g} {row['box']:9.3g}")
    write_json(args.json, table)


if __name__ == "__main__":
    main()
