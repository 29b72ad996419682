"""Whole runs assembled from a :class:`RunConfig`: data, model(s), trainer, evaluation.

``train_detector`` trains ``config.model.preset`` on its own (a teacher, or a student without KD);
``distill_student`` trains it under a frozen teacher with ``config.distill.method``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import torch
from omegaconf import OmegaConf
from torch import nn

from rdd3d.data.collate import TrainingFrames
from rdd3d.data.gt_sampling import GroundTruthSampler
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.methods import build_method
from rdd3d.core.checkpoint import CheckpointError, load_checkpoint, load_model_state
from rdd3d.engine.config import RunConfig
from rdd3d.core.config_loading import ConfigError, config_from_dict, save_config
from rdd3d.engine.datasets import build_datasets
from rdd3d.engine.detection_task import DetectorTraining, evaluate_detector
from rdd3d.engine.distributed import (
    DistributedContext, broadcast_from_main, init_distributed, shutdown_distributed,
)
from rdd3d.engine.trainer import Trainer, TrainingResult, seed_everything
from rdd3d.models.init_from_teacher import init_student_from_teacher
from rdd3d.models.detector import Detector
from rdd3d.models.heads import CenterHeadConfig
from rdd3d.models.presets import teacher_of

#: Where the trained detector's weights sit inside each kind of trainee's state dict.
DETECTOR_PREFIXES = ("detector.", "student.")

log = logging.getLogger(__name__)


def build_model(config: RunConfig) -> nn.Module:
    return Detector(config.detector_config())


def train_detector(config: RunConfig, resume: str | None = None) -> TrainingResult:
    """Train ``config.model.preset`` alone; ``resume`` is a checkpoint path or ``"last"``."""
    return _run(config, resume, lambda context: DetectorTraining(build_model(config)))


def distill_student(config: RunConfig, resume: str | None = None) -> TrainingResult:
    """Train the student ``config.model.preset`` from the teacher ``config.distill.teacher_checkpoint``."""
    if config.distill.method == "none":
        return train_detector(config, resume)
    if not config.distill.teacher_checkpoint:
        raise ValueError("distill.teacher_checkpoint is empty: give the teacher's checkpoint (--teacher)")
    check_teacher(config)
    return _run(config, resume, lambda context: distillation_trainee(config, context.device))


def check_teacher(config: RunConfig) -> None:
    """Before any data loads: the teacher checkpoint holds a detector of the student's dataset, classes and yaw
    code (exit 2 otherwise). A teacher of another family than the student's preset is allowed and said: the methods pair the
    two models through their own grids, but the paper and the presets' defaults assume one family."""
    path = config.distill.teacher_checkpoint
    state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint of rdd3d (no 'config'/'model' entries)")
    teacher = config_from_dict(RunConfig, state["config"], source=f"{path} (stored config)")
    if teacher.data.dataset != config.data.dataset:
        raise ConfigError(f"distill.teacher_checkpoint {path}: the teacher was trained on "
                          f"data.dataset={teacher.data.dataset!r}, the student trains on {config.data.dataset!r}")
    teacher_detector, student_detector = teacher.detector_config(), config.detector_config()
    if teacher_detector.classes != student_detector.classes:
        raise ConfigError(f"distill.teacher_checkpoint {path}: the teacher detects {list(teacher_detector.classes)}, "
                          f"the student {list(student_detector.classes)}: their labels must agree (data.world.classes "
                          "of the synthetic world)")
    teacher_head, student_head = teacher_detector.head, student_detector.head
    if (isinstance(teacher_head, CenterHeadConfig) and isinstance(student_head, CenterHeadConfig)
            and teacher_head.half_period_classes != student_head.half_period_classes):
        # Methods that compare the two heads' box codes (pp-logit's regression) would compare unlike yaw codes.
        raise ConfigError(f"distill.teacher_checkpoint {path}: the teacher codes the yaw of "
                          f"{list(teacher_head.half_period_classes)} modulo π, the student (model.overrides "
                          f"head.half_period_classes) of {list(student_head.half_period_classes)}: make them agree")
    student_family, teacher_family = teacher_of(config.model.preset), teacher_of(teacher.model.preset)
    if teacher_family != student_family:
        log.warning("teacher %s is a %s (%s family); the student %s belongs to the %s family, whose teacher the "
                    "presets and docs/distillation.md assume: a cross-family pair", path, teacher.model.preset,
                    teacher_family, config.model.preset, student_family)


