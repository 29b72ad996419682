"""The datasets a run reads (``data.dataset``), one :data:`DATASETS` entry each, and how each is scored and
exported.

Each split is a :class:`~rdd3d.core.protocols.DetectionDataset`: frames with ``classes``, ``class_ranges``
and ``evaluation``, the name of its metric in :data:`rdd3d.evaluation.base.EVALUATIONS` (``"nuscenes"``: the
synthetic world and nuScenes, mAP/NDS; ``"kitti"``: KITTI AP). Everything dataset-specific downstream of the
frames goes through :func:`evaluate`, :func:`summary_metrics`, :func:`write_predictions` and each entry's
``read_predictions`` (what `rdd3d show --results` draws).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rdd3d.core.config_loading import ConfigError
from rdd3d.core.protocols import DetectionDataset
from rdd3d.core.registry import Registry
from rdd3d.core.types import Detections, Frame
from rdd3d.data.collate import CachedFrames
from rdd3d.data.kitti import DEFAULT_CLASSES as KITTI_DEFAULT_CLASSES
from rdd3d.data.kitti import KittiDataset
from rdd3d.data.nuscenes import DEFAULT_CLASSES as NUSCENES_DEFAULT_CLASSES
from rdd3d.data.nuscenes import NuScenesDataset
from rdd3d.data.synthetic import DiskDataset, SyntheticDataset
from rdd3d.engine.config import DataConfig
from rdd3d.evaluation import nuscenes_io
from rdd3d.evaluation.base import EVALUATIONS, MetricResult
# Importing the modules that define the metrics registers them in EVALUATIONS.
from rdd3d.evaluation.detection_metrics import detections_from_table, detections_to_table, frame_metric_config
from rdd3d.evaluation.kitti_predictions import read_kitti_results, write_kitti_results
from rdd3d.evaluation.nuscenes_export import detections_from_global, write_submission

#: (path, split, frames, detections, submission meta or None) -> nothing; writes the dataset's result files.
PredictionWriter = Callable[[Path, DetectionDataset, Sequence[Frame], Sequence[Any], Mapping | None], None]
#: (path, split, frames) -> one Detections per frame in its LiDAR frame: what a PredictionWriter wrote there.
PredictionReader = Callable[[Path, DetectionDataset, Sequence[Frame]], list[Detections]]


@dataclass(frozen=True)
class Dataset:
    """A dataset a run may read: how its splits are built, its fixed class table, its metric, its result files."""

    name: str  # what data.dataset names
    splits: Callable[[DataConfig], tuple[DetectionDataset, DetectionDataset]]  # train and val, from the run's data
    classes: Callable[[DataConfig], tuple[str, ...]]  # the class table of its splits, in label order
    evaluation: str  # the EVALUATIONS entry its splits name
    write_predictions: PredictionWriter
    read_predictions: PredictionReader
    needs_root: bool = True  # data.root must name the dataset's folder


#: Every dataset a run may read, each registered after the function that builds its splits.
DATASETS: Registry[Dataset] = Registry("dataset")


def build_datasets(data: DataConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """The train and val splits ``data`` names (cached in memory when ``data.cache_in_memory``)."""
    if data.dataset not in DATASETS:
        raise ValueError(f"data.dataset={data.dataset!r}: expected one of {tuple(DATASETS)}")
    dataset = DATASETS[data.dataset]
    if dataset.needs_root and not data.root:
        raise ValueError(f"data.root is empty: data.dataset={data.dataset!r} needs the dataset's folder")
    train, val = dataset.splits(data)
    if data.cache_in_memory:
        train, val = CachedFrames(train, "train"), CachedFrames(val, "val")
    return train, val


def _nuscenes(data: DataConfig):
    options = data.nuscenes
    for name in ("train_info", "val_info"):
        if not getattr(options, name):
            raise ValueError(f"data.nuscenes.{name} is empty: give the info file `rdd3d nuscenes-infos` wrote")
    train = NuScenesDataset(options.train_info, data.root, options.max_sweeps, options.use_cbgs,
                            load_interval=options.load_interval, cbgs_seed=data.seed, data_prefix=options.data_prefix)
    # Validation keeps boxes without LiDAR points: the devkit filters by LiDAR + radar points itself.
    val = NuScenesDataset(options.val_info, data.root, options.max_sweeps, drop_empty_boxes=False,
                          data_prefix=options.data_prefix)
    return train, val


DATASETS.register(Dataset(
    "nuscenes", _nuscenes, lambda data: NUSCENES_DEFAULT_CLASSES, NuScenesDataset.evaluation,
    lambda path, split, frames, detections, meta: write_submission(path, frames, detections, meta=meta),
    lambda path, split, frames: detections_from_global(nuscenes_io.read_results(path)[0], frames),
))


def _kitti(data: DataConfig):
    options = data.kitti
    return tuple(KittiDataset(data.root, split, fov_only=options.fov_only, on_missing=data.on_missing)
                 for split in (options.train_split, options.val_split))


DATASETS.register(Dataset(
    "kitti", _kitti, lambda data: KITTI_DEFAULT_CLASSES, KittiDataset.evaluation,
    lambda path, split, frames, detections, meta: write_kitti_results(path, frames, detections),
    lambda path, split, frames: read_kitti_results(path, frames),
))


def _synthetic(data: DataConfig):
    if data.root:
        splits = DiskDataset(data.root, "train"), DiskDataset(data.root, data.val_split)
        # The run's models were built for data.world.classes when its config loaded (no file is read then).
        if splits[0].classes.names != data.world.classes:
            raise ConfigError(f"data.root {data.root}: its dataset.json has the classes {list(splits[0].classes.names)}, "
                              f"data.world.classes is {list(data.world.classes)}: set data.world.classes to the "
                              "dataset's classes")
        return splits
    return (SyntheticDataset("train", data.train_size, seed=data.seed, config=data.world),
            SyntheticDataset(data.val_split, data.val_size, seed=data.seed, config=data.world))


def _write_synthetic(path: Path, split: DetectionDataset, frames: Sequence[Frame], detections: Sequence[Any],
                     meta: Mapping | None) -> None:
    """A submission-format JSON in the LiDAR frame, which `rdd3d eval --results` scores against a
    `rdd3d simulate` folder."""
    config = frame_metric_config(split.class_ranges, split.classes.names)
    nuscenes_io.write_results(path, detections_to_table(frames, detections), config,
                              {"use_lidar": True} if meta is None else meta)


def _read_synthetic(path: Path, split: DetectionDataset, frames: Sequence[Frame]) -> list[Detections]:
    """What :func:`_write_synthetic` wrote, back as detections."""
    config = frame_metric_config(split.class_ranges, split.classes.names)
    return detections_from_table(nuscenes_io.read_results(path, config)[0], frames, config.class_names)


DATASETS.register(Dataset(
    "synthetic", _synthetic, lambda data: data.world.classes, SyntheticDataset.evaluation, _write_synthetic,
    _read_synthetic, needs_root=False,
))


def dataset_classes(data: DataConfig) -> tuple[str, ...]:
    """The class table of ``data``'s splits, in label order, known from the config alone: the synthetic world's
    ``data.world.classes``, the nuScenes detection classes, KITTI's Car, Pedestrian and Cyclist."""
    return DATASETS[data.dataset].classes(data)


