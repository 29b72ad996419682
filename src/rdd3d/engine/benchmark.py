"""The comparison benchmark: a teacher, its student without KD and with every method, over seeds
(the paper's Table 3, its ablations and the λ sweep), on the synthetic world.

A plan (YAML, :class:`BenchmarkPlan`) names (teacher, student) preset pairs, the methods, variants
(a method with overrides of its own: ablations and sweeps), the seeds, and ``--set``-style overrides
shared by every run. :func:`run_benchmark` runs everything in turn in this process: each teacher once
(``<teachers_dir>/<preset>/``), then per seed the student rows (``<out>/<pair>/<row>/seed<k>/``). A run
whose folder already holds it finished is reused, an interrupted one resumes. Every final checkpoint
(``last.pt``; ``best.pt`` would be chosen on the very frames we report) is evaluated on the same
validation frames, its MACs counted on the first of them and its CPU latency timed; the training cost
per frame comes from the run's ``log.jsonl``. The results land in ``results.json`` (every number of
every seed), ``results.md`` (one table per pair and, over several seeds, each row's per-seed gain over
the student without KD trained from the same seed) and ``results.png``.
"""

from __future__ import annotations

import dataclasses
import io
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from rdd3d.core.types import Frame
from rdd3d.distill.methods import METHOD_NAMES
from rdd3d.core.checkpoint import load_checkpoint
from rdd3d.engine.config import RunConfig, load_run_config
from rdd3d.core.config_loading import ConfigError, build_config
from rdd3d.engine.datasets import build_datasets, evaluate, summary_metrics
from rdd3d.engine.detection_task import predict
from rdd3d.engine.distributed import init_distributed
from rdd3d.engine.run_logging import read_log
from rdd3d.engine.runs import (
    detector_from_checkpoint, distill_student, stored_config_differences, train_detector,
)
from rdd3d.engine.trainer import Trainer
from rdd3d.core.fileio import write_bytes, write_json
from rdd3d.models.complexity import count_macs, count_parameters
from rdd3d.models.presets import list_presets

TEACHER_ROW = "teacher"
NO_KD_ROW = "none"
#: Run-config keys the plan sets itself (folders, pairs, methods, seeds); overrides may not touch them.
PLANNED_KEYS = ("output_dir", "model.preset", "distill.method", "distill.teacher_checkpoint", "trainer.seed")
_ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ----------------------------------------------------------------------------- the plan
@dataclass
class PairPlan:
    teacher: str  # teacher preset, e.g. cp-voxel
    student: str  # student preset, e.g. cp-voxel-xxs
    teacher_checkpoint: str = ""  # a trained teacher to use as is; empty: train it (once per preset)

    @property
    def name(self) -> str:
        return f"{self.student}-from-{self.teacher}"


