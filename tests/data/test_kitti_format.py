"""KITTI label/calib parsing, camera <-> LiDAR boxes and 2D projection, on the real KITTI fixtures
(frames 000008 and 000000; see SOURCE.md beside them) and on small hand-written files."""

from __future__ import annotations

import numpy as np
import pytest

from rdd3d.data.io import read_point_array, read_points
from rdd3d.core.types import Boxes3D
from rdd3d.data.kitti.format import (
    KittiFormatError,
    KittiObjects,
    camera_to_lidar_boxes,
    detections_from_lidar_boxes,
    image_boxes,
    lidar_to_camera_boxes,
    observation_angle,
    parse_calib_lines,
    parse_label_lines,
    read_calib_file,
    read_image_shape,
    read_label_file,
    wrap_angle,
    write_label_file,
)

CAR_LINE = "Car 0.00 1 2.04 334.85 178.94 624.50 372.04 1.57 1.50 3.68 -1.17 1.65 7.86 1.90"


def training(real_data):
    return real_data / "kitti" / "training"


def real_frame(real_data, frame_id):
    root = training(real_data)
    return read_label_file(root / "label_2" / f"{frame_id}.txt"), read_calib_file(root / "calib" / f"{frame_id}.txt")


def test_label_file_fields(real_data):
    labels, _ = real_frame(real_data, "000008")
    assert labels.names == ("Car",) * 6 + ("DontCare",) * 4
    assert labels.is_dontcare.tolist() == [False] * 6 + [True] * 4
    assert labels.score is None
    # second line: Car 0.00 1 2.04 334.85 178.94 624.50 372.04 1.57 1.50 3.68 -1.17 1.65 7.86 1.90
    assert labels.occluded[1] == 1 and labels.truncated[1] == 0.0 and labels.alpha[1] == 2.04
    np.testing.assert_allclose(labels.bbox[1], [334.85, 178.94, 624.50, 372.04])
    np.testing.assert_allclose(labels.dimensions_hwl[1], [1.57, 1.50, 3.68])
    np.testing.assert_allclose(labels.location[1], [-1.17, 1.65, 7.86])
    assert labels.rotation_y[1] == 1.90
    pedestrian, _ = real_frame(real_data, "000000")
    assert pedestrian.names == ("Pedestrian",)


def test_calib_file_matrices(real_data):
    _, calib = real_frame(real_data, "000008")
    assert calib.p2.shape == (3, 4) and calib.r0_rect.shape == (3, 3) and calib.tr_velo_to_cam.shape == (3, 4)
    assert calib.p2[0, 0] == pytest.approx(721.5377) and calib.p2[0, 3] == pytest.approx(44.85728)
    points = np.array([[10.0, 2.0, -1.0], [40.0, -5.0, 0.5]])
    np.testing.assert_allclose(calib.rect_to_lidar(calib.lidar_to_rect(points)), points, atol=1e-9)
    # LiDAR +x (forward) is camera +z, LiDAR +y (left) is camera -x
    forward = calib.lidar_to_rect(np.array([[20.0, 0.0, 0.0]]))[0]
    assert forward[2] == pytest.approx(20, abs=0.5) and abs(forward[0]) < 0.5


def test_boxes_round_trip_between_camera_and_lidar(real_data):
    for frame_id in ("000008", "000000"):
        labels, calib = real_frame(real_data, frame_id)
        objects = labels.select(~labels.is_dontcare)
        lidar = camera_to_lidar_boxes(objects, calib)
        back = lidar_to_camera_boxes(lidar, calib)
        np.testing.assert_allclose(back.location, objects.location, atol=1e-5)
        np.testing.assert_allclose(back.dimensions_hwl, objects.dimensions_hwl, atol=1e-6)
        np.testing.assert_allclose(wrap_angle(back.rotation_y - objects.rotation_y), 0, atol=1e-6)
        # alpha is ry minus the viewing angle: recomputed from the boxes it matches the labels
        np.testing.assert_allclose(wrap_angle(observation_angle(objects) - objects.alpha), 0, atol=0.05)