def evaluate(dataset: DetectionDataset, frames: Sequence[Frame], detections: Sequence) -> MetricResult:
    """The full result of ``dataset``'s metric (``NuScenesMetrics`` or ``KittiResult``: both have
    ``format_table()`` and ``to_dict()``)."""
    return EVALUATIONS[dataset.evaluation].evaluate(dataset, frames, detections)


def summary_metrics(dataset: DetectionDataset, result) -> dict[str, float]:
    """The scalars logged and tabulated for a result of :func:`evaluate`; ``mAP`` is always there
    (KITTI: the mean moderate 3D AP R40 over the classes, as a fraction)."""
    return EVALUATIONS[dataset.evaluation].summary(result, dataset.classes.names)


def summary_metric_names(data: DataConfig) -> tuple[str, ...]:
    """The keys :func:`summary_metrics` gives for ``data.dataset`` (e.g. the names ``trainer.best_metric`` may
    take), known from the config alone (:func:`dataset_classes`)."""
    return EVALUATIONS[DATASETS[data.dataset].evaluation].summary_names(dataset_classes(data))


def write_predictions(data: DataConfig, dataset: DetectionDataset, frames: Sequence[Frame], detections: Sequence,
                      path: str | os.PathLike, meta: Mapping | None = None) -> Path:
    """Write detections where the dataset's official tools read them: a nuScenes submission JSON in the
    global frame, a folder of KITTI result files, or (synthetic world) a submission-format JSON in the
    LiDAR frame that `rdd3d eval --results` scores against a `rdd3d simulate` folder."""
    path = Path(path)
    DATASETS[data.dataset].write_predictions(path, dataset, frames, detections, meta)
    return path