@dataclass
class VariantPlan:
    """A table row that runs ``method`` with overrides of its own (e.g. ``distill.rdd.lam=0.4``)."""

    name: str
    method: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class BenchmarkPlan:
    title: str = "benchmark"
    pairs: list[PairPlan] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # rows with each method's defaults; "none" always runs
    variants: list[VariantPlan] = field(default_factory=list)  # further rows, after the methods
    seeds: list[int] = field(default_factory=lambda: [0])  # trainer.seed of every student row
    only: list[str] = field(default_factory=list)  # run just these rows (by name; no KD always runs); empty: all
    overrides: list[str] = field(default_factory=list)  # run-config overrides of every run, teachers too
    teacher_overrides: list[str] = field(default_factory=list)  # teachers only, applied after `overrides`
    teacher_seed: int = 0
    teachers_dir: str = ""  # where teachers are trained and found again; empty: <out>/teachers
    latency_frames: int = 2  # validation frames timed one at a time on the CPU
    latency_repeats: int = 3  # timed passes over them after one warm-up pass; the median is reported

    def __post_init__(self) -> None:
        presets = list_presets()
        problems = [f"pairs[{i}].{role} {name!r} is not a preset (known: {list(presets)})"
                    for i, pair in enumerate(self.pairs)
                    for role, name in (("teacher", pair.teacher), ("student", pair.student)) if name not in presets]
        problems += [f"methods: {method!r} is not a method (known: {list(METHOD_NAMES)})"
                     for method in self.methods if method not in METHOD_NAMES]
        problems += [f"variants.{v.name}.method {v.method!r} is not a method (known: {list(METHOD_NAMES)})"
                     for v in self.variants if v.method not in METHOD_NAMES]
        names = [row.name for row in self.all_rows()]
        problems += [f"row name {name!r} must match {_ROW_NAME.pattern}" for name in names
                     if not _ROW_NAME.fullmatch(name)]
        problems += [f"row name {name!r} appears twice (methods and variants name the rows)"
                     for name in sorted({n for n in names if names.count(n) > 1})]
        problems += [f"only: {name!r} is not a row of the plan (rows: {names})" for name in self.only
                     if name not in names]
        checks = {
            "pairs": (bool(self.pairs), "at least one teacher/student pair"),
            "seeds": (bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "one or more distinct seeds"),
            "latency_frames": (self.latency_frames >= 1, ">= 1"),
            "latency_repeats": (self.latency_repeats >= 1, ">= 1"),
            "variants": (TEACHER_ROW not in names, f"no row named {TEACHER_ROW!r}"),
        }
        problems += [f"{name} must be {expected}, got {getattr(self, name)!r}"
                     for name, (valid, expected) in checks.items() if not valid]
        if problems:
            raise ValueError("benchmark plan: " + "; ".join(problems))

    def all_rows(self) -> list[VariantPlan]:
        """The student rows in table order: no KD, each method with its defaults, each variant."""
        rows = [VariantPlan(NO_KD_ROW, "none")]
        rows += [VariantPlan(method, method) for method in self.methods if method != NO_KD_ROW]
        return rows + list(self.variants)

    def rows(self) -> list[VariantPlan]:
        """The rows to run: every row, or no KD and those named in ``only``."""
        return [row for row in self.all_rows() if not self.only or row.name in (NO_KD_ROW, *self.only)]


def load_plan(path: str | Path, overrides: Sequence[str] = ()) -> BenchmarkPlan:
    """Read a plan (unknown keys are errors). An override whose key is a plan field (``seeds=[0]``)
    changes the plan; any other (``trainer.epochs=2``) is appended to the plan's run ``overrides``."""
    plan_fields = {f.name for f in dataclasses.fields(BenchmarkPlan)}
    for_plan = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] in plan_fields]
    for_runs = [o for o in overrides if o not in for_plan]
    try:
        plan = build_config(BenchmarkPlan, [path], for_plan)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from None
    return dataclasses.replace(plan, overrides=[*plan.overrides, *for_runs])


# ----------------------------------------------------------------------------- the runs
class PlannedRun(NamedTuple):
    pair: PairPlan
    row: str  # "teacher", "none", a method or a variant
    method: str
    seed: int
    config: RunConfig


def run_config(overrides: Sequence[str], output_dir: Path, preset: str, method: str, seed: int,
               teacher_checkpoint: str = "") -> RunConfig:
    """A run's config: defaults <- ``overrides`` <- what the plan fixes (folder, preset, method, seed)."""
    for override in overrides:
        if override.split("=", 1)[0] in PLANNED_KEYS:
            raise ConfigError(f"override {override!r}: the benchmark sets {PLANNED_KEYS} itself "
                              f"(from the plan's pairs, methods and seeds)")
    config = load_run_config((), overrides)
    config.output_dir = str(output_dir)
    config.model.preset = preset
    config.distill = dataclasses.replace(config.distill, method=method, teacher_checkpoint=teacher_checkpoint)
    config.trainer.seed = seed
    return config


def plan_runs(plan: BenchmarkPlan, out_dir: str | Path) -> list[PlannedRun]:
    """Every run of the plan in execution order, each pair's teacher first. Building every config up
    front makes a bad override fail before hours of training."""
    out_dir = Path(out_dir)
    teachers_dir = Path(plan.teachers_dir) if plan.teachers_dir else out_dir / "teachers"
    runs = []
    for pair in plan.pairs:
        teacher_dir = teachers_dir / pair.teacher
        teacher_checkpoint = pair.teacher_checkpoint or str(teacher_dir / Trainer.LAST)
        teacher = run_config([*plan.overrides, *plan.teacher_overrides], teacher_dir, pair.teacher, "none",
                             plan.teacher_seed)
        runs.append(PlannedRun(pair, TEACHER_ROW, "none", plan.teacher_seed, teacher))
        for seed in plan.seeds:
            for row in plan.rows():
                folder = out_dir / pair.name / row.name / f"seed{seed}"
                config = run_config([*plan.overrides, *row.overrides], folder, pair.student, row.method, seed,
                                    teacher_checkpoint if row.method != "none" else "")
                runs.append(PlannedRun(pair, row.name, row.method, seed, config))
    return runs


