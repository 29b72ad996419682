"""KittiDataset on the real KITTI fixtures (frames 000008 and 000000, see SOURCE.md beside them) and on
damaged copies in tmp_path: frames, boxes, metadata, FOV filtering, splits, missing and bad files,
pictures, detector forward passes, result files and KITTI AP."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from rdd3d.data.collate import collate_frames
from rdd3d.data.io import write_points
from rdd3d.data.kitti import METADATA_KEYS, KittiDataset, camera_fov_mask
from rdd3d.data.kitti.format import KittiCalibration, KittiFormatError, KittiObjects, read_label_file
from rdd3d.data.transforms import crop_to_range
from rdd3d.core.types import PointCloud
from rdd3d.evaluation.kitti_metrics import evaluate_kitti
from rdd3d.evaluation.kitti_predictions import (
    evaluate_kitti_frames,
    kitti_detections,
    kitti_summary,
    write_kitti_results,
)
from rdd3d.core.types import Detections
from rdd3d.models.presets import build_detector
from rdd3d.viz import BoxLayer, save_bev

FIXTURE_IDS = ["000008", "000000"]
#: mmdetection3d's num_lidar_pts of the six cars of 000008 (SOURCE.md).
MMDET3D_CAR_POINTS = [1325, 1900, 881, 659, 55, 162]


def kitti_root(real_data):
    return real_data / "kitti"


def copy_frames(real_data, tmp_path, frame_ids=("000008",), folder="training"):
    """A private copy of fixture frames under tmp_path/kitti/<folder>, safe to damage."""
    source = kitti_root(real_data) / "training"
    root = tmp_path / "kitti"
    for kind in ("velodyne", "calib", "label_2", "image_2"):
        (root / folder / kind).mkdir(parents=True, exist_ok=True)
        for path in source.glob(f"{kind}/*"):
            if path.stem in frame_ids:
                shutil.copy(path, root / folder / kind / path.name)
    return root


@pytest.fixture
def fixture_set(real_data):
    return KittiDataset(kitti_root(real_data), frame_ids=FIXTURE_IDS)


def gt_detections(frame):
    """The frame's ground-truth boxes as detections of score 1."""
    return Detections(torch.from_numpy(frame.boxes.tensor), torch.ones(len(frame.boxes)),
                      torch.from_numpy(frame.labels))


def test_frame_000008_points_boxes_and_metadata(fixture_set):
    assert len(fixture_set) == 2 and fixture_set.evaluation == "kitti"
    assert fixture_set.classes.names == ("Car", "Pedestrian", "Cyclist")
    assert fixture_set.class_ranges == {"Car": 100.0, "Pedestrian": 100.0, "Cyclist": 100.0}
    frame = fixture_set[0]
    assert frame.frame_id == "000008"
    assert len(frame.points) == 17_238 and frame.points.columns == ("x", "y", "z", "intensity")
    assert len(frame.boxes) == 6 and frame.labels.tolist() == [0] * 6
    assert set(METADATA_KEYS) <= set(frame.metadata)
    objects = frame.metadata["kitti_objects"]
    assert objects.names == ("Car",) * 6 + ("DontCare",) * 4
    assert frame.metadata["kitti_dontcare"].names == ("DontCare",) * 4
    np.testing.assert_allclose(frame.metadata["kitti_dontcare"].bbox[0], [800.38, 163.67, 825.45, 184.07])
    assert frame.metadata["kitti_object_index"].tolist() == list(range(6))
    # Occlusion 3 is beyond hard; the fifth car is 39.6 px high, just too small for easy.
    assert frame.metadata["difficulty"].tolist() == [-1, 1, -1, 1, 1, 0]
    assert frame.metadata["image_shape"] == (375, 1242)
    assert isinstance(frame.metadata["calib"], KittiCalibration)
    # Boxes3D convention: the centre is half a height above the label's bottom centre.
    bottom = frame.metadata["calib"].rect_to_lidar(objects.location[:6])
    np.testing.assert_allclose(frame.boxes.centers[:, 2], bottom[:, 2] + objects.dimensions_hwl[:6, 0] / 2, atol=1e-5)
    np.testing.assert_allclose(frame.boxes.dims, objects.dimensions_hwl[:6][:, [2, 1, 0]], atol=1e-6)


def test_points_in_boxes_match_mmdetection3d(fixture_set):
    frame = fixture_set[0]
    counts = frame.metadata["num_points"]
    assert counts.dtype == np.int64
    assert counts.tolist() == frame.boxes.contains_points(frame.points.xyz).sum(axis=0).tolist()
    for ours, theirs in zip(counts, MMDET3D_CAR_POINTS):
        assert abs(ours - theirs) <= max(3, 0.08 * theirs), (counts.tolist(), MMDET3D_CAR_POINTS)
    # num_points is per box: it follows a selection of boxes, the label file's objects do not.
    subset = frame.select_boxes(np.array([4, 1]))
    assert subset.metadata["num_points"].tolist() == [counts[4], counts[1]]
    assert subset.metadata["kitti_object_index"].tolist() == [4, 1]
    assert len(subset.metadata["kitti_objects"]) == 10


