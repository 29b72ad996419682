"""Submission files: validation errors, conversions, and the whole path against the devkit's
``DetectionEval`` on a miniature nuScenes database written by the test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rdd3d.evaluation.nuscenes_io import (
    boxes_from_results, evaluate_results_file, load_nuscenes_ground_truth, quaternion_yaw, read_results,
    table_from_eval_boxes, table_to_eval_boxes, write_results,
)
from rdd3d.evaluation.nuscenes_metrics import TP_METRICS, detection_cvpr_2019

pytest.importorskip("nuscenes")
from nuscenes.eval.common.config import config_factory  # noqa: E402
from nuscenes.eval.common.utils import quaternion_yaw as devkit_quaternion_yaw  # noqa: E402
from nuscenes.eval.detection.evaluate import DetectionEval  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

CONFIG = detection_cvpr_2019()


def _box(token: str = "s1", **changes) -> dict:
    box = {"sample_token": token, "translation": [1.0, 2.0, 0.5], "size": [1.8, 4.2, 1.5],
           "rotation": [1.0, 0.0, 0.0, 0.0], "velocity": [0.5, 0.0], "detection_name": "car",
           "detection_score": 0.7, "attribute_name": "vehicle.moving"}
    box.update(changes)
    return box


def _write(tmp_path: Path, payload, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize("box, message", [
    ({k: v for k, v in _box().items() if k != "size"}, r"results.json\['s1'\]\[0\]: missing field 'size'"),
    (_box(detection_name="van"),
     r"1 of 2 boxes have a detection_name .* \['van'\] \(the first: \['s1'\]\[0\]\); its classes: \['car', 'truck'"),
    (_box(translation=[1.0, float("nan"), 0.0]), r"\[0\]: field 'translation' holds NaN"),
    (_box(rotation=[1.0, 0.0, 0.0]), r"field 'rotation' must be a list of 4 numbers"),
    (_box(size=[1.0, 0.0, 1.0]), r"field 'size' must be positive"),
    (_box(velocity=[float("inf"), 0.0]), r"field 'velocity' holds NaN or infinity"),
    (_box(detection_score="high"), r"field 'detection_score' must be a finite number"),
    (_box(attribute_name="vehicle.flying"), r"field 'attribute_name' is 'vehicle.flying'"),
    (_box(token="s2"), r"field 'sample_token' is 's2' but the box is listed under sample 's1'"),
    (_box(translation=[[1.0, 2.0, 3.0]]), r"field 'translation' must be a list of 3 numbers"),
])
def test_bad_boxes_name_sample_box_and_field(tmp_path: Path, box: dict, message: str) -> None:
    path = _write(tmp_path, {"meta": {}, "results": {"s0": [_box("s0")], "s1": [box]}})
    with pytest.raises(ValueError, match=message):
        read_results(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_results(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="malformed JSON at line 2"):
        read_results(_write(tmp_path, '{"meta": {},\n "results": {"s1": [}'))
    with pytest.raises(ValueError, match="missing top-level field 'results'"):
        read_results(_write(tmp_path, {"meta": {}}))
    with pytest.raises(ValueError, match="field 'meta'"):
        read_results(_write(tmp_path, {"results": {}}))
    with pytest.raises(ValueError, match=r"results.json\['s1'\]: expected a list of boxes"):
        read_results(_write(tmp_path, {"meta": {}, "results": {"s1": {}}}))
    with pytest.raises(ValueError, match="sample 's1' has 501 predictions"):
        read_results(_write(tmp_path, {"meta": {}, "results": {"s1": [_box()] * 501}}))
    mixed = {"meta": {}, "results": {"s1": [_box(ego_translation=[1.0, 2.0, 0.0]), _box()]}}
    with pytest.raises(ValueError, match=r"\[1\]: missing field 'ego_translation' \(once one box has"):
        read_results(_write(tmp_path, mixed))


def test_nan_velocity_means_unknown(tmp_path: Path) -> None:
    boxes, _ = read_results(_write(tmp_path, {"meta": {}, "results": {"s1": [_box(velocity=[math.nan, 1.0])]}}))
    assert np.isnan(boxes.velocity[0, 0]) and boxes.velocity[0, 1] == 1.0


def test_ground_truth_sample_without_results_entry_is_an_error(tmp_path: Path) -> None:
    gt = {"results": {"s1": [_box(num_pts=3)], "s2": []}}
    results = {"meta": {}, "results": {"s1": [_box()]}}
    with pytest.raises(ValueError, match="no entry for ground-truth sample 's2'"):
        evaluate_results_file(_write(tmp_path, results), _write(tmp_path, gt, "gt.json"))
    with pytest.raises(ValueError, match=r"gt.json\['s1'\]\[0\]: missing field 'num_pts'"):
        evaluate_results_file(_write(tmp_path, results), _write(tmp_path, {"results": {"s1": [_box()]}}, "gt.json"))


def test_quaternion_yaw_equals_devkit() -> None:
    rotations = np.random.default_rng(0).normal(size=(200, 4)) * np.r_[1, 0.3, 0.3, 1]
    expected = [devkit_quaternion_yaw(Quaternion(q)) for q in rotations]
    np.testing.assert_allclose(quaternion_yaw(rotations), expected, atol=1e-12)


def test_round_trips_through_files_and_devkit_boxes(tmp_path: Path) -> None:
    results = {"s1": [_box(), _box(detection_name="barrier", attribute_name="", rotation=[0.6, 0.0, 0.0, 0.8])],
               "s2": []}
    table = boxes_from_results(results, CONFIG)
    write_results(tmp_path / "written.json", table, CONFIG, {"use_lidar": True})
    from_file, meta = read_results(tmp_path / "written.json")
    from_devkit = table_from_eval_boxes(table_to_eval_boxes(table, CONFIG), CONFIG)
    assert meta == {"use_lidar": True}
    for back in (from_file, from_devkit):
        assert back.sample_tokens == ("s1", "s2")
        for name in ("translation", "size", "yaw", "velocity", "label", "score", "attribute", "sample"):
            np.testing.assert_allclose(getattr(back, name), getattr(table, name), atol=1e-12, err_msg=name)


# --- a miniature nuScenes database -----------------------------------------------------------------

CATEGORIES = ["vehicle.car", "vehicle.truck", "human.pedestrian.adult", "vehicle.bicycle", "vehicle.motorcycle",
              "movable_object.trafficcone", "movable_object.barrier", "static_object.bicycle_rack",
              "animal"]
ATTRIBUTES = ["vehicle.moving", "vehicle.parked", "pedestrian.moving", "cycle.without_rider"]


def write_mini_nuscenes(root: Path, seed: int, n_samples: int = 4) -> dict:
    """``root/v1.0-mini`` with one mini_val scene; returns {sample_token: [(ann, category)]} for the
    predictions to imitate. Sample 0 holds a bike rack with two bicycles inside and one outside."""
    rng = np.random.default_rng(seed)
    tables = {name: [] for name in ("category", "attribute", "visibility", "instance", "sensor",
                                    "calibrated_sensor", "ego_pose", "log", "scene", "sample", "sample_data",
                                    "sample_annotation", "map")}
    tables["category"] = [{"token": f"cat-{c}", "name": c, "description": ""} for c in CATEGORIES]
    tables["attribute"] = [{"token": f"attr-{a}", "name": a, "description": ""} for a in ATTRIBUTES]
    tables["visibility"] = [{"token": "1", "level": "v80-100", "description": ""}]
    tables["sensor"] = [{"token": "lidar", "channel": "LIDAR_TOP", "modality": "lidar"}]
    tables["calibrated_sensor"] = [{"token": "calib", "sensor_token": "lidar", "translation": [0.9, 0, 1.8],
                                    "rotation": [1, 0, 0, 0], "camera_intrinsic": []}]
    tables["log"] = [{"token": "log", "logfile": "", "vehicle": "", "date_captured": "", "location": "x"}]
    tables["map"] = [{"token": "map", "filename": "maps/map.png", "category": "semantic_prior", "log_tokens": ["log"]}]
    (root / "maps").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "map.png").write_bytes(b"")  # MapMask only checks that the file exists
    tokens = [f"sample-{i}" for i in range(n_samples)]
    tables["scene"] = [{"token": "scene", "name": "scene-0103", "log_token": "log", "nbr_samples": n_samples,
                        "first_sample_token": tokens[0], "last_sample_token": tokens[-1], "description": ""}]
    instances = []  # (category, start, heading, speed) followed over all samples
    for _ in range(30):
        category = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
        if category == "static_object.bicycle_rack":
            category = "vehicle.car"
        instances.append((category, rng.uniform(-55, 55, size=2), rng.uniform(-np.pi, np.pi), rng.uniform(0, 8)))
    rack = ("static_object.bicycle_rack", np.array([12.0, 3.0]), 0.0, 0.0)
    bikes = [("vehicle.bicycle", np.array([12.0 + dx, 3.0]), 0.0, 0.0) for dx in (-0.8, 0.8, 4.0)]
    instances += [rack] + bikes
    tables["instance"] = [{"token": f"inst-{i}", "category_token": f"cat-{c}", "nbr_annotations": n_samples,
                           "first_annotation_token": f"ann-{i}-0", "last_annotation_token": f"ann-{i}-{n_samples - 1}"}
                          for i, (c, *_rest) in enumerate(instances)]
    annotations = {}
    for s, token in enumerate(tokens):
        ego = np.r_[100.0 + 4 * s, -50.0 + s, 0.0]
        tables["ego_pose"].append({"token": f"pose-{s}", "translation": ego.tolist(),
                                   "rotation": [1, 0, 0, 0], "timestamp": 1_000_000 + 500_000 * s})
        tables["sample"].append({"token": token, "timestamp": 1_000_000 + 500_000 * s, "scene_token": "scene",
                                 "prev": tokens[s - 1] if s else "",
                                 "next": tokens[s + 1] if s + 1 < n_samples else ""})
        tables["sample_data"].append({"token": f"lidar-{s}", "sample_token": token, "ego_pose_token": f"pose-{s}",
                                      "calibrated_sensor_token": "calib", "timestamp": 1_000_000 + 500_000 * s,
                                      "fileformat": "pcd", "is_key_frame": True, "height": 0, "width": 0,
                                      "filename": f"samples/LIDAR_TOP/{s}.bin", "prev": "", "next": ""})
        annotations[token] = []
        for i, (category, start, heading, speed) in enumerate(instances):
            in_rack_group = i >= len(instances) - 4
            if s == 0 or not in_rack_group:
                xy = start + speed * 0.5 * s * np.r_[math.cos(heading), math.sin(heading)]
                attributes = [] if rng.random() < 0.3 or category.startswith("movable") else \
                    [f"attr-{ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]}"]
                ann = {"token": f"ann-{i}-{s}", "sample_token": token, "instance_token": f"inst-{i}",
                       "translation": [*(ego[:2] + xy).tolist(), 0.5 if in_rack_group else float(rng.uniform(0, 2))],
                       "size": [0.7, 1.8, 1.2] if category.endswith(("bicycle", "rack")) else
                       rng.uniform(0.5, 5, size=3).tolist(),
                       "rotation": [math.cos(heading / 2), 0, 0, math.sin(heading / 2)],
                       "attribute_tokens": attributes, "visibility_token": "1",
                       "num_lidar_pts": 0 if rng.random() < 0.1 else int(rng.integers(1, 90)),
                       "num_radar_pts": 0, "prev": f"ann-{i}-{s - 1}" if s else "",
                       "next": f"ann-{i}-{s + 1}" if s + 1 < n_samples else ""}
                if in_rack_group:
                    ann["prev"] = ann["next"] = ""
                    ann["num_lidar_pts"] = 10
                tables["sample_annotation"].append(ann)
                annotations[token].append((ann, category))
    (root / "v1.0-mini").mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (root / "v1.0-mini" / f"{name}.json").write_text(json.dumps(rows))
    return annotations


def imitate_detections(annotations: dict, seed: int) -> dict:
    """A submission: noisy copies of the annotations (bike racks and animals become cars) plus noise."""
    rng = np.random.default_rng(seed)
    names = {"vehicle.car": "car", "vehicle.truck": "truck", "human.pedestrian.adult": "pedestrian",
             "vehicle.bicycle": "bicycle", "vehicle.motorcycle": "motorcycle",
             "movable_object.trafficcone": "traffic_cone", "movable_object.barrier": "barrier"}
    results = {}
    for token, anns in annotations.items():
        boxes = []
        for ann, category in anns:
            for _ in range(int(rng.choice([0, 1, 1, 2]))):
                translation = np.asarray(ann["translation"]) + np.r_[rng.normal(0, 0.6, size=2), 0.0]
                yaw = rng.uniform(-np.pi, np.pi)
                boxes.append({"sample_token": token, "translation": translation.tolist(), "size": ann["size"],
                              "rotation": [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)],
                              "velocity": rng.normal(0, 2, size=2).tolist(),
                              "detection_name": names.get(category, "car"),
                              "detection_score": round(float(rng.uniform(0, 1)), 1),
                              "attribute_name": str(rng.choice(["", *ATTRIBUTES]))})
        results[token] = boxes
    return {"meta": {"use_lidar": True}, "results": results}


@pytest.mark.parametrize("seed", [0, 1])
def test_dataroot_evaluation_equals_devkit_detection_eval(tmp_path: Path, seed: int) -> None:
    from nuscenes import NuScenes

    annotations = write_mini_nuscenes(tmp_path / "nuscenes", seed)
    results_path = _write(tmp_path, imitate_detections(annotations, seed))
    nusc = NuScenes(version="v1.0-mini", dataroot=str(tmp_path / "nuscenes"), verbose=False)
    evaluation = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(results_path), "mini_val",
                               output_dir=str(tmp_path / "devkit"), verbose=False)
    theirs, _ = evaluation.evaluate()

    ours = evaluate_results_file(results_path, tmp_path / "nuscenes", version="v1.0-mini", eval_set="mini_val")
    assert ours.nd_score == pytest.approx(theirs.nd_score, abs=1e-6)
    assert ours.mean_ap == pytest.approx(theirs.mean_ap, abs=1e-6)
    for name in CONFIG.class_names:
        for th in CONFIG.dist_ths:
            assert ours.label_aps[name][th] == pytest.approx(theirs.get_label_ap(name, th), abs=1e-6)
        for metric in TP_METRICS:
            expected = theirs.get_label_tp(name, metric)
            actual = ours.label_tp_errors[name][metric]
            assert (math.isnan(actual) and math.isnan(expected)) or actual == pytest.approx(expected, abs=1e-6)
    assert 0 < ours.mean_ap < 1


def test_dataroot_ground_truth_filters_like_the_devkit(tmp_path: Path) -> None:
    write_mini_nuscenes(tmp_path / "nuscenes", seed=3)
    ground_truth = load_nuscenes_ground_truth(tmp_path / "nuscenes", "v1.0-mini", "mini_val")
    boxes = ground_truth.boxes
    bicycles = boxes.select((boxes.sample == 0) & (boxes.label == CONFIG.class_names.index("bicycle")))
    from_rack = np.hypot(*(bicycles.ego_translation[:, :2] - [12.0, 3.0]).T)
    assert not (from_rack < 1).any()  # the two bicycles in the bike rack are gone
    assert np.isclose(from_rack, 4.0).sum() == 1  # the one beside it stays
    assert list(ground_truth.bike_racks) == ["sample-0"]
    np.testing.assert_allclose(boxes.ego_translation,
                               boxes.translation - ground_truth.ego_positions[boxes.sample])
    with pytest.raises(FileNotFoundError, match="no nuScenes table folder 'v1.0-trainval'"):
        load_nuscenes_ground_truth(tmp_path / "nuscenes", "v1.0-trainval", "val")
