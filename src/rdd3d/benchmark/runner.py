"""Running a plan: train or reuse every run, measure each final checkpoint, write the reports."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from rdd3d.benchmark.plan import BenchmarkPlan, PairPlan, TEACHER_ROW, plan_runs
from rdd3d.benchmark.report import write_reports
from rdd3d.benchmark.results import BenchmarkResults, RunResult
from rdd3d.core.config_loading import ConfigError
from rdd3d.engine.config import load_run_config
from rdd3d.engine.distributed import init_distributed
from rdd3d.engine.measure import measure_checkpoint, training_ms_per_frame, validation_frames
from rdd3d.engine.runs import TrainedRun, detector_from_checkpoint, train_or_reuse

def run_benchmark(plan: BenchmarkPlan, out_dir: str | Path, progress: Callable[[str], None] = print
                  ) -> BenchmarkResults:
    """Train (or reuse) and measure every run of ``plan``; write the reports into ``out_dir``."""
    out_dir = Path(out_dir)
    runs = plan_runs(plan, out_dir)
    shared = load_run_config((), [*plan.overrides, f"data.val_split={plan.report_split}"])
    frames, val_set = validation_frames(shared)
    device = init_distributed(shared.device).device
    measured: dict[Path, RunResult] = {}  # by checkpoint: a teacher shared by pairs is measured once
    results = []
    for index, run in enumerate(runs, start=1):
        started = time.perf_counter()
        given = run.row == TEACHER_ROW and bool(run.pair.teacher_checkpoint)
        trained = _given_teacher(run.pair) if given else train_or_reuse(run.config)
        if trained.checkpoint not in measured:
            measurement = measure_checkpoint(trained.checkpoint, frames, val_set, device,
                                             shared.eval.batch_size, plan.latency_frames, plan.latency_repeats)
            measured[trained.checkpoint] = RunResult(
                run.pair.name, run.row, run.method, run.config.model.preset, run.seed, str(trained.checkpoint),
                trained.steps, trained.reused, *measurement,
                training_ms_per_frame(trained.checkpoint.parent / "log.jsonl"))
        result = dataclasses.replace(measured[trained.checkpoint], pair=run.pair.name)
        results.append(result)
        how = "reused" if trained.reused else "trained"
        progress(f"[{index}/{len(runs)}] {run.pair.name} {run.row} seed{run.seed}: mAP {result.metrics['mAP']:.4f} "
                 f"NDS {result.metrics['NDS']:.4f} ({how}, {time.perf_counter() - started:.0f} s) "
                 f"-> {trained.checkpoint}")
    benchmark = BenchmarkResults(plan, results, len(frames), str(device), torch.get_num_threads())
    write_reports(benchmark, out_dir)
    return benchmark


def _given_teacher(pair: PairPlan) -> TrainedRun:
    _, config = detector_from_checkpoint(pair.teacher_checkpoint)
    if config.model.preset != pair.teacher:
        raise ConfigError(f"pair {pair.name}: teacher_checkpoint {pair.teacher_checkpoint} holds a "
                          f"{config.model.preset}, the pair's teacher is {pair.teacher}")
    return TrainedRun(Path(pair.teacher_checkpoint), None, reused=True)
