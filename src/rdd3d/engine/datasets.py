"""The datasets a run reads (``data.dataset``) and how each is scored and exported.

Each split is a :class:`~rdd3d.core.protocols.DetectionDataset`: frames with ``classes``, ``class_ranges``
and ``evaluation``: ``"nuscenes"`` (the synthetic world and nuScenes, mAP/NDS) or ``"kitti"`` (KITTI AP). Everything dataset-specific downstream of
the frames goes through :func:`evaluate`, :func:`summary_metrics` and :func:`write_predictions`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from rdd3d.data.collate import CachedFrames
from rdd3d.core.protocols import DetectionDataset
from rdd3d.core.types import Frame
from rdd3d.engine.config import DataConfig
from rdd3d.models.presets import list_datasets


def build_datasets(data: DataConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """The train and val splits ``data`` names (cached in memory when ``data.cache_in_memory``)."""
    if data.dataset not in list_datasets():
        raise ValueError(f"data.dataset={data.dataset!r}: expected one of {list_datasets()}")
    if data.dataset != "synthetic" and not data.root:
        raise ValueError(f"data.root is empty: data.dataset={data.dataset!r} needs the dataset's folder")
    if data.dataset == "synthetic":
        train, val = _synthetic(data)
    elif data.dataset == "nuscenes":
        train, val = _nuscenes(data)
    else:
        train, val = _kitti(data)
    if data.cache_in_memory:
        train, val = CachedFrames(train, "train"), CachedFrames(val, "val")
    return train, val


def _synthetic(data: DataConfig):
    from rdd3d.data.synthetic import SyntheticDataset
    from rdd3d.data.synthetic.disk import DiskDataset

    if data.root:
        return DiskDataset(data.root, "train"), DiskDataset(data.root, "val")
    return (SyntheticDataset("train", data.train_size, seed=data.seed, config=data.world),
            SyntheticDataset("val", data.val_size, seed=data.seed, config=data.world))


def _nuscenes(data: DataConfig):
    from rdd3d.data.nuscenes import NuScenesDataset

    options = data.nuscenes
    for name in ("train_info", "val_info"):
        if not getattr(options, name):
            raise ValueError(f"data.nuscenes.{name} is empty: give the info file `rdd3d nuscenes-infos` wrote")
    train = NuScenesDataset(options.train_info, data.root, options.max_sweeps, options.use_cbgs,
                            load_interval=options.load_interval, cbgs_seed=data.seed)
    # Validation keeps boxes without LiDAR points: the devkit filters by LiDAR + radar points itself.
    val = NuScenesDataset(options.val_info, data.root, options.max_sweeps, drop_empty_boxes=False)
    return train, val


def _kitti(data: DataConfig):
    from rdd3d.data.kitti import KittiDataset

    options = data.kitti
    return tuple(KittiDataset(data.root, split, fov_only=options.fov_only, on_missing=data.on_missing)
                 for split in (options.train_split, options.val_split))


def evaluate(dataset: DetectionDataset, frames: Sequence[Frame], detections: Sequence) -> Any:
    """The full result of ``dataset``'s metric (``NuScenesMetrics`` or ``KittiResult``: both have
    ``format_table()`` and ``to_dict()``)."""
    if dataset.evaluation == "kitti":
        from rdd3d.data.kitti import evaluate_kitti_frames

        return evaluate_kitti_frames(frames, detections)
    from rdd3d.evaluation.detection_metrics import evaluate_frames

    return evaluate_frames(frames, detections, dataset.class_ranges)


def summary_metrics(dataset: DetectionDataset, result) -> dict[str, float]:
    """The scalars logged and tabulated for a result of :func:`evaluate`; ``mAP`` is always there
    (KITTI: the mean moderate 3D AP R40 over the classes, as a fraction)."""
    if dataset.evaluation == "kitti":
        from rdd3d.data.kitti import kitti_summary

        return kitti_summary(result, dataset.classes.names)
    values = {"mAP": result.mean_ap, "NDS": result.nd_score}
    values.update({f"err/{name}": value for name, value in result.tp_errors.items()})
    values.update({f"AP/{name}": value for name, value in result.mean_dist_aps.items()})
    return values


def summary_metric_names(data: DataConfig) -> tuple[str, ...]:
    """The keys :func:`summary_metrics` gives for ``data.dataset`` (e.g. the names ``trainer.best_metric`` may
    take), known from the config alone: each dataset's class table is fixed (the synthetic world's, the
    nuScenes detection classes, KITTI's Car, Pedestrian and Cyclist)."""
    if data.dataset == "kitti":
        from rdd3d.data.kitti.dataset import DEFAULT_CLASSES

        return ("mAP", *(f"{kind}/{name}" for kind in ("AP", "AP_bev") for name in DEFAULT_CLASSES))
    if data.dataset == "nuscenes":
        from rdd3d.data.nuscenes.dataset import DEFAULT_CLASSES as classes
    else:
        from rdd3d.data.synthetic.catalog import CLASS_NAMES as classes
    from rdd3d.evaluation.nuscenes_metrics import TP_METRICS

    return ("mAP", "NDS", *(f"err/{name}" for name in TP_METRICS), *(f"AP/{name}" for name in classes))


def write_predictions(data: DataConfig, dataset: DetectionDataset, frames: Sequence[Frame], detections: Sequence,
                      path: str | os.PathLike, meta: Mapping | None = None) -> Path:
    """Write detections where the dataset's official tools read them: a nuScenes submission JSON in the
    global frame, a folder of KITTI result files, or (synthetic world) a submission-format JSON in the
    LiDAR frame that `rdd3d eval --results` scores against a `rdd3d simulate` folder."""
    path = Path(path)
    if data.dataset == "kitti":
        from rdd3d.data.kitti import write_kitti_results

        write_kitti_results(path, frames, detections)
    elif data.dataset == "nuscenes":
        from rdd3d.data.nuscenes import write_submission

        write_submission(path, frames, detections, meta=meta)
    else:
        from rdd3d.evaluation import nuscenes_io
        from rdd3d.evaluation.detection_metrics import detections_to_table, frame_metric_config

        config = frame_metric_config(dataset.class_ranges, dataset.classes.names)
        nuscenes_io.write_results(path, detections_to_table(frames, detections), config,
                                  {"use_lidar": True} if meta is None else meta)
    return path
