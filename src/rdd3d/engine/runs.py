"""Whole runs assembled from a :class:`RunConfig`: data, model, trainer, evaluation."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from rdd3d.data.collate import TrainingFrames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.engine.config import RunConfig
from rdd3d.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from rdd3d.engine.config_loading import config_from_dict, save_config
from rdd3d.engine.detection_task import DetectorTraining, evaluate_detector, summary_metrics
from rdd3d.engine.distributed import broadcast_from_main, init_distributed, shutdown_distributed
from rdd3d.engine.trainer import Trainer, TrainingResult, seed_everything
from rdd3d.models.presets import build_detector

SUPPORTED_DATASETS = ("synthetic",)


def build_datasets(config: RunConfig):
    if config.data.dataset not in SUPPORTED_DATASETS:
        raise ValueError(f"data.dataset={config.data.dataset!r}: expected one of {SUPPORTED_DATASETS}")
    train = SyntheticDataset("train", config.data.train_size, seed=config.data.seed, config=config.data.world)
    val = SyntheticDataset("val", config.data.val_size, seed=config.data.seed, config=config.data.world)
    return train, val


def train_detector(config: RunConfig, resume: str | None = None) -> TrainingResult:
    """Train ``config.model.preset``; ``resume`` is a checkpoint path or ``"last"``."""
    context = init_distributed(config.device)
    try:
        seed_everything(config.trainer.seed, config.trainer.deterministic)
        train_set, val_set = build_datasets(config)
        detector = build_detector(config.model.preset, dataset=config.data.dataset, **config.model.overrides)
        frames = TrainingFrames(train_set, detector.point_cloud_range, config.data.augmentation,
                                seed=config.trainer.seed)
        max_frames = config.eval.max_frames or len(val_set)
        val_frames = [val_set[i] for i in range(min(max_frames, len(val_set)))]

        def evaluate(trainee, context):
            metrics = evaluate_detector(trainee.detector, val_frames, val_set.class_ranges, context,
                                        config.eval.batch_size)
            return broadcast_from_main(summary_metrics(metrics) if metrics is not None else None, context)

        output_dir = Path(config.output_dir)
        if context.is_main:
            save_config(config, output_dir / "config.yaml")
        trainer = Trainer(DetectorTraining(detector), frames, config.trainer, config.optim, output_dir, context,
                          evaluate=evaluate, run_config=_plain(config))
        if resume is not None:
            trainer.resume(output_dir / Trainer.LAST if resume == "last" else Path(resume))
        return trainer.fit()
    finally:
        shutdown_distributed()


def detector_from_checkpoint(path: str | Path, device: str = "cpu"):
    """The detector a ``rdd3d train`` checkpoint holds, with the run config that built it."""
    state = load_checkpoint(path, map_location=device)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint of rdd3d (no 'config'/'model' entries)")
    config = config_from_dict(RunConfig, state["config"], source=f"{path} (stored config)")
    detector = build_detector(config.model.preset, dataset=config.data.dataset, **config.model.overrides)
    prefix = "detector."
    weights = {key[len(prefix):]: value for key, value in state["model"].items() if key.startswith(prefix)}
    load_model_state(detector, weights, source=str(path))
    return detector.to(device).eval(), config


def _plain(config: RunConfig) -> dict:
    """The config as plain containers (what a ``weights_only`` checkpoint may hold)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
