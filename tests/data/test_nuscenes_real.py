"""The real nuScenes keyframe (../shared/data/real/nuscenes, found through the real_data fixture) read
through our info records and NuScenesDataset, drawn, detected and exported."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rdd3d.data.nuscenes import DEFAULT_CLASSES, InfoBoxes, NuScenesDataset, NuScenesInfos, SampleInfo, write_infos
from rdd3d.data.transforms import crop_to_range
from rdd3d.evaluation.nuscenes_export import write_submission
from rdd3d.evaluation.nuscenes_metrics import NO_ATTRIBUTE, BoxTable, detection_cvpr_2019
from rdd3d.core.types import Detections
from rdd3d.models.presets import NUSCENES, build_detector
from rdd3d.viz import BoxLayer, save_bev

TOKEN = "ca9a282c9e77460f8360f564131a8af5"


def annotation(real_data: Path) -> dict:
    return json.loads((real_data / "nuscenes" / "annotations" / f"{TOKEN}.json").read_text())


def fixture_info(real_data: Path) -> SampleInfo:
    """The fixture's annotation JSON (mmdetection3d's demo info, see SOURCE.md) as our record."""
    data = annotation(real_data)
    boxes = data["boxes"]
    velocity = np.array([box["velocity"] for box in boxes], dtype=np.float64)
    valid = np.isfinite(velocity).all(axis=1)
    gt = InfoBoxes([box["box"] for box in boxes], np.where(valid[:, None], velocity, 0.0), valid,
                   [box["name"] for box in boxes], [""] * len(boxes), [box["num_lidar_pts"] for box in boxes],
                   [box["num_radar_pts"] for box in boxes])
    return SampleInfo(data["sample_token"], data["lidar_path"], data["timestamp"], data["lidar2ego"],
                      data["ego2global"], (), gt)


@pytest.fixture
def dataset(real_data, tmp_path) -> NuScenesDataset:
    path = write_infos(tmp_path / "infos.json", NuScenesInfos((fixture_info(real_data),), "v1.0-mini", "demo"))
    return NuScenesDataset(path, real_data / "nuscenes", drop_empty_boxes=False)


def test_real_keyframe_boxes_and_classes(real_data, dataset):
    info = dataset.infos[0]
    assert len(info.gt) == 69
    assert Counter(info.gt.names) == {"pedestrian": 30, "barrier": 22, "car": 8, "traffic_cone": 3, "truck": 2,
                                      "bicycle": 1, "bus": 1, "construction_vehicle": 1, "ignore": 1}
    frame = dataset[0]
    assert frame.frame_id == TOKEN and dataset.classes.names == DEFAULT_CLASSES == NUSCENES.classes
    assert len(frame.boxes) == 68 and frame.boxes.has_velocity  # "ignore" is no detection class
    assert frame.points.points.shape == (34688, 5) and not frame.points.column("time_lag").any()
    assert frame.metadata["velocity_valid"].sum() == 66  # two boxes have no velocity estimate
    assert len(NuScenesDataset(dataset.info_file, real_data / "nuscenes")[0].boxes) < 68  # empties dropped


def test_points_inside_boxes_match_num_lidar_pts(dataset):
    frame = dataset[0]
    inside = frame.boxes.contains_points(frame.points.xyz).sum(axis=0)
    expected = frame.metadata["num_lidar_pts"]
    assert (inside == expected).sum() >= 60  # SOURCE.md: 61 of 69 exact with this box convention
    many = expected >= 40
    assert many.sum() >= 4
    np.testing.assert_allclose(inside[many], expected[many], rtol=0.12)
    assert inside.sum() == pytest.approx(expected.sum(), rel=0.03)


def test_bev_picture_of_the_real_frame(dataset, tmp_path):
    frame = dataset[0]
    path = tmp_path / "nuscenes_bev.png"
    save_bev(path, frame.points, [BoxLayer(frame.boxes, frame.labels)], classes=frame.classes, extent=60.0,
             title=frame.frame_id)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_nuscenes_student_runs_on_the_real_frame(dataset):
    detector = build_detector("cp-voxel-xxs", dataset="nuscenes").eval()
    frame = crop_to_range(dataset[0], detector.config.point_cloud_range)
    with torch.no_grad():
        output = detector([torch.from_numpy(frame.points.points)])
        (detections,) = detector.decode(output)
    assert len(output.predictions) == len(NUSCENES.class_groups) == 6
    assert detections.boxes.shape[1] == 9 and torch.isfinite(detections.boxes).all()
    assert detections.labels.max() < len(DEFAULT_CLASSES)


def test_export_matches_the_devkit_transform_and_scores_perfect(dataset, tmp_path):
    pytest.importorskip("nuscenes")
    from nuscenes.eval.common.utils import quaternion_yaw
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    from rdd3d.evaluation.nuscenes_io import NuScenesGroundTruth, evaluate_results_file, read_results

    frame = dataset[0]
    frame = frame.select_boxes(frame.metadata["num_points"] > 0)  # the boxes the devkit evaluates
    info = dataset.infos[0]
    path = tmp_path / "results.json"
    write_submission(path, [frame], [Detections(torch.from_numpy(frame.boxes.tensor), torch.ones(len(frame.boxes)),
                                                torch.from_numpy(frame.labels))])
    config = detection_cvpr_2019()
    predictions, meta = read_results(path, config)
    assert meta["use_lidar"] and predictions.sample_tokens == (TOKEN,)
    # the devkit's own Box moves the same boxes LiDAR -> ego -> global
    global_boxes, ego_centres = [], []
    for row in frame.boxes.tensor.astype(np.float64):
        box = Box(row[:3], [row[4], row[3], row[5]], Quaternion(axis=[0, 0, 1], angle=row[6]),
                  velocity=(row[7], row[8], 0.0))
        box.rotate(Quaternion(matrix=info.lidar2ego[:3, :3], atol=1e-6))
        box.translate(info.lidar2ego[:3, 3])
        ego_centres.append(box.center.copy())
        box.rotate(Quaternion(matrix=info.ego2global[:3, :3], atol=1e-6))
        box.translate(info.ego2global[:3, 3])
        global_boxes.append(box)
    np.testing.assert_allclose(predictions.translation, [b.center for b in global_boxes], atol=1e-4)
    yaw_error = np.angle(np.exp(1j * (predictions.yaw - [quaternion_yaw(b.orientation) for b in global_boxes])))
    assert np.abs(yaw_error).max() < 1e-5
    np.testing.assert_allclose(predictions.velocity, [b.velocity[:2] for b in global_boxes], atol=1e-4)
    names = [frame.classes.name(label) for label in frame.labels]
    ground_truth = BoxTable(
        sample_tokens=(TOKEN,), sample=np.zeros(len(names), np.int64), translation=[b.center for b in global_boxes],
        size=predictions.size, yaw=[quaternion_yaw(b.orientation) for b in global_boxes],
        velocity=[b.velocity[:2] for b in global_boxes], ego_translation=ego_centres,
        label=[config.class_names.index(n) for n in names], score=-np.ones(len(names)),
        attribute=np.full(len(names), NO_ATTRIBUTE), num_pts=frame.metadata["num_points"],
    )
    reference = NuScenesGroundTruth(ground_truth, info.ego2global[None, :3, 3], {}, config.class_names)
    metrics = evaluate_results_file(path, reference)
    present = {n for n, d in zip(names, ground_truth.ego_translation) if np.hypot(*d[:2]) < config.class_range[n]}
    assert present >= {"car", "pedestrian", "barrier", "truck"}
    for name in present:
        assert metrics.mean_dist_aps[name] == pytest.approx(1.0), name
