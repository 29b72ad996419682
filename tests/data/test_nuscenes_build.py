"""build_infos, NuScenesDataset and the submission export end to end on a tiny fake nuScenes dataroot.

The dataroot (``data/nuscenes_support.py``) is written in the devkit's table format: two scenes (one
of v1.0-mini's mini_train, one of its mini_val), each 11 LiDAR sweeps 0.05 s apart with keyframes at
sweeps 0, 5 and 10, a moving ego and a tilted, rotated LiDAR. Expected values are computed with the
devkit's own geometry (pyquaternion, ``transform_matrix``, ``Box``), independently of rdd3d's.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes")
from nuscenes.eval.common.utils import quaternion_yaw  # noqa: E402
from nuscenes.utils.data_classes import Box  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

from rdd3d.data.io import PointFileError  # noqa: E402
from rdd3d.data.nuscenes import NuScenesDataset, build_infos, read_infos  # noqa: E402
from rdd3d.evaluation.nuscenes_export import submission_from_detections, write_submission  # noqa: E402
from rdd3d.evaluation.nuscenes_io import evaluate_results_file, load_nuscenes_ground_truth  # noqa: E402
from rdd3d.core.types import Detections  # noqa: E402

from data.nuscenes_support import (  # noqa: E402
    CLOSE_POINT, LIDAR_ROTATION, LIDAR_TRANSLATION, OBJECTS, SCENES, SWEEP_STEP_US, VERSION, ego_pose, file_name,
    global_to_lidar, object_centre, write_fake_dataroot,
)


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nuscenes")
    write_fake_dataroot(root)
    return root


@pytest.fixture(scope="module")
def built(dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp("infos")
    return build_infos(dataroot, VERSION, out, max_sweeps=7), out


def writable_copy(dataroot: Path, tmp_path: Path) -> Path:
    root = tmp_path / "nuscenes"
    shutil.copytree(dataroot, root)
    return root


def test_one_file_per_split_with_every_keyframe(built):
    report, out = built
    assert report.files == {"mini_train": out / "nuscenes_infos_mini_train.json",
                            "mini_val": out / "nuscenes_infos_mini_val.json"}
    assert report.samples == {"mini_train": 3, "mini_val": 3}
    assert report.dropped_annotations == 1  # the animal: no detection class
    infos = read_infos(report.files["mini_val"])
    assert (infos.version, infos.split) == (VERSION, "mini_val")
    assert [s.token for s in infos.samples] == [f"scene-0103-sample-{k}" for k in range(3)]
    assert [s.scene_name for s in infos.samples] == ["scene-0103"] * 3
    assert infos.samples[1].lidar_path == file_name("scene-0103", 5)
    assert infos.samples[1].timestamp == pytest.approx((SCENES["scene-0103"]["start"] + 5 * SWEEP_STEP_US) / 1e6)


def test_sweeps_newest_first_with_time_lags_and_max_sweeps(built):
    report, _ = built
    samples = read_infos(report.files["mini_val"]).samples
    assert [len(s.sweeps) for s in samples] == [0, 5, 7]  # all earlier sweeps, at most max_sweeps=7
    last = samples[2].sweeps
    assert [s.lidar_path for s in last] == [file_name("scene-0103", step) for step in range(9, 2, -1)]
    assert [s.time_lag for s in last] == pytest.approx([0.05 * n for n in range(1, 8)])
    assert last[4].lidar_path.startswith("samples/")  # the previous keyframe is a sweep too


def test_sweep_transforms_map_sweep_lidar_to_key_lidar(built):
    report, _ = built
    sample = read_infos(report.files["mini_val"]).samples[2]
    key_from_global = global_to_lidar("scene-0103", 10)
    for n, sweep in enumerate(sample.sweeps, start=1):
        expected = key_from_global @ np.linalg.inv(global_to_lidar("scene-0103", 10 - n))
        np.testing.assert_allclose(sweep.sweep_to_key, expected, atol=1e-9)


def test_boxes_in_key_lidar_frame_with_class_velocity_attribute_and_points(built):
    report, _ = built
    samples = read_infos(report.files["mini_val"]).samples
    translation, rotation = ego_pose("scene-0103", 5)
    gt = samples[1].gt
    assert gt.names == ("car", "pedestrian", "barrier")
    assert gt.attributes == ("vehicle.moving", "pedestrian.standing", "")
    assert gt.num_lidar_pts.tolist() == [40, 12, 6] and gt.num_radar_pts.tolist() == [3, 0, 0]
    for row, obj in enumerate(o for o in OBJECTS if o["scene"] == "scene-0103" and 1 in o["keys"]):
        box = Box(object_centre(obj, 1), obj["size"], Quaternion(axis=[0, 0, 1], angle=obj["yaw"]),
                  velocity=(*obj["velocity"], 0.0))
        box.translate(-np.array(translation))
        box.rotate(rotation.inverse)
        box.translate(-np.array(LIDAR_TRANSLATION))
        box.rotate(LIDAR_ROTATION.inverse)
        np.testing.assert_allclose(gt.boxes[row, :3], box.center, atol=1e-9)
        np.testing.assert_allclose(gt.boxes[row, 3:6], [obj["size"][1], obj["size"][0], obj["size"][2]])  # l w h
        assert math.remainder(gt.boxes[row, 6] - quaternion_yaw(box.orientation), 2 * math.pi) == pytest.approx(0, abs=1e-9)
        if obj["keys"] != (1,):  # annotated more than once: the devkit estimates a velocity
            np.testing.assert_allclose(gt.velocity[row], box.velocity[:2], atol=1e-6)
    assert np.linalg.norm(gt.velocity[0]) == pytest.approx(math.hypot(4, 2), rel=1e-3)  # car: mostly in-plane
    assert gt.velocity_valid.tolist() == [True, True, False]  # the barrier is annotated once: NaN velocity
    assert gt.velocity[2].tolist() == [0.0, 0.0]


def test_dataset_merges_sweeps_into_the_key_frame(built, dataroot):
    report, _ = built
    dataset = NuScenesDataset(report.files["mini_val"], dataroot, max_sweeps=10)
    frame = dataset[2]
    assert frame.frame_id == "scene-0103-sample-2" and frame.points.columns == (
        "x", "y", "z", "intensity", "time_lag")
    steps = frame.points.column("intensity").astype(int)  # each file's points carry its sweep index
    assert sorted(set(steps.tolist())) == list(range(3, 11))  # keyframe 10 and all 7 stored sweeps (of 9 wanted)
    # a static point seen from every sweep lands on one spot of the key frame
    marker = (global_to_lidar("scene-0103", 10) @ np.array([*SCENES["scene-0103"]["marker"], 1.0]))[:3]
    rows = np.flatnonzero(np.abs(frame.points.xyz - marker).max(axis=1) < 1e-3)
    assert sorted(steps[rows].tolist()) == list(range(3, 11))
    np.testing.assert_allclose(frame.points.column("time_lag"), (10 - steps) * 0.05, atol=1e-6)
    # the roof point survives only in the keyframe (CenterPoint's remove_close on sweeps)
    assert int((np.abs(frame.points.xyz - CLOSE_POINT).max(axis=1) < 1e-5).sum()) == 1
    assert len(frame.points) == 3 + 7 * 2
    fewer = NuScenesDataset(report.files["mini_val"], dataroot, max_sweeps=3)[2]  # the keyframe and 2 sweeps
    assert sorted(set(fewer.points.column("intensity").astype(int).tolist())) == [8, 9, 10]


def test_dataset_boxes_labels_and_metadata(built, dataroot):
    report, _ = built
    training = NuScenesDataset(report.files["mini_val"], dataroot)
    validation = NuScenesDataset(report.files["mini_val"], dataroot, drop_empty_boxes=False)
    assert training.evaluation == "nuscenes"
    assert training.class_ranges["car"] == 50 and training.class_ranges["traffic_cone"] == 30
    first, last = validation[0], validation[2]
    names = [validation.classes.name(label) for label in first.labels]
    assert names == ["car", "pedestrian", "truck"]
    assert first.metadata["num_points"].tolist() == [43, 12, 3]  # LiDAR + radar: the devkit's num_pts
    assert [training.classes.name(label) for label in training[0].labels] == ["car", "pedestrian"]  # truck: 0 LiDAR
    assert len(training[2].boxes) == len(last.boxes) - 1  # the cone has no points at all
    assert first.boxes.has_velocity
    assert first.metadata["sample_token"] == "scene-0103-sample-0"
    np.testing.assert_allclose(first.metadata["pose"].lidar2global, np.linalg.inv(global_to_lidar("scene-0103", 0)),
                               atol=1e-9)


def test_export_round_trip_scores_perfect_against_the_devkit_ground_truth(built, dataroot, tmp_path):
    report, _ = built
    dataset = NuScenesDataset(report.files["mini_val"], dataroot, drop_empty_boxes=False)
    frames = [dataset[i] for i in range(len(dataset))]
    detections = [_as_detections(frame) for frame in frames]
    submission = submission_from_detections(frames, detections)
    assert sorted(submission["results"]) == [f"scene-0103-sample-{k}" for k in range(3)]
    car = submission["results"]["scene-0103-sample-1"][0]
    assert car["detection_name"] == "car" and car["attribute_name"] == "vehicle.moving"
    np.testing.assert_allclose(car["translation"], object_centre(OBJECTS[3], 1), atol=1e-4)
    np.testing.assert_allclose(car["velocity"], OBJECTS[3]["velocity"], atol=1e-3)
    np.testing.assert_allclose(car["size"], OBJECTS[3]["size"], atol=1e-5)
    path = tmp_path / "results.json"
    write_submission(path, frames, detections)
    metrics = evaluate_results_file(path, load_nuscenes_ground_truth(dataroot, VERSION, "mini_val"))
    for name in ("car", "pedestrian", "barrier", "truck"):
        assert metrics.mean_dist_aps[name] == pytest.approx(1.0), name
    errors = metrics.label_tp_errors
    # Boxes in the tilted LiDAR frame keep only a yaw: the 0.02 rad tilt costs ~tilt^2 of heading going there and back.
    assert errors["car"]["trans_err"] < 1e-4 and errors["car"]["orient_err"] < 1e-3
    assert errors["car"]["vel_err"] < 1e-2 and errors["car"]["scale_err"] < 1e-5
    assert errors["car"]["attr_err"] == 0 and errors["pedestrian"]["attr_err"] == 0
    assert errors["truck"]["attr_err"] == 0  # no velocity estimate: parked


def _as_detections(frame) -> Detections:
    return Detections(torch.from_numpy(frame.boxes.tensor), torch.ones(len(frame.boxes)),
                      torch.from_numpy(frame.labels))


def test_missing_table_is_an_error_naming_it(dataroot, tmp_path):
    root = writable_copy(dataroot, tmp_path)
    (root / VERSION / "sample_annotation.json").unlink()
    with pytest.raises(FileNotFoundError, match="sample_annotation.json"):
        build_infos(root, VERSION, tmp_path)
    with pytest.raises(FileNotFoundError, match="v1.0-trainval"):
        build_infos(root, "v1.0-trainval", tmp_path)


def test_missing_lidar_files_error_or_are_skipped_and_counted(dataroot, tmp_path, caplog):
    root = writable_copy(dataroot, tmp_path)
    (root / file_name("scene-0103", 4)).unlink()  # a sweep of samples 1 and 2
    (root / file_name("scene-0061", 5)).unlink()  # keyframe of sample 1, a sweep of sample 2
    with pytest.raises(FileNotFoundError, match="LIDAR_TOP__1532402927250000"):
        build_infos(root, VERSION, tmp_path / "strict")
    with caplog.at_level(logging.WARNING):
        report = build_infos(root, VERSION, tmp_path / "lenient", max_sweeps=10, on_missing="skip")
    assert report.skipped_samples == 1 and report.skipped_sweeps == 3
    assert report.samples == {"mini_train": 2, "mini_val": 3}
    assert "skipped 1 keyframes and 3 sweeps" in caplog.text
    val = read_infos(report.files["mini_val"]).samples
    assert [len(s.sweeps) for s in val] == [0, 4, 9]
    assert file_name("scene-0103", 4) not in [s.lidar_path for s in val[2].sweeps]


def test_gzip_infos_read_back_identical(dataroot, built, tmp_path):
    report, _ = built
    packed = build_infos(dataroot, VERSION, tmp_path, max_sweeps=7, compress=True)
    assert packed.files["mini_val"].name == "nuscenes_infos_mini_val.json.gz"
    plain, zipped = read_infos(report.files["mini_val"]).samples, read_infos(packed.files["mini_val"]).samples
    assert [s.token for s in zipped] == [s.token for s in plain]
    np.testing.assert_array_equal(zipped[2].gt.boxes, plain[2].gt.boxes)
    np.testing.assert_array_equal(zipped[2].sweeps[3].sweep_to_key, plain[2].sweeps[3].sweep_to_key)


def test_missing_point_file_at_load_names_it(built, dataroot, tmp_path):
    report, _ = built
    root = writable_copy(dataroot, tmp_path)
    (root / file_name("scene-0103", 7)).unlink()
    dataset = NuScenesDataset(report.files["mini_val"], root)
    with pytest.raises(PointFileError, match="LIDAR_TOP__1533151603350000"):
        dataset[2]
