"""engine/datasets.py: which splits a DataConfig names, and each dataset's metric and export."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.data.synthetic.config import LidarConfig, WorldConfig
from rdd3d.engine.config import DataConfig
from rdd3d.engine.datasets import (
    DATASETS, build_datasets, evaluate, summary_metric_names, summary_metrics, write_predictions,
)
from rdd3d.evaluation import nuscenes_io
from rdd3d.evaluation.base import EVALUATIONS
from rdd3d.evaluation.detection_metrics import frame_metric_config
from rdd3d.models.heads import Detections
from rdd3d.models.presets import DATASETS as DETECTOR_SETUPS
from rdd3d.models.presets import list_datasets

SMALL_WORLD = WorldConfig(lidar=LidarConfig(beams=8, azimuth_resolution_deg=2.0), objects_per_scene=(3, 4),
                          distractors_per_scene=(0, 1))


def _ground_truth_as_detections(frames):
    return [Detections(torch.from_numpy(f.boxes.tensor), torch.ones(len(f.boxes)), torch.from_numpy(f.labels))
            for f in frames]


@pytest.mark.parametrize("data, message", [
    (DataConfig(dataset="waymo"), "data.dataset='waymo': expected one of"),
    (DataConfig(dataset="kitti"), "data.root is empty"),
    (DataConfig(dataset="nuscenes", root="/nowhere"), "data.nuscenes.train_info is empty"),
])
def test_a_bad_data_config_is_named(data, message):
    with pytest.raises(ValueError, match=message):
        build_datasets(data)


def test_every_dataset_has_detector_presets_and_a_registered_metric():
    assert tuple(DATASETS) == list_datasets() == ("nuscenes", "kitti", "synthetic")
    for name, dataset in DATASETS.items():
        assert dataset.classes(DataConfig(dataset=name)) == DETECTOR_SETUPS[name].classes, name  # the presets' order
        assert dataset.evaluation in EVALUATIONS, name
    assert summary_metric_names(DataConfig(dataset="kitti")) == (
        "mAP", "AP/Car", "AP/Pedestrian", "AP/Cyclist", "AP_bev/Car", "AP_bev/Pedestrian", "AP_bev/Cyclist")


def test_a_split_naming_an_unknown_metric_is_refused():
    _, val = build_datasets(DataConfig(train_size=1, val_size=1, world=SMALL_WORLD, cache_in_memory=False))
    val.evaluation = "waymo"
    with pytest.raises(KeyError, match="unknown evaluation 'waymo'; known: \\['nuscenes', 'kitti'\\]"):
        evaluate(val, [val[0]], _ground_truth_as_detections([val[0]]))


def test_synthetic_splits_are_cached_and_keep_their_metric():
    train, val = build_datasets(DataConfig(train_size=2, val_size=1, world=SMALL_WORLD))
    assert (len(train), len(val)) == (2, 1)
    assert val.evaluation == "nuscenes" and val.classes == SyntheticDataset("val", 1).classes
    uncached, _ = build_datasets(DataConfig(train_size=2, val_size=1, world=SMALL_WORLD, cache_in_memory=False))
    assert isinstance(uncached, SyntheticDataset)


def test_synthetic_ground_truth_scores_full_marks_and_exports_a_readable_submission(tmp_path):
    data = DataConfig(train_size=1, val_size=3, world=SMALL_WORLD)
    _, val = build_datasets(data)
    frames = [val[i] for i in range(len(val))]
    detections = _ground_truth_as_detections(frames)
    summary = summary_metrics(val, evaluate(val, frames, detections))
    present = set()  # classes with a box the metric keeps: seen by a point, within its class range
    for f in frames:
        distance = (f.boxes.centers[:, :2] ** 2).sum(axis=1) ** 0.5
        for label, count, far in zip(f.labels, f.metadata["num_points"], distance):
            name = f.classes.name(label)
            if count > 0 and far <= val.class_ranges[name]:
                present.add(name)
    assert present and summary["mAP"] == pytest.approx(len(present) / len(val.classes))  # AP 1 per class present
    assert set(summary) <= set(summary_metric_names(data))
    path = write_predictions(data, val, frames, detections, tmp_path / "results.json")
    table, meta = nuscenes_io.read_results(path, frame_metric_config(val.class_ranges, val.classes.names))
    assert meta == {"use_lidar": True} and len(table) == sum(len(f.boxes) for f in frames)


def test_the_synthetic_classes_come_from_the_world_config_and_a_disk_dataset_must_match(tmp_path):
    from rdd3d.core.config_loading import ConfigError
    from rdd3d.data.synthetic import simulate
    from rdd3d.engine.datasets import dataset_classes

    subset = dataclasses.replace(SMALL_WORLD, classes=("car", "barrier"))
    data = DataConfig(train_size=1, val_size=1, world=subset, cache_in_memory=False)
    assert dataset_classes(data) == ("car", "barrier")
    assert summary_metric_names(data)[-2:] == ("AP/car", "AP/barrier")
    train, val = build_datasets(data)
    assert train.classes.names == val.classes.names == ("car", "barrier")
    simulate(tmp_path / "subset", train_size=1, val_size=1, config=subset, progress=False)
    from_disk = DataConfig(root=str(tmp_path / "subset"), world=subset, cache_in_memory=False)
    assert build_datasets(from_disk)[0].classes.names == ("car", "barrier")
    with pytest.raises(ConfigError, match=r"dataset.json has the classes \['car', 'barrier'\], data.world.classes is "
                                          r"\['car', 'truck'"):
        build_datasets(DataConfig(root=str(tmp_path / "subset"), cache_in_memory=False))
