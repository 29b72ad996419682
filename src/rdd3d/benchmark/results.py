"""What a benchmark measured: one record per run, and all of them with the plan and where they ran."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from rdd3d.benchmark.plan import TEACHER_ROW, BenchmarkPlan


@dataclass
class RunResult:
    pair: str
    row: str
    method: str
    preset: str
    seed: int
    checkpoint: str
    steps: int | None
    reused: bool
    metrics: dict[str, float]  # mAP, NDS, err/<TP metric>, AP/<class> on the validation frames
    params: int  # of the detector alone (adapters are training-only)
    gmacs: float  # on the first validation frame
    latency_ms: float  # CPU forward of one frame, eval mode, median
    train_ms_per_frame: float | None  # training wall time per frame, from log.jsonl (None without a log)


@dataclass
class BenchmarkResults:
    plan: BenchmarkPlan
    runs: list[RunResult]
    validation_frames: int
    device: str  # where training and evaluation ran
    cpu_threads: int  # torch threads during the latency measurements

    def rows(self, pair: str) -> Iterator[tuple[str, list[RunResult]]]:
        """A pair's runs grouped by row, in table order (teacher first)."""
        names = [TEACHER_ROW, *(row.name for row in self.plan.rows())]
        for name in names:
            runs = [run for run in self.runs if run.pair == pair and run.row == name]
            if runs:
                yield name, runs
