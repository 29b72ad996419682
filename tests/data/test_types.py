import numpy as np
import pytest

from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud


def test_point_inside_rotated_box():
    # A 4 x 2 box rotated by 90 degrees: its length now runs along +y.
    boxes = Boxes3D(np.array([[10.0, 5.0, 1.0, 4.0, 2.0, 1.5, np.pi / 2]]))
    inside_along_y = np.array([[10.0, 6.8, 1.0]])  # 1.8 m along the heading, inside (half length 2)
    outside_along_x = np.array([[11.5, 5.0, 1.0]])  # 1.5 m sideways, outside (half width 1)
    assert boxes.contains_points(inside_along_y)[0, 0]
    assert not boxes.contains_points(outside_along_x)[0, 0]


def test_yaw_is_counter_clockwise_from_x():
    # yaw = +pi/2 points the heading along +y: the front-left corner is at (-dy/2, +dx/2) offset.
    boxes = Boxes3D(np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, np.pi / 2]]))
    front_left_bottom = boxes.corners()[0, 0]
    np.testing.assert_allclose(front_left_bottom, [-1.0, 2.0, -1.0], atol=1e-6)


def test_box_centre_is_geometric_centre_not_bottom():
    boxes = Boxes3D(np.array([[0.0, 0.0, 1.0, 4.0, 2.0, 2.0, 0.0]]))
    corners = boxes.corners()[0]
    assert corners[:, 2].min() == pytest.approx(0.0)
    assert corners[:, 2].max() == pytest.approx(2.0)


def test_boxes_reject_bad_values():
    with pytest.raises(ValueError, match="non-finite yaw"):
        Boxes3D(np.array([[0, 0, 0, 1, 1, 1, np.nan]]))
    with pytest.raises(ValueError, match="non-positive size"):
        Boxes3D(np.array([[0, 0, 0, 1, 0, 1, 0]]))
    with pytest.raises(ValueError, match=r"\(M, 7\) or \(M, 9\)"):
        Boxes3D(np.zeros((2, 8)))


def test_point_cloud_columns_validated():
    cloud = PointCloud(np.zeros((3, 5)), ("x", "y", "z", "intensity", "time_lag"))
    assert cloud.column("time_lag").shape == (3,)
    with pytest.raises(ValueError, match="start with x, y, z"):
        PointCloud(np.zeros((3, 3)), ("y", "x", "z"))
    with pytest.raises(ValueError, match="4 columns but 3 names"):
        PointCloud(np.zeros((3, 4)), ("x", "y", "z"))
    with pytest.raises(KeyError, match="no column 'time_lag'"):
        PointCloud(np.zeros((3, 4))).column("time_lag")


def test_unknown_class_name_lists_known_ones():
    table = ClassTable(("car", "pedestrian"))
    assert table.index("pedestrian") == 1
    with pytest.raises(ValueError, match=r"unknown class name 'tram'.*\['car', 'pedestrian'\]"):
        table.index("tram", source="labels/000001.txt")


def test_select_boxes_keeps_per_box_metadata_aligned():
    boxes = Boxes3D(np.array([[0, 0, 0, 1, 1, 1, 0], [5, 0, 0, 1, 1, 1, 0], [9, 0, 0, 1, 1, 1, 0]]))
    frame = Frame(
        "f", PointCloud(np.zeros((1, 4))), boxes, np.array([0, 1, 0]), ClassTable(("a", "b")),
        metadata={"num_points": np.array([3, 0, 7]), "scene": "s1"},
    )
    kept = frame.select_boxes(np.array([True, False, True]))
    np.testing.assert_array_equal(kept.metadata["num_points"], [3, 7])
    np.testing.assert_array_equal(kept.labels, [0, 0])
    assert kept.metadata["scene"] == "s1"
