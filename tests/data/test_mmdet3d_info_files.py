"""What an mmdetection3d info file says beyond its layout: which box convention its boxes follow (told from the
boxes, converted or refused), which dataset it is of (a KITTI file is named as one), and where its point files
lie (mmdetection3d's data_prefix)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from rdd3d.core.types import Boxes3D
from rdd3d.data.nuscenes import InfoFileError, NuScenesDataset, load_infos, read_mmdet3d_infos
from rdd3d.data.nuscenes.box_convention import (
    AMBIGUOUS, NO_EVIDENCE, PRE_V1, V1, ConventionEvidence, convention_evidence, from_pre_v1,
)
from rdd3d.data.transforms import wrap_angle

from data.test_nuscenes_mmdet3d import (
    KEY_EGO2GLOBAL, KEY_NAME, LIDAR2EGO, MMDET3D_CATEGORIES, SWEEP_EGO2GLOBAL, SWEEP_NAME, write_pickle,
)
from data.test_nuscenes_real import TOKEN, annotation

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
LABELS = {name: label for name, label in MMDET3D_CATEGORIES.items()}
# A street scene in the 1.x convention: class, [x, y, z, l, w, h, yaw], velocity [vx, vy] (NaN: unknown).
# Headings stay clear of +-pi/4 and +-3pi/4, where the two conventions' headings share an axis.
SCENE = [
    ("car", [10.0, 2.0, -0.8, 4.6, 1.9, 1.6, 0.3], [5.0 * math.cos(0.3), 5.0 * math.sin(0.3)]),
    ("car", [-12.0, 5.0, -0.9, 4.4, 1.8, 1.5, 1.2], [0.0, 0.0]),
    ("car", [20.0, -7.0, -0.8, 4.8, 2.0, 1.7, -2.0], [-4.0 * math.cos(-2.0), -4.0 * math.sin(-2.0)]),  # reversing
    ("car", [3.0, 15.0, -0.7, 4.5, 1.9, 1.5, 2.8], [8.0 * math.cos(2.8), 8.0 * math.sin(2.8)]),
    ("car", [-5.0, -18.0, -0.8, 4.2, 1.8, 1.5, -0.1], [np.nan, np.nan]),
    ("car", [30.0, 12.0, -0.6, 4.7, 1.9, 1.6, 1.9], [0.1, 0.0]),
    ("truck", [-25.0, -4.0, 0.2, 8.0, 2.6, 3.2, -1.3], [0.0, 0.0]),
    ("truck", [15.0, 25.0, 0.3, 6.5, 2.4, 3.0, 0.05], [6.0 * math.cos(0.05), 6.0 * math.sin(0.05)]),
    ("pedestrian", [6.0, -3.0, -0.9, 0.7, 0.6, 1.8, 1.1], [1.4 * math.cos(1.1), 1.4 * math.sin(1.1)]),
    ("pedestrian", [-6.0, 8.0, -0.9, 0.8, 0.7, 1.7, -2.5], [0.0, 0.0]),
    ("barrier", [9.0, -9.0, -1.0, 0.5, 2.5, 1.0, 0.7], [0.0, 0.0]),
    ("traffic_cone", [4.0, 6.0, -1.1, 0.4, 0.4, 0.8, 0.1], [1.3, -0.4]),  # annotation noise: cones do not move
]


def to_pre_v1(boxes) -> np.ndarray:
    """1.x boxes [x, y, z, l, w, h, yaw] -> pre-1.0 [x, y, z, w, l, h, -yaw - pi/2], as mmdetection3d's v0.x
    converter wrote them (``-rots - np.pi / 2`` of the devkit's ``wlh``)."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    return np.column_stack([boxes[:, :3], boxes[:, [4, 3, 5]], -boxes[:, 6] - np.pi / 2])


def instance(name: str, box, velocity, lidar: int = 20) -> dict:
    """An ``instances`` entry as update_infos_to_v2.py writes it."""
    label = LABELS[name]
    return {"bbox_3d": [float(v) for v in box], "bbox_label": label, "bbox_label_3d": label,
            "velocity": [float(v) for v in velocity], "num_lidar_pts": np.int64(lidar), "num_radar_pts": np.int64(1),
            "bbox_3d_isvalid": np.bool_(True)}


def nus_record(instances: list, token: str = "fd8420396768425eabec9bdddf7e64b6", lidar_path: str = KEY_NAME,
               sweep_path: str = f"./data/nuscenes/sweeps/LIDAR_TOP/{SWEEP_NAME}") -> dict:
    """A ``data_list`` entry with every field update_infos_to_v2.py writes for nuScenes: the layout of
    mmdetection3d's own test fixture tests/data/nuscenes/nus_info.pkl (cameras, camera instances and the
    sweeps' lidar2sensor included)."""
    eye = np.eye(4).tolist()
    return {
        "sample_idx": 0, "token": token, "timestamp": 1532402927.647951, "ego2global": KEY_EGO2GLOBAL.tolist(),
        "images": {camera: {"img_path": f"{token}__{camera}.jpg", "cam2img": np.eye(3).tolist(),
                            "sample_data_token": f"sd-{camera}", "timestamp": 1532402927.64, "cam2ego": eye,
                            "lidar2cam": eye} for camera in CAMERAS},
        "lidar_points": {"num_pts_feats": 5, "lidar_path": lidar_path, "lidar2ego": LIDAR2EGO.tolist()},
        "lidar_sweeps": [{"lidar_points": {"lidar2ego": LIDAR2EGO.tolist(), "lidar2sensor": eye,
                                           "lidar_path": sweep_path},
                          "ego2global": SWEEP_EGO2GLOBAL.tolist(), "timestamp": 1532402927.597802,
                          "sample_data_token": "sd-sweep"}],
        "instances": instances,
        "cam_instances": {camera: [] for camera in CAMERAS},
    }


def nus_info(records: list) -> dict:
    return {"metainfo": {"categories": MMDET3D_CATEGORIES, "dataset": "nuscenes", "version": "v1.0-trainval",
                         "info_version": "1.1"}, "data_list": records}


def scene_file(tmp_path, convert=lambda boxes: np.asarray(boxes), name: str = "infos.pkl"):
    """The scene's boxes through ``convert`` ((M, 7) -> (M, 7)) in one sample of a v1.x info file."""
    boxes = convert(np.array([box for _, box, _ in SCENE]))
    instances = [instance(name, box, velocity) for (name, _, velocity), box in zip(SCENE, boxes)]
    return write_pickle(tmp_path / name, nus_info([nus_record(instances)]), 2)


def same_boxes(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual[:, :6], expected[:, :6], atol=1e-9)
    np.testing.assert_allclose(wrap_angle(actual[:, 6] - expected[:, 6]), 0.0, atol=1e-9)


# ----------------------------------------------------------------------------- the box convention
def test_the_scene_gives_evidence_of_both_kinds():
    boxes = np.array([box for _, box, _ in SCENE])
    names = [name for name, _, _ in SCENE]
    velocity = np.array([v for _, _, v in SCENE])
    valid = np.isfinite(velocity).all(axis=1)
    velocity = np.where(valid[:, None], velocity, 0.0)
    as_stored = convention_evidence(boxes, names, velocity, valid)
    # 8 vehicles; 5 objects move at >= 1 m/s (3 cars, a truck, a pedestrian; not the cone), one of them in reverse
    assert as_stored == ConventionEvidence(size_v1=8, size_pre_v1=0, motion_v1=5, motion_pre_v1=0)
    assert as_stored.verdict() == V1
    old = convention_evidence(to_pre_v1(boxes), names, velocity, valid)
    assert old == ConventionEvidence(size_v1=0, size_pre_v1=8, motion_v1=0, motion_pre_v1=5)
    assert old.verdict() == PRE_V1
    same_boxes(from_pre_v1(to_pre_v1(boxes)), boxes)


def test_new_convention_boxes_are_read_unchanged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        (sample,) = read_mmdet3d_infos(scene_file(tmp_path)).samples
    assert sample.gt.names == tuple(name for name, _, _ in SCENE)
    np.testing.assert_array_equal(sample.gt.boxes, np.array([box for _, box, _ in SCENE]))
    assert not caplog.records


def test_old_convention_boxes_are_converted(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        (sample,) = load_infos(scene_file(tmp_path, to_pre_v1)).samples
    same_boxes(sample.gt.boxes, np.array([box for _, box, _ in SCENE]))
    assert sample.gt.boxes[0, 3] > sample.gt.boxes[0, 4]  # the car is 4.6 m long and 1.9 m wide again
    (warning,) = caplog.records
    assert "infos.pkl: boxes in mmdetection3d's pre-1.0 convention [x, y, z, w, l, h, -yaw - pi/2]" in warning.message
    assert "size: 0 of 8 vehicles" in warning.message and "motion: 0 of 5 objects" in warning.message


def test_boxes_of_both_conventions_in_one_file_are_refused_with_the_counts(tmp_path):
    half = lambda boxes: np.concatenate([boxes[:4], to_pre_v1(boxes[4:])])  # noqa: E731
    with pytest.raises(InfoFileError, match=r"infos\.pkl: cannot tell which of mmdetection3d's nuScenes box "
                                            r"conventions the boxes follow, the evidence disagrees \(size: 4 of 8 vehicles .* are "
                                            r"longer than wide as stored \(dx > dy\), 4 wider than long; motion: 3 of "
                                            r"5 objects .* 2 along the pre-1.0 reading's .*`rdd3d nuscenes-infos`"):
        read_mmdet3d_infos(scene_file(tmp_path, half))


def test_sizes_and_headings_that_disagree_are_refused(tmp_path):
    """Lengths and widths in the 1.x order, headings in the pre-1.0 one: neither reading is the world."""
    mixed = lambda boxes: np.column_stack([boxes[:, :6], -boxes[:, 6] - np.pi / 2])  # noqa: E731
    with pytest.raises(InfoFileError, match=r"the evidence disagrees \(size: 8 of 8 vehicles .* motion: 0 of 5"):
        read_mmdet3d_infos(scene_file(tmp_path, mixed))


def test_boxes_that_show_no_convention_are_refused_but_a_file_without_boxes_is_read(tmp_path):
    still = [instance("pedestrian", [6.0, -3.0, -0.9, 0.7, 0.6, 1.8, 1.1], [0.0, 0.0]),
             instance("barrier", [9.0, -9.0, -1.0, 0.5, 2.5, 1.0, 0.7], [0.0, 0.0])]
    with pytest.raises(InfoFileError, match=r"the boxes follow, no box shows it \(size: 0 of 0 vehicles"):
        read_mmdet3d_infos(write_pickle(tmp_path / "still.pkl", nus_info([nus_record(still)]), 2))
    test_split = write_pickle(tmp_path / "test.pkl", nus_info([nus_record([])]), 2)
    (sample,) = read_mmdet3d_infos(test_split).samples
    assert len(sample.gt) == 0
    assert ConventionEvidence(0, 0, 0, 0).verdict() == NO_EVIDENCE
    assert ConventionEvidence(9, 1, 0, 0).verdict() == V1 and ConventionEvidence(8, 2, 0, 0).verdict() == AMBIGUOUS


def real_keyframe_file(real_data, tmp_path, convert, name: str):
    """The real keyframe's annotation (69 boxes, 1.x convention) in a v1.x info file, boxes through ``convert``."""
    boxes = [box for box in annotation(real_data)["boxes"] if box["name"] in LABELS]
    converted = convert(np.array([box["box"] for box in boxes]))
    instances = [instance(box["name"], row, [np.nan if v is None else v for v in box["velocity"]],
                          box["num_lidar_pts"]) for box, row in zip(boxes, converted)]
    data = annotation(real_data)
    record = nus_record(instances, token=TOKEN)
    record.update(ego2global=data["ego2global"], timestamp=data["timestamp"], lidar_sweeps=[])
    record["lidar_points"]["lidar2ego"] = data["lidar2ego"]
    return write_pickle(tmp_path / name, nus_info([record]), 2), np.array([box["box"] for box in boxes])


def test_the_real_keyframe_in_the_old_convention_is_converted_to_its_boxes(real_data, tmp_path, caplog):
    new, boxes = real_keyframe_file(real_data, tmp_path, lambda b: b, "new.pkl")
    old, _ = real_keyframe_file(real_data, tmp_path, to_pre_v1, "old.pkl")
    assert len(boxes) == 68  # the "ignore" box has no mmdetection3d label
    np.testing.assert_array_equal(read_mmdet3d_infos(new).samples[0].gt.boxes, boxes)
    with caplog.at_level(logging.WARNING):
        dataset = NuScenesDataset(old, real_data / "nuscenes", drop_empty_boxes=False)
    assert "size: 0 of 13 vehicles" in caplog.text
    same_boxes(dataset.infos[0].gt.boxes, boxes)
    frame = dataset[0]
    inside = frame.boxes.contains_points(frame.points.xyz).sum(axis=0)
    expected = frame.metadata["num_lidar_pts"]
    # Read as they are, the old boxes (wide cars, mirrored headings) hold the annotated points of fewer boxes
    # (54 of 68), and miss twice as many points (60 against 29 in all).
    misread = Boxes3D(to_pre_v1(boxes)).contains_points(frame.points.xyz).sum(axis=0)
    assert (misread == expected).sum() == 54 and (inside == expected).sum() == 60
    assert np.abs(misread - expected).sum() == 60 and np.abs(inside - expected).sum() == 29


# ----------------------------------------------------------------------------- other datasets' info files
def kitti_record() -> dict:
    """Frame 000008 as update_infos_to_v2.py writes a KITTI frame (update_kitti_infos): images CAM0..3 with
    R0_rect, lidar_points with the velodyne->camera calibration, camera-frame instances."""
    p2 = [[721.5, 0.0, 609.6, 44.9], [0.0, 721.5, 172.9, 0.2], [0.0, 0.0, 1.0, 0.003], [0.0, 0.0, 0.0, 1.0]]
    images = {f"CAM{i}": {"cam2img": p2, "lidar2img": p2} for i in range(4)}
    images["CAM2"].update(img_path="000008.png", height=375, width=1242, lidar2cam=np.eye(4).tolist())
    images["R0_rect"] = np.eye(4).tolist()
    return {
        "sample_idx": 8, "images": images,
        "lidar_points": {"num_pts_feats": 4, "lidar_path": "000008.bin", "Tr_velo_to_cam": np.eye(4).tolist(),
                         "Tr_imu_to_velo": np.eye(4).tolist()},
        "instances": [{"bbox": [0.0, 0.0, 10.0, 10.0], "bbox_label": 2, "bbox_3d": [-2.7, 1.7, 8.4, 4.1, 1.7, 1.7, 0.1],
                       "bbox_label_3d": 2, "depth": 8.4, "center_2d": [400.0, 200.0], "num_lidar_pts": 1325,
                       "difficulty": 0, "truncated": 0.0, "occluded": 0, "alpha": -1.5, "score": 0.0, "index": 0,
                       "group_id": 0}],
        "cam_instances": {"CAM2": []},
    }


KITTI_CATEGORIES = {"Pedestrian": 0, "Cyclist": 1, "Car": 2, "Van": 3, "Truck": 4, "Person_sitting": 5, "Tram": 6,
                    "Misc": 7, "DontCare": -1}


@pytest.mark.parametrize("metainfo", [{"categories": KITTI_CATEGORIES, "dataset": "kitti", "info_version": "1.1"},
                                      {"categories": KITTI_CATEGORIES}])  # told by its calibration too
def test_a_kitti_info_file_is_named_as_one(tmp_path, metainfo):
    path = write_pickle(tmp_path / "kitti_infos_val.pkl", {"metainfo": metainfo, "data_list": [kitti_record()]}, 2)
    message = (r"kitti_infos_val\.pkl: an mmdetection3d v1\.x KITTI info file \(1 frame, the first 000008\), not "
               r"nuScenes infos\. rdd3d reads KITTI from the benchmark's own folders.*data\.dataset=kitti.*"
               r"ImageSets/<split>\.txt \(rdd3d\.data\.kitti\.KittiDataset, docs/data-kitti\.md\)")
    with pytest.raises(InfoFileError, match=message):
        load_infos(path)
    with pytest.raises(InfoFileError, match="not nuScenes infos"):
        NuScenesDataset(path, tmp_path)


def test_a_v0_kitti_info_file_and_other_datasets_are_named(tmp_path):
    frames = [{"image": {"image_idx": idx, "image_path": f"training/image_2/{idx:06d}.png",
                         "image_shape": np.array([375, 1242])},
               "point_cloud": {"num_features": 4, "velodyne_path": f"training/velodyne/{idx:06d}.bin"},
               "calib": {"P2": np.eye(4), "R0_rect": np.eye(4), "Tr_velo_to_cam": np.eye(4)}, "annos": {}}
              for idx in (0, 3, 7, 9)]
    with pytest.raises(InfoFileError, match=r"an mmdetection3d v0\.x KITTI info file \(4 frames, the first 000000, "
                                            r"000003, 000007\)"):
        read_mmdet3d_infos(write_pickle(tmp_path / "kitti_infos_train.pkl", frames, 2))
    waymo = {"metainfo": {"dataset": "waymo", "info_version": "1.1"}, "data_list": []}
    with pytest.raises(InfoFileError, match=r"waymo\.pkl: an mmdetection3d info file of dataset 'waymo'"):
        read_mmdet3d_infos(write_pickle(tmp_path / "waymo.pkl", waymo, 2))


# ----------------------------------------------------------------------------- where the point files lie
def points_at(path, rows: int = 2):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.arange(rows * 5, dtype="<f4").reshape(rows, 5).tofile(path)


def test_default_data_prefix_is_mmdetection3ds_nuscenes_layout(tmp_path):
    keyframe_sweep = f"./data/nuscenes/samples/LIDAR_TOP/{SWEEP_NAME}"  # an earlier keyframe used as a sweep
    path = write_pickle(tmp_path / "infos.pkl", nus_info([nus_record([], sweep_path=keyframe_sweep)]), 2)
    (sample,) = read_mmdet3d_infos(path).samples
    assert sample.lidar_path == f"samples/LIDAR_TOP/{KEY_NAME}"
    assert sample.sweeps[0].lidar_path == f"samples/LIDAR_TOP/{SWEEP_NAME}"


@pytest.mark.parametrize("prefix, key_folder, sweep_folder", [
    ({"pts": "", "sweeps": ""}, "", ""),  # point files beside the info file, the dataroot
    ({"pts": "lidar/keyframes", "sweeps": "lidar/sweeps"}, "lidar/keyframes", "lidar/sweeps"),
    ({"sweeps": "all_sweeps"}, "samples/LIDAR_TOP", "all_sweeps"),  # a key not given keeps its default
])
def test_data_prefix_layouts_resolve(tmp_path, prefix, key_folder, sweep_folder):
    root = tmp_path / "nuscenes"
    info_file = write_pickle(root.mkdir() or root / "infos.pkl", nus_info([nus_record([])]), 2)
    points_at(root / key_folder / KEY_NAME)
    points_at(root / sweep_folder / SWEEP_NAME, rows=3)
    frame = NuScenesDataset(info_file, root, max_sweeps=2, data_prefix=prefix)[0]
    assert len(frame.points) == 5  # the keyframe's 2 points and the sweep's 3 (none within a metre of the sensor)
    assert NuScenesDataset(info_file, root, data_prefix=prefix).infos[0].lidar_path == \
        f"{key_folder}/{KEY_NAME}".lstrip("/")


def test_an_absolute_data_prefix_and_bad_ones(tmp_path):
    elsewhere = tmp_path / "disk2" / "key"
    info_file = write_pickle(tmp_path / "infos.pkl", nus_info([nus_record([])]), 2)
    points_at(elsewhere / KEY_NAME)
    frame = NuScenesDataset(info_file, tmp_path, max_sweeps=1, data_prefix={"pts": str(elsewhere)})[0]
    assert len(frame.points) == 2
    with pytest.raises(ValueError, match=r"data_prefix: unknown keys \['img'\]; LiDAR files need only 'pts'"):
        load_infos(info_file, {"pts": "samples/LIDAR_TOP", "img": ""})
    with pytest.raises(ValueError, match=r"data_prefix\.pts: expected a folder"):
        load_infos(info_file, {"pts": 3})
    with pytest.raises(ValueError, match=r"infos\.json: data_prefix \{'pts': 'x'\} applies to mmdetection3d \.pkl "
                                         "info files only"):
        load_infos(tmp_path / "infos.json", {"pts": "x"})
