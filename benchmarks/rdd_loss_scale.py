"""How large RDD's weighted terms are next to the detection loss, for each feature distance and logit norm.

    .venv/bin/python benchmarks/rdd_loss_scale.py --teacher runs/benchmark/teachers-cpu/cp-voxel/last.pt \
        --student cp-voxel-xxs            # an untrained student preset, or --student path/to/student.pt

Prints one row per (feature_distance, logit_norm) and writes them as JSON.
"""
import argparse
import itertools

import torch

from rdd3d.distill.distiller import Distiller
from rdd3d.distill.rdd import FEATURE_DISTANCES, LOGIT_NORMS, RDDConfig, RDDLoss
from rdd3d.core.fileio import write_json

from distill_pair import teacher_student_batches  # benchmarks/ is the script's directory


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (rdd3d train)")
    parser.add_argument("--student", default="cp-voxel-xxs", help="student preset (untrained) or checkpoint")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", default="outputs/benchmarks/rdd_loss_scale.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, student, (batch,) = teacher_student_batches(args.teacher, args.student, args.batch, 1)
    rows = []
    for distance, norm in itertools.product(FEATURE_DISTANCES, LOGIT_NORMS):
        loss = RDDLoss(RDDConfig(feature_distance=distance, logit_norm=norm),
                       student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
        terms = Distiller(teacher, student, [loss]).train()(batch)
        pairs = loss.last_pairs
        rows.append({"feature_distance": distance, "logit_norm": norm,
                     **{name: value.item() for name, value in terms.items()},
                     "pairs": pairs.proposals.num_boxes, "selected": int(pairs.weights.sum())})
    print(f"{'distance':>8} {'norm':>5} {'det/heatmap':>11} {'det/location':>12} {'rdd/feature':>11} "
          f"{'rdd/logit':>9} {'pairs':>5} {'selected':>8}")
    for row in rows:
        print(f"{row['feature_distance']:>8} {row['logit_norm']:>5} {row['det/heatmap']:11.3f} "
              f"{row['det/location']:12.3f} {row['rdd/feature']:11.2e} {row['rdd/logit']:9.2e} "
              f"{row['pairs']:5d} {row['selected']:8d}")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