def test_frame_000000_pedestrian_without_image(real_data, caplog):
    with caplog.at_level(logging.WARNING, logger="rdd3d.data.kitti.dataset"):
        dataset = KittiDataset(kitti_root(real_data), frame_ids=FIXTURE_IDS)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 of 2 frames have no image_2" in warnings[0] and "000000.png" in warnings[0]
    frame = dataset[1]
    assert frame.frame_id == "000000" and frame.metadata["image_shape"] is None
    assert len(frame.points) == 800  # no image: the cloud is not cropped to the field of view
    assert frame.labels.tolist() == [1]  # Pedestrian
    # mmdetection3d's GT-database box, bottom centre: [8.73, -1.856, -1.600, 1.20, 0.48, 1.89, -1.5808]
    expected = [8.73, -1.856, -1.600 + 1.89 / 2, 1.20, 0.48, 1.89, -1.5808]
    np.testing.assert_allclose(frame.boxes.tensor[0], expected, atol=0.01)
    assert frame.metadata["num_points"].tolist() == [0]  # its points are not in the 800-point subset


def test_other_classes_are_dropped_but_kept_for_the_metric(real_data, tmp_path):
    root = copy_frames(real_data, tmp_path)
    label = root / "training" / "label_2" / "000008.txt"
    extra = ("Van 0.00 0 -1.50 100.00 180.00 200.00 250.00 2.00 1.90 4.50 -8.00 1.70 20.00 -1.50\n"
             "Misc 0.00 0 -1.50 300.00 180.00 350.00 250.00 1.00 1.00 1.00 -4.00 1.70 25.00 -1.50\n")
    label.write_text(label.read_text() + extra)
    frame = KittiDataset(root, frame_ids=["000008"])[0]
    assert frame.labels.tolist() == [0] * 6
    assert frame.metadata["kitti_objects"].names[-2:] == ("Van", "Misc")
    pedestrians_only = KittiDataset(root, classes=("Pedestrian",), frame_ids=["000008"])[0]
    assert len(pedestrians_only.boxes) == 0 and pedestrians_only.metadata["num_points"].shape == (0,)
    assert len(pedestrians_only.metadata["kitti_objects"]) == 12
    with pytest.raises(ValueError, match="KITTI object types"):
        KittiDataset(root, classes=("car",), frame_ids=["000008"])


def test_fov_filter_keeps_the_reduced_cloud_and_drops_points_outside_the_image(real_data, tmp_path, fixture_set):
    frame = fixture_set[0]
    full = KittiDataset(kitti_root(real_data), frame_ids=["000008"], fov_only=False)[0]
    assert len(full.points) == len(frame.points)  # the fixture is already mmdetection3d's reduced cloud
    calib, shape = frame.metadata["calib"], frame.metadata["image_shape"]

    # ahead / behind / far left / far right / ahead but 30 m above the sensor / ahead, low
    xyz = np.array([[10, 0, -1], [-10, 0, -1], [5, 30, -1], [5, -30, -1], [10, 0, 30], [20, 2, -1.5]], np.float32)
    expected = [True, False, False, False, False, True]
    assert camera_fov_mask(xyz, calib, shape).tolist() == expected
    root = copy_frames(real_data, tmp_path)
    cloud = PointCloud(np.column_stack([xyz, np.full(len(xyz), 0.5, np.float32)]))
    write_points(root / "training" / "velodyne" / "000008.bin", cloud)
    reduced = KittiDataset(root, frame_ids=["000008"])[0]
    np.testing.assert_array_equal(reduced.points.points, cloud.points[expected])
    assert len(KittiDataset(root, frame_ids=["000008"], fov_only=False)[0].points) == len(xyz)


def test_point_dir_reads_another_cloud_folder(real_data, tmp_path):
    root = copy_frames(real_data, tmp_path)
    (root / "training" / "velodyne").rename(root / "training" / "velodyne_reduced")
    frame = KittiDataset(root, frame_ids=["000008"], point_dir="velodyne_reduced")[0]
    assert len(frame.points) == 17_238
    with pytest.raises(KittiFormatError, match=r"velodyne/000008\.bin"):
        KittiDataset(root, frame_ids=["000008"])


