#!/usr/bin/env bash
# The short-trained models the step-cost, teacher-precision and proposal-overlap benchmarks read
# (--trained runs/speed-models): teachers 6 epochs (CP-Pillar 3), students 2, of 240 synthetic
# frames at batch 2 and LR 3e-3, one thread. Far from converged on purpose: they stand for a run in progress.
# About 50 minutes on one core. A model whose best.pt exists is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
OUT=${1:-runs/speed-models}
train() {
  local preset=$1 epochs=$2
  [ -f "$OUT/$preset/best.pt" ] && return
  .venv/bin/rdd3d train --set model.preset="$preset" --set data.dataset=synthetic --set data.train_size=240 \
    --set data.val_size=40 --set trainer.batch_size=2 --set optim.lr=3e-3 --set trainer.epochs="$epochs" \
    --set trainer.eval_interval="$epochs" --set output_dir="$OUT/$preset"
}
train cp-voxel-s 2; train cp-voxel-xxs 2; train cp-voxel 6; train second-xs 2; train second 6
train cp-pillar-v0.64 2; train cp-pillar 3
