"""build_infos, NuScenesDataset and the submission export end to end on a tiny fake nuScenes dataroot.

The dataroot is written here in the devkit's table format: two scenes (one of v1.0-mini's
mini_train, one of its mini_val), each 11 LiDAR sweeps 0.05 s apart with keyframes at sweeps 0, 5
and 10, a moving ego and a tilted, rotated LiDAR. Expected values are computed with the devkit's
own geometry (pyquaternion, ``transform_matrix``, ``Box``), independently of rdd3d's.
"""

from __future__ import annotations

import json
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
from nuscenes.utils.geometry_utils import transform_matrix  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

from rdd3d.data.io import PointFileError  # noqa: E402
from rdd3d.data.nuscenes import (  # noqa: E402
    NuScenesDataset, build_infos, read_infos, submission_from_detections, write_submission,
)
from rdd3d.evaluation.nuscenes_io import evaluate_results_file, load_nuscenes_ground_truth  # noqa: E402
from rdd3d.models.heads.prediction import Detections  # noqa: E402

VERSION = "v1.0-mini"
SWEEP_STEP_US = 50_000  # 20 Hz LiDAR
KEY_EVERY = 5  # a keyframe every 5 sweeps (0.25 s)
NUM_SWEEPS = 11  # per scene: keyframes at sweeps 0, 5, 10
LIDAR_TRANSLATION = [0.94, 0.0, 1.84]
LIDAR_ROTATION = Quaternion(axis=[0, 0, 1], angle=-math.pi / 2) * Quaternion(axis=[1, 0, 0], angle=0.02)
SCENES = {  # name (a mini split scene) -> start time (us), ego start (x, y), a static global marker point
    "scene-0061": dict(start=1_532_402_927_000_000, origin=(100.0, 50.0), marker=(110.0, 60.0, 1.0)),
    "scene-0103": dict(start=1_533_151_603_000_000, origin=(300.0, 50.0), marker=(310.0, 60.0, 1.0)),
}
# Annotated objects: scene, category, keyframe indices, global centre at t=0, velocity, yaw, size (w, l, h),
# attribute, LiDAR and radar points.
OBJECTS = [
    dict(scene="scene-0061", category="vehicle.car", keys=(0, 1, 2), at=(115, 52, 1.0), velocity=(5, 1), yaw=0.3,
         size=(1.9, 4.5, 1.6), attribute="vehicle.moving", lidar=30, radar=2),
    dict(scene="scene-0061", category="animal", keys=(1,), at=(120, 45, 0.4), velocity=(0, 0), yaw=0.0,
         size=(0.5, 1.0, 0.6), attribute="", lidar=5, radar=0),
    dict(scene="scene-0061", category="vehicle.bus.rigid", keys=(0, 1), at=(130, 40, 1.5), velocity=(0, 0),
         yaw=1.0, size=(2.9, 11.0, 3.5), attribute="vehicle.stopped", lidar=100, radar=4),
    dict(scene="scene-0103", category="vehicle.car", keys=(0, 1, 2), at=(315, 55, 0.9), velocity=(4, -2),
         yaw=-0.5, size=(1.8, 4.4, 1.5), attribute="vehicle.moving", lidar=40, radar=3),
    dict(scene="scene-0103", category="human.pedestrian.adult", keys=(0, 1, 2), at=(305, 58, 0.9),
         velocity=(0, 0), yaw=2.0, size=(0.7, 0.8, 1.8), attribute="pedestrian.standing", lidar=12, radar=0),
    dict(scene="scene-0103", category="movable_object.barrier", keys=(1,), at=(320, 62, 0.5), velocity=(0, 0),
         yaw=0.7, size=(2.5, 0.5, 1.0), attribute="", lidar=6, radar=0),
    dict(scene="scene-0103", category="movable_object.trafficcone", keys=(2,), at=(312, 47, 0.4), velocity=(0, 0),
         yaw=0.1, size=(0.4, 0.4, 0.8), attribute="", lidar=0, radar=0),
    dict(scene="scene-0103", category="vehicle.truck", keys=(0,), at=(325, 40, 1.6), velocity=(0, 0), yaw=-2.5,
         size=(2.5, 7.0, 3.0), attribute="vehicle.parked", lidar=0, radar=3),
]
CLOSE_POINT = (0.5, -0.4, 0.1)  # in every sweep's own LiDAR frame: on the ego's roof
FAR_POINT = (20.0, 5.0, 0.0)


def ego_pose(scene: str, step: int) -> tuple[list[float], Quaternion]:
    """The ego pose (translation, rotation) at sweep ``step``: driving at (8, 3) m/s, turning at 0.2 rad/s."""
    t = step * SWEEP_STEP_US / 1e6
    x0, y0 = SCENES[scene]["origin"]
    return [x0 + 8 * t, y0 + 3 * t, 0.2], Quaternion(axis=[0, 0, 1], angle=0.4 + 0.2 * t)


def global_to_lidar(scene: str, step: int) -> np.ndarray:
    translation, rotation = ego_pose(scene, step)
    ego2global = transform_matrix(translation, rotation)
    lidar2ego = transform_matrix(LIDAR_TRANSLATION, LIDAR_ROTATION)
    return np.linalg.inv(ego2global @ lidar2ego)


