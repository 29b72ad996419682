"""The benchmark runner: plans, the smoke benchmark end to end, reuse of finished runs, the reports."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from rdd3d.cli import EXIT_USAGE, main
from rdd3d.benchmark import (
    BenchmarkPlan, BenchmarkResults, PairPlan, RunResult, VariantPlan, load_plan, paired_gains, plan_runs, summarise,
)
from rdd3d.benchmark import runner
from rdd3d.benchmark.report import format_markdown
from rdd3d.engine.runs import TrainedRun, train_or_reuse
from rdd3d.core.checkpoint import load_checkpoint, save_checkpoint
from rdd3d.core.config_loading import ConfigError
from rdd3d.engine.measure import Measurement
from rdd3d.engine.run_logging import read_log
from rdd3d.engine.runs import config_differences
from rdd3d.engine.trainer import Trainer
from rdd3d.models.complexity import count_parameters
from rdd3d.models.presets import build_detector

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "benchmark" / "smoke.yaml"
LAMBDA_ZERO = "variants=[{name: rdd-lam0, method: rdd, overrides: [distill.rdd.lam=0.0]}]"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    torch.set_num_threads(1)
    assert main(["benchmark", "--plan", str(SMOKE), "--out", str(out), "--set", LAMBDA_ZERO,
                 "--set", "trainer.log_interval=1"]) == 0
    return out


def test_smoke_benchmark_writes_every_run_and_report(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    rows = [(run["row"], run["seed"]) for run in results["runs"]]
    assert rows == [("teacher", 0), ("none", 0), ("rdd", 0), ("rdd-lam0", 0)]
    pair = "cp-voxel-xxs-from-cp-voxel"
    for run in results["runs"]:
        assert {"mAP", "NDS", "AP/car", "err/trans_err"} <= set(run["metrics"])
        assert run["steps"] == 1 and run["train_ms_per_frame"] > 0 and run["latency_ms"] > 0
        assert Path(run["checkpoint"]).is_file()
    teacher, student = results["runs"][0], results["runs"][1]
    assert teacher["params"] == count_parameters(build_detector("cp-voxel"))
    assert student["params"] == count_parameters(build_detector("cp-voxel-xxs"))
    assert student["gmacs"] < teacher["gmacs"] / 5
    # Each row trained in its own folder, under the plan's settings and the row's own overrides.
    lam0 = read_log(smoke_run / pair / "rdd-lam0" / "seed0" / "log.jsonl", "train")
    assert "loss/rdd/feature" in lam0[-1]
    assert "lam: 0.0" in (smoke_run / pair / "rdd-lam0" / "seed0" / "config.yaml").read_text()
    assert [row["row"] for row in results["summary"][pair]] == ["teacher", "none", "rdd", "rdd-lam0"]
    none, rdd = results["paired"][pair][:2]
    assert rdd["row"] == "rdd" and rdd["mean_gain"] == pytest.approx(rdd["gain_by_seed"]["0"])
    assert rdd["gain_by_seed"]["0"] == pytest.approx(rdd["mAP_by_seed"]["0"] - none["mAP_by_seed"]["0"])
    table = (smoke_run / "results.md").read_text()
    for line in ("| teacher (cp-voxel) |", "| none (cp-voxel-xxs) |", "| rdd |", "| rdd-lam0 |"):
        assert line in table
    assert (smoke_run / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_second_invocation_reuses_finished_runs(smoke_run, capsys):
    checkpoints = sorted(smoke_run.rglob("last.pt"))
    stamps = [path.stat().st_mtime_ns for path in checkpoints]
    capsys.readouterr()
    assert main(["benchmark", "--plan", str(SMOKE), "--out", str(smoke_run), "--set", LAMBDA_ZERO,
                 "--set", "trainer.log_interval=1"]) == 0
    assert [path.stat().st_mtime_ns for path in checkpoints] == stamps
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and all("(reused," in line for line in progress)
    assert all(run["reused"] for run in json.loads((smoke_run / "results.json").read_text())["runs"])


def test_a_run_saved_before_a_config_key_existed_is_still_reused(smoke_run, capsys):
    teacher = smoke_run / "teachers" / "cp-voxel" / "last.pt"
    state = load_checkpoint(teacher)
    del state["config"]["data"]["kitti"]  # as a checkpoint written before data.kitti was added
    save_checkpoint(teacher, state)
    stamp = teacher.stat().st_mtime_ns
    assert main(["benchmark", "--plan", str(SMOKE), "--out", str(smoke_run), "--set", LAMBDA_ZERO,
                 "--set", "trainer.log_interval=1"]) == 0
    assert teacher.stat().st_mtime_ns == stamp


def test_a_run_stores_only_its_own_method_options_and_others_never_block_reuse(smoke_run, capsys):
    run = smoke_run / "cp-voxel-xxs-from-cp-voxel" / "rdd" / "seed0"
    state = load_checkpoint(run / "last.pt")
    stored = state["config"]["distill"]
    assert "rdd" in stored and not {"hint", "fg", "gid_l", "gid_f", "lad", "pp_logit", "kd"} & set(stored)
    written = yaml.safe_load((run / "config.yaml").read_text())["distill"]
    assert set(written) == set(stored)
    # As a checkpoint of a version that stored every block, with another default of a method this run never used.
    stored["pp_logit"] = {"weight": 123.0}
    save_checkpoint(run / "last.pt", state)
    stamp = (run / "last.pt").stat().st_mtime_ns
    assert main(["benchmark", "--plan", str(SMOKE), "--out", str(smoke_run), "--set", LAMBDA_ZERO,
                 "--set", "trainer.log_interval=1"]) == 0
    assert (run / "last.pt").stat().st_mtime_ns == stamp


def test_a_folder_holding_another_config_is_an_error_not_overwritten(smoke_run, capsys):
    teacher = smoke_run / "teachers" / "cp-voxel" / "last.pt"
    stamp = teacher.stat().st_mtime_ns
    assert main(["benchmark", "--plan", str(SMOKE), "--out", str(smoke_run), "--set", "trainer.epochs=2"]) == EXIT_USAGE
    assert "trainer.epochs: 1 -> 2" in capsys.readouterr().err
    assert teacher.stat().st_mtime_ns == stamp


def test_unknown_plan_key_fails_with_the_key_named(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("pairs: [{teacher: cp-voxel, student: cp-voxel-xxs}]\nseedz: [0, 1]\n")
    with pytest.raises(ConfigError, match="seedz"):
        load_plan(plan)
    assert main(["benchmark", "--plan", str(plan), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    assert "seedz" in capsys.readouterr().err
    plan.write_text("pairs: [{teacher: cp-voxel, student: cp-voxel-xxs, teachr_checkpoint: t.pt}]\n")
    with pytest.raises(ConfigError, match="teachr_checkpoint"):
        load_plan(plan)


@pytest.mark.parametrize("text, message", [
    ("pairs: [{teacher: cp-voxel, student: cp-voxel-tiny}]", "pairs\\[0\\].student 'cp-voxel-tiny' is not a preset"),
    ("pairs: [{teacher: cp-voxel, student: cp-voxel-s}]\nmethods: [rdd, rddd]", "'rddd' is not a method"),
    ("pairs: [{teacher: cp-voxel, student: cp-voxel-s}]\nmethods: [rdd]\nvariants: [{name: rdd, method: rdd}]",
     "row name 'rdd' appears twice"),
    ("pairs: []", "pairs must be at least one"),
])
def test_invalid_plans_name_what_is_wrong(tmp_path, text, message):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_plan(plan)
    assert str(plan) in str(error.value)


def test_overrides_route_to_plan_or_runs_and_planned_keys_are_refused(tmp_path):
    plan = load_plan(SMOKE, ["seeds=[3,4]", "optim.lr=0.002"])
    assert plan.seeds == [3, 4] and plan.overrides[-1] == "optim.lr=0.002"
    runs = plan_runs(plan, tmp_path)
    assert [(run.row, run.seed) for run in runs] == [("teacher", 0), ("none", 3), ("rdd", 3), ("none", 4), ("rdd", 4)]
    assert all(run.config.optim.lr == 0.002 for run in runs)
    rdd = runs[2].config
    assert rdd.distill.method == "rdd" and rdd.trainer.seed == 3
    assert rdd.distill.teacher_checkpoint == str(tmp_path / "teachers" / "cp-voxel" / "last.pt")
    assert Path(rdd.output_dir) == tmp_path / "cp-voxel-xxs-from-cp-voxel" / "rdd" / "seed3"
    with pytest.raises(ConfigError, match="sets .*trainer.seed"):
        plan_runs(load_plan(SMOKE, ["trainer.seed=1"]), tmp_path)
    with pytest.raises(ConfigError, match="optim.lrr"):
        plan_runs(load_plan(SMOKE, ["optim.lrr=1"]), tmp_path)


def _result(row: str, seed: int, mAP: float, cost: float, method: str = "rdd",
            preset: str = "cp-voxel-xxs") -> RunResult:
    return RunResult("cp-voxel-xxs-from-cp-voxel", row, method, preset, seed, f"{row}/{seed}.pt", 10, False,
                     {"mAP": mAP, "NDS": mAP / 2}, 1_000_000, 0.5, 20.0, cost)


def test_summary_and_table_mean_std_delta_and_cost():
    plan = BenchmarkPlan(pairs=[PairPlan("cp-voxel", "cp-voxel-xxs")], methods=["rdd", "kd"], seeds=[0, 1],
                         variants=[VariantPlan("rdd-lam0", "rdd", ["distill.rdd.lam=0"])])
    runs = [_result("teacher", 0, 0.6, 50.0, "none", "cp-voxel"),
            _result("rdd", 0, 0.45, 30.0), _result("rdd", 1, 0.55, 34.0), _result("kd", 1, 0.30, 25.0, "kd"),
            _result("none", 0, 0.40, 20.0, "none"), _result("none", 1, 0.35, 20.0, "none")]
    results = BenchmarkResults(plan, runs, 7, "cpu", 1)
    rows = summarise(results)["cp-voxel-xxs-from-cp-voxel"]
    assert [row.row for row in rows] == ["teacher", "none", "rdd", "kd"]  # table order; no run of rdd-lam0
    rdd = rows[2]
    assert rdd.seeds == (0, 1) and rdd.mAP == pytest.approx(0.5) and rdd.mAP_std == pytest.approx(0.0707107)
    paired = paired_gains(results)
    none, rdd_gain, kd_gain = paired["cp-voxel-xxs-from-cp-voxel"]
    assert none.gain_by_seed == {} and none.mean_gain is None
    assert rdd_gain.gain_by_seed == pytest.approx({0: 0.05, 1: 0.20}) and rdd_gain.seeds_won == 2
    assert kd_gain.gain_by_seed == pytest.approx({1: -0.05}) and kd_gain.seeds_won == 0
    table = format_markdown(results, {"cp-voxel-xxs-from-cp-voxel": rows}, paired)
    assert "| rdd | 2 | 50.0 ± 7.1 | 25.0 ± 3.5 | +12.5 | 0.50 | 1.00 | 20 | 32 (1.60×) |" in table
    assert "| teacher (cp-voxel) | 1 | 60.0 | 30.0 |  | 0.50 | 1.00 | 20 | 50 |" in table
    assert "| none (cp-voxel-xxs) | 2 | 37.5 ± 3.5 | 18.8 ± 1.8 |  |" in table
    assert "| kd | 1 | 30.0 | 15.0 | -5.0 |" in table  # Δ paired on seed 1, not 30.0 minus no KD's two-seed mean
    # Paired with no KD of the same seed; a row missing a seed is paired on the seeds it has.
    assert "| none | 40.00 / 35.00 | | | | |" in table
    # 95 %: 12.5 ± t(1) · stdev(5, 20) / √2 = 12.5 ± 12.706 · 10.607 / 1.414
    assert rdd_gain.interval95 == pytest.approx((0.125 - 0.95296, 0.125 + 0.95296), abs=1e-4)
    assert "| rdd | 45.00 / 55.00 | +5.00 / +20.00 | +12.50 | [-82.80, +107.80] | 2 of 2 |" in table
    assert kd_gain.interval95 is None
    assert "| kd | – / 30.00 | – / -5.00 | -5.00 | – | 0 of 1 |" in table
    assert "frames of the 'test' split (held out: settings are chosen on 'val')" in table


def test_only_runs_the_named_rows_and_no_kd_and_refuses_unknown_names(tmp_path):
    plan = load_plan(SMOKE, ["only=[rdd-lam0]", LAMBDA_ZERO, "methods=[rdd,kd]"])
    assert [row.name for row in plan.rows()] == ["none", "rdd-lam0"]
    assert [row.name for row in plan.all_rows()] == ["none", "rdd", "kd", "rdd-lam0"]
    assert {run.row for run in plan_runs(plan, tmp_path)} == {"teacher", "none", "rdd-lam0"}
    with pytest.raises(ValueError, match="only: 'rdd-lam1' is not a row of the plan"):
        load_plan(SMOKE, ["only=[rdd-lam1]", LAMBDA_ZERO])


def test_a_plan_reporting_on_the_split_it_tunes_on_is_refused(tmp_path):
    with pytest.raises(ValueError, match="report_split must be one of .* other than tune_split 'val'"):
        load_plan(SMOKE, ["report_split=val"])
    with pytest.raises(ConfigError, match="data.val_split"):  # nor can a run override pick the split
        plan_runs(load_plan(SMOKE, ["data.val_split=test"]), tmp_path)
    runs = plan_runs(load_plan(SMOKE), tmp_path)
    assert {run.config.data.val_split for run in runs} == {"val"}  # the runs' own evaluations: the tune split


FIVE_SEEDS = "row_seeds={none: [0, 1, 2, 3, 4], rdd: [0, 1, 2, 3, 4]}"


@pytest.mark.parametrize("overrides, message", [
    (["row_seeds={rdd-lam0: [0, 1]}"], "row_seeds: 'rdd-lam0' is not a row of the plan \\(rows: \\['none', 'rdd'\\]\\)"),
    (["row_seeds={teacher: [0, 1]}"], "row_seeds: 'teacher' is not a row"),  # teachers train once, at teacher_seed
    (["row_seeds={rdd: [0, 5]}"], "row_seeds.rdd: row 'rdd' has seed 5, which the no-KD row 'none' lacks "
                                  "\\(its seeds: \\[0\\]\\)"),
    (["seeds=[0, 1, 2]", "row_seeds={none: [0, 1]}"], "seeds: row 'rdd' has seed 2, which the no-KD row 'none' "
                                                        "lacks \\(its seeds: \\[0, 1\\]\\); .* add it to row_seeds.none"),
    (["row_seeds={none: [0, 1, 1]}"], "row_seeds.none must be one or more distinct non-negative seeds, got \\[0, 1, 1\\]"),
    (["row_seeds={none: [0, -1]}"], "row_seeds.none must be one or more distinct non-negative seeds"),
    (["row_seeds={none: []}"], "row_seeds.none must be one or more distinct non-negative seeds, got \\[\\]"),
    (["row_seeds={none: [0, a]}"], "could not be converted to Integer"),
    (["seeds=[-1]"], "seeds must be one or more distinct non-negative seeds"),
])
def test_row_seeds_are_checked_when_the_plan_loads(overrides, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message) as error:
        load_plan(SMOKE, overrides)
    assert "row_seeds" in str(error.value) or "seeds" in str(error.value)
    sets = [argument for override in overrides for argument in ("--set", override)]
    assert main(["benchmark", "--plan", str(SMOKE), "--out", str(tmp_path / "out"), *sets]) == EXIT_USAGE
    assert not (tmp_path / "out").exists()


def test_rows_with_seeds_of_their_own_run_seed_by_seed_in_the_folders_they_always_had(tmp_path):
    plan = load_plan(SMOKE, ["methods=[rdd, kd]", "seeds=[0, 1]", "row_seeds={none: [0, 1, 2], rdd: [2, 0, 1]}"])
    assert [plan.seeds_of(row) for row in ("none", "rdd", "kd")] == [[0, 1, 2], [2, 0, 1], [0, 1]]
    runs = plan_runs(plan, tmp_path)
    assert [(run.row, run.seed) for run in runs] == [
        ("teacher", 0), ("none", 0), ("rdd", 0), ("kd", 0), ("none", 1), ("rdd", 1), ("kd", 1), ("none", 2), ("rdd", 2)]
    assert all(run.config.trainer.seed == run.seed for run in runs)
    # A run the plan had before it gave rows more seeds keeps its folder and config, so it is reused as it is.
    before = {(run.row, run.seed): run.config for run in plan_runs(load_plan(SMOKE, ["methods=[rdd, kd]",
                                                                                     "seeds=[0, 1]"]), tmp_path)}
    assert len(before) == 7 and all(before[run.row, run.seed] == run.config for run in runs if run.seed < 2)
    assert Path(runs[-1].config.output_dir) == tmp_path / "cp-voxel-xxs-from-cp-voxel" / "rdd" / "seed2"
    # `only` keeps a row's own seeds; no KD still runs at all of its own.
    only = plan_runs(load_plan(SMOKE, ["methods=[rdd, kd]", "row_seeds={none: [0, 1, 2]}", "only=[kd]"]), tmp_path)
    assert [(run.row, run.seed) for run in only] == [("teacher", 0), ("none", 0), ("kd", 0), ("none", 1), ("none", 2)]


def test_the_runner_measures_each_row_at_its_seeds_and_records_them(tmp_path, monkeypatch):
    """The whole runner with training and measuring replaced by fakes: what it runs, in which order, and what
    results.json and results.md say about rows with different seed counts."""
    trained = []

    def fake_train(config):
        trained.append(Path(config.output_dir).relative_to(tmp_path).parts[-2:])
        return TrainedRun(Path(config.output_dir) / "last.pt", 3, reused=False)

    def fake_measure(checkpoint, *args):
        row, folder = Path(checkpoint).parts[-3:-1]  # <row>/seed<k>/last.pt, teachers/<preset>/last.pt
        mAP = {"none": 0.3, "rdd": 0.4}[row] + int(folder.removeprefix("seed")) / 100 if row != "teachers" else 0.6
        return Measurement({"mAP": mAP, "NDS": mAP / 2}, 1000, 0.5, 2.0)

    monkeypatch.setattr(runner, "train_or_reuse", fake_train)
    monkeypatch.setattr(runner, "measure_checkpoint", fake_measure)
    monkeypatch.setattr(runner, "validation_frames", lambda config: ([None], None))
    monkeypatch.setattr(runner, "training_ms_per_frame", lambda log: None)
    results = runner.run_benchmark(load_plan(SMOKE, ["seeds=[0, 1]", "row_seeds={none: [0, 1, 2]}"]), tmp_path,
                                   progress=lambda line: None)
    assert trained == [("teachers", "cp-voxel"), ("none", "seed0"), ("rdd", "seed0"), ("none", "seed1"),
                       ("rdd", "seed1"), ("none", "seed2")]
    assert [(run.row, run.seed) for run in results.runs] == [
        ("teacher", 0), ("none", 0), ("rdd", 0), ("none", 1), ("rdd", 1), ("none", 2)]
    written = json.loads((tmp_path / "results.json").read_text())
    pair = "cp-voxel-xxs-from-cp-voxel"
    assert written["plan"]["row_seeds"] == {"none": [0, 1, 2]}
    assert {row["row"]: row["seeds"] for row in written["summary"][pair]} == {
        "teacher": [0], "none": [0, 1, 2], "rdd": [0, 1]}
    table = (tmp_path / "results.md").read_text()
    assert "Seeds 0, 1; none: seeds 0, 1, 2;" in table
    assert "| none (cp-voxel-xxs) | 3 | 31.0 ± 1.0 |" in table and "| rdd | 2 | 40.5 ± 0.7 |" in table
    assert "| rdd | 40.00 / 41.00 / – | +10.00 / +10.00 / – | +10.00 | [+10.00, +10.00] | 2 of 2 |" in table


def test_paired_gains_and_intervals_over_rows_with_different_seed_counts():
    """No KD and RDD at five seeds, KD at three: each row's mean, gain and Student-t interval over its own seeds."""
    plan = BenchmarkPlan(pairs=[PairPlan("cp-voxel", "cp-voxel-xxs")], methods=["rdd", "kd"], seeds=[0, 1, 2],
                         row_seeds={"none": [0, 1, 2, 3, 4], "rdd": [0, 1, 2, 3, 4]})
    no_kd = (0.40, 0.35, 0.38, 0.42, 0.30)
    rdd = (0.45, 0.41, 0.40, 0.47, 0.33)
    kd = (0.39, 0.37, 0.41)
    runs = [_result("teacher", 0, 0.6, 50.0, "none", "cp-voxel")]
    runs += [_result("none", seed, mAP, 20.0, "none") for seed, mAP in enumerate(no_kd)]
    runs += [_result("rdd", seed, mAP, 30.0) for seed, mAP in enumerate(rdd)]
    runs += [_result("kd", seed, mAP, 25.0, "kd") for seed, mAP in enumerate(kd)]
    results = BenchmarkResults(plan, runs, 7, "cpu", 1)
    rows = {row.row: row for row in summarise(results)["cp-voxel-xxs-from-cp-voxel"]}
    assert rows["none"].seeds == (0, 1, 2, 3, 4) and rows["kd"].seeds == (0, 1, 2)
    assert rows["none"].mAP == pytest.approx(0.37) and rows["kd"].mAP == pytest.approx(0.39)
    none_gain, rdd_gain, kd_gain = paired_gains(results)["cp-voxel-xxs-from-cp-voxel"]
    # RDD: gains 5, 6, 2, 5, 3 (mAP %), mean 4.2, sample std √(10.8 / 4) = 1.6432; t(4) = 2.776;
    # half width 2.776 · 1.6432 / √5 = 2.0400.
    assert rdd_gain.gain_by_seed == pytest.approx({0: 0.05, 1: 0.06, 2: 0.02, 3: 0.05, 4: 0.03})
    assert rdd_gain.mean_gain == pytest.approx(0.042)
    assert rdd_gain.interval95 == pytest.approx((0.042 - 0.020400, 0.042 + 0.020400), abs=1e-6)
    # KD, paired on its three seeds only: gains -1, 2, 3, mean 1.3333, sample std √(8.6667 / 2) = 2.0817;
    # t(2) = 4.303; half width 4.303 · 2.0817 / √3 = 5.1716.
    assert kd_gain.gain_by_seed == pytest.approx({0: -0.01, 1: 0.02, 2: 0.03})
    assert kd_gain.mean_gain == pytest.approx(0.013333, abs=1e-6)
    assert kd_gain.interval95 == pytest.approx((0.013333 - 0.051716, 0.013333 + 0.051716), abs=1e-5)
    table = format_markdown(results, {"cp-voxel-xxs-from-cp-voxel": list(rows.values())},
                            paired_gains(results))
    assert "Seeds 0, 1, 2; none, rdd: seeds 0, 1, 2, 3, 4;" in table
    assert "| none (cp-voxel-xxs) | 5 | 37.0 ± 4.7 |" in table
    # KD's Δ is its paired mean gain (+1.3), not its 3-seed mean minus no KD's 5-seed mean (39.0 - 37.0).
    assert "| kd | 3 | 39.0 ± 2.0 | 19.5 ± 1.0 | +1.3 |" in table
    assert "mAP per seed (0 / 1 / 2 / 3 / 4)" in table
    assert "| rdd | 45.00 / 41.00 / 40.00 / 47.00 / 33.00 | +5.00 / +6.00 / +2.00 / +5.00 / +3.00 | +4.20 | " \
           "[+2.16, +6.24] | 5 of 5 |" in table
    assert "| kd | 39.00 / 37.00 / 41.00 / – / – | -1.00 / +2.00 / +3.00 / – / – | +1.33 | [-3.84, +6.50] | " \
           "2 of 3 |" in table


