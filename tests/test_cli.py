"""The command line as a script sees it: outputs, exit codes and messages."""

import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from rdd3d.cli import EXIT_FAILURE, EXIT_USAGE, main
from rdd3d.benchmark import load_plan
from rdd3d.core.checkpoint import load_checkpoint, save_checkpoint
from rdd3d.data.synthetic.disk import DiskDataset
from rdd3d.engine.run_logging import read_log
from rdd3d.evaluation.detection_metrics import detections_to_table, frame_metric_config
from rdd3d.evaluation.nuscenes_io import write_results
from rdd3d.models.heads import Detections

TINY_RUN = ["--set", "model.preset=cp-voxel-xxs", "--set", "data.train_size=4", "--set", "data.val_size=2",
            "--set", "trainer.batch_size=2", "--set", "trainer.num_workers=0", "--set", "trainer.epochs=1"]


def test_simulate_then_show(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--train-size", "2", "--val-size", "1",
                 "--set", "lidar.beams=16"]) == 0
    assert len(DiskDataset(tmp_path / "sim", "train")) == 2
    assert DiskDataset(tmp_path / "sim", "val").world_config.lidar.beams == 16
    assert main(["show", "--root", str(tmp_path / "sim"), "--split", "train", "--index", "1",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_simulate_never_mixes_two_worlds_in_one_folder(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--train-size", "2", "--val-size", "1"]) == 0
    first = (out / "dataset.json").read_bytes()
    assert main(["simulate", "--out", str(out), "--train-size", "1", "--val-size", "1", "--seed", "5"]) == EXIT_USAGE
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "dataset.json").read_bytes() == first
    assert main(["simulate", "--out", str(out), "--train-size", "1", "--val-size", "1", "--seed", "5",
                 "--overwrite"]) == 0
    assert len(list((out / "points").iterdir())) == 2  # the first world's frames went with it
    assert json.loads((out / "dataset.json").read_text())["splits"]["train"]["seed"] == 5


def test_simulate_killed_then_run_again_writes_what_an_uninterrupted_run_writes(tmp_path):
    arguments = ["simulate", "--train-size", "20", "--val-size", "2", "--seed", "3"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "rdd3d", *arguments, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / ".killed.partial" / "points"
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if staging.is_dir() and len(list(staging.iterdir())) >= 3:
            process.kill()
            break
        time.sleep(0.02)
    assert process.wait() == -signal.SIGKILL, "the simulation ended before it could be killed"
    assert not killed.exists()  # the folder appears only once complete
    assert main([*arguments, "--out", str(killed)]) == 0
    straight = tmp_path / "straight"
    assert main([*arguments, "--out", str(straight)]) == 0
    assert not (tmp_path / ".killed.partial").exists()
    written = sorted(path.relative_to(straight) for path in straight.rglob("*") if path.is_file())
    assert written == sorted(path.relative_to(killed) for path in killed.rglob("*") if path.is_file())
    for relative in written:
        assert (straight / relative).read_bytes() == (killed / relative).read_bytes(), relative


def test_unknown_override_is_a_usage_error(tmp_path, capsys):
    assert main(["show", "--out", str(tmp_path / "f.png"), "--set", "lidar.beamz=8"]) == EXIT_USAGE
    assert "Did you mean: 'beams'" in capsys.readouterr().err
    assert main(["train", "--set", "optim.lrr=0.1"]) == EXIT_USAGE
    assert "Did you mean: 'lr'" in capsys.readouterr().err


def test_missing_checkpoint_fails_with_its_name(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt")]) == EXIT_FAILURE
    assert "nope.pt: checkpoint not found" in capsys.readouterr().err


def test_perfect_results_file_scores_full_ap_on_simulated_ground_truth(tmp_path, capsys):
    root = tmp_path / "sim"
    assert main(["simulate", "--out", str(root), "--train-size", "0", "--val-size", "3"]) == 0
    dataset = DiskDataset(root, "val")
    frames = [dataset[i] for i in range(len(dataset))]
    # Ground truth without points or beyond its class range is not evaluated: keep only the rest.
    def evaluated(frame):
        ranges = np.array([dataset.class_ranges[dataset.classes.name(label)] for label in frame.labels])
        near = np.hypot(frame.boxes.centers[:, 0], frame.boxes.centers[:, 1]) < ranges
        return frame.select_boxes(near & (frame.metadata["num_points"] > 0))

    seen = [evaluated(f) for f in frames]
    perfect = [Detections(f.boxes.tensor, np.ones(len(f.boxes), np.float32), f.labels) for f in seen]
    config = frame_metric_config(dataset.class_ranges, dataset.classes.names)
    write_results(tmp_path / "r.json", detections_to_table(frames, perfect), config, {"use_lidar": True})
    assert main(["eval", "--results", str(tmp_path / "r.json"), "--gt", str(root),
                 "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    present = {dataset.classes.name(label) for f in seen for label in f.labels}
    assert present
    for name in present:
        assert metrics["mean_dist_aps"][name] == pytest.approx(1.0)


def test_train_resume_and_evaluate_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--set", f"output_dir={out}", *TINY_RUN]) == 0
    assert (out / "config.yaml").is_file() and (out / "best.pt").is_file()
    first = read_log(out / "log.jsonl", "train")
    # Resuming a finished run has nothing left to train.
    assert main(["train", "--set", f"output_dir={out}", *TINY_RUN, "--resume"]) == 0
    assert read_log(out / "log.jsonl", "train") == first  # nothing left to do: the log is unchanged
    # A resumed run continues as it was configured: a setting that changes what it trains is refused
    # before anything is written; one that changes only how it logs or checkpoints is not.
    written = (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--set", f"output_dir={out}", *TINY_RUN, "--set", "optim.lr=0.5", "--resume"]) == EXIT_USAGE
    assert "optim.lr: 0.001 -> 0.5" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == written
    assert main(["train", "--set", f"output_dir={out}", *TINY_RUN, "--set", "trainer.log_interval=7", "--resume"]) == 0
    # More epochs extend the finished run (a new schedule over them); fewer are refused.
    assert main(["train", "--set", f"output_dir={out}", *TINY_RUN, "--set", "trainer.epochs=2", "--resume"]) == 0
    assert [r["epoch"] for r in read_log(out / "log.jsonl", "eval")] == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["epochs"] == 2
    capsys.readouterr()
    assert main(["train", "--set", f"output_dir={out}", *TINY_RUN, "--resume"]) == EXIT_USAGE
    assert "only a finished run can be extended, to more epochs" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--frames", "2", "--device", "cpu",
                 "--write-results", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["results"]) == {"val_000000", "val_000001"}
    assert "NDS" in capsys.readouterr().out
    # Outputs that exist are replaced only with --overwrite; an input is never an output.
    eval_again = ["eval", "--checkpoint", str(out / "best.pt"), "--frames", "1", "--device", "cpu"]
    assert main([*eval_again, "--write-results", str(tmp_path / "r.json")]) == EXIT_USAGE
    assert "r.json exists; pass --overwrite" in capsys.readouterr().err
    assert main([*eval_again, "--out", str(out / "best.pt"), "--overwrite"]) == EXIT_USAGE
    assert "is also an input" in capsys.readouterr().err
    assert main([*eval_again, "--write-results", str(tmp_path / "r.json"), "--overwrite"]) == 0
    assert set(json.loads((tmp_path / "r.json").read_text())["results"]) == {"val_000000"}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--set", f"output_dir={out}", *TINY_RUN, "--set", "model.preset=cp-voxel-s"]) == 0
    return out / "last.pt"


DISTILL_RUN = ["--set", "data.train_size=2", "--set", "data.val_size=1", "--set", "trainer.batch_size=2",
               "--set", "trainer.num_workers=0", "--set", "trainer.epochs=1"]


@pytest.mark.parametrize("method", [
    "rdd", "lad",
    *[pytest.param(m, marks=pytest.mark.slow) for m in ("hint", "fg", "gid-l", "gid-f", "pp-logit", "kd")],
])
def test_distill_logs_every_loss_term(tmp_path, tiny_teacher, method):
    out = tmp_path / method
    assert main(["distill", "--teacher", str(tiny_teacher), "--student", "cp-voxel-xxs", "--method", method,
                 "--set", f"output_dir={out}", *DISTILL_RUN]) == 0
    record = read_log(out / "log.jsonl", "train")[-1]
    terms = [key for key in record if key.startswith("loss/") and key != "loss/total"]
    assert {"loss/det/heatmap", "loss/det/location"} <= set(terms)
    assert record["loss/total"] == pytest.approx(sum(record[key] for key in terms), rel=1e-5)
    if method == "rdd":
        assert {"loss/rdd/feature", "loss/rdd/logit"} <= set(terms)
    # The checkpoint evaluates as the student it trained.
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--frames", "1", "--device", "cpu"]) == 0


def test_distill_refuses_a_teacher_of_another_dataset_or_a_missing_one(tmp_path, tiny_teacher, capsys):
    assert main(["distill", "--teacher", str(tmp_path / "none.pt"), "--student", "cp-voxel-xxs",
                 "--method", "rdd", *DISTILL_RUN]) == EXIT_FAILURE
    assert "none.pt: checkpoint not found" in capsys.readouterr().err
    state = load_checkpoint(tiny_teacher)
    state["config"]["data"]["dataset"] = "kitti"
    save_checkpoint(tmp_path / "kitti.pt", state)
    out = tmp_path / "run"
    assert main(["distill", "--teacher", str(tmp_path / "kitti.pt"), "--student", "cp-voxel-xxs",
                 "--method", "rdd", "--set", f"output_dir={out}", *DISTILL_RUN]) == EXIT_USAGE
    assert "the teacher was trained on data.dataset='kitti', the student trains on 'synthetic'" \
        in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_calibrate_writes_one_variant_per_method_for_a_plan(tmp_path, tiny_teacher, capsys):
    out = tmp_path / "calibration"
    assert main(["calibrate", "--teacher", str(tiny_teacher), "--student", "cp-voxel-xxs", "--methods", "rdd", "kd",
                 "lad", "--batches", "1", "--share", "0.2", "--out", str(out)]) == 0
    report = json.loads((out / "calibration.json").read_text())
    assert report["rule"]["share"] == 0.2 and report["frames"] == 2
    assert [(w["method"], w["option"]) for w in report["weights"]] == [
        ("rdd", "alpha_feature"), ("rdd", "alpha_logit"), ("kd", "weight")]
    variants = yaml.safe_load((out / "variants.yaml").read_text())["variants"]
    assert [v["name"] for v in variants] == ["rdd-cal", "kd-cal"]
    assert variants[0]["overrides"][0].startswith("distill.rdd.alpha_feature=")
    smoke = Path(__file__).parents[1] / "configs" / "benchmark" / "smoke.yaml"
    plan = load_plan(smoke, [f"variants={json.dumps(variants)}"])
    assert [row.name for row in plan.all_rows()] == ["none", "rdd", "rdd-cal", "kd-cal"]
    assert main(["calibrate", "--teacher", str(tiny_teacher), "--student", "cp-voxel-xxs", "--methods", "rdd",
                 "--share", "0", "--out", str(tmp_path / "x")]) == EXIT_USAGE


def test_distill_says_when_teacher_and_student_are_of_different_families(tmp_path, tiny_teacher, caplog):
    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert main(["distill", "--teacher", str(tiny_teacher), "--student", "cp-pillar-v0.64", "--method", "rdd",
                     "--set", f"output_dir={out}", *DISTILL_RUN]) == 0
    assert "a cross-family pair" in caplog.text and "cp-pillar family" in caplog.text


def test_flops_table_and_unknown_preset(tmp_path, capsys):
    assert main(["flops", "cp-voxel-xxs", "--json", str(tmp_path / "f.json")]) == 0
    rows = json.loads((tmp_path / "f.json").read_text())
    assert rows[0]["preset"] == "cp-voxel-xxs" and 0.05 < rows[0]["macs_ratio"] < 0.2
    assert main(["flops", "cp-voxel-tiny"]) == EXIT_USAGE


def test_unreadable_data_file_is_named(tmp_path, capsys):
    root = tmp_path / "sim"
    assert main(["simulate", "--out", str(root), "--train-size", "2", "--val-size", "1"]) == 0
    broken = sorted((root / "points").glob("train_*.bin"))[1]
    broken.write_bytes(broken.read_bytes()[:-6])  # truncated mid-row
    assert main(["train", "--set", f"data.root={root}", "--set", f"output_dir={tmp_path / 'run'}",
                 *TINY_RUN]) == EXIT_FAILURE
    error = capsys.readouterr().err
    assert broken.name in error and "not a multiple of 5 columns" in error
