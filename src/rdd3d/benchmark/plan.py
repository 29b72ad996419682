"""A benchmark plan (YAML) and the runs it makes: each pair's teacher once, then per seed every row run at it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from rdd3d.core.config_loading import ConfigError, build_config
from rdd3d.data.synthetic.dataset import EVALUATION_SPLITS
from rdd3d.distill.methods import METHOD_NAMES
from rdd3d.engine.config import RunConfig, load_run_config
from rdd3d.engine.trainer import Trainer
from rdd3d.models.presets import list_presets


TEACHER_ROW = "teacher"
NO_KD_ROW = "none"
#: Run-config keys the plan sets itself (folders, pairs, methods, seeds); overrides may not touch them.
PLANNED_KEYS = ("output_dir", "model.preset", "distill.method", "distill.teacher_checkpoint", "trainer.seed",
                "data.val_split")
_ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ----------------------------------------------------------------------------- the plan
def _valid_seeds(seeds: Sequence[int]) -> bool:
    return bool(seeds) and len(set(seeds)) == len(seeds) and all(seed >= 0 for seed in seeds)


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
    seeds: list[int] = field(default_factory=lambda: [0])  # trainer.seed of every student row not in row_seeds
    # Rows (by name, "none" included) trained at seeds of their own instead of `seeds`, e.g. more seeds for the
    # rows whose gains are closest to the seed-to-seed spread. No KD must have every seed of every row: a row's
    # gain is paired with no KD trained from the same seed.
    row_seeds: dict[str, list[int]] = field(default_factory=dict)
    only: list[str] = field(default_factory=list)  # run just these rows (by name; no KD always runs); empty: all
    overrides: list[str] = field(default_factory=list)  # run-config overrides of every run, teachers too
    teacher_overrides: list[str] = field(default_factory=list)  # teachers only, applied after `overrides`
    teacher_seed: int = 0
    # The held-out protocol: runs evaluate on `tune_split` while they train (what any setting may be chosen
    # on); the tables are measured on `report_split`, which nothing is chosen on. A plan reporting on the split
    # it tunes on is refused.
    tune_split: str = "val"
    report_split: str = "test"
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
        problems += [f"row_seeds: {name!r} is not a row of the plan (rows: {names})" for name in self.row_seeds
                     if name not in names]
        problems += [f"row_seeds.{name} must be one or more distinct non-negative seeds, got {seeds!r}"
                     for name, seeds in self.row_seeds.items() if not _valid_seeds(seeds)]
        problems += self._seeds_no_kd_lacks(names)
        checks = {
            "pairs": (bool(self.pairs), "at least one teacher/student pair"),
            "seeds": (_valid_seeds(self.seeds), "one or more distinct non-negative seeds"),
            "latency_frames": (self.latency_frames >= 1, ">= 1"),
            "latency_repeats": (self.latency_repeats >= 1, ">= 1"),
            "variants": (TEACHER_ROW not in names, f"no row named {TEACHER_ROW!r}"),
            "tune_split": (self.tune_split in EVALUATION_SPLITS, f"one of {EVALUATION_SPLITS}"),
            "report_split": (self.report_split in EVALUATION_SPLITS and self.report_split != self.tune_split,
                             f"one of {EVALUATION_SPLITS} other than tune_split {self.tune_split!r}: tables are "
                             "never computed on the split settings are chosen on"),
        }
        problems += [f"{name} must be {expected}, got {getattr(self, name)!r}"
                     for name, (valid, expected) in checks.items() if not valid]
        if problems:
            raise ValueError("benchmark plan: " + "; ".join(problems))

    def _seeds_no_kd_lacks(self, names: list[str]) -> list[str]:
        """A problem per row, named by the key that gives its seeds, with a seed the no-KD row is not run at."""
        no_kd = self.seeds_of(NO_KD_ROW)
        keys = {name: f"row_seeds.{name}" if name in self.row_seeds else "seeds" for name in names}
        return [f"{keys[name]}: row {name!r} has seed {seed}, which the no-KD row {NO_KD_ROW!r} lacks (its seeds: "
                f"{no_kd}); a gain over no KD is paired seed by seed, so add it to {keys[NO_KD_ROW]} or drop it"
                for name in names for seed in self.seeds_of(name) if seed not in no_kd]

    def seeds_of(self, row: str) -> list[int]:
        """The seeds ``row`` is trained at: its own in ``row_seeds``, otherwise ``seeds``."""
        return self.row_seeds.get(row, self.seeds)

    def run_seeds(self) -> list[int]:
        """Every seed some row is trained at, in the order the runs go: no KD's, which hold every row's."""
        return self.seeds_of(NO_KD_ROW)

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
               teacher_checkpoint: str = "", val_split: str = "val") -> RunConfig:
    """A run's config: defaults <- ``overrides`` <- what the plan fixes (folder, preset, method, seed, and the
    split its own evaluations use)."""
    for override in overrides:
        if override.split("=", 1)[0] in PLANNED_KEYS:
            raise ConfigError(f"override {override!r}: the benchmark sets {PLANNED_KEYS} itself "
                              f"(from the plan's pairs, methods and seeds)")
    config = load_run_config((), overrides)
    config.output_dir = str(output_dir)
    config.model.preset = preset
    config.distill = dataclasses.replace(config.distill, method=method, teacher_checkpoint=teacher_checkpoint)
    config.trainer.seed = seed
    config.data.val_split = val_split
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
                             plan.teacher_seed, val_split=plan.tune_split)
        runs.append(PlannedRun(pair, TEACHER_ROW, "none", plan.teacher_seed, teacher))
        # Seed by seed, so that an interrupted benchmark holds whole seeds; a row sits out the seeds it lacks.
        for seed in plan.run_seeds():
            for row in (row for row in plan.rows() if seed in plan.seeds_of(row.name)):
                folder = out_dir / pair.name / row.name / f"seed{seed}"
                config = run_config([*plan.overrides, *row.overrides], folder, pair.student, row.method, seed,
                                    teacher_checkpoint if row.method != "none" else "", val_split=plan.tune_split)
                runs.append(PlannedRun(pair, row.name, row.method, seed, config))
    return runs