def file_name(scene: str, step: int) -> str:
    folder = "samples" if step % KEY_EVERY == 0 else "sweeps"
    return f"{folder}/LIDAR_TOP/{scene}__LIDAR_TOP__{SCENES[scene]['start'] + step * SWEEP_STEP_US}.pcd.bin"


def object_centre(obj: dict, key: int) -> list[float]:
    t = key * KEY_EVERY * SWEEP_STEP_US / 1e6
    return [obj["at"][0] + obj["velocity"][0] * t, obj["at"][1] + obj["velocity"][1] * t, obj["at"][2]]


def write_fake_dataroot(root: Path) -> None:
    tables: dict[str, list] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log", "scene",
        "sample", "sample_data", "sample_annotation", "map")}
    categories = sorted({obj["category"] for obj in OBJECTS})
    tables["category"] = [{"token": f"cat-{c}", "name": c, "description": ""} for c in categories]
    attributes = ["vehicle.moving", "vehicle.stopped", "vehicle.parked", "pedestrian.standing"]
    tables["attribute"] = [{"token": f"attr-{a}", "name": a, "description": ""} for a in attributes]
    tables["visibility"] = [{"token": "4", "level": "v80-100", "description": ""}]
    tables["sensor"] = [{"token": "sensor-lidar", "channel": "LIDAR_TOP", "modality": "lidar"}]
    tables["calibrated_sensor"] = [{"token": "cs-lidar", "sensor_token": "sensor-lidar", "translation": LIDAR_TRANSLATION,
                                    "rotation": list(LIDAR_ROTATION.elements), "camera_intrinsic": []}]
    (root / "maps").mkdir(parents=True)
    (root / "maps" / "fake.png").write_bytes(b"")  # the devkit only checks that the map file exists
    tables["map"] = [{"token": "map", "log_tokens": [f"log-{s}" for s in SCENES], "category": "semantic_prior",
                      "filename": "maps/fake.png"}]
    for scene, spec in SCENES.items():
        tables["log"].append({"token": f"log-{scene}", "logfile": scene, "vehicle": "n015",
                              "date_captured": "2018-07-24", "location": "singapore-onenorth"})
        keys = [f"{scene}-sample-{k}" for k in range(NUM_SWEEPS // KEY_EVERY + 1)]
        tables["scene"].append({"token": f"scene-token-{scene}", "log_token": f"log-{scene}", "nbr_samples": len(keys),
                                "first_sample_token": keys[0], "last_sample_token": keys[-1], "name": scene,
                                "description": ""})
        for k, token in enumerate(keys):
            tables["sample"].append({"token": token, "timestamp": spec["start"] + k * KEY_EVERY * SWEEP_STEP_US,
                                     "prev": keys[k - 1] if k else "", "next": keys[k + 1] if k + 1 < len(keys) else "",
                                     "scene_token": f"scene-token-{scene}"})
        marker = np.array([*spec["marker"], 1.0])
        for step in range(NUM_SWEEPS):
            translation, rotation = ego_pose(scene, step)
            timestamp = spec["start"] + step * SWEEP_STEP_US
            tables["ego_pose"].append({"token": f"ego-{scene}-{step}", "timestamp": timestamp,
                                       "rotation": list(rotation.elements), "translation": translation})
            tables["sample_data"].append({
                "token": f"sd-{scene}-{step}", "sample_token": keys[-(-step // KEY_EVERY)],
                "ego_pose_token": f"ego-{scene}-{step}", "calibrated_sensor_token": "cs-lidar",
                "timestamp": timestamp, "fileformat": "pcd", "is_key_frame": step % KEY_EVERY == 0, "height": 0,
                "width": 0, "filename": file_name(scene, step), "prev": f"sd-{scene}-{step - 1}" if step else "",
                "next": f"sd-{scene}-{step + 1}" if step + 1 < NUM_SWEEPS else ""})
            marker_here = (global_to_lidar(scene, step) @ marker)[:3]
            points = np.array([[*marker_here, step, 0], [*CLOSE_POINT, step, 1], [*FAR_POINT, step, 2]], "<f4")
            path = root / file_name(scene, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(points.tobytes())
    for index, obj in enumerate(OBJECTS):
        tokens = [f"ann-{index}-{k}" for k in obj["keys"]]
        for position, (k, token) in enumerate(zip(obj["keys"], tokens)):
            tables["sample_annotation"].append({
                "token": token, "sample_token": f"{obj['scene']}-sample-{k}", "instance_token": f"instance-{index}",
                "visibility_token": "4", "attribute_tokens": [f"attr-{obj['attribute']}"] if obj["attribute"] else [],
                "translation": object_centre(obj, k), "size": list(obj["size"]),
                "rotation": list(Quaternion(axis=[0, 0, 1], angle=obj["yaw"]).elements),
                "prev": tokens[position - 1] if position else "",
                "next": tokens[position + 1] if position + 1 < len(tokens) else "",
                "num_lidar_pts": obj["lidar"], "num_radar_pts": obj["radar"]})
        tables["instance"].append({"token": f"instance-{index}", "category_token": f"cat-{obj['category']}",
                                   "nbr_annotations": len(tokens), "first_annotation_token": tokens[0],
                                   "last_annotation_token": tokens[-1]})
    (root / VERSION).mkdir()
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows))


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
