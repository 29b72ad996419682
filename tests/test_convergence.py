"""The converged benchmark's criteria, judged from a run's own log and checkpoint."""

import json

import pytest

from rdd3d.benchmark.convergence import ConvergenceCriteria, Curve, judge
from rdd3d.cli import EXIT_FAILURE, main
from rdd3d.core.checkpoint import save_checkpoint
from rdd3d.engine.config import load_run_config
from rdd3d.engine.runs import plain_config


def _run(folder, epochs, maps, errors=None, sweeps=1):
    """A finished run's folder: its config and one evaluation per epoch with the given mAPs (fractions)."""
    folder.mkdir()
    config = load_run_config(overrides=[f"trainer.epochs={epochs}", f"data.world.lidar.num_sweeps={sweeps}"])
    save_checkpoint(folder / "last.pt", {"config": plain_config(config)})
    errors = errors or {"err/trans_err": 0.2, "err/orient_err": 0.3, "err/vel_err": 2.0}
    records = [{"kind": "eval", "step": 10 * epoch, "epoch": epoch, "mAP": value, "NDS": value / 2, **errors}
               for epoch, value in enumerate(maps, start=1)]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_a_plateau_and_a_learnt_box_code_converge(tmp_path):
    curve = Curve.of("teacher", _run(tmp_path / "t", 4, [0.30, 0.45, 0.500, 0.505]))
    verdict = judge(curve, teacher=True)
    assert verdict.converged and verdict.plateau_gap == pytest.approx(0.005)
    assert verdict.box_code == {"err/trans_err": 0.2, "err/orient_err": 0.3}  # one sweep: no velocity to learn


def test_each_criterion_that_fails_is_named(tmp_path):
    rising = Curve.of("student", _run(tmp_path / "s", 4, [0.10, 0.20, 0.30, 0.34]))
    assert judge(rising).problems == ["mAP still moves: +4.00 between 75 % and 100 % of the schedule (limit ±1.0)"]
    flat = Curve.of("student", _run(tmp_path / "f", 4, [0.10, 0.20, 0.300, 0.305]))
    doubled = Curve.of("student-x2", _run(tmp_path / "d", 8, [0.1, 0.2, 0.3, 0.31, 0.33, 0.34, 0.35, 0.35]))
    verdict = judge(flat, ConvergenceCriteria(), doubled)
    assert verdict.doubling_gain == pytest.approx(0.045)
    assert verdict.problems == ["twice the schedule adds +4.50 mAP (limit 2.0)"]
    swept = Curve.of("teacher", _run(tmp_path / "v", 4, [0.3, 0.4, 0.5, 0.5], sweeps=3,
                                     errors={"err/trans_err": 0.5, "err/orient_err": 1.1, "err/vel_err": 2.0}))
    assert len(judge(swept, teacher=True).problems) == 3  # translation, orientation and velocity
    sparse = Curve.of("sparse", _run(tmp_path / "e", 8, []))
    assert judge(sparse).problems[1].startswith("no evaluation at 75 % of the schedule (epoch 6)")


def test_rdd3d_convergence_writes_curves_and_exits_1_when_a_run_has_not_converged(tmp_path, capsys):
    teacher = _run(tmp_path / "teacher", 4, [0.30, 0.45, 0.500, 0.505])
    student = _run(tmp_path / "student", 4, [0.10, 0.20, 0.30, 0.34])
    out = tmp_path / "report"
    assert main(["convergence", "--teacher", str(teacher), "--student", str(student), "--out", str(out)]) \
        == EXIT_FAILURE
    report = json.loads((out / "convergence.json").read_text())
    assert [run["verdict"]["converged"] for run in report["runs"]] == [True, False]
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    assert "student: mAP 34.00, NOT converged: mAP still moves" in capsys.readouterr().out