def distillation_trainee(config: RunConfig, device) -> Distiller:
    """The frozen teacher, the student and the method's losses, wrapped for training.

    The student is built first, from the freshly seeded generator exactly as a no-KD run builds it, and
    the teacher and the losses are built on a forked generator: a distilled run and the no-KD run of
    the same seed start from the same student weights, so a benchmark's rows differ by their
    distillation only, not by their initialisation.
    """
    student = build_model(config)
    with torch.random.fork_rng(devices=[]):
        teacher, _ = detector_from_checkpoint(config.distill.teacher_checkpoint, device)
        if config.distill.init_from_teacher:
            init_student_from_teacher(student, teacher.state_dict())
        losses = build_method(config.distill, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    return Distiller(teacher, student, losses, teacher_precision=config.distill.teacher_precision)


def _run(config: RunConfig, resume: str | None, make_trainee: Callable[[DistributedContext], nn.Module]):
    last = Path(config.output_dir) / Trainer.LAST
    checkpoint = None if resume is None else (last if resume == "last" else Path(resume))
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise CheckpointError(f"--resume {checkpoint}: checkpoint not found")
        check_resumable(checkpoint, config)  # before anything is loaded or config.yaml rewritten
    context = init_distributed(config.device)
    trainee = None
    try:
        seed_everything(config.trainer.seed, config.trainer.deterministic)
        train_set, val_set = build_datasets(config.data)
        trainee = make_trainee(context)
        detector = _trained_detector(trainee)
        _check_flips(config, detector.point_cloud_range)
        frames = TrainingFrames(train_set, detector.point_cloud_range, config.data.augmentation,
                                seed=config.trainer.seed, gt_sampler=_gt_sampler(config, train_set, detector))
        max_frames = config.eval.max_frames or len(val_set)
        val_frames = [val_set[i] for i in range(min(max_frames, len(val_set)))]

        def evaluate(trainee, context):
            summary = evaluate_detector(_trained_detector(trainee), val_frames, val_set, context,
                                        config.eval.batch_size)
            return broadcast_from_main(summary, context)

        output_dir = Path(config.output_dir)
        if context.is_main:
            save_config(plain_config(config), output_dir / "config.yaml")
        trainer = Trainer(trainee, frames, config.trainer, config.optim, output_dir, context,
                          evaluate=evaluate, run_config=plain_config(config))
        if checkpoint is not None:
            trainer.resume(checkpoint)
        return trainer.fit()
    finally:
        if isinstance(trainee, Distiller):
            trainee.close()  # the student leaves as a plain detector, without the taps' hooks
        shutdown_distributed()


def _check_flips(config: RunConfig, point_cloud_range) -> None:
    """A flip must keep the scene inside the detector's range. KITTI's is x in [0, 70.4] (the camera's
    view): mirroring x would move every point and box of the flipped frames out of it, silently."""
    x0, y0, _, x1, y1, _ = point_cloud_range
    augmentation = config.data.augmentation
    for flag, axis, low, high in (("flip_y", "x", x0, x1), ("flip_x", "y", y0, y1)):
        if getattr(augmentation, flag) and low != -high:
            raise ConfigError(f"data.augmentation.{flag}=true mirrors {axis} -> -{axis}, out of the detector's "
                              f"{axis} range [{low}, {high}] (data.dataset={config.data.dataset!r}): "
                              f"set data.augmentation.{flag}=false")


def _gt_sampler(config: RunConfig, train_set, detector: nn.Module) -> GroundTruthSampler | None:
    sampling = config.data.augmentation.gt_sampling
    if not sampling.enabled:
        return None
    return GroundTruthSampler(sampling, train_set.classes, detector.config.point_columns)


def _trained_detector(trainee: nn.Module) -> nn.Module:
    return trainee.student if isinstance(trainee, Distiller) else trainee.detector


def detector_from_checkpoint(path: str | Path, device="cpu"):
    """The trained detector a ``rdd3d train`` or ``rdd3d distill`` checkpoint holds, with its run config."""
    state = load_checkpoint(path, map_location=device)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint of rdd3d (no 'config'/'model' entries)")
    config = config_from_dict(RunConfig, state["config"], source=f"{path} (stored config)")
    detector = build_model(config)
    prefix = next((p for p in DETECTOR_PREFIXES if any(key.startswith(p) for key in state["model"])), None)
    if prefix is None:
        raise CheckpointError(f"{path}: holds no detector weights (no key starts with {DETECTOR_PREFIXES})")
    weights = {key[len(prefix):]: value for key, value in state["model"].items() if key.startswith(prefix)}
    load_model_state(detector, weights, source=str(path))
    return detector.to(device).eval(), config


def config_differences(stored: Mapping, planned: Mapping, prefix: str = "") -> list[str]:
    """``key: stored -> planned`` for every leaf that differs between two plain config trees."""
    differences = []
    for key in sorted(set(stored) | set(planned), key=str):
        old, new = stored.get(key, "<absent>"), planned.get(key, "<absent>")
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return differences


def stored_config_differences(state: Mapping, config: RunConfig, source: str) -> list[str]:
    """``key: stored -> now`` for every setting in which ``config`` differs from the one a checkpoint
    ``state`` stores. The stored one is read through today's schema, so a key added since (at its default)
    is no difference."""
    stored = plain_config(config_from_dict(RunConfig, state.get("config", {}), source=f"{source} (stored config)"))
    return config_differences(stored, plain_config(config))


#: Settings a resumed run may change: where and how it runs, logs and checkpoints, not what it trains.
RESUMABLE_CHANGES = ("output_dir", "device", "trainer.log_interval", "trainer.checkpoint_interval",
                     "trainer.num_workers", "trainer.adaptive_threads", "eval.batch_size")


def check_resumable(checkpoint: Path, config: RunConfig) -> None:
    """Refuse to resume ``checkpoint`` under a config that would train something else: the optimiser and the
    one-cycle schedule continue as they were built, so a new ``optim.lr`` or ``trainer.epochs`` would be
    written into the run's config while the run went on with the old ones. The one exception: more
    ``trainer.epochs`` extend a run that has finished (the trainer starts a new schedule for them)."""
    state = load_checkpoint(checkpoint)
    differences = [difference for difference in stored_config_differences(state, config, source=str(checkpoint))
                   if difference.split(":", 1)[0] not in RESUMABLE_CHANGES]
    if any(difference.startswith("trainer.epochs:") for difference in differences):
        stored_epochs = int(state.get("config", {}).get("trainer", {}).get("epochs", -1))
        finished = state["epoch"] == stored_epochs and not state.get("evaluation_pending", False)
        if not finished or config.trainer.epochs < stored_epochs:
            raise ConfigError(
                f"--resume {checkpoint}: trainer.epochs {stored_epochs} -> {config.trainer.epochs}: only a finished "
                f"run can be extended, to more epochs (this checkpoint is at epoch {state['epoch']}"
                f"{', its evaluation pending' if state.get('evaluation_pending') else ''}); resume it unchanged "
                "first, then extend it")
        differences = [d for d in differences if not d.startswith("trainer.epochs:")]
    if differences:
        raise ConfigError(f"--resume {checkpoint}: the run was configured otherwise ({'; '.join(differences[:5])}"
                          f"{'; ...' if len(differences) > 5 else ''}); a resumed run continues as it was "
                          f"configured: drop those changes, or start a new run in another output_dir")


def plain_config(config: RunConfig) -> dict:
    """The config as plain containers (what a ``weights_only`` checkpoint may hold), as a run stores it:
    only the chosen distillation method's options (reading it back fills the others' defaults)."""
    plain = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    for block in config.distill.unused_blocks():
        del plain["distill"][block]
    return plain


class TrainedRun(NamedTuple):
    checkpoint: Path
    steps: int | None  # optimiser steps (None for a given teacher checkpoint)
    reused: bool  # found finished, not trained now


def train_or_reuse(config: RunConfig) -> TrainedRun:
    """Train ``config``'s run unless its folder already holds it finished; resume an interrupted one.

    A folder holding a run of another config is an error (listing the differences), never overwritten.
    """
    output_dir = Path(config.output_dir)
    last = output_dir / Trainer.LAST
    resume = None
    if last.is_file():
        state = load_checkpoint(last)
        differences = stored_config_differences(state, config, source=str(last))
        if differences:
            raise ConfigError(f"{output_dir} holds a run of another config ({'; '.join(differences[:5])}); "
                              f"delete that folder or point the benchmark elsewhere (--out; teachers_dir for teachers)")
        finished = state["epoch"] == config.trainer.epochs and state["step_in_epoch"] == 0
        if finished and not state.get("evaluation_pending", False):
            return TrainedRun(last, state["step"], reused=True)
        resume = "last"
    else:
        (output_dir / "log.jsonl").unlink(missing_ok=True)  # a run killed before its first checkpoint
    train = distill_student if config.distill.method != "none" else train_detector
    return TrainedRun(last, train(config, resume=resume).step, reused=False)