def test_config_differences_name_each_changed_leaf():
    stored = {"trainer": {"epochs": 1, "seed": 0}, "output_dir": "a"}
    planned = {"trainer": {"epochs": 2, "seed": 0}, "output_dir": "a", "extra": 1}
    assert config_differences(stored, planned) == ["extra: '<absent>' -> 1", "trainer.epochs: 1 -> 2"]


@pytest.mark.parametrize("path", sorted(SMOKE.parent.glob("*.yaml")), ids=lambda path: path.stem)
def test_shipped_plans_load_and_distil_from_their_pairs_teacher(path, tmp_path):
    plan = load_plan(path)
    runs = plan_runs(plan, tmp_path)
    teachers = {run.pair.name: Path(run.config.output_dir) / "last.pt" for run in runs if run.row == "teacher"}
    students = [run for run in runs if run.row != "teacher"]
    assert len(students) == len(plan.pairs) * sum(len(plan.seeds_of(row.name)) for row in plan.rows())
    for run in students:
        expected = "" if run.method == "none" else str(teachers[run.pair.name])
        assert run.config.distill.teacher_checkpoint == expected


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    plan = load_plan(SMOKE, ["trainer.epochs=2", "trainer.log_interval=1"])
    config = plan_runs(plan, tmp_path)[1].config  # the student without KD
    original = Trainer._train_epoch

    def stop_in_second_epoch(trainer):
        if trainer.epoch == 1:
            raise KeyboardInterrupt
        original(trainer)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_or_reuse(config)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    trained = train_or_reuse(config)
    assert trained.steps == 2 and not trained.reused
    assert [record["step"] for record in read_log(Path(config.output_dir) / "log.jsonl", "train")] == [1, 2]
    assert train_or_reuse(config).reused
