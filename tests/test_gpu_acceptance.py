"""benchmarks/gpu_acceptance.py: its CPU dry-run runs every section (so the script cannot rot before a GPU is
lent), its report has the documented structure, a failing section is recorded and the run goes on, and it
refuses to run without CUDA unless asked for the dry-run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_acceptance.py"
SECTION_NAMES = ["sparse_backends", "amp", "nms", "torchrun", "throughput"]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the script's ClassVar annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def acceptance():
    return _load_script()


def _run(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry-run of the whole script, as a user runs it (about 25-40 s on one core)."""
    folder = tmp_path_factory.mktemp("gpu_acceptance")
    result = _run(["--dry-run", "--out", str(folder / "report.json")], folder)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result, json.loads((folder / "report.json").read_text())


def _section(report, name):
    return next(section for section in report["sections"] if section["name"] == name)


def test_dry_run_passes_every_section_with_rows(dry_run):
    result, report = dry_run
    assert report["dry_run"] is True and report["status"] == "OK"
    assert [section["name"] for section in report["sections"]] == SECTION_NAMES
    for section in report["sections"]:
        assert section["status"] == "OK", section
        assert section["error"] is None
        assert section["rows"], section["name"]
        assert all(row["status"] == "OK" for row in section["rows"]), section["rows"]
        assert section["title"] in result.stdout  # one printed table per section
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK: sparse_backends OK, amp OK, nms OK")


def test_dry_run_report_records_the_environment_and_settings(dry_run):
    _, report = dry_run
    env = report["environment"]
    assert env["device_type"] == "cpu" and env["device"].startswith("CPU")
    assert env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda
    for key in ("cudnn", "nccl", "spconv", "cumm", "python", "git_commit", "frames"):
        assert key in env
    assert env["frames"].startswith(("2 x real nuScenes keyframe", "2 tiny synthetic frames"))
    settings = report["settings"]
    assert settings["dataset"] == "synthetic" and settings["precisions"] == ["fp32"]
    assert settings["forward_tolerance"] < settings["gradient_tolerance"] < 1


def test_dry_run_backend_comparison_exercises_gradients_and_spconv_forward(dry_run):
    rows = _section(dry_run[1], "sparse_backends")["rows"]
    by_key = {(row["comparison"], row["quantity"]): row for row in rows}
    expected = {("torch vs torch", quantity) for quantity in ("forward", "gradients", "active pairs")}
    assert expected <= set(by_key)
    gradients = by_key[("torch vs torch", "gradients")]
    assert gradients["tensors"] > 100  # every parameter of the CP-Voxel teacher
    assert "spconv CPU path is broken" in gradients["note"]
    for row in rows:
        if row["max_rel"] is not None:
            assert 0 <= row["max_rel"] <= row["tolerance"]
    from rdd3d.models.sparse import spconv_available

    if spconv_available():  # spconv's CPU forward beside the plain backend: close, never identical
        spconv_forward = by_key[("torch vs spconv", "forward")]
        assert 0 < spconv_forward["max_abs"] and spconv_forward["max_rel"] <= spconv_forward["tolerance"]
        assert by_key[("torch vs spconv", "active pairs")]["max_abs"] == 0


def test_dry_run_training_nms_torchrun_and_throughput_rows(dry_run):
    _, report = dry_run
    amp = _section(report, "amp")["rows"]
    assert [row["trainee"] for row in amp] == ["cp-voxel", "cp-voxel -> cp-voxel-s (rdd)"]
    for row in amp:
        assert row["precision"] == "fp32" and not row["grad_scaler"] and row["finite"]
        assert math.isfinite(row["first_loss"]) and row["ms_per_step"] > 0
    nms = _section(report, "nms")["rows"]
    assert [row["kind"] for row in nms] == ["rotated", "nearest_bev", "circle", "none"]
    for row in nms:
        assert row["device_matches_cpu"] and row["cpu_matches_reference"]
        assert row["kept_cpu"] == row["kept_device"]
        assert (row["kept_cpu"] == row["boxes"]) == (row["kind"] == "none")  # the others suppress something
    torchrun = _section(report, "torchrun")["rows"]
    assert [row["check"] for row in torchrun] == ["torchrun -m rdd3d train", "torchrun process group"]
    assert all(row["exit_code"] == 0 for row in torchrun)
    assert torchrun[1]["backend"] == "gloo" and "all_reduce_ok=True" in torchrun[1]["result"]
    throughput = _section(report, "throughput")["rows"]
    assert [row["preset"] for row in throughput] == ["cp-voxel-xxs", "cp-pillar-v0.64"]
    for row in throughput:
        assert row["role"] == "student"
        assert row["train_frames_per_s"] > 0 and row["inference_frames_per_s"] > 0 and row["latency_ms"] > 0


