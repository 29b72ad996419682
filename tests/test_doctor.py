"""``rdd3d doctor``: the report is whole, a broken check is a FAIL (exit 1), and WARNs come with advice."""

import json

import pytest
import torch

from rdd3d import doctor
from rdd3d.cli import EXIT_FAILURE, main
from rdd3d.models.sparse import backends, spconv_available


def by_name(checks):
    return {check.name: check for check in checks}


def test_cli_writes_every_check_with_a_valid_status(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "doctor.json"
    assert main(["doctor", "--skip-models", "--json", str(report)]) == 0
    checks = json.loads(report.read_text())["checks"]
    names = {check["name"] for check in checks}
    assert {"python", "rdd3d", "torch", "numpy", "spconv", "nuscenes-devkit", "onnxruntime", "tensorboard", "cuda",
            "sparse backend", "sparse conv cpu/torch", "threads", "thread governor", "writable",
            "disk space"} <= names
    assert not any(name.startswith("model ") for name in names)  # --skip-models
    assert all(check["status"] in doctor.STATUSES for check in checks)
    assert all(check["advice"] for check in checks if check["status"] != "OK")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["doctor.json"]  # the write probe is gone
    printed = capsys.readouterr().out
    assert all(check["name"] in printed for check in checks)


def test_a_check_that_raises_is_a_fail_and_exit_code_1(tmp_path, monkeypatch, capsys):
    def broken():
        raise RuntimeError("no threads today")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(doctor, "check_threads", broken)
    report = tmp_path / "doctor.json"
    assert main(["doctor", "--skip-models", "--json", str(report)]) == EXIT_FAILURE
    checks = {check["name"]: check for check in json.loads(report.read_text())["checks"]}
    assert checks["threads"]["status"] == "FAIL"
    assert "RuntimeError: no threads today" in checks["threads"]["detail"]
    assert checks["writable"]["status"] == "OK"  # the checks after the broken one still ran
    assert "1 check(s) failed: threads" in capsys.readouterr().err


def test_missing_optional_package_is_a_warn_with_the_pip_command(monkeypatch):
    real = doctor.installed_distribution
    assert by_name(doctor.check_versions())["nuscenes-devkit"].status == ("OK" if real("nuscenes") else "WARN")
    monkeypatch.setattr(doctor, "installed_distribution", lambda module: None if module == "nuscenes" else real(module))
    missing = by_name(doctor.check_versions())["nuscenes-devkit"]
    assert missing.status == "WARN"
    assert "pip install 'rdd3d[nuscenes]'" in missing.advice


def test_missing_tensorboard_is_a_fail_and_missing_spconv_is_fine_on_cpu(monkeypatch):
    monkeypatch.setattr(doctor, "installed_distribution", lambda module: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checks = by_name(doctor.check_versions())
    assert checks["tensorboard"].status == "FAIL" and "tensorboard" in checks["tensorboard"].advice
    assert checks["spconv"].status == "OK" and "not needed on CPU" in checks["spconv"].detail


def test_threads_beyond_the_usable_cores_are_a_warn(monkeypatch):
    assert by_name(doctor.check_threads())["threads"].status == "OK"  # the suite runs torch on one thread
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(doctor.os, "sched_getaffinity", lambda pid: {0})
    threads = by_name(doctor.check_threads())["threads"]
    assert threads.status == "WARN"
    assert "torch threads 2; usable cores 1" in threads.detail
    assert "OMP_NUM_THREADS=1" in threads.advice


def test_sparse_backends_on_cpu_pass_and_spconv_is_reported_unused():
    checks = by_name(doctor.check_sparse_backends())
    assert checks["sparse backend"].detail.startswith("CPU: torch")
    assert checks["sparse conv cpu/torch"].status == "OK"
    if spconv_available():
        assert checks["sparse conv cpu/spconv"].status == "OK"
        assert checks["sparse conv cpu/spconv"].detail.startswith("not run")


def test_a_wrong_sparse_convolution_is_a_fail(monkeypatch):
    real = backends.apply_rulebook
    monkeypatch.setattr(backends, "apply_rulebook", lambda *args: real(*args) * 1.01)
    check = by_name(doctor.check_sparse_backends())["sparse conv cpu/torch"]
    assert check.status == "FAIL" and "differ from dense conv3d" in check.detail


def test_models_run_and_a_non_finite_loss_is_a_fail(monkeypatch):
    [check] = doctor.check_models(presets=("second-xs",))
    assert check.status == "OK", check.detail
    monkeypatch.setattr(doctor, "detection_loss_terms",
                        lambda detector, output, batch: {"det/nan": torch.tensor(float("nan"), requires_grad=True)})
    [check] = doctor.check_models(presets=("second-xs",))
    assert check.status == "FAIL" and "loss nan" in check.detail


def test_unwritable_folder_is_a_fail_and_low_disk_a_warn(tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(doctor.tempfile, "mkstemp", refuse)
    [check] = doctor.check_writable(tmp_path)
    assert check.status == "FAIL" and "read-only file system" in check.detail and check.advice

    monkeypatch.undo()
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 200 * 2**20})())
    checks = by_name(doctor.check_writable(tmp_path))
    assert checks["writable"].status == "OK"
    assert checks["disk space"].status == "WARN" and "0.2 GiB free" in checks["disk space"].detail


def test_a_warn_or_fail_without_advice_is_refused():
    with pytest.raises(ValueError, match="needs advice"):
        doctor.Check("x", "WARN", "something is off")
    with pytest.raises(ValueError, match="status must be one of"):
        doctor.Check("x", "BAD", "detail")
