"""The demo's quick variant: the whole story runs and writes what a person looks at."""

import dataclasses
import json

import pytest
import yaml

from rdd3d.cli import main
from rdd3d.demo import DEMO_HALF_RANGE, QUICK, RDD_OVERRIDES, STUDENT_OVERRIDES, TEACHER_OVERRIDES, write_world
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
    # All three read the demo's compact world, written once, through the same range, each at its learning rate.
    teacher_lr = load_run_config(overrides=list(TEACHER_OVERRIDES)).optim.lr
    student_lr = load_run_config(overrides=list(STUDENT_OVERRIDES)).optim.lr
    for run, lr in (("teacher", teacher_lr), ("student", student_lr), ("student_rdd", student_lr)):
        stored = yaml.safe_load((out / run / "config.yaml").read_text())
        assert stored["optim"]["lr"] == lr
        assert stored["model"]["overrides"]["point_cloud_range"][3] == DEMO_HALF_RANGE
        assert stored["data"]["root"] == str(out / "world")
    manifest = json.loads((out / "world" / "dataset.json").read_text())
    assert manifest["splits"]["train"]["world_config"]["scene_radius"] < DEMO_HALF_RANGE
    assert len(manifest["splits"]["val"]["frames"]) == QUICK.val_frames
    # A second run finds the finished runs and trains nothing.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reusing") == 3


def test_demo_world_is_kept_when_it_matches_and_refused_when_it_does_not(tmp_path):
    root = write_world(tmp_path / "world", QUICK)
    written = (root / "dataset.json").stat().st_mtime_ns
    assert write_world(root, QUICK) == root
    assert (root / "dataset.json").stat().st_mtime_ns == written  # kept, not simulated again
    with pytest.raises(ValueError, match=r"world/dataset.json: holds another world"):
        write_world(root, dataclasses.replace(QUICK, train_frames=QUICK.train_frames + 1))