class TrainedRun(NamedTuple):
    checkpoint: Path
    steps: int | None  # optimiser steps (None for a given teacher checkpoint)
    reused: bool  # found finished, not trained now


def train_or_reuse(config: RunConfig) -> TrainedRun:
    """Train ``config``'s run unless its folder already holds it finished; resume an interrupted one.

    A folder holding a run of another config is an error (listing the differences), never overwritten.
    """
    output_dir = Path(config.output_dir)
    last = output_dir / Trainer.LAST
    resume = None
    if last.is_file():
        state = load_checkpoint(last)
        differences = stored_config_differences(state, config, source=str(last))
        if differences:
            raise ConfigError(f"{output_dir} holds a run of another config ({'; '.join(differences[:5])}); "
                              f"delete that folder or point the benchmark elsewhere (--out; teachers_dir for teachers)")
        finished = state["epoch"] == config.trainer.epochs and state["step_in_epoch"] == 0
        if finished and not state.get("evaluation_pending", False):
            return TrainedRun(last, state["step"], reused=True)
        resume = "last"
    else:
        (output_dir / "log.jsonl").unlink(missing_ok=True)  # a run killed before its first checkpoint
    train = distill_student if config.distill.method != "none" else train_detector
    return TrainedRun(last, train(config, resume=resume).step, reused=False)


# ----------------------------------------------------------------------------- measurements
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


class Measurement(NamedTuple):
    metrics: dict[str, float]
    params: int
    gmacs: float
    latency_ms: float


def measure_checkpoint(checkpoint: str | Path, frames: Sequence[Frame], dataset,
                       device: torch.device, batch_size: int = 4, latency_frames: int = 2,
                       latency_repeats: int = 3) -> Measurement:
    """Accuracy of a checkpoint's detector on ``frames`` of ``dataset`` (on ``device``), then its size,
    MACs and CPU latency."""
    detector, _ = detector_from_checkpoint(checkpoint, device)
    metrics = summary_metrics(dataset, evaluate(dataset, frames, predict(detector, frames, device, batch_size)))
    detector.cpu()
    points = [torch.from_numpy(frames[0].points.points)]
    macs = count_macs(detector, points).macs
    latency = cpu_latency_ms(detector, frames[:latency_frames], latency_repeats)
    return Measurement(metrics, count_parameters(detector), macs / 1e9, latency)


@torch.no_grad()
def cpu_latency_ms(detector: nn.Module, frames: Sequence[Frame], repeats: int = 3) -> float:
    """Median wall time (ms) of the forward pass of one frame on the CPU, in eval mode, after a warm-up pass."""
    detector = detector.cpu().eval()
    inputs = [[torch.from_numpy(frame.points.points)] for frame in frames]
    for points in inputs:
        detector(points)
    times = []
    for _ in range(repeats):
        for points in inputs:
            started = time.perf_counter()
            detector(points)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def training_ms_per_frame(log_path: str | Path) -> float | None:
    """Training wall time per frame: the median over epochs of each epoch's mean throughput (the last
    ``frames_per_s`` an epoch logged covers the whole epoch). None when the run left no log."""
    if not Path(log_path).is_file():
        return None
    per_epoch = {record["epoch"]: record["frames_per_s"] for record in read_log(log_path, "train")}
    return 1000 / statistics.median(per_epoch.values()) if per_epoch else None


def validation_frames(config: RunConfig) -> tuple[list[Frame], Any]:
    """The validation frames every run is scored on (``eval.max_frames`` of them, read lazily) and their dataset."""
    lazy = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_in_memory=False))
    _, val_set = build_datasets(lazy.data)
    count = min(config.eval.max_frames or len(val_set), len(val_set))
    if count == 0:
        raise ValueError("the benchmark needs validation frames: data.val_size is 0")
    return [val_set[i] for i in range(count)], val_set


# ----------------------------------------------------------------------------- the benchmark
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


