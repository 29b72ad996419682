"""The demo's quick variant: the whole story runs and writes what a person looks at."""

import json

import yaml

from rdd3d.cli import main
from rdd3d.demo import DEMO_HALF_RANGE, RDD_OVERRIDES, STUDENT_OVERRIDES
from rdd3d.engine.config import load_run_config


def test_quick_demo_writes_table_pictures_and_reuses_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| teacher | cp-voxel |" in printed and "| student+rdd | cp-voxel-xxs | rdd |" in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["teacher", "student", "student+rdd"]
    assert rows[1]["gmacs"] < 0.2 * rows[0]["gmacs"]  # XXS keeps about a tenth of the teacher's MACs
    for name in ("bev_teacher.png", "bev_student.png", "bev_student_rdd.png", "training_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # The RDD student runs the calibrated RDD settings; the others keep the defaults.
    stored = yaml.safe_load((out / "student_rdd" / "config.yaml").read_text())["distill"]["rdd"]
    for override in RDD_OVERRIDES:
        key, value = override.removeprefix("distill.rdd.").split("=")
        assert str(stored[key]) == value
    assert yaml.safe_load((out / "student" / "config.yaml").read_text())["distill"]["method"] == "none"
    # All three see the demo's compact world through the same range; both students train at the demo's
    # student learning rate, the teacher at the default.
    default_lr = load_run_config().optim.lr
    student_lr = load_run_config(overrides=list(STUDENT_OVERRIDES)).optim.lr
    assert student_lr != default_lr
    for run, lr in (("teacher", default_lr), ("student", student_lr), ("student_rdd", student_lr)):
        stored = yaml.safe_load((out / run / "config.yaml").read_text())
        assert stored["optim"]["lr"] == lr
        assert stored["model"]["overrides"]["point_cloud_range"][3] == DEMO_HALF_RANGE
        assert stored["data"]["world"]["scene_radius"] < DEMO_HALF_RANGE
    # A second run finds the finished runs and trains nothing.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reusing") == 3