def test_lidar_boxes_hold_their_points(real_data):
    labels, calib = real_frame(real_data, "000008")
    lidar = camera_to_lidar_boxes(labels.select(~labels.is_dontcare), calib)
    cloud = read_points(training(real_data) / "velodyne" / "000008.bin", file_columns=4)
    inside = lidar.contains_points(cloud.xyz).sum(axis=0)
    # mmdetection3d's num_lidar_pts for these six cars (SOURCE.md): within 8%
    np.testing.assert_allclose(inside, [1424, 1940, 878, 668, 53, 164], rtol=0.08)
    # the same boxes raised 3 m hold (almost) nothing
    moved = lidar.tensor.copy()
    moved[:, 2] += 3.0
    assert Boxes3D(moved).contains_points(cloud.xyz).sum() < 0.05 * inside.sum()


def test_pedestrian_box_matches_the_gt_database(real_data):
    labels, calib = real_frame(real_data, "000000")
    box = camera_to_lidar_boxes(labels, calib)
    # mmdetection3d's database box (bottom centre, l, w, h, yaw) from SOURCE.md
    expected_bottom = np.array([8.73, -1.856, -1.600])
    np.testing.assert_allclose(box.centers[0] - [0, 0, box.dims[0, 2] / 2], expected_bottom, atol=0.01)
    np.testing.assert_allclose(box.dims[0], [1.20, 0.48, 1.89], atol=1e-6)
    assert wrap_angle(box.yaw[0] - -1.5808) == pytest.approx(0, abs=1e-3)
    # its 377 points are stored relative to the bottom centre; put back they lie in the box
    points = read_point_array(real_data / "kitti" / "gt_database" / "000000_Pedestrian_0.bin", 4)[:, :3]
    assert len(points) == 377
    assert box.contains_points(points + expected_bottom, margin=0.05).all()


def test_projected_boxes_match_the_labelled_2d_boxes(real_data):
    labels, calib = real_frame(real_data, "000008")
    shape = read_image_shape(training(real_data) / "image_2" / "000008.png")
    assert shape == (375, 1242)
    cars = labels.select(~labels.is_dontcare)
    projected = image_boxes(cars, calib, shape)
    np.testing.assert_allclose(projected, cars.bbox, atol=2.5)  # "within about 2 px" (SOURCE.md)

    lidar = camera_to_lidar_boxes(cars, calib)
    dets = detections_from_lidar_boxes(lidar, np.linspace(0.9, 0.4, 6), cars.names, calib, shape)
    assert dets.names == cars.names and dets.score.tolist() == pytest.approx(np.linspace(0.9, 0.4, 6).tolist())
    np.testing.assert_allclose(dets.bbox, cars.bbox, atol=2.5)
    np.testing.assert_allclose(dets.location, cars.location, atol=1e-5)
    assert (dets.truncated == -1).all() and (dets.occluded == -1).all()
    # the first car is cut by the image's left edge: its box is clipped to x = 0
    assert dets.bbox[0, 0] == 0.0 and (dets.bbox[:, 2] <= shape[1] - 1).all()


def test_label_write_read_round_trip(tmp_path, real_data):
    labels, calib = real_frame(real_data, "000008")
    cars = labels.select(~labels.is_dontcare)
    dets = detections_from_lidar_boxes(camera_to_lidar_boxes(cars, calib), np.full(6, 0.123456789), cars.names,
                                       calib, (375, 1242))
    write_label_file(tmp_path / "000008.txt", dets)
    again = read_label_file(tmp_path / "000008.txt")
    assert again.names == dets.names
    np.testing.assert_allclose(again.score, dets.score, rtol=1e-7)
    np.testing.assert_allclose(again.location, dets.location, atol=1e-4)
    np.testing.assert_allclose(again.bbox, dets.bbox, atol=1e-4)
    write_label_file(tmp_path / "gt.txt", labels)
    assert read_label_file(tmp_path / "gt.txt").names == labels.names