def run_benchmark(plan: BenchmarkPlan, out_dir: str | Path, progress: Callable[[str], None] = print
                  ) -> BenchmarkResults:
    """Train (or reuse) and measure every run of ``plan``; write the reports into ``out_dir``."""
    out_dir = Path(out_dir)
    runs = plan_runs(plan, out_dir)
    shared = load_run_config((), plan.overrides)
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


# ----------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class RowSummary:
    """One table row: a model's numbers over its seeds (mean and sample standard deviation)."""

    row: str
    method: str
    preset: str
    seeds: int
    mAP: float
    mAP_std: float
    NDS: float
    NDS_std: float
    params: int
    gmacs: float
    latency_ms: float
    train_ms_per_frame: float | None

    @classmethod
    def of(cls, row: str, runs: Sequence[RunResult]) -> "RowSummary":
        def mean_std(values: list[float]) -> tuple[float, float]:
            return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        costs = [run.train_ms_per_frame for run in runs if run.train_ms_per_frame is not None]
        first = runs[0]
        return cls(row, first.method, first.preset, len(runs),
                   *mean_std([run.metrics["mAP"] for run in runs]), *mean_std([run.metrics["NDS"] for run in runs]),
                   first.params, first.gmacs, statistics.fmean(run.latency_ms for run in runs),
                   statistics.fmean(costs) if costs else None)


def summarise(results: BenchmarkResults) -> dict[str, list[RowSummary]]:
    """Per pair, its rows in table order."""
    return {pair.name: [RowSummary.of(row, runs) for row, runs in results.rows(pair.name)]
            for pair in results.plan.pairs}


@dataclass(frozen=True)
class PairedGain:
    """A student row against the student without KD trained from the same seed (same initialisation and
    frame order): seeds spread scores more than methods move them, so the per-seed difference is the
    fairer test of a method than the difference of the means."""

    row: str
    mAP_by_seed: dict[int, float]
    gain_by_seed: dict[int, float]  # mAP minus no KD's, on the seeds both rows have

    @property
    def mean_gain(self) -> float | None:
        return statistics.fmean(self.gain_by_seed.values()) if self.gain_by_seed else None

    @property
    def seeds_won(self) -> int:
        return sum(gain > 0 for gain in self.gain_by_seed.values())


def paired_gains(results: BenchmarkResults) -> dict[str, list[PairedGain]]:
    """Per pair, its student rows in table order (no KD first, with no gains), each paired seed by seed
    with no KD; empty for a pair without a no-KD run."""
    paired = {}
    for pair in results.plan.pairs:
        by_row = {row: {run.seed: run.metrics["mAP"] for run in runs} for row, runs in results.rows(pair.name)
                  if row != TEACHER_ROW}
        no_kd = by_row.get(NO_KD_ROW)
        paired[pair.name] = [] if no_kd is None else [
            PairedGain(row, scores, {} if row == NO_KD_ROW else
                       {seed: score - no_kd[seed] for seed, score in scores.items() if seed in no_kd})
            for row, scores in by_row.items()]
    return paired


def write_reports(results: BenchmarkResults, out_dir: str | Path) -> None:
    """``results.json`` (every number), ``results.md`` (tables) and ``results.png`` (mAP per row)."""
    out_dir = Path(out_dir)
    summary, paired = summarise(results), paired_gains(results)
    write_json(out_dir / "results.json", {
        "title": results.plan.title,
        "plan": dataclasses.asdict(results.plan),
        "validation_frames": results.validation_frames,
        "device": results.device,
        "latency": {"device": "cpu", "threads": results.cpu_threads, "frames": results.plan.latency_frames,
                    "repeats": results.plan.latency_repeats, "statistic": "median ms per frame, forward only"},
        "runs": [dataclasses.asdict(run) for run in results.runs],
        "summary": {pair: [dataclasses.asdict(row) for row in rows] for pair, rows in summary.items()},
        "paired": {pair: [{**dataclasses.asdict(row), "mean_gain": row.mean_gain, "seeds_won": row.seeds_won}
                          for row in rows] for pair, rows in paired.items()},
    })
    (out_dir / "results.md").write_text(format_markdown(results, summary, paired), encoding="utf-8")
    write_bytes(out_dir / "results.png", render_plot(results.plan.title, summary))


