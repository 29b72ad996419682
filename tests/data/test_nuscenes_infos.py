"""Info records and files, CBGS, dataset options and the export's attribute rule (no devkit needed)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from rdd3d.data.nuscenes import (
    InfoBoxes, InfoFileError, NuScenesDataset, NuScenesInfos, SampleInfo, SweepInfo, cbgs_indices, read_infos,
    write_infos,
)
from rdd3d.evaluation.nuscenes_export import default_attributes, submission_from_detections
from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud
from rdd3d.core.types import Detections


def sample(token: str, names: tuple[str, ...], num_lidar_pts=None) -> SampleInfo:
    count = len(names)
    boxes = np.tile([1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.1], (count, 1))
    lidar = np.full(count, 5) if num_lidar_pts is None else np.asarray(num_lidar_pts)
    gt = InfoBoxes(boxes, np.zeros((count, 2)), np.ones(count, bool), names, ("",) * count, lidar, np.zeros(count, int))
    sweep = SweepInfo("sweeps/LIDAR_TOP/a.pcd.bin", np.eye(4), 0.05)
    return SampleInfo(token, f"samples/LIDAR_TOP/{token}.pcd.bin", 1.5e9, np.eye(4), np.eye(4), (sweep,), gt)


def test_cbgs_gives_every_class_an_equal_share_of_draws():
    names = [{"car"}] * 90 + [{"car", "pedestrian"}] * 10 + [{"bicycle"}] * 5 + [set()] * 3
    classes = ("car", "pedestrian", "bicycle", "bus")  # no bus anywhere: it takes no share
    indices = cbgs_indices(names, classes, np.random.default_rng(0))
    draws = (90 + 10 + 10 + 5) // 3
    assert len(indices) == 3 * draws
    for block, name in enumerate(("car", "pedestrian", "bicycle")):
        assert all(name in names[i] for i in indices[block * draws:(block + 1) * draws])
    presence = Counter(name for i in indices for name in names[i])
    assert presence["pedestrian"] / len(indices) >= 1 / 3 > 10 / 108  # was 10 of 108 samples
    assert presence["bicycle"] / len(indices) == pytest.approx(1 / 3)
    assert not np.array_equal(indices, cbgs_indices(names, classes, np.random.default_rng(1)))
    assert cbgs_indices([set()] * 4, classes, np.random.default_rng(0)).tolist() == [0, 1, 2, 3]


def test_dataset_options_cbgs_interval_classes(tmp_path):
    samples = tuple(sample(f"s{i}", ("car",) * 3) for i in range(8)) + (sample("rare", ("car", "bicycle")),)
    path = write_infos(tmp_path / "infos.json", NuScenesInfos(samples, "v1.0-trainval", "train"))
    plain = NuScenesDataset(path, tmp_path)
    assert len(plain) == 9 and (plain.version, plain.split) == ("v1.0-trainval", "train")
    assert len(NuScenesDataset(path, tmp_path, load_interval=2)) == 5
    balanced = NuScenesDataset(path, tmp_path, use_cbgs=True)
    assert len(balanced) == 2 * ((9 + 1) // 2) and Counter(balanced.indices.tolist())[8] >= 5
    only_cars = NuScenesDataset(path, tmp_path, classes=("car", "pedestrian"), use_cbgs=True)
    assert only_cars.classes == ClassTable(("car", "pedestrian")) and len(only_cars) == 9
    assert only_cars.class_ranges == {"car": 50.0, "pedestrian": 40.0}
    with pytest.raises(ValueError, match="nuScenes detection classes"):
        NuScenesDataset(path, tmp_path, classes=("car", "Cyclist"))


def test_info_file_round_trip_and_errors_name_file_sample_and_field(tmp_path):
    infos = NuScenesInfos((sample("a", ("car", "ignore")), sample("b", ())), "v1.0-mini", "mini_val")
    path = write_infos(tmp_path / "infos.json", infos)
    back = read_infos(path)
    assert back.samples[0].gt.names == ("car", "ignore") and back.samples[1].sweeps[0].time_lag == 0.05
    np.testing.assert_array_equal(back.samples[0].gt.boxes, infos.samples[0].gt.boxes)

    data = json.loads(path.read_text())
    data["samples"][1]["boxes"] = [[1, 2, 3, 4, -1, 1, 0]]
    for key in ("velocity", "velocity_valid", "names", "attributes", "num_lidar_pts", "num_radar_pts"):
        data["samples"][1][key] = [[0, 0]] if key == "velocity" else [True] if key == "velocity_valid" else (
            ["car"] if key in ("names", "attributes") else [1])
    path.write_text(json.dumps(data))
    with pytest.raises(InfoFileError, match=r"infos.json: samples\[1\] \(token 'b'\): boxes: box 0 has a non-positive"):
        read_infos(path)
    del data["samples"][0]["lidar2ego"]
    path.write_text(json.dumps(data))
    with pytest.raises(InfoFileError, match=r"samples\[0\] \(token 'a'\): missing field 'lidar2ego'"):
        read_infos(path)
    data["samples"][0]["lidar2ego"] = [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    path.write_text(json.dumps(data))
    with pytest.raises(InfoFileError, match="lidar2ego: not a rigid transform"):
        read_infos(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(InfoFileError, match="not an rdd3d nuScenes info file"):
        read_infos(path)
    path.write_text('{"format": ')
    with pytest.raises(InfoFileError, match="malformed JSON at line 1"):
        read_infos(path)
    with pytest.raises(ValueError, match="newest first"):
        SampleInfo("t", "x.bin", 0.0, np.eye(4), np.eye(4), (SweepInfo("a", np.eye(4), 0.1), SweepInfo("b", np.eye(4), 0.05)))


def test_default_attribute_by_class_and_speed():
    names = ["car", "car", "bus", "truck", "bicycle", "motorcycle", "pedestrian", "pedestrian", "barrier", "car"]
    velocity = [[1, 0], [0.1, 0.1], [0, 0], [0, 0.5], [0, 2], [0, 0], [0.3, 0], [0, 0], [3, 0], [np.nan, np.nan]]
    assert default_attributes(names, np.array(velocity, dtype=float)) == [
        "vehicle.moving", "vehicle.parked", "vehicle.stopped", "vehicle.moving", "cycle.with_rider",
        "cycle.without_rider", "pedestrian.moving", "pedestrian.standing", "", "vehicle.parked",
    ]


def test_export_needs_a_pose():
    classes = ClassTable(("car",))
    frame = Frame("f", PointCloud(np.zeros((1, 4))), Boxes3D.empty(True), np.zeros(0), classes)
    with pytest.raises(ValueError, match="frame f: metadata needs 'sample_token' and 'pose'"):
        submission_from_detections([frame], [Detections(np.zeros((0, 9)), np.zeros(0), np.zeros(0))])
