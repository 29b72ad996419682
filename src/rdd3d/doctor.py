"""``rdd3d doctor``: what a new machine gives rdd3d, checked in a few seconds.

Every check returns :class:`Check` records (OK, WARN or FAIL, a detail, and what to do for anything
not OK); :func:`run_checks` runs them all and turns a check that raises into a FAIL, so the report
always comes out whole. The checks: versions of Python, rdd3d, torch and the optional packages; CUDA;
which sparse-convolution backend runs on each device, with a tiny forward and backward against a
dense reference; torch's threads against the cores the process may use; one small forward and
backward per detector family; whether runs can be written here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.metadata
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import rdd3d
from rdd3d.data.collate import DetectionBatch, collate_frames
from rdd3d.data.synthetic import LidarConfig, SyntheticDataset, WorldConfig
from rdd3d.engine.threads import ThreadGovernor
from rdd3d.models.detector import detection_loss_terms
from rdd3d.models.presets import build_detector
from rdd3d.models.sparse import SparseConv3d, SparseSequential, SparseTensor, SubMConv3d, resolve_backend
from rdd3d.models.sparse import spconv_available

Status = Literal["OK", "WARN", "FAIL"]
STATUSES: tuple[Status, ...] = ("OK", "WARN", "FAIL")

#: The smallest member of each detector family: enough to show every code path runs, fast on a CPU.
SMOKE_PRESETS = ("cp-voxel-xxs", "cp-pillar-v0.64", "second-xs", "pointpillars-xs")
LOW_DISK_BYTES = 1 << 30
#: float32 on the device against a float64 dense reference; values and gradients are of order 1.
SPARSE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    advice: str = ""  # what to do: required for WARN and FAIL

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Check {self.name!r}: status must be one of {STATUSES}, got {self.status!r}")
        if self.status != "OK" and not self.advice:
            raise ValueError(f"Check {self.name!r}: a {self.status} needs advice (what to do)")


# ----------------------------------------------------------------------------- versions
@functools.lru_cache(maxsize=None)
def _module_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def installed_distribution(module: str) -> tuple[str, str] | None:
    """``(distribution, version)`` of the installed package providing import name ``module``, or None.

    Read from the package metadata, without importing (nuscenes-devkit's import alone takes seconds);
    spconv's distribution is named after its build (``spconv`` for CPU, ``spconv-cu120``, ...)."""
    names = _module_distributions().get(module)
    if not names:
        return None
    return names[0], importlib.metadata.version(names[0])


def _cuda_build_name() -> str:
    return f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"


def check_versions() -> list[Check]:
    checks = [
        Check("python", "OK", f"{platform.python_version()} ({sys.executable})"),
        Check("rdd3d", "OK", f"{rdd3d.__version__} ({Path(rdd3d.__file__).parent})"),
        Check("torch", "OK", f"{torch.__version__} ({_cuda_build_name()})"),
        Check("numpy", "OK", np.__version__),
    ]
    return checks + [_check_spconv(), _check_nuscenes_devkit(), _check_onnxruntime(), _check_tensorboard()]


def _check_spconv() -> Check:
    found = installed_distribution("spconv")
    cuda = torch.cuda.is_available()
    cuda_wheel = ("pip install the spconv 2.3.8 wheel built for your CUDA "
                  f"(torch's is {torch.version.cuda}): spconv-cu118, spconv-cu120, ... (see spconv's README)")
    if found is None:
        if cuda:
            return Check("spconv", "WARN", "not installed: CUDA runs use rdd3d's plain-PyTorch sparse convolution "
                                           "(correct, slower than spconv on a GPU)", cuda_wheel)
        return Check("spconv", "OK", "not installed; not needed on CPU, where rdd3d uses its plain-PyTorch backend")
    distribution, version = found
    if cuda and distribution == "spconv":  # the plain `spconv` wheel is spconv's CPU-only build
        return Check("spconv", "WARN", f"{distribution} {version} is spconv's CPU-only build, but CUDA is available "
                                       "and rdd3d picks spconv for CUDA tensors",
                     f"pip uninstall spconv, then {cuda_wheel}")
    build = "CPU-only build" if distribution == "spconv" else "CUDA build"
    return Check("spconv", "OK", f"{distribution} {version} ({build})")


def _check_nuscenes_devkit() -> Check:
    found = installed_distribution("nuscenes")
    if found is None:
        return Check("nuscenes-devkit", "WARN",
                     "not installed: needed only for nuScenes (`rdd3d nuscenes-infos`, `rdd3d eval` on a dataroot)",
                     "pip install 'rdd3d[nuscenes]'")
    return Check("nuscenes-devkit", "OK", found[1])


def _check_onnxruntime() -> Check:
    missing = [module for module in ("onnxruntime", "onnx") if installed_distribution(module) is None]
    if missing:
        return Check("onnxruntime", "WARN",
                     f"{' and '.join(missing)} not installed: needed only to deploy (`rdd3d export`, `rdd3d predict`)",
                     "pip install 'rdd3d[export]'")
    found = installed_distribution("onnxruntime")
    return Check("onnxruntime", "OK", f"{found[0]} {found[1]}, onnx {installed_distribution('onnx')[1]}")


def _check_tensorboard() -> Check:
    found = installed_distribution("tensorboard")
    if found is None:  # a required dependency: every training run writes TensorBoard scalars
        return Check("tensorboard", "FAIL", "not installed: `rdd3d train` and `rdd3d distill` would stop at start",
                     "pip install 'tensorboard>=2.14' (a dependency of rdd3d: the install is incomplete)")
    return Check("tensorboard", "OK", found[1])


# ----------------------------------------------------------------------------- CUDA
def check_cuda() -> list[Check]:
    if torch.cuda.is_available():
        devices = []
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            devices.append(f"cuda:{index} {properties.name} (compute capability {properties.major}."
                           f"{properties.minor}, {properties.total_memory / 2**30:.0f} GiB)")
        return [Check("cuda", "OK", f"{'; '.join(devices)}; torch built with CUDA {torch.version.cuda}, "
                                    f"cuDNN {torch.backends.cudnn.version()}")]
    if torch.version.cuda:
        return [Check("cuda", "WARN", f"torch is a CUDA {torch.version.cuda} build but sees no GPU; training runs "
                                      "on CPU", "check the driver (`nvidia-smi`) and CUDA_VISIBLE_DEVICES")]
    if Path("/proc/driver/nvidia/version").exists():
        return [Check("cuda", "WARN", "an NVIDIA driver is loaded but torch is a CPU-only build; training runs on CPU",
                      "install the CUDA build of torch 2.13.0 for your driver (pytorch.org), then rerun the doctor")]
    return [Check("cuda", "OK", "no CUDA (CPU-only torch build): training runs on CPU")]


def _devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------- sparse convolution
_BACKEND_REASONS = {
    ("cpu", "torch"): "rdd3d never uses spconv 2.3.8's defective CPU path, docs/sparse-convolution.md",
    ("cuda", "spconv"): "installed: the field's standard on CUDA, faster there than the plain backend",
    ("cuda", "torch"): "spconv is not installed: correct, slower than spconv on a GPU",
}
# A tiny two-layer net (as in the voxel backbones: a submanifold conv, then a strided one) on a few voxels.
_GRID = 8
_VOXELS = 40
_CHANNELS = (4, 8, 8)


def check_sparse_backends() -> list[Check]:
    choices = []
    for device_type in ("cpu", "cuda"):
        name = resolve_backend("auto", torch.device(device_type)).name
        choices.append(f"{device_type.upper()}: {name} ({_BACKEND_REASONS[device_type, name]})")
    checks = [Check("sparse backend", "OK", "; ".join(choices))]
    for device in _devices():
        torch_results: list[Tensor] = []
        checks.append(_guarded(f"sparse conv {device.type}/torch", _check_torch_backend, device, torch_results))
        if not spconv_available():
            continue
        if device.type == "cpu":
            checks.append(Check("sparse conv cpu/spconv", "OK", "not run: rdd3d does not use spconv 2.3.8 on CPU, "
                                "where its backward fails on CPU-only torch and its forward is wrong on a few "
                                "voxels with more than one thread"))
        else:
            checks.append(_guarded("sparse conv cuda/spconv", _check_spconv_on_cuda, torch_results))
    return checks


def _check_torch_backend(device: torch.device, results: list[Tensor]) -> Check:
    """The plain-PyTorch backend against a float64 dense ``conv3d``; ``results`` receives its outputs and
    gradients, which spconv is then held to."""
    net, x, upstream = _sparse_case()
    start = time.perf_counter()
    results.extend(_sparse_forward_backward(net, x, upstream, "torch", device))
    elapsed = time.perf_counter() - start
    difference = _max_abs_difference(results, _dense_reference(net, x, upstream))
    return _comparison(f"sparse conv {device.type}/torch", "dense conv3d (float64)", difference, elapsed,
                       "the plain-PyTorch sparse convolution is wrong on this machine: report it with this output")


def _check_spconv_on_cuda(torch_results: list[Tensor]) -> Check:
    net, x, upstream = _sparse_case()
    start = time.perf_counter()
    spconv_results = _sparse_forward_backward(net, x, upstream, "spconv", torch.device("cuda"))
    elapsed = time.perf_counter() - start
    if torch_results:
        reference, expected = "the plain-PyTorch backend on CUDA", torch_results
    else:  # that backend failed to run: hold spconv to the dense reference instead
        reference, expected = "dense conv3d (float64)", _dense_reference(net, x, upstream)
    return _comparison("sparse conv cuda/spconv", reference, _max_abs_difference(spconv_results, expected), elapsed,
                       "reinstall the spconv wheel for torch's CUDA, or train with "
                       "--set model.overrides.sparse_backend=torch")


def _comparison(name: str, reference: str, difference: float, elapsed: float, advice: str) -> Check:
    detail = (f"forward + backward ({_VOXELS} voxels, {_CHANNELS[0]}->{_CHANNELS[1]}->{_CHANNELS[2]} channels) "
              f"match {reference}: max |difference| {difference:.1e} (tolerance {SPARSE_TOLERANCE:.0e}), "
              f"{elapsed * 1000:.0f} ms")
    if difference <= SPARSE_TOLERANCE:
        return Check(name, "OK", detail)
    return Check(name, "FAIL", detail.replace(" match ", " differ from "), advice)


def _sparse_case() -> tuple[SparseSequential, SparseTensor, Tensor]:
    """The same net, input and upstream gradient on every call (seeded), on the CPU in float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SparseSequential(
            SubMConv3d(_CHANNELS[0], _CHANNELS[1], 3, indice_key="subm"),
            SparseConv3d(_CHANNELS[1], _CHANNELS[2], 3, stride=2, padding=1),
        )
        sites = torch.randperm(_GRID ** 3)[:_VOXELS]
        zyx = torch.stack([sites // _GRID ** 2, sites // _GRID % _GRID, sites % _GRID], dim=1)
        indices = torch.cat([torch.zeros(_VOXELS, 1, dtype=torch.long), zyx], dim=1).int()  # (V, 4) b z y x
        x = SparseTensor(torch.randn(_VOXELS, _CHANNELS[0]), indices, (_GRID,) * 3, batch_size=1)
        upstream = torch.randn(1, _CHANNELS[2], *(_GRID // 2,) * 3)  # dL/d(output grid)
    return net, x, upstream


def _sparse_forward_backward(net: SparseSequential, x: SparseTensor, upstream: Tensor, backend: str,
                             device: torch.device) -> list[Tensor]:
    """Output grid, input-feature gradient and weight gradients of one run, moved to the CPU."""
    net = copy.deepcopy(net).to(device)
    for conv in net:
        conv.backend = backend
    features = x.features.to(device, copy=True).requires_grad_(True)
    out = net(SparseTensor(features, x.indices.to(device), x.spatial_shape, x.batch_size)).dense()
    (out * upstream.to(device)).sum().backward()
    return [out.detach().cpu(), features.grad.cpu(), *(conv.weight.grad.cpu() for conv in net)]


def _dense_reference(net: SparseSequential, x: SparseTensor, upstream: Tensor) -> list[Tensor]:
    """The same two convolutions on the dense grid in float64."""
    features = x.features.double().requires_grad_(True)
    weights = [conv.weight.detach().double().requires_grad_(True) for conv in net]
    dense_in = x.replace_features(features).dense()
    occupied = x.replace_features(torch.ones(_VOXELS, 1, dtype=torch.float64)).dense()
    as_conv3d = [w.permute(0, 4, 1, 2, 3) for w in weights]  # [C_out, kz, ky, kx, C_in] -> [C_out, C_in, k...]
    hidden = F.conv3d(dense_in, as_conv3d[0], padding=1) * occupied  # submanifold: outputs at input sites only
    out = F.conv3d(hidden, as_conv3d[1], stride=2, padding=1)
    (out * upstream.double()).sum().backward()
    return [out.detach(), features.grad, *(w.grad for w in weights)]


def _max_abs_difference(results: Sequence[Tensor], references: Sequence[Tensor]) -> float:
    return max((a.double() - b.double()).abs().max().item() for a, b in zip(results, references, strict=True))


# ----------------------------------------------------------------------------- threads
def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), or all the machine's where affinity is unknown."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_threads() -> list[Check]:
    threads, cores = torch.get_num_threads(), _usable_cores()
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    detail = f"torch threads {threads}; usable cores {cores} (CPU affinity) of {os.cpu_count()}; OMP_NUM_THREADS={omp}"
    if threads > cores:
        checks = [Check("threads", "WARN", detail,
                        f"export OMP_NUM_THREADS={cores} before running rdd3d: threads beyond the usable cores "
                        "wait for each other at the end of every operator")]
    else:
        checks = [Check("threads", "OK", detail)]
    return checks + [_check_thread_governor()]


def _check_thread_governor() -> Check:
    governor = ThreadGovernor(interval_s=0.2)
    if governor.max_threads == 1:
        return Check("thread governor", "OK", "nothing to adjust: torch has one thread")
    if not governor.enabled:
        return Check("thread governor", "OK", f"off: /proc/stat is unreadable, so training keeps "
                                              f"{governor.max_threads} threads however busy the machine is")
    time.sleep(governor.interval_s)
    others = governor.others_busy_cores()
    return Check("thread governor", "OK",
                 f"CPU training (trainer.adaptive_threads) runs 1 to {governor.max_threads} threads, as many as "
                 f"other processes leave cores free; they keep {others:.1f} of {governor.cores} cores busy now")


# ----------------------------------------------------------------------------- models
def check_models(presets: Sequence[str] = SMOKE_PRESETS) -> list[Check]:
    device = _devices()[-1]  # where `device: auto` trains: CUDA when there is one
    # A small frame (16 beams, few objects) keeps the four forward and backward passes to seconds on a CPU.
    world = WorldConfig(lidar=LidarConfig(beams=16), objects_per_scene=(4, 4), distractors_per_scene=(4, 4))
    frame = SyntheticDataset("val", 1, seed=0, config=world)[0]
    batch = collate_frames([frame]).to(device)
    return [_guarded(f"model {name}", _check_model, name, batch, device, len(frame.points)) for name in presets]


def _check_model(name: str, batch: DetectionBatch, device: torch.device, num_points: int) -> Check:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        detector = build_detector(name, "synthetic").to(device)
    start = time.perf_counter()
    loss = sum(detection_loss_terms(detector, detector(batch.points), batch).values())
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    detail = (f"forward + backward on one synthetic frame ({num_points} points) on {device.type}: {elapsed:.2f} s, "
              f"loss {loss.item():.3g}")
    if not math.isfinite(loss.item()):
        return Check(f"model {name}", "FAIL", detail, "a fresh model's loss is not finite: report it with this output")
    if not all(torch.isfinite(p.grad).all() for p in detector.parameters() if p.grad is not None):
        return Check(f"model {name}", "FAIL", detail + "; some gradients are not finite",
                     "a fresh model's gradients are not finite: report it with this output")
    return Check(f"model {name}", "OK", detail)


# ----------------------------------------------------------------------------- disk
def check_writable(directory: Path) -> list[Check]:
    """Runs go to ``<directory>/runs`` by default: write a file there (or beside it) and remove it."""
    target = (directory / "runs" if (directory / "runs").is_dir() else directory).resolve()
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".rdd3d-doctor-", dir=target)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        return [Check("writable", "FAIL", f"cannot create a file in {target}: {error}",
                      "run rdd3d from a folder you can write to, or give every run an output_dir "
                      "(--set output_dir=...) on a writable disk")]
    checks = [Check("writable", "OK", f"{target}: a file was created and removed (runs go to ./runs by default)")]
    free = shutil.disk_usage(target).free
    space = f"{free / 2**30:.1f} GiB free under {target}"
    if free < LOW_DISK_BYTES:
        checks.append(Check("disk space", "WARN", space, "free some space or run from a folder on a larger disk: "
                                                         "checkpoints and logs are written under runs/"))
    else:
        checks.append(Check("disk space", "OK", space))
    return checks


# ----------------------------------------------------------------------------- all together
def _guarded(name: str, check: Callable[..., Check], *args) -> Check:
    """``check(*args)``; an exception becomes its FAIL, with the message, instead of ending the doctor."""
    try:
        return check(*args)
    except Exception as error:  # noqa: BLE001 - the doctor reports whatever went wrong and carries on
        return _crashed(name, error)


def _crashed(name: str, error: Exception) -> Check:
    return Check(name, "FAIL", f"the check raised {type(error).__name__}: {error}",
                 "fix what the message names; if it looks like a bug in rdd3d, report it with this output")


def run_checks(directory: Path, skip_models: bool = False) -> list[Check]:
    """Every check in the order of the report; ``directory`` is where runs would be written."""
    groups: list[tuple[str, Callable[[], list[Check]]]] = [
        ("versions", check_versions),
        ("cuda", check_cuda),
        ("sparse", check_sparse_backends),
        ("threads", check_threads),
    ]
    if not skip_models:
        groups.append(("models", check_models))
    groups.append(("writable", lambda: check_writable(directory)))
    checks = []
    for name, group in groups:
        try:
            checks.extend(group())
        except Exception as error:  # noqa: BLE001 - as in _guarded: one broken check, not a traceback
            checks.append(_crashed(name, error))
    return checks


def format_report(checks: Sequence[Check]) -> str:
    """A table a person reads: check, status, detail, and under every WARN and FAIL what to do."""
    width = max(len("check"), *(len(check.name) for check in checks))
    lines = [f"{'check':<{width}}  status  detail"]
    for check in checks:
        lines.append(f"{check.name:<{width}}  {check.status:<6}  {check.detail}")
        if check.advice:
            lines.append(f"{'':<{width}}  {'':<6}  what to do: {check.advice}")
    lines.append(", ".join(f"{count} {status}" for status, count in _counts(checks).items()))
    return "\n".join(lines)


def report_json(checks: Sequence[Check]) -> dict:
    return {
        "checks": [dataclasses.asdict(check) for check in checks],
        "counts": _counts(checks),
    }


def _counts(checks: Sequence[Check]) -> dict[Status, int]:
    return {status: sum(check.status == status for check in checks) for status in STATUSES}