def format_markdown(results: BenchmarkResults, summary: Mapping[str, list[RowSummary]],
                    paired: Mapping[str, list[PairedGain]]) -> str:
    plan = results.plan
    lines = [f"# {plan.title}", "",
             f"Seeds {', '.join(map(str, plan.seeds))}; {results.validation_frames} validation frames; "
             f"trained and evaluated on {results.device}. mAP and NDS in %, mean ± sample std over seeds; "
             f"Δ mAP against the student without KD; GMACs on the first validation frame; latency: CPU forward "
             f"of one frame ({results.cpu_threads} threads, median); training cost per frame from the runs' "
             f"logs, × against the student without KD."]
    for pair in plan.pairs:
        rows = summary[pair.name]
        no_kd = next((row for row in rows if row.row == NO_KD_ROW), None)
        lines += ["", f"## {pair.student} from {pair.teacher}", "",
                  "| model | mAP | NDS | Δ mAP | GMACs | params (M) | latency (ms) | training (ms/frame) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            reference = row.row in (TEACHER_ROW, NO_KD_ROW)
            name = f"{row.row} ({row.preset})" if reference else row.row
            delta = "" if reference or no_kd is None else f"{100 * (row.mAP - no_kd.mAP):+.1f}"
            lines.append(f"| {name} | {_percent(row.mAP, row.mAP_std, row.seeds)} | "
                         f"{_percent(row.NDS, row.NDS_std, row.seeds)} | {delta} | {row.gmacs:.2f} | "
                         f"{row.params / 1e6:.2f} | {row.latency_ms:.0f} | {_cost(row, no_kd)} |")
        if len(plan.seeds) > 1 and paired[pair.name]:
            lines += _paired_table(paired[pair.name], plan.seeds)
    return "\n".join(lines) + "\n"


def _paired_table(rows: Sequence[PairedGain], seeds: Sequence[int]) -> list[str]:
    def per_seed(values: Mapping[int, float], spec: str) -> str:  # in %, "–" for a seed not run
        return " / ".join(f"{100 * values[seed]:{spec}}" if seed in values else "–" for seed in seeds)

    lines = ["", f"mAP per seed ({' / '.join(map(str, seeds))}) and the gain over no KD trained from the same seed:",
             "", "| row | mAP per seed | gain per seed | mean gain | seeds won |", "|---|---|---|---:|---:|"]
    for row in rows:
        scores = per_seed(row.mAP_by_seed, ".2f")
        if row.row == NO_KD_ROW:
            lines.append(f"| {row.row} | {scores} | | | |")
        elif row.mean_gain is not None:
            lines.append(f"| {row.row} | {scores} | {per_seed(row.gain_by_seed, '+.2f')} | "
                         f"{100 * row.mean_gain:+.2f} | {row.seeds_won} of {len(row.gain_by_seed)} |")
    return lines


def _percent(mean: float, std: float, seeds: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if seeds > 1 else f"{100 * mean:.1f}"


def _cost(row: RowSummary, no_kd: RowSummary | None) -> str:
    if row.train_ms_per_frame is None:
        return ""
    if row.row in (TEACHER_ROW, NO_KD_ROW) or no_kd is None or no_kd.train_ms_per_frame is None:
        return f"{row.train_ms_per_frame:.0f}"
    return f"{row.train_ms_per_frame:.0f} ({row.train_ms_per_frame / no_kd.train_ms_per_frame:.2f}×)"


def render_plot(title: str, summary: Mapping[str, list[RowSummary]]) -> bytes:
    """PNG: per pair, the students' mAP per row with ± std error bars and the teacher's as a line."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4 + 3 * len(summary), 4.5), layout="constrained")
    for axes, (pair, rows) in zip(figure.subplots(1, len(summary), squeeze=False)[0], summary.items()):
        students = [row for row in rows if row.row != TEACHER_ROW]
        positions = range(len(students))
        axes.bar(positions, [100 * row.mAP for row in students], yerr=[100 * row.mAP_std for row in students],
                 capsize=3, color=["#9e9e9e" if row.row == NO_KD_ROW else "#1e88e5" for row in students])
        for row in rows:
            if row.row == TEACHER_ROW:
                axes.axhline(100 * row.mAP, color="#e53935", linestyle="--", label=f"teacher {row.preset}")
                axes.legend(loc="lower right", fontsize=8)
        axes.set_xticks(list(positions), [row.row for row in students], rotation=45, ha="right")
        axes.set_ylabel("mAP (%)")
        axes.set_title(pair, fontsize=10)
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
