"""The benchmark's reports: results.json, results.md (tables, paired gains) and results.png."""

from __future__ import annotations

import dataclasses
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from rdd3d.benchmark.plan import NO_KD_ROW, TEACHER_ROW, BenchmarkPlan
from rdd3d.benchmark.results import BenchmarkResults, RunResult
from rdd3d.core.fileio import write_bytes, write_json


@dataclass(frozen=True)
class RowSummary:
    """One table row: a model's numbers over its seeds (mean and sample standard deviation)."""

    row: str
    method: str
    preset: str
    seeds: tuple[int, ...]  # of its runs, in run order; rows of one plan may have different seeds
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
        return cls(row, first.method, first.preset, tuple(run.seed for run in runs),
                   *mean_std([run.metrics["mAP"] for run in runs]), *mean_std([run.metrics["NDS"] for run in runs]),
                   first.params, first.gmacs, statistics.fmean(run.latency_ms for run in runs),
                   statistics.fmean(costs) if costs else None)


def summarise(results: BenchmarkResults) -> dict[str, list[RowSummary]]:
    """Per pair, its rows in table order."""
    return {pair.name: [RowSummary.of(row, runs) for row, runs in results.rows(pair.name)]
            for pair in results.plan.pairs}


#: Two-sided 95 % critical values of Student's t by degrees of freedom (1..20; more seeds use the value at 20,
#: slightly wider than exact).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)


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

    @property
    def interval95(self) -> tuple[float, float] | None:
        """The 95 % confidence interval of the mean gain over seeds (Student's t on the paired differences);
        None below two paired seeds."""
        gains = list(self.gain_by_seed.values())
        if len(gains) < 2:
            return None
        half = T_975[min(len(gains) - 1, len(T_975)) - 1] * statistics.stdev(gains) / len(gains) ** 0.5
        return statistics.fmean(gains) - half, statistics.fmean(gains) + half


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
        "paired": {pair: [{**dataclasses.asdict(row), "mean_gain": row.mean_gain, "seeds_won": row.seeds_won,
                           "interval95": row.interval95} for row in rows] for pair, rows in paired.items()},
    })
    (out_dir / "results.md").write_text(format_markdown(results, summary, paired), encoding="utf-8")
    write_bytes(out_dir / "results.png", render_plot(results.plan.title, summary))


def format_markdown(results: BenchmarkResults, summary: Mapping[str, list[RowSummary]],
                    paired: Mapping[str, list[PairedGain]]) -> str:
    plan = results.plan
    lines = [f"# {plan.title}", "",
             f"{_seeds_sentence(plan)}; {results.validation_frames} frames of the "
             f"'{plan.report_split}' split (held out: settings are chosen on '{plan.tune_split}'); "
             f"trained and evaluated on {results.device}. n: seeds of the row; mAP and NDS in %, mean ± sample std "
             f"over the row's seeds; Δ mAP: mean gain over the student without KD trained from the same seeds; GMACs "
             f"on the first validation frame; latency: CPU forward of one frame ({results.cpu_threads} threads, "
             f"median); training cost per frame from the runs' logs, × against the student without KD."]
    for pair in plan.pairs:
        rows = summary[pair.name]
        no_kd = next((row for row in rows if row.row == NO_KD_ROW), None)
        gains = {gain.row: gain.mean_gain for gain in paired[pair.name]}
        lines += ["", f"## {pair.student} from {pair.teacher}", "",
                  "| model | n | mAP | NDS | Δ mAP | GMACs | params (M) | latency (ms) | training (ms/frame) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            reference = row.row in (TEACHER_ROW, NO_KD_ROW)
            name = f"{row.row} ({row.preset})" if reference else row.row
            gain = None if reference else gains.get(row.row)
            delta = "" if gain is None else f"{100 * gain:+.1f}"
            n = len(row.seeds)
            lines.append(f"| {name} | {n} | {_percent(row.mAP, row.mAP_std, n)} | {_percent(row.NDS, row.NDS_std, n)} "
                         f"| {delta} | {row.gmacs:.2f} | {row.params / 1e6:.2f} | {row.latency_ms:.0f} | "
                         f"{_cost(row, no_kd)} |")
        if len(plan.run_seeds()) > 1 and paired[pair.name]:
            lines += _paired_table(paired[pair.name], plan.run_seeds())
    return "\n".join(lines) + "\n"


def _seeds_sentence(plan: BenchmarkPlan) -> str:
    """"Seeds 0, 1, 2", then the rows with seeds of their own, those with the same seeds together."""
    def listed(seeds: Sequence[int]) -> str:
        return ", ".join(map(str, seeds))

    own: dict[tuple[int, ...], list[str]] = {}
    for row in plan.all_rows():
        if row.name in plan.row_seeds:
            own.setdefault(tuple(plan.row_seeds[row.name]), []).append(row.name)
    shared = [f"Seeds {listed(plan.seeds)}"] if any(row.name not in plan.row_seeds for row in plan.all_rows()) else []
    return "; ".join([*shared, *(f"{', '.join(names)}: seeds {listed(seeds)}" for seeds, names in own.items())])


def _paired_table(rows: Sequence[PairedGain], seeds: Sequence[int]) -> list[str]:
    def per_seed(values: Mapping[int, float], spec: str) -> str:  # in %, "–" for a seed not run
        return " / ".join(f"{100 * values[seed]:{spec}}" if seed in values else "–" for seed in seeds)

    lines = ["", f"mAP per seed ({' / '.join(map(str, seeds))}) and the gain over no KD trained from the same seed:",
             "", "| row | mAP per seed | gain per seed | mean gain | 95 % interval | seeds won |",
             "|---|---|---|---:|---:|---:|"]
    for row in rows:
        scores = per_seed(row.mAP_by_seed, ".2f")
        if row.row == NO_KD_ROW:
            lines.append(f"| {row.row} | {scores} | | | | |")
        elif row.mean_gain is not None:
            interval = row.interval95
            shown = "–" if interval is None else f"[{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"
            lines.append(f"| {row.row} | {scores} | {per_seed(row.gain_by_seed, '+.2f')} | "
                         f"{100 * row.mean_gain:+.2f} | {shown} | {row.seeds_won} of {len(row.gain_by_seed)} |")
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
