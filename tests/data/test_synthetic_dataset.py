"""The synthetic dataset: determinism, splits, classes and sizes, labels and point counts, config checks."""

import numpy as np
import pytest

from rdd3d.data.synthetic import (
    CLASS_NAMES, CLASS_RANGES, CLASS_SPECS, GROUND, POINT_COLUMNS, LidarConfig, SyntheticDataset, WorldConfig,
    sample_scene,
)
from rdd3d.data.synthetic.lidar import Scan

SMALL = WorldConfig(lidar=LidarConfig(beams=16, azimuth_resolution_deg=1.0), objects_per_scene=(6, 10),
                    distractors_per_scene=(6, 10))


def _same(a, b) -> bool:
    return (a.frame_id == b.frame_id and np.array_equal(a.points.points, b.points.points)
            and np.array_equal(a.boxes.tensor, b.boxes.tensor) and np.array_equal(a.labels, b.labels)
            and np.array_equal(a.metadata["num_points"], b.metadata["num_points"]))


def test_frames_are_deterministic_and_independent_of_access_order():
    first = SyntheticDataset("train", 6, seed=3, config=SMALL)
    forward = [first[i] for i in (1, 4)]
    second = SyntheticDataset("train", 6, seed=3, config=SMALL)
    backward = [second[i] for i in (5, 4, 1)]
    assert _same(forward[0], backward[2]) and _same(forward[1], backward[1])
    assert _same(first[-1], backward[0])


def test_splits_and_seeds_give_different_frames():
    train = SyntheticDataset("train", 2, seed=0, config=SMALL)[0]
    val = SyntheticDataset("val", 2, seed=0, config=SMALL)[0]
    other_seed = SyntheticDataset("train", 2, seed=1, config=SMALL)[0]
    assert not np.array_equal(train.boxes.tensor, val.boxes.tensor)
    assert not np.array_equal(train.boxes.tensor, other_seed.boxes.tensor)
    assert val.frame_id == "val_000000"


def test_frame_contract():
    dataset = SyntheticDataset("val", 3, config=SMALL)
    frame = dataset[2]
    assert len(dataset) == 3 and dataset.classes.names == CLASS_NAMES
    assert set(dataset.class_ranges) == set(CLASS_NAMES) and dataset.class_ranges is CLASS_RANGES
    assert frame.points.columns == POINT_COLUMNS and frame.points.points.dtype == np.float32
    assert frame.boxes.tensor.shape == (len(frame.labels), 9)
    assert set(np.unique(frame.points.column("time_lag"))) == {0.0, np.float32(SMALL.lidar.sweep_interval)}
    with pytest.raises(IndexError):
        dataset[3]


def test_num_points_counts_key_sweep_points_inside_each_box():
    dataset = SyntheticDataset("train", 2, config=SMALL)
    scene, sweeps = dataset.scene(1)
    frame = dataset[1]
    key = sweeps.points[:, 4] == 0
    # per box: the key-sweep points that hit the object itself, range noise included, all lie inside it
    for row, actor in enumerate(scene.box_owner):
        assert frame.boxes.select([row]).contains_points(sweeps.points[key & (sweeps.owner == actor), :3]).all()
    inside = frame.boxes.contains_points(frame.points.xyz[frame.points.column("time_lag") == 0])
    np.testing.assert_array_equal(frame.metadata["num_points"], inside.sum(axis=0))
    assert isinstance(sweeps, Scan) and (sweeps.owner == GROUND).any()


def test_every_class_appears_with_sizes_from_its_distribution():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(WorldConfig(), rng) for _ in range(4)]
    boxes = np.concatenate([s.boxes for s in scenes])
    labels = np.concatenate([s.labels for s in scenes])
    assert set(labels) == set(range(len(CLASS_NAMES)))
    for label, name in enumerate(CLASS_NAMES):
        spec = CLASS_SPECS[name]
        dims = boxes[labels == label, 3:6]
        margin = 2 * WorldConfig().lidar.range_noise_bound  # boxes hold the noisy returns too
        assert (np.abs(dims - margin - spec.mean_size) <= 2 * np.asarray(spec.std_size) + 1e-6).all(), name
        speed = np.hypot(boxes[labels == label, 7], boxes[labels == label, 8])
        assert ((speed == 0) | ((speed >= spec.speed_range[0] - 1e-6) & (speed <= spec.speed_range[1] + 1e-6))).all()
        heading = np.stack([np.cos(boxes[labels == label, 6]), np.sin(boxes[labels == label, 6])], axis=1)
        np.testing.assert_allclose(boxes[labels == label, 7:9], heading * speed[:, None], atol=1e-9)
    assert (np.hypot(boxes[:, 0], boxes[:, 1]) <= WorldConfig().scene_radius + 1e-6).all()


def test_default_world_is_within_the_point_budget():
    frame = SyntheticDataset("train", 1)[0]
    assert 20_000 <= len(frame.points) <= 45_000
    assert len(frame.boxes) >= WorldConfig().objects_per_scene[0] // 2


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="objects_per_scene"):
        WorldConfig(objects_per_scene=(10, 5))
    with pytest.raises(ValueError, match="class_weights"):
        WorldConfig(class_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="lidar.dropout"):
        LidarConfig(dropout=1.5)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        SyntheticDataset("dev")
    assert WorldConfig(lidar={"beams": 8}).lidar == LidarConfig(beams=8)


def test_a_class_subset_places_only_those_classes_and_labels_index_it():
    config = WorldConfig(classes=("car", "barrier"), objects_per_scene=(20, 20))
    dataset = SyntheticDataset("train", 4, config=config)
    assert dataset.classes.names == ("car", "barrier")
    labels = np.concatenate([dataset.scene(i)[0].labels for i in range(4)])
    sizes = np.concatenate([dataset.scene(i)[0].boxes[:, 3] for i in range(4)])
    assert set(labels) == {0, 1}
    # Labels index the subset: car lengths about 4.6 m, barrier lengths about 2.5 m.
    assert sizes[labels == 0].min() > 3.5 and sizes[labels == 1].max() < 3.6
    # The class weights are renormalised over the chosen classes (car 0.28 : barrier 0.12).
    assert 0.5 < (labels == 0).mean() < 0.9
    frame = dataset[0]
    assert frame.classes == dataset.classes and frame.labels.max() < 2


def test_the_default_classes_are_the_catalog_and_a_subset_is_checked():
    assert WorldConfig().classes == CLASS_NAMES
    with pytest.raises(ValueError, match="WorldConfig.classes"):
        WorldConfig(classes=("car", "bike"))
    with pytest.raises(ValueError, match="WorldConfig.classes.*in that order"):
        WorldConfig(classes=("barrier", "car"))
    with pytest.raises(ValueError, match="WorldConfig.classes"):
        WorldConfig(classes=())
    # A chosen class with weight 0 would be in the class table but never placed.
    with pytest.raises(ValueError, match=r"class_weights.*\['bus'\] have 0"):
        WorldConfig(classes=("car", "bus"), class_weights=(1, 1, 0, 1, 1, 1, 1))
    assert WorldConfig(classes=("car",), class_weights=(1, 0, 0, 0, 0, 0, 0)).classes == ("car",)
