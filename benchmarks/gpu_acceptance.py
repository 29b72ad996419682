"""GPU acceptance: what must hold on a CUDA machine before its figures are trusted, in one run (< 8 min on one H100).

Five sections, each a function returning typed rows; a section that raises is recorded as FAIL with its
error and the next one runs. Exit code 0 when every row of every section is OK, 1 when any is not, 2 without
CUDA (unless ``--dry-run``).

1. ``sparse_backends``: the CP-Voxel teacher built once per sparse-convolution backend (plain PyTorch,
   spconv) with the same weights, on the real nuScenes keyframe (``$RDD3D_REAL_DATA``, default
   ``../shared/data/real``) and its annotated boxes: the forward outputs and the detection loss, the
   gradient of every parameter and every layer's active-pair count, compared in fp32 with TF32 off.
2. ``amp``: training steps (forward, loss, backward, AdamW) of the teacher and of an RDD distillation step
   (cp-voxel -> cp-voxel-s) in fp32, fp16 with a GradScaler and bf16 autocast, per sparse backend: every
   loss and every weight finite, median time per step.
3. ``nms``: every NMS kind on random boxes on the GPU against the same call on the CPU (same kept indices
   in the same order), and the CPU result against a plain sequential greedy NMS over the full overlap matrix.
4. ``torchrun``: ``torchrun --standalone --nproc_per_node=1 -m rdd3d train`` on a tiny synthetic config
   (exit 0, ``last.pt`` loads with finite weights, every step logged), and a one-rank NCCL process group
   started by torchrun (all-reduce and a DistributedDataParallel backward). ``rdd3d train`` forms no
   process group at world size 1 (``rdd3d.engine.distributed.init_distributed``), so the second check is
   the one that touches NCCL.
5. ``throughput``: frames/s of a training step and of inference (forward + decode) at ``--batch``, and the
   latency of one frame, for every nuScenes preset; students also as a share of their teacher's latency.
   SparseKD's A100 latency table is not in this repository's docs nor in ``../shared/docs``, so no
   reference column is printed.

``--dry-run`` runs every section on the CPU at the smallest size (the synthetic-world presets, two presets
in the throughput section, the real frame cropped to +-20 m or tiny synthetic frames where it is absent,
fp32 instead of autocast, Gloo instead of NCCL, the plain-PyTorch backend against itself for gradients
because spconv's CPU backward is broken, and spconv's forward beside it), in well under a minute; the test
suite runs it so that the script cannot rot before a GPU is lent.

    python benchmarks/gpu_acceptance.py --out benchmarks/results/gpu_acceptance.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_acceptance.py --dry-run --out /tmp/gpu_acceptance_dry_run.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from rdd3d.core.fileio import write_json
from rdd3d.core.geometry import bev_iou, nearest_bev_iou
from rdd3d.data.collate import DetectionBatch, collate_frames
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.methods import DistillConfig, build_method
from rdd3d.distill.precision import teacher_dtype
from rdd3d.engine.detection_task import DetectorTraining
from rdd3d.models.complexity import real_data_root, reference_points
from rdd3d.models.detector import detection_loss_terms
from rdd3d.models.heads.decode import NMSConfig, suppress
from rdd3d.models.presets import build_detector, list_presets, preset_config, teacher_of
from rdd3d.models.sparse import SparseConvolution, resolve_backend, spconv_available

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "benchmarks/results/gpu_acceptance.json"
DRY_RUN_OUT = "benchmarks/results/gpu_acceptance_dry_run.json"
OK, FAIL = "OK", "FAIL"
EXIT_FAILED, EXIT_NO_CUDA = 1, 2

TEACHER, STUDENT = "cp-voxel", "cp-voxel-s"
DRY_RUN_PRESETS = ("cp-voxel-xxs", "cp-pillar-v0.64")  # one voxel and one pillar student
DRY_RUN_CROP_M = 20.0  # the dry-run keeps the real frame's points and boxes within +-20 m in x and y
BOX_RANGE_M = 50.0  # annotated boxes kept: centres within +-50 m, inside every nuScenes preset's range
#: Tolerances of section 1: max |a - b| / max |a| per tensor, where max |a| is floored at FLOOR_SHARE of the
#: largest value among the tensors compared (a tensor whose gradient is analytically zero, e.g. a bias
#: before a BatchNorm, is then compared in absolute terms at the scale of the rest).
FORWARD_TOLERANCE, GRADIENT_TOLERANCE, FLOOR_SHARE = 1e-3, 1e-2, 1e-4
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
#: The tiny synthetic world of the torchrun section and of the dry-run without the real frame.
TINY_WORLD = {"lidar.beams": 8, "lidar.azimuth_resolution_deg": 2.0, "lidar.num_sweeps": 1}


# ----------------------------------------------------------------------------- plan and inputs


@dataclass(frozen=True)
class Plan:
    """What a run measures: the full acceptance on CUDA, or the smallest version of it (``--dry-run``)."""

    dry_run: bool
    device: torch.device
    dataset: str  # the presets' dataset: nuscenes, or synthetic (CPU-sized) for the dry-run
    presets: tuple[str, ...]
    batch: int
    warmup: int
    steps: int
    precisions: tuple[str, ...]
    nms_boxes: int
    nms_reference_boxes: int
    process_group_backend: str
    torchrun_timeout_s: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> "Plan":
        dry = args.dry_run
        presets = tuple(args.presets) if args.presets else (DRY_RUN_PRESETS if dry else list_presets("nuscenes"))
        return cls(
            dry_run=dry, device=torch.device("cpu" if dry else "cuda"), dataset="synthetic" if dry else "nuscenes",
            presets=presets, batch=args.batch or (2 if dry else 4), warmup=args.warmup if args.warmup is not None
            else (1 if dry else 3), steps=args.steps or (1 if dry else 10),
            precisions=("fp32",) if dry else ("fp32", "fp16", "bf16"), nms_boxes=300 if dry else 4000,
            nms_reference_boxes=300 if dry else 1000, process_group_backend="gloo" if dry else "nccl",
            torchrun_timeout_s=180 if dry else 300,
        )

    @cached_property
    def frames(self) -> "Frames":
        return load_frames(self)


@dataclass(frozen=True)
class Frames:
    batch: DetectionBatch  # on the CPU; ``--batch`` copies of one frame (or that many synthetic frames)
    source: str


def _annotated_boxes(root: Path, lidar_file: str) -> tuple[np.ndarray, list[str]]:
    """The fixture's boxes ``x y z dx dy dz yaw vx vy`` of the keyframe ``lidar_file``, with their class names.
    An unknown (NaN) velocity becomes 0, as the nuScenes loaders store it."""
    for path in sorted((root / "nuscenes" / "annotations").glob("*.json")):
        info = json.loads(path.read_text(encoding="utf-8"))
        if Path(info.get("lidar_path", "")).name == lidar_file:
            boxes = [list(item["box"]) + list(item.get("velocity", (0.0, 0.0))) for item in info["boxes"]]
            boxes = np.nan_to_num(np.asarray(boxes, dtype=np.float32).reshape(-1, 9), nan=0.0)
            return boxes, [item["name"] for item in info["boxes"]]
    return np.zeros((0, 9), np.float32), []


def load_frames(plan: Plan) -> Frames:
    """``plan.batch`` copies of the real nuScenes keyframe with its annotated boxes (labels in the order of
    the plan's presets); in the dry-run cropped to +-20 m, or tiny synthetic frames where the frame is absent."""
    classes = preset_config(TEACHER, plan.dataset).classes
    root = real_data_root()
    try:
        points = reference_points("nuscenes")
    except FileNotFoundError:
        if not plan.dry_run:
            raise
        from rdd3d.data.synthetic import SyntheticDataset
        from rdd3d.data.synthetic.config import LidarConfig, WorldConfig

        lidar = {key.split(".", 1)[1]: value for key, value in TINY_WORLD.items()}
        world = WorldConfig(lidar=LidarConfig(**lidar), objects_per_scene=(3, 6), distractors_per_scene=(2, 4))
        dataset = SyntheticDataset("val", size=plan.batch, config=world)
        batch = collate_frames([dataset[i] for i in range(plan.batch)])
        return Frames(batch, f"{plan.batch} tiny synthetic frames (no real frame under {root})")
    lidar_file = sorted((root / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[0].name
    boxes, names = _annotated_boxes(root, lidar_file)
    half = DRY_RUN_CROP_M if plan.dry_run else BOX_RANGE_M
    if plan.dry_run:
        points = points[(points[:, 0].abs() < half) & (points[:, 1].abs() < half)].contiguous()
    keep = [i for i, name in enumerate(names) if name in classes and abs(boxes[i, 0]) < half
            and abs(boxes[i, 1]) < half and -5.0 < boxes[i, 2] < 3.0]
    gt_boxes = torch.from_numpy(boxes[keep])
    gt_labels = torch.tensor([classes.index(names[i]) for i in keep], dtype=torch.long)
    columns = preset_config(TEACHER, plan.dataset).point_columns
    batch = DetectionBatch([points.clone() for _ in range(plan.batch)], [gt_boxes.clone() for _ in range(plan.batch)],
                           [gt_labels.clone() for _ in range(plan.batch)],
                           [f"{lidar_file}#{i}" for i in range(plan.batch)], columns)
    crop = f", cropped to +-{DRY_RUN_CROP_M:g} m" if plan.dry_run else ""
    return Frames(batch, f"{plan.batch} x real nuScenes keyframe {lidar_file} ({len(points)} points, "
                         f"{len(keep)} boxes{crop})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(function: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


def _median_seconds(function: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        function()
    return statistics.median(_seconds(function, device) for _ in range(steps))


def _peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _backend_name(preset: str, dataset: str, backend: str, device: torch.device) -> str:
    if preset_config(preset, dataset).encoder != "mean_vfe":
        return "-"  # pillars: no sparse convolution
    return resolve_backend(backend, device).name


@contextlib.contextmanager
def _full_fp32() -> None:
    """TF32 off for matrix products and cuDNN convolutions (spconv's own default is off), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ----------------------------------------------------------------------------- 1. sparse backends


@dataclass
class BackendRow:
    comparison: str  # reference backend vs candidate backend
    quantity: str  # forward | gradients | active pairs
    tensors: int  # tensors (or layers) compared
    worst: str  # the tensor (or layer) of the largest error
    max_abs: float | None
    max_rel: float | None
    tolerance: float
    status: str
    note: str = ""
    TABLE: ClassVar = (("comparison", "comparison", "s"), ("quantity", "quantity", "s"), ("tensors", "tensors", "d"),
                       ("max abs", "max_abs", ".3g"), ("max rel", "max_rel", ".3g"), ("tol", "tolerance", ".0g"),
                       ("worst", "worst", "s"), ("status", "status", "s"), ("note", "note", "s"))


def _output_tensors(output, loss: Tensor | None) -> dict[str, Tensor]:
    leaves, _ = tree_flatten(output.predictions)
    tensors = {"bev_features": output.bev_features}
    tensors.update({f"predictions[{i}]": leaf for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)})
    if loss is not None:
        tensors["loss"] = loss.reshape(1)
    return {name: tensor.detach() for name, tensor in tensors.items()}


def _compare(reference: dict[str, Tensor | None], candidate: dict[str, Tensor | None]) -> tuple[str, float, float]:
    """(worst tensor, its max |a - b|, the largest relative error) over the tensors both name."""
    if reference.keys() != candidate.keys():
        raise ValueError(f"different tensors: {sorted(set(reference) ^ set(candidate))}")
    present = [t for t in reference.values() if t is not None and t.numel()]
    scale = max((float(t.abs().max()) for t in present), default=0.0)
    worst, worst_abs, worst_rel = "", 0.0, 0.0
    for name, a in reference.items():
        b = candidate[name]
        if a is None or b is None:
            if a is not b:  # one backend left a gradient out
                return name, math.inf, math.inf
            continue
        if a.shape != b.shape:
            return f"{name} (shape {tuple(a.shape)} vs {tuple(b.shape)})", math.inf, math.inf
        if not a.numel():
            continue
        difference = float((a.double() - b.double()).abs().max())
        relative = difference / max(float(a.abs().max()), FLOOR_SHARE * scale, torch.finfo(torch.float32).tiny)
        if not math.isfinite(difference):
            relative = math.inf
        if relative >= worst_rel:
            worst, worst_abs, worst_rel = name, difference, relative
    return worst, worst_abs, worst_rel


def _active_pairs(model: nn.Module) -> dict[str, int]:
    return {name: module.last_active_pairs for name, module in model.named_modules()
            if isinstance(module, SparseConvolution)}


def _backend_rows(plan: Plan, reference: str, candidate: str, gradients: bool, note: str) -> list[BackendRow]:
    """The teacher on ``reference`` and on ``candidate`` with the same weights: outputs and loss, active pairs
    and (with ``gradients``) the gradient of every parameter."""
    batch = plan.frames.batch.to(plan.device)
    torch.manual_seed(0)
    models = {reference: build_detector(TEACHER, plan.dataset, sparse_backend=reference)}
    models[candidate] = build_detector(TEACHER, plan.dataset, sparse_backend=candidate)
    models[candidate].load_state_dict(models[reference].state_dict())
    outputs, grads, pairs = {}, {}, {}
    with _full_fp32():
        for name, model in models.items():
            model.to(plan.device).train()
            with contextlib.nullcontext() if gradients else torch.no_grad():
                output = model(batch.points)
                loss = sum(detection_loss_terms(model, output, batch).values())
                if gradients:
                    loss.backward()
            outputs[name] = _output_tensors(output, loss)
            pairs[name] = _active_pairs(model)
            if gradients:
                grads[name] = {key: None if p.grad is None else p.grad.detach() for key, p in model.named_parameters()}
    comparison = f"{reference} vs {candidate}"
    rows = []
    worst, max_abs, max_rel = _compare(outputs[reference], outputs[candidate])
    rows.append(BackendRow(comparison, "forward", len(outputs[reference]), worst, max_abs, max_rel,
                           FORWARD_TOLERANCE, OK if max_rel <= FORWARD_TOLERANCE else FAIL, note))
    if gradients:
        worst, max_abs, max_rel = _compare(grads[reference], grads[candidate])
        rows.append(BackendRow(comparison, "gradients", len(grads[reference]), worst, max_abs, max_rel,
                               GRADIENT_TOLERANCE, OK if max_rel <= GRADIENT_TOLERANCE else FAIL, note))
    differences = {layer: abs(count - pairs[candidate].get(layer, -1)) for layer, count in pairs[reference].items()}
    worst_layer = max(differences, key=differences.get) if differences else ""
    largest = max(differences.values(), default=0)
    same_layers = pairs[reference].keys() == pairs[candidate].keys() and bool(differences)
    rows.append(BackendRow(comparison, "active pairs", len(differences), worst_layer, float(largest), None, 0,
                           OK if same_layers and largest == 0 else FAIL, note))
    return rows


def check_sparse_backends(plan: Plan) -> list[BackendRow]:
    if not plan.dry_run:
        if not spconv_available():
            raise ImportError("spconv is not importable: install the spconv build of this CUDA (e.g. spconv-cu120)")
        return _backend_rows(plan, "torch", "spconv", gradients=True, note="CUDA, fp32, TF32 off")
    # spconv's CPU backward is broken (docs/sparse-convolution.md): the plain backend against itself runs every
    # step of the gradient comparison, and spconv's CPU forward (one thread, no graph) is compared beside it.
    rows = _backend_rows(plan, "torch", "torch", gradients=True,
                         note="dry-run: spconv CPU path is broken for backward; plain backend against itself")
    if spconv_available():
        rows += _backend_rows(plan, "torch", "spconv", gradients=False, note="dry-run: spconv CPU forward, no_grad")
    return rows


# ----------------------------------------------------------------------------- 2. mixed precision steps


@dataclass
class AmpRow:
    trainee: str
    backend: str  # sparse backend of the voxel models
    precision: str  # fp32 | fp16 | bf16 (autocast)
    grad_scaler: bool
    steps: int
    first_loss: float | None
    last_loss: float | None
    skipped_steps: int  # optimiser steps the GradScaler skipped (inf/NaN gradients)
    finite: bool  # every loss and, after the steps, every weight
    ms_per_step: float
    frames_per_s: float
    peak_memory_mb: float | None
    status: str
    note: str = ""
    TABLE: ClassVar = (("trainee", "trainee", "s"), ("backend", "backend", "s"), ("precision", "precision", "s"),
                       ("scaler", "grad_scaler", "s"), ("steps", "steps", "d"), ("first loss", "first_loss", ".4g"),
                       ("last loss", "last_loss", ".4g"), ("skipped", "skipped_steps", "d"), ("finite", "finite", "s"),
                       ("ms/step", "ms_per_step", ".1f"), ("frames/s", "frames_per_s", ".2f"),
                       ("peak MB", "peak_memory_mb", ".0f"), ("status", "status", "s"), ("note", "note", "s"))


def _distiller(plan: Plan, backend: str) -> Distiller:
    torch.manual_seed(0)
    teacher = build_detector(TEACHER, plan.dataset, sparse_backend=backend)
    student = build_detector(STUDENT, plan.dataset, sparse_backend=backend)
    config = DistillConfig(method="rdd")
    losses = build_method(config, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    return Distiller(teacher, student, losses, teacher_precision=config.teacher_precision)


def _amp_row(plan: Plan, trainee_name: str, make: Callable[[], nn.Module], backend: str, precision: str) -> AmpRow:
    _reset_memory(plan.device)
    trainee = make().to(plan.device).train()
    batch = plan.frames.batch.to(plan.device)
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(plan.device.type, enabled=precision == "fp16")
    optimizer = torch.optim.AdamW([p for p in trainee.parameters() if p.requires_grad], lr=1e-4)
    losses: list[float] = []
    skipped = 0

    def step() -> None:
        nonlocal skipped
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(plan.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            loss = sum(trainee(batch).values())
        losses.append(float(loss.detach()))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(trainee.parameters(), 10.0)
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        if scale is not None and scaler.get_scale() < scale:
            skipped += 1

    seconds = _median_seconds(step, plan.device, plan.warmup, plan.steps)
    finite = all(math.isfinite(value) for value in losses) and all(
        bool(torch.isfinite(p).all()) for p in trainee.parameters())
    applied = len(losses) - skipped
    status = OK if finite and applied > 0 else FAIL
    note = "" if applied > 0 else "the GradScaler skipped every step"
    if isinstance(trainee, Distiller):
        dtype_of_teacher = teacher_dtype(trainee.teacher_precision, plan.device)
        note = f"teacher forward {str(dtype_of_teacher).replace('torch.', '') if dtype_of_teacher else 'fp32'}" + (
            f"; {note}" if note else "")
    return AmpRow(trainee_name, backend, precision, scaler.is_enabled(), len(losses), losses[0], losses[-1], skipped,
                  finite, 1000 * seconds, plan.batch / seconds, _peak_memory_mb(plan.device), status, note)


def check_amp(plan: Plan) -> list[AmpRow]:
    backends = ["torch"] if plan.device.type == "cpu" else (["spconv", "torch"] if spconv_available() else ["torch"])
    rows = []
    for backend in backends:
        for precision in plan.precisions:
            def teacher() -> nn.Module:
                torch.manual_seed(0)
                return DetectorTraining(build_detector(TEACHER, plan.dataset, sparse_backend=backend))

            rows.append(_amp_row(plan, TEACHER, teacher, backend, precision))
            rows.append(_amp_row(plan, f"{TEACHER} -> {STUDENT} (rdd)", lambda: _distiller(plan, backend), backend,
                                 precision))
    return rows


# ----------------------------------------------------------------------------- 3. NMS


@dataclass
class NmsRow:
    kind: str
    boxes: int
    groups: int
    kept_cpu: int
    kept_device: int
    device_matches_cpu: bool  # same kept indices in the same order
    reference_boxes: int
    cpu_matches_reference: bool  # the CPU NMS against a sequential greedy NMS over all pairs
    cpu_ms: float
    device_ms: float
    device: str
    status: str
    TABLE: ClassVar = (("kind", "kind", "s"), ("boxes", "boxes", "d"), ("groups", "groups", "d"),
                       ("kept cpu", "kept_cpu", "d"), ("kept dev", "kept_device", "d"),
                       ("dev == cpu", "device_matches_cpu", "s"), ("ref boxes", "reference_boxes", "d"),
                       ("cpu == ref", "cpu_matches_reference", "s"), ("cpu ms", "cpu_ms", ".2f"),
                       ("dev ms", "device_ms", ".2f"), ("device", "device", "s"), ("status", "status", "s"))


NMS_GROUPS = 4
NMS_SETTINGS = {  # OpenPCDet's nuScenes CenterPoint sizes; circle distances (m^2) one per group
    "rotated": NMSConfig("rotated", iou_threshold=0.2, pre_max_size=1000, post_max_size=83),
    "nearest_bev": NMSConfig("nearest_bev", iou_threshold=0.5, pre_max_size=1000, post_max_size=83),
    "circle": NMSConfig("circle", pre_max_size=1000, post_max_size=83, circle_distances=(4.0, 12.0, 1.0, 0.175)),
    "none": NMSConfig("none", pre_max_size=None, post_max_size=None),  # keeps all, best first
}


def random_boxes(count: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """float64 boxes ``x y z dx dy dz yaw``, dense enough to overlap often, scores without ties and a group each.

    float64, so that no pair lies within rounding of a threshold, where CPU and GPU could rightly differ."""
    generator = torch.Generator().manual_seed(seed)
    uniform = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    half_width = math.sqrt(count / NMS_GROUPS)  # one box centre per 4 m^2 and group: most boxes overlap others
    boxes = torch.cat([(uniform(count, 2) * 2 - 1) * half_width, uniform(count, 1) * 2 - 1,
                       0.5 + 4.5 * uniform(count, 1), 0.5 + 2.0 * uniform(count, 1), 1.0 + uniform(count, 1),
                       (uniform(count, 1) * 2 - 1) * math.pi], dim=1)
    return boxes, uniform(count), torch.randint(0, NMS_GROUPS, (count,), generator=generator)


def reference_nms(boxes: Tensor, scores: Tensor, groups: Tensor, config: NMSConfig) -> Tensor:
    """Sequential greedy NMS over the full overlap matrix, group by group, best first: what ``suppress`` must keep."""
    if config.kind == "rotated":
        suppresses = bev_iou(boxes, boxes) > config.iou_threshold
    elif config.kind == "nearest_bev":
        suppresses = nearest_bev_iou(boxes, boxes) > config.iou_threshold
    elif config.kind == "circle":
        distance = ((boxes[:, None, :2] - boxes[None, :, :2]) ** 2).sum(-1)
        suppresses = distance <= torch.tensor(config.circle_distances, dtype=torch.float64)[groups][:, None]
    else:
        suppresses = torch.zeros(len(boxes), len(boxes), dtype=torch.bool)
    suppresses = suppresses.numpy()
    kept = []
    for group in sorted(set(groups.tolist())):
        members = torch.nonzero(groups == group).flatten()
        order = members[torch.argsort(scores[members], descending=True, stable=True)].numpy()
        order = order[:config.pre_max_size] if config.pre_max_size is not None else order
        removed = np.zeros(len(boxes), dtype=bool)
        count = 0
        for index in order:
            if removed[index]:
                continue
            if config.post_max_size is not None and count >= config.post_max_size:
                break
            kept.append(int(index))
            count += 1
            removed |= suppresses[index]
    return torch.tensor(kept, dtype=torch.long)


def check_nms(plan: Plan) -> list[NmsRow]:
    rows = []
    for seed, (kind, config) in enumerate(NMS_SETTINGS.items()):
        if plan.dry_run and kind != "none":  # 75 boxes a group: limits small enough that both cut
            config = dataclasses.replace(config, pre_max_size=60, post_max_size=20)
        boxes, scores, groups = random_boxes(plan.nms_boxes, seed)

        def run(device: torch.device, count: int | None = None) -> Tensor:
            part = slice(None, count)
            on = [t[part].to(device) for t in (boxes, scores, groups)]
            return suppress(on[0], on[1], config, task=on[2], groups=on[2]).cpu()

        cpu, on_device = run(torch.device("cpu")), run(plan.device)
        cpu_ms = 1000 * _median_seconds(lambda: run(torch.device("cpu")), torch.device("cpu"), 1, 3)
        device_ms = 1000 * _median_seconds(lambda: run(plan.device), plan.device, 1, 3)
        count = min(plan.nms_reference_boxes, plan.nms_boxes)
        reference = reference_nms(boxes[:count], scores[:count], groups[:count], config)
        matches_reference = torch.equal(run(torch.device("cpu"), count), reference)
        matches_cpu = torch.equal(cpu, on_device)
        rows.append(NmsRow(kind, plan.nms_boxes, NMS_GROUPS, len(cpu), len(on_device), matches_cpu, count,
                           matches_reference, cpu_ms, device_ms, str(plan.device),
                           OK if matches_cpu and matches_reference else FAIL))
    return rows


# ----------------------------------------------------------------------------- 4. torchrun


@dataclass
class TorchrunRow:
    check: str
    backend: str  # process-group backend
    exit_code: int
    seconds: float
    result: str
    status: str
    TABLE: ClassVar = (("check", "check", "s"), ("backend", "backend", "s"), ("exit", "exit_code", "d"),
                       ("seconds", "seconds", ".1f"), ("status", "status", "s"), ("result", "result", "s"))


def _torchrun(arguments: Sequence[str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *arguments]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as error:
        result = subprocess.CompletedProcess(command, 124, "", f"timed out after {timeout:.0f} s: {error}")
    return result, time.perf_counter() - start


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _train_run(plan: Plan, work: Path) -> TorchrunRow:
    from rdd3d.engine.run_logging import read_log
    from rdd3d.engine.runs import detector_from_checkpoint

    out, frames, batch = work / "train", 6, 2
    settings = {"output_dir": str(out), "device": plan.device.type, "model.preset": "cp-voxel-xxs",
                "data.train_size": frames, "data.val_size": 1, "trainer.batch_size": batch, "trainer.epochs": 1,
                "trainer.num_workers": 0, "trainer.log_interval": 1,
                **{f"data.world.{key}": value for key, value in TINY_WORLD.items()}}
    arguments = ["-m", "rdd3d", "train"]
    for key, value in settings.items():
        arguments += ["--set", f"{key}={value}"]
    result, seconds = _torchrun(arguments, work, plan.torchrun_timeout_s)
    row = TorchrunRow("torchrun -m rdd3d train", "none (world size 1)", result.returncode, seconds, "", FAIL)
    if result.returncode != 0:
        row.result = f"exit {result.returncode}: {_tail(result.stderr)}"
        return row
    problems = []
    if not (out / "last.pt").is_file():
        problems.append("no last.pt")
    else:
        detector, config = detector_from_checkpoint(out / "last.pt")  # refuses NaN/Inf weights
        if config.model.preset != "cp-voxel-xxs":
            problems.append(f"checkpoint of preset {config.model.preset}")
    steps = [record["step"] for record in read_log(out / "log.jsonl", "train")]
    if steps != list(range(1, frames // batch + 1)):
        problems.append(f"logged steps {steps}, expected 1..{frames // batch}")
    row.result = "; ".join(problems) or f"last.pt loads (finite weights), {len(steps)} steps logged"
    row.status = FAIL if problems else OK
    return row


def _process_group_run(plan: Plan, work: Path) -> TorchrunRow:
    report = work / "process_group.json"
    arguments = [str(Path(__file__).resolve()), "--process-group-probe", plan.process_group_backend,
                 "--probe-out", str(report)]
    result, seconds = _torchrun(arguments, work, plan.torchrun_timeout_s)
    row = TorchrunRow("torchrun process group", plan.process_group_backend, result.returncode, seconds, "", FAIL)
    if result.returncode != 0 or not report.is_file():
        row.result = f"exit {result.returncode}: {_tail(result.stderr)}"
        return row
    probe = json.loads(report.read_text(encoding="utf-8"))
    good = (probe["backend"] == plan.process_group_backend and probe["world_size"] == 1 and probe["all_reduce_ok"]
            and probe["ddp_ok"])
    row.result = ", ".join(f"{key}={value}" for key, value in probe.items())
    row.status = OK if good else FAIL
    return row


def process_group_probe(backend: str, out: Path) -> int:
    """Run by torchrun: join a ``backend`` process group, all-reduce, one DistributedDataParallel backward."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(backend=backend)
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        value = torch.full((4,), float(dist.get_rank() + 1), device=device)
        dist.all_reduce(value)
        world = dist.get_world_size()
        all_reduce_ok = bool(torch.all(value == world * (world + 1) / 2))
        torch.manual_seed(0)
        layer = nn.Linear(8, 4).to(device)
        expected_layer = nn.Linear(8, 4).to(device)
        expected_layer.load_state_dict(layer.state_dict())
        model = DistributedDataParallel(layer, device_ids=[local_rank] if device.type == "cuda" else None)
        inputs = torch.randn(16, 8, device=device)
        model(inputs).square().sum().backward()
        expected_layer(inputs).square().sum().backward()  # one rank: the averaged gradient is the local one
        ddp_ok = torch.allclose(layer.weight.grad, expected_layer.weight.grad, rtol=1e-5, atol=1e-6)
        result = {"backend": dist.get_backend(), "world_size": world, "all_reduce_ok": all_reduce_ok,
                  "ddp_ok": bool(ddp_ok)}
        if backend == "nccl":
            result["nccl"] = _nccl_version()
        write_json(out, result)
    finally:
        dist.destroy_process_group()
    return 0


def check_torchrun(plan: Plan) -> list[TorchrunRow]:
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp:
        return [_train_run(plan, Path(tmp)), _process_group_run(plan, Path(tmp))]


# ----------------------------------------------------------------------------- 5. throughput


@dataclass
class ThroughputRow:
    preset: str
    role: str  # teacher | student
    backend: str
    batch: int
    train_frames_per_s: float  # forward, loss, backward, AdamW; fp32
    inference_frames_per_s: float  # eval forward + decode (NMS), inference mode
    latency_ms: float  # one frame, eval forward + decode
    latency_vs_teacher: float | None  # a student's latency over its teacher's, where the teacher ran too
    peak_memory_mb: float | None
    status: str
    TABLE: ClassVar = (("preset", "preset", "s"), ("role", "role", "s"), ("backend", "backend", "s"),
                       ("batch", "batch", "d"), ("train f/s", "train_frames_per_s", ".2f"),
                       ("infer f/s", "inference_frames_per_s", ".2f"), ("latency ms", "latency_ms", ".1f"),
                       ("x teacher", "latency_vs_teacher", ".2f"), ("peak MB", "peak_memory_mb", ".0f"),
                       ("status", "status", "s"))


def _throughput_row(plan: Plan, preset: str, batch: DetectionBatch) -> ThroughputRow:
    _reset_memory(plan.device)
    torch.manual_seed(0)
    detector = build_detector(preset, plan.dataset).to(plan.device)
    trainee = DetectorTraining(detector).train()
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=1e-4)
    losses = []

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = sum(trainee(batch).values())
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    def infer(points) -> None:
        with torch.inference_mode():
            detector.decode(detector(points))

    train_s = _median_seconds(train_step, plan.device, plan.warmup, plan.steps)
    detector.eval()
    infer_s = _median_seconds(lambda: infer(batch.points), plan.device, plan.warmup, plan.steps)
    latency_s = _median_seconds(lambda: infer(batch.points[:1]), plan.device, plan.warmup, 2 * plan.steps)
    finite = all(math.isfinite(value) for value in losses)
    return ThroughputRow(preset, "teacher" if teacher_of(preset) == preset else "student",
                         _backend_name(preset, plan.dataset, "auto", plan.device), plan.batch, plan.batch / train_s,
                         plan.batch / infer_s, 1000 * latency_s, None, _peak_memory_mb(plan.device),
                         OK if finite else FAIL)


def check_throughput(plan: Plan) -> list[ThroughputRow]:
    batch = plan.frames.batch.to(plan.device)
    rows = [_throughput_row(plan, preset, batch) for preset in plan.presets]
    latency = {row.preset: row.latency_ms for row in rows}
    for row in rows:
        teacher = teacher_of(row.preset)
        if row.role == "student" and teacher in latency:
            row.latency_vs_teacher = row.latency_ms / latency[teacher]
    return rows


# ----------------------------------------------------------------------------- running and reporting


@dataclass
class Section:
    name: str
    title: str
    run: Callable[[Plan], list]


SECTIONS: dict[str, Section] = {section.name: section for section in (
    Section("sparse_backends", "1. spconv vs plain-PyTorch sparse backend (CP-Voxel teacher)", check_sparse_backends),
    Section("amp", "2. mixed-precision training steps (teacher, RDD distillation)", check_amp),
    Section("nms", "3. NMS on the device vs the CPU", check_nms),
    Section("torchrun", "4. one-GPU torchrun", check_torchrun),
    Section("throughput", "5. throughput and latency of the presets (nuScenes; synthetic in the dry-run)",
            check_throughput),
)}

NOTES = {
    "throughput": "SparseKD's A100 latency table is not in this repository's docs nor in ../shared/docs: "
                  "no reference column.",
    "torchrun": "rdd3d train forms no process group at world size 1; the process-group row is the one that "
                "runs the collective backend.",
}


def _cell(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def format_table(rows: Sequence) -> str:
    columns = rows[0].TABLE
    cells = [[header for header, _, _ in columns]]
    cells += [[_cell(getattr(row, name), spec) for _, name, spec in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def run_section(section: Section, plan: Plan) -> dict:
    """The section's record; an exception makes it FAIL with the error, and the run goes on."""
    print(f"\n== {section.title} ==", flush=True)
    start = time.perf_counter()
    rows, error = [], None
    try:
        rows = section.run(plan)
        if not rows:
            error = "the section produced no rows"
    except Exception as exception:  # noqa: BLE001 - recorded, then the next section runs
        error = f"{type(exception).__name__}: {exception}"
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    finally:
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    status = OK if error is None and all(row.status == OK for row in rows) else FAIL
    if rows:
        print(format_table(rows))
    if error:
        print(f"FAIL: {error}")
    if section.name in NOTES:
        print(f"note: {NOTES[section.name]}")
    seconds = time.perf_counter() - start
    print(f"-> {status} ({seconds:.1f} s)", flush=True)
    return {"name": section.name, "title": section.title, "status": status, "error": error, "seconds": seconds,
            "note": NOTES.get(section.name), "rows": [_plain(dataclasses.asdict(row)) for row in rows]}


def _plain(value):
    """JSON-safe: non-finite floats become None (their row is FAIL already)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - a torch built without NCCL
        return None
    return ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)


def _distribution_versions(prefix: str) -> dict[str, str]:
    return {dist.metadata["Name"]: dist.version for dist in importlib.metadata.distributions()
            if (dist.metadata["Name"] or "").lower().startswith(prefix)}


def environment(plan: Plan) -> dict:
    cuda = plan.device.type == "cuda"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": (torch.cuda.get_device_name(plan.device) if cuda
                   else f"CPU ({platform.processor() or platform.machine()})"),
        "device_type": plan.device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": _nccl_version() if cuda else None,
        "spconv": _distribution_versions("spconv") or None,
        "cumm": _distribution_versions("cumm") or None,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every section on the CPU at the smallest size (checks the script, measures nothing)")
    parser.add_argument("--out", type=Path, help=f"JSON report (default {DEFAULT_OUT}; {DRY_RUN_OUT} with --dry-run)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), help="run only these (default: all)")
    parser.add_argument("--presets", nargs="+", help="throughput presets (default: every nuScenes preset)")
    parser.add_argument("--batch", type=int, help="frames per training / inference batch (default 4; 2 dry-run)")
    parser.add_argument("--warmup", type=int, help="untimed steps (default 3; 1 dry-run)")
    parser.add_argument("--steps", type=int, help="timed steps, median reported (default 10; 1 dry-run)")
    parser.add_argument("--process-group-probe", help=argparse.SUPPRESS)  # run by torchrun: backend name
    parser.add_argument("--probe-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.process_group_probe:
        return process_group_probe(args.process_group_probe, args.probe_out)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_acceptance: no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda}). "
              "Run it on a GPU machine, or pass --dry-run to check the script on the CPU.", file=sys.stderr)
        return EXIT_NO_CUDA
    plan = Plan.of(args)
    out = args.out or REPO_ROOT / (DRY_RUN_OUT if plan.dry_run else DEFAULT_OUT)
    started = time.perf_counter()
    env = environment(plan)
    print(f"gpu acceptance{' (dry-run)' if plan.dry_run else ''} on {env['device']}: torch {env['torch']}, "
          f"CUDA {env['cuda']}, spconv {env['spconv']}", flush=True)
    sections = [run_section(SECTIONS[name], plan) for name in (args.sections or SECTIONS)]
    try:
        frames = plan.frames.source
    except Exception as error:  # noqa: BLE001 - the sections that needed the frames have recorded it
        frames = f"not loaded: {type(error).__name__}: {error}"
    status = OK if all(section["status"] == OK for section in sections) else FAIL
    report = {"script": "benchmarks/gpu_acceptance.py", "dry_run": plan.dry_run, "status": status,
              "environment": {**env, "frames": frames},
              "settings": {"dataset": plan.dataset, "presets": list(plan.presets), "batch": plan.batch,
                           "warmup": plan.warmup, "steps": plan.steps, "precisions": list(plan.precisions),
                           "forward_tolerance": FORWARD_TOLERANCE, "gradient_tolerance": GRADIENT_TOLERANCE,
                           "tolerance_floor_share": FLOOR_SHARE},
              "seconds": time.perf_counter() - started, "sections": sections}
    write_json(out, report)
    print(f"\n{status}: " + ", ".join(f"{s['name']} {s['status']}" for s in sections)
          + f" in {report['seconds']:.0f} s; wrote {out}", flush=True)
    return 0 if status == OK else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