def test_label_errors_name_file_and_line(tmp_path):
    path = tmp_path / "000001.txt"
    path.write_text(CAR_LINE + "\n" + "Car 0.00 1 2.04 334.85\n")
    with pytest.raises(KittiFormatError, match=r"000001.txt, line 2: expected 15 fields .* got 5"):
        read_label_file(path)
    path.write_text(CAR_LINE + " 0.9\n" + CAR_LINE + "\n")
    with pytest.raises(KittiFormatError, match=r"line 2: has 15 fields but earlier lines have 16"):
        read_label_file(path)
    path.write_text(CAR_LINE.replace("7.86", "seven") + "\n")
    with pytest.raises(KittiFormatError, match=r"line 1: field 'z' is 'seven', expected a number"):
        read_label_file(path)
    path.write_text(CAR_LINE.replace("1.90", "nan") + "\n")
    with pytest.raises(KittiFormatError, match=r"line 1: field 'rotation_y' is not finite"):
        read_label_file(path)
    with pytest.raises(KittiFormatError, match="label file not found"):
        read_label_file(tmp_path / "missing.txt")
    path.write_text("\n")
    assert len(read_label_file(path)) == 0


CALIB_LINES = [
    "P0: 700 0 600 0 0 700 180 0 0 0 1 0",
    "P1: 700 0 600 -380 0 700 180 0 0 0 1 0",
    "P2: 700 0 600 45 0 700 180 0 0 0 1 0",
    "R0_rect: 1 0 0 0 1 0 0 0 1",
    "Tr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27",
]


def test_calib_errors_name_file_line_and_matrix(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(CALIB_LINES) + "\n")
    calib = read_calib_file(path)
    np.testing.assert_allclose(calib.lidar_to_rect(np.array([[10.0, 1.0, 0.0]])), [[-1.0, -0.08, 9.73]])
    path.write_text("\n".join(line for line in CALIB_LINES if not line.startswith("R0_rect")))
    with pytest.raises(KittiFormatError, match=r"calib.txt: calibration matrix R0_rect missing"):
        read_calib_file(path)
    path.write_text("\n".join(line if not line.startswith("P2") else "P2: 1 2 3" for line in CALIB_LINES))
    with pytest.raises(KittiFormatError, match=r"calib.txt, line 3: P2 needs 12 finite numbers \(3x4\), got 3"):
        read_calib_file(path)
    with pytest.raises(KittiFormatError, match=r"<calib>, line 1: expected 'KEY: values'"):
        parse_calib_lines(["P2 1 2 3"])
    with pytest.raises(KittiFormatError, match="calibration file not found"):
        read_calib_file(tmp_path / "missing.txt")
    with pytest.raises(KittiFormatError, match="not a PNG"):
        read_image_shape(path)


def test_objects_validate_shapes_and_values():
    parsed = parse_label_lines([CAR_LINE])
    with pytest.raises(ValueError, match=r"KittiObjects.bbox must have shape \(1, 4\)"):
        KittiObjects(parsed.names, parsed.truncated, parsed.occluded, parsed.alpha, np.zeros((1, 3)),
                     parsed.dimensions_hwl, parsed.location, parsed.rotation_y)
    with pytest.raises(ValueError, match=r"KittiObjects.score of object 0 \(Car\) is not finite"):
        KittiObjects(parsed.names, parsed.truncated, parsed.occluded, parsed.alpha, parsed.bbox,
                     parsed.dimensions_hwl, parsed.location, parsed.rotation_y, [np.nan])
    assert len(KittiObjects.empty(with_score=True).select(np.zeros(0, dtype=bool))) == 0