def test_without_cuda_and_without_dry_run_it_exits_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the full acceptance")
    result = _run(["--out", str(tmp_path / "report.json")], tmp_path, timeout=120)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "report.json").exists()


def test_a_failing_section_is_recorded_and_the_run_goes_on(acceptance, monkeypatch, tmp_path, capsys):
    @dataclasses.dataclass
    class Row:
        what: str
        status: str
        TABLE = (("what", "what", "s"), ("status", "status", "s"))

    def broken(plan):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(acceptance.SECTIONS, "sparse_backends",
                        acceptance.Section("sparse_backends", "backends", broken))
    monkeypatch.setitem(acceptance.SECTIONS, "amp",
                        acceptance.Section("amp", "amp", lambda plan: [Row("loss", "OK"), Row("weights", "FAIL")]))
    out = tmp_path / "report.json"
    assert acceptance.main(["--dry-run", "--sections", "sparse_backends", "amp", "nms", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["status"] == "FAIL"
    backends, amp, nms = report["sections"]
    assert backends["status"] == "FAIL" and backends["rows"] == []
    assert backends["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert amp["status"] == "FAIL" and amp["error"] is None and len(amp["rows"]) == 2
    assert nms["status"] == "OK" and len(nms["rows"]) == 4  # ran after the failures
    assert "FAIL: sparse_backends FAIL, amp FAIL, nms OK" in capsys.readouterr().out


def test_compare_flags_a_relative_error_a_missing_gradient_and_a_shape_change(acceptance):
    a = {"weight": torch.tensor([1.0, -2.0, 4.0]), "bias": torch.tensor([1e-12, 0.0])}
    worst, max_abs, max_rel = acceptance._compare(a, {"weight": torch.tensor([1.0, -2.0, 4.04]), "bias": a["bias"]})
    assert worst == "weight" and max_abs == pytest.approx(0.04, rel=1e-4) and max_rel == pytest.approx(0.01, rel=1e-4)
    # A gradient that is zero analytically is judged at the scale of the other tensors (floor 1e-4 x 4).
    _, _, max_rel = acceptance._compare(a, {"weight": a["weight"], "bias": torch.tensor([1e-6, 0.0])})
    assert max_rel == pytest.approx(1e-6 / 4e-4, rel=1e-3)
    assert acceptance._compare({"w": a["weight"]}, {"w": None})[2] == math.inf
    assert acceptance._compare({"w": a["weight"]}, {"w": a["weight"][:2]})[2] == math.inf


def test_reference_nms_disagrees_with_a_wrong_threshold(acceptance):
    boxes, scores, groups = acceptance.random_boxes(200, seed=3)
    config = acceptance.NMS_SETTINGS["rotated"]
    kept = acceptance.suppress(boxes, scores, config, task=groups, groups=groups)
    assert torch.equal(kept, acceptance.reference_nms(boxes, scores, groups, config))
    looser = dataclasses.replace(config, iou_threshold=0.5)
    assert not torch.equal(kept, acceptance.reference_nms(boxes, scores, groups, looser))


def test_dry_run_falls_back_to_tiny_synthetic_frames_without_the_real_data(acceptance, monkeypatch, tmp_path):
    monkeypatch.setenv("RDD3D_REAL_DATA", str(tmp_path / "absent"))
    frames = acceptance.load_frames(acceptance.Plan.of(acceptance.parse_args(["--dry-run"])))
    assert frames.source.startswith("2 tiny synthetic frames")
    assert frames.batch.batch_size == 2 and all(len(points) for points in frames.batch.points)
    with pytest.raises(FileNotFoundError):  # the full acceptance needs the real frame
        acceptance.load_frames(acceptance.Plan.of(acceptance.parse_args([])))


def test_real_frame_batch_carries_its_annotated_boxes(acceptance, real_data):
    plan = acceptance.Plan.of(acceptance.parse_args(["--batch", "3"]))  # nuScenes classes, whole frame
    batch = acceptance.load_frames(plan).batch
    assert batch.batch_size == 3 and batch.points[0].shape == (34688, 5)
    boxes, labels = batch.gt_boxes[0], batch.gt_labels[0]
    assert boxes.shape[1] == 9 and len(boxes) == len(labels) > 0
    assert torch.isfinite(boxes).all()  # the fixture's unknown (NaN) velocities become 0
    assert (boxes[:, :2].abs() < 50).all() and 0 <= int(labels.min()) and int(labels.max()) < 10
    cropped = acceptance.load_frames(acceptance.Plan.of(acceptance.parse_args(["--dry-run"]))).batch
    assert (cropped.points[0][:, :2].abs() < 20).all() and len(cropped.points[0]) < 34688