def test_split_files(real_data, tmp_path):
    root = copy_frames(real_data, tmp_path, FIXTURE_IDS)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000008\n\n000000\n")
    assert KittiDataset(root, "train").frame_ids == ["000008", "000000"]
    with pytest.raises(KittiFormatError, match=r"ImageSets/val\.txt: split file not found"):
        KittiDataset(root, "val")
    (root / "ImageSets" / "val.txt").write_text("\n \n")
    with pytest.raises(KittiFormatError, match=r"val\.txt: split file lists no frame ids"):
        KittiDataset(root, "val")
    (root / "ImageSets" / "val.txt").write_text("000008\n000000 000008\n")
    with pytest.raises(KittiFormatError, match=r"val\.txt, line 2: '000000 000008' is not a frame id"):
        KittiDataset(root, "val")
    (root / "ImageSets" / "val.txt").write_text("000008\n000000\n000008\n")
    with pytest.raises(KittiFormatError, match=r"val\.txt, line 3: frame id 000008 repeats line 1"):
        KittiDataset(root, "val")
    with pytest.raises(KittiFormatError, match=r"frame_ids, entry 2: '../000008' is not a frame id"):
        KittiDataset(root, frame_ids=["000008", "../000008"])
    with pytest.raises(TypeError, match="list of frame ids"):
        KittiDataset(root, frame_ids="000008")
    with pytest.raises(KittiFormatError, match="KITTI folder not found"):
        KittiDataset(tmp_path / "nowhere", frame_ids=["000008"])


def test_missing_point_files_raise_or_are_skipped_with_one_warning(real_data, tmp_path, caplog):
    root = copy_frames(real_data, tmp_path)
    ids = ["000008", "000001", "000002", "000003", "000004"]
    for frame_id in ids[1:]:  # calib and labels but no point cloud
        for kind in ("calib", "label_2"):
            shutil.copy(root / "training" / kind / "000008.txt", root / "training" / kind / f"{frame_id}.txt")
    with pytest.raises(KittiFormatError, match=r"velodyne/000001\.bin: file not found \(4 of 5 frames"):
        KittiDataset(root, frame_ids=ids)
    with caplog.at_level(logging.WARNING, logger="rdd3d.data.kitti.dataset"):
        dataset = KittiDataset(root, frame_ids=ids, on_missing="skip")
    assert dataset.frame_ids == ["000008"] and len(dataset[0].boxes) == 6
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "skipping 4 of 5 frames" in message and "000001.bin" in message and "000003.bin" in message
    assert "000004.bin" not in message  # only the first few are named
    (root / "training" / "calib" / "000008.txt").unlink()
    with pytest.raises(KittiFormatError, match=r"calib/000008\.txt: file not found"):
        KittiDataset(root, frame_ids=["000008"])


def test_testing_split_has_no_labels(real_data, tmp_path):
    root = copy_frames(real_data, tmp_path, folder="testing")
    shutil.rmtree(root / "testing" / "label_2")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "test.txt").write_text("000008\n")
    dataset = KittiDataset(root, "test")
    frame = dataset[0]
    assert not dataset.has_labels and len(frame.points) == 17_238 and len(frame.boxes) == 0
    assert "kitti_objects" not in frame.metadata and frame.metadata["num_points"].shape == (0,)
    with pytest.raises(ValueError, match="frame 000008: no KITTI ground truth"):
        evaluate_kitti_frames([frame], [gt_detections(frame)])


def test_bad_calib_and_label_files_name_file_and_line(real_data, tmp_path):
    root = copy_frames(real_data, tmp_path)
    calib = root / "training" / "calib" / "000008.txt"
    calib.write_text("".join(line for line in calib.read_text().splitlines(True) if not line.startswith("P2:")))
    with pytest.raises(KittiFormatError, match=r"calib/000008\.txt: calibration matrix P2 missing"):
        KittiDataset(root, frame_ids=["000008"])[0]

    root = copy_frames(real_data, tmp_path / "second")
    label = root / "training" / "label_2" / "000008.txt"
    lines = label.read_text().splitlines(True)
    lines[2] = " ".join(lines[2].split()[:-1]) + "\n"  # 14 fields
    label.write_text("".join(lines))
    with pytest.raises(KittiFormatError, match=r"label_2/000008\.txt, line 3: expected 15 fields .* got 14"):
        KittiDataset(root, frame_ids=["000008"])[0]
    lines[2] = "Car 0.00 0 -1.50 100.00 180.00 200.00 250.00 1.50 0.00 4.00 -8.00 1.70 20.00 -1.50\n"
    label.write_text("".join(lines))
    with pytest.raises(KittiFormatError, match=r"label_2/000008\.txt: object 3 \(Car\) has h, w, l"):
        KittiDataset(root, frame_ids=["000008"])[0]


