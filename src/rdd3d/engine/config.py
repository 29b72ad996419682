"""The one configuration schema of a training run (``rdd3d train``), as typed dataclasses.

Load it with :func:`load_run_config` from YAML files and ``--set key.path=value`` overrides; an
unknown or misspelt key is an error naming it (with the closest valid key).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from rdd3d.core.config_loading import build_config, require
from rdd3d.data.nuscenes.mmdet3d import MMDET3D_DATA_PREFIX
from rdd3d.data.synthetic.config import WorldConfig
from rdd3d.data.synthetic.dataset import EVALUATION_SPLITS
from rdd3d.data.transforms import AugmentationConfig
from rdd3d.distill.methods import DistillConfig
from rdd3d.engine.trainer import OptimConfig, TrainerConfig
from rdd3d.models.detector import DetectorConfig
from rdd3d.models.presets import preset_config


@dataclass
class NuScenesDataConfig:
    """``data.dataset: nuscenes``: info files of `rdd3d nuscenes-infos` (or mmdetection3d's ``.pkl``)."""

    train_info: str = ""  # e.g. data/nuscenes/nuscenes_infos_train.json
    val_info: str = ""
    max_sweeps: int = 10  # LiDAR sweeps merged per frame, the keyframe included (CenterPoint)
    use_cbgs: bool = True  # class-balanced grouping and sampling of the training samples
    load_interval: int = 1  # keep every k-th training sample
    # mmdetection3d .pkl infos only: where their point files lie, as its data_prefix says it, folders relative to
    # data.root: pts (keyframes), sweeps; a key not given takes mmdetection3d's nuScenes default
    # (samples/LIDAR_TOP, sweeps/LIDAR_TOP); "" is data.root itself
    data_prefix: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.max_sweeps >= 1, "data.nuscenes.max_sweeps", ">= 1 (the keyframe counts)", self.max_sweeps)
        require(self.load_interval >= 1, "data.nuscenes.load_interval", ">= 1", self.load_interval)
        require(set(self.data_prefix) <= set(MMDET3D_DATA_PREFIX), "data.nuscenes.data_prefix",
                f"a mapping of {sorted(MMDET3D_DATA_PREFIX)} to folders", self.data_prefix)


@dataclass
class KittiDataConfig:
    """``data.dataset: kitti``: the standard layout (training/velodyne, label_2, calib, ImageSets)."""

    train_split: str = "train"  # ImageSets/<split>.txt
    val_split: str = "val"
    fov_only: bool = True  # keep the points seen by camera 2, as KITTI is labelled


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | nuscenes | kitti
    # synthetic: a folder written by `rdd3d simulate` (empty: generate frames on the fly);
    # nuscenes: the dataroot; kitti: the folder holding training/ and ImageSets/
    root: str = ""
    # kitti: a sample whose LiDAR, calib or label file is absent: error | skip (nuScenes decides this when
    # its infos are built: `rdd3d nuscenes-infos --on-missing`)
    on_missing: str = "error"
    cache_in_memory: bool = True  # read every frame once, before training (off for real datasets)
    train_size: int = 600  # frames per epoch (on-the-fly generation only)
    val_size: int = 100
    # synthetic: the split the evaluation frames come from, "val" (where settings are tuned) or "test" (held out
    # for reported tables: a benchmark plan reports there); frames depend on (seed, split, index), so the
    # splits never share a scene
    val_split: str = "val"
    seed: int = 0  # the world's seed (which scenes); not the training seed
    world: WorldConfig = field(default_factory=WorldConfig)
    nuscenes: NuScenesDataConfig = field(default_factory=NuScenesDataConfig)
    kitti: KittiDataConfig = field(default_factory=KittiDataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    def __post_init__(self) -> None:
        require(self.on_missing in ("error", "skip"), "data.on_missing", "'error' or 'skip'", self.on_missing)
        for name in ("train_size", "val_size"):
            require(getattr(self, name) >= 1, f"data.{name}", ">= 1", getattr(self, name))
        require(self.seed >= 0, "data.seed", ">= 0", self.seed)
        require(self.val_split in EVALUATION_SPLITS, "data.val_split", f"one of {EVALUATION_SPLITS}", self.val_split)


@dataclass
class ModelConfig:
    preset: str = "cp-voxel"
    # Fields of the preset's detector config to replace, e.g. {"head.head_channels": 32};
    # checked against that config when the run's config is loaded.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    max_frames: int = 0  # evaluate on the first N validation frames; 0 = all
    batch_size: int = 4

    def __post_init__(self) -> None:
        require(self.max_frames >= 0, "eval.max_frames", ">= 0 (0: all)", self.max_frames)
        require(self.batch_size >= 1, "eval.batch_size", ">= 1", self.batch_size)


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
                "auto, cpu, cuda or cuda:N", self.device)
        from rdd3d.engine.datasets import DATASETS, summary_metric_names  # it imports DataConfig from here

        require(self.data.dataset in DATASETS, "data.dataset", f"one of {tuple(DATASETS)}", self.data.dataset)
        # Checked now, not when the first evaluation after hours of training looks the metric up.
        names = summary_metric_names(self.data)
        require(self.trainer.best_metric in names, "trainer.best_metric",
                f"a metric of data.dataset={self.data.dataset!r}: one of {list(names)}", self.trainer.best_metric)
        # The data's classes are the detector's (labels index both): they are chosen once, in the data config.
        require("classes" not in self.model.overrides, "model.overrides",
                "free of 'classes' (the detector's classes are the data's: data.world.classes for the synthetic "
                "world)", dict(self.model.overrides))
        # The detector is checked with the config, not when the model is built after the data has loaded.
        try:
            self.detector_config()
        except ValueError as error:
            raise ValueError(f"model (preset {self.model.preset!r}, data.dataset {self.data.dataset!r}): "
                             f"{error}") from None

    def detector_config(self) -> DetectorConfig:
        """The detector this run trains: ``model.preset`` on the run's dataset, restricted to its classes
        (``data.world.classes`` of the synthetic world), with ``model.overrides`` applied."""
        from rdd3d.engine.datasets import dataset_classes  # it imports DataConfig from here

        return preset_config(self.model.preset, self.data.dataset, class_subset=dataset_classes(self.data),
                             **self.model.overrides)


def load_run_config(files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = ()) -> RunConfig:
    return build_config(RunConfig, files, overrides)