def test_bev_picture_of_000008(fixture_set, tmp_path):
    frame = fixture_set[0]
    path = tmp_path / "000008_bev.png"
    save_bev(path, frame.points, [BoxLayer(frame.boxes, frame.labels)], classes=frame.classes, title="KITTI 000008")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


@pytest.mark.parametrize("preset", ["cp-voxel-xxs", "cp-pillar-v0.64"])
def test_detectors_run_on_000008_and_their_results_are_kitti_files(preset, fixture_set, tmp_path):
    torch.manual_seed(0)
    detector = build_detector(preset, dataset="kitti").eval()
    assert detector.classes == fixture_set.classes
    frame = crop_to_range(fixture_set[0], detector.point_cloud_range)
    assert len(frame.boxes) == 6 and 16_000 < len(frame.points) < 17_238
    with torch.no_grad():
        detections = detector.decode(detector(collate_frames([frame]).points))
    assert len(detections) == 1 and detections[0].boxes.shape[1] == 7 and len(detections[0].scores) > 0
    (path,) = write_kitti_results(tmp_path, [frame], detections)
    assert path == tmp_path / "000008.txt"
    written = read_label_file(path)
    assert len(written) == len(detections[0].scores) and written.score is not None
    assert set(written.names) <= set(frame.classes.names)


def test_ground_truth_as_detections_round_trips_and_scores_ap_100(real_data, tmp_path):
    frame = KittiDataset(kitti_root(real_data), classes=("Car",), frame_ids=["000008"])[0]
    (path,) = write_kitti_results(tmp_path / "results", [frame], [gt_detections(frame)])
    assert all(len(line.split()) == 16 for line in path.read_text().splitlines())
    written = read_label_file(path)
    objects = frame.metadata["kitti_objects"]
    assert written.names == ("Car",) * 6
    np.testing.assert_allclose(written.score, 1.0)
    np.testing.assert_allclose(written.location, objects.location[:6], atol=2e-4)  # 4 decimals in the file
    np.testing.assert_allclose(written.dimensions_hwl, objects.dimensions_hwl[:6], atol=2e-4)
    np.testing.assert_allclose(np.cos(written.rotation_y - objects.rotation_y[:6]), 1.0, atol=1e-6)
    np.testing.assert_allclose(written.bbox, objects.bbox[:6], atol=3.0)  # projected vs labelled 2D boxes

    # 000008 has 4 cars that count at "moderate"; with fewer than 41 the official sampling cannot
    # reach AP 100 (docs/evaluation-kitti.md), so the frame is scored 11 times (44 cars).
    copies = 11
    result = evaluate_kitti_frames([frame] * copies, [gt_detections(frame)] * copies)
    assert result.entry("Car", "3d").num_ground_truth[1] == 4 * copies
    for metric in ("bbox", "bev", "3d"):
        assert result.ap("Car", metric, "moderate", 40) == pytest.approx(100.0)
        assert result.ap("Car", metric, "moderate", 11) == pytest.approx(100.0)
    # The labels' alpha has two decimals, ours is computed: orientation similarity is 1 - O(1e-5).
    assert result.ap("Car", "aos", "moderate", 40) == pytest.approx(100.0, abs=0.01)
    assert kitti_summary(result, ["Car"]) == pytest.approx({"mAP": 1.0, "AP/Car": 1.0, "AP_bev/Car": 1.0})
    from_files = evaluate_kitti([objects] * copies, [written] * copies, classes=("Car",))
    assert from_files.ap("Car", "3d", "moderate", 40) == pytest.approx(100.0)

    lifted = gt_detections(frame)._replace(boxes=torch.from_numpy(frame.boxes.tensor) + torch.tensor(
        [0, 0, 1.0, 0, 0, 0, 0]))  # 1 m up: no 3D overlap left, BEV unchanged
    result = evaluate_kitti_frames([frame] * copies, [lifted] * copies, metrics=("bev", "3d"))
    assert result.ap("Car", "3d", "moderate", 40) == 0.0
    assert result.ap("Car", "bev", "moderate", 40) == pytest.approx(100.0)


def test_detections_need_valid_labels_and_a_kitti_frame(fixture_set):
    frame = fixture_set[0]
    bad = gt_detections(frame)._replace(labels=torch.full((6,), 3))
    with pytest.raises(ValueError, match=r"detections of frame 000008: labels must lie in 0\.\.2"):
        kitti_detections(frame, bad)
    with pytest.raises(ValueError, match="no 'calib'"):
        kitti_detections(frame.replace(metadata={}), gt_detections(frame))
    assert isinstance(kitti_detections(frame, gt_detections(frame)), KittiObjects)
    with pytest.raises(ValueError, match="1 frames but 2 detections"):
        write_kitti_results("unused", [frame], [gt_detections(frame)] * 2)
