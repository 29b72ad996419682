import logging

import numpy as np
import pytest

from rdd3d.data.io import PointFileError, read_point_array, read_points, write_points
from rdd3d.core.types import PointCloud

NUSCENES_KEYFRAME = "nuscenes/samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"


def lidar_rows(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 5)`` float32 rows as a nuScenes LiDAR file holds them: x, y, z, intensity 0..255, ring 0..31."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-50, 50, size=(count, 3)) * [1, 1, 0.05]
    return np.column_stack([xyz, rng.integers(0, 256, count), rng.integers(0, 32, count)]).astype(np.float32)


def test_round_trip(tmp_path):
    cloud = PointCloud(np.abs(np.random.default_rng(0).normal(size=(100, 4))).astype(np.float32) * [1, -1, 1, 1])
    write_points(tmp_path / "a.bin", cloud)
    back = read_points(tmp_path / "a.bin", file_columns=4)
    np.testing.assert_array_equal(back.points, cloud.points)


def test_keeps_leading_columns_of_wider_file(tmp_path):
    data = np.arange(20, dtype=np.float32).reshape(4, 5)
    data.tofile(tmp_path / "nusc.bin")
    cloud = read_points(tmp_path / "nusc.bin", file_columns=5)
    np.testing.assert_array_equal(cloud.points, data[:, :4])


@pytest.mark.parametrize(
    "content, message",
    [
        (np.arange(10, dtype=np.float32), "not a multiple of 4 columns"),
        (np.array([], dtype=np.float32), "empty"),
        (np.array([0, 1, np.nan, 2, 3, 4, 5, np.inf], dtype=np.float32), "2 point.*NaN or Inf"),
        (np.array([0, 1, 2, 3, 1e30, 1, 2, 3], dtype=np.float32), "1 point\\(s\\) lie beyond ±100000 m \\(first at point 1, x = 1e\\+30\\)"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    content.tofile(path)
    with pytest.raises(PointFileError, match=message) as error:
        read_points(path, file_columns=4)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(PointFileError, match="not found"):
        read_points(tmp_path / "nope.bin", file_columns=4)
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(PointFileError, match="dir.bin: is a directory, not a point file"):
        read_points(tmp_path / "dir.bin", file_columns=4)


def test_skip_policy_logs_and_returns_none(tmp_path, caplog):
    path = tmp_path / "bad.bin"
    np.arange(10, dtype=np.float32).tofile(path)
    with caplog.at_level(logging.WARNING):
        assert read_points(path, file_columns=4, on_bad_file="skip") is None
    assert "bad.bin" in caplog.text


def test_a_nuscenes_file_read_with_another_column_count_is_refused_by_its_name(tmp_path):
    path = tmp_path / "n008__LIDAR_TOP__1.pcd.bin"
    lidar_rows(8).tofile(path)  # 160 bytes: 10 rows of 4 columns as well
    with pytest.raises(PointFileError, match=r"pcd\.bin: a nuScenes LiDAR file \(\*\.pcd\.bin\) holds 5 float32 "
                                             r"columns \(x, y, z, intensity, ring\), not the 4 it was to be read as"):
        read_points(path, file_columns=4)
    assert read_points(path, file_columns=5).points.shape == (8, 4)


def test_a_kitti_scan_read_with_another_column_count_is_refused_by_its_name(tmp_path):
    (tmp_path / "velodyne").mkdir()
    path = tmp_path / "velodyne" / "000001.bin"
    lidar_rows(10)[:, :4].tofile(path)  # 160 bytes: 8 rows of 5 columns as well
    with pytest.raises(PointFileError, match=r"a KITTI velodyne scan \(velodyne/\*\.bin\) holds 4 float32 columns "
                                             r"\(x, y, z, reflectance\), not the 5"):
        read_point_array(path, 5)


def test_a_5_column_file_read_as_4_columns_fails_on_its_values_and_names_the_right_count(tmp_path):
    path = tmp_path / "frame.bin"  # a name that tells nothing
    rows = lidar_rows(400)
    rows.tofile(path)
    assert path.stat().st_size % 16 == 0
    with pytest.raises(PointFileError, match=r"frame\.bin: column 4 \(intensity\) is negative at \d+ of 500 points "
                                             r"\(the first: point \d+, -[\d.]+\), which no LiDAR writes: its rows are "
                                             r"probably not 4 float32 columns wide .*; read as 5 columns its values "
                                             r"are plausible$"):
        read_points(path, file_columns=4)
    np.testing.assert_array_equal(read_points(path, file_columns=5).points, rows[:, :4])


def test_a_ring_index_must_be_a_whole_number(tmp_path):
    rows = lidar_rows(4)
    rows[2, 4] = 3.5
    rows.tofile(tmp_path / "frame.bin")
    with pytest.raises(PointFileError, match=r"column 5 \(ring\) is not a whole number at 1 of 4 points \(the first: "
                                             r"point 2, 3\.5\)"):
        read_point_array(tmp_path / "frame.bin", 5, columns=("x", "y", "z", "intensity", "ring"))
    assert read_point_array(tmp_path / "frame.bin", 5).shape == (4, 5)  # unnamed columns are not checked


def test_the_real_nuscenes_keyframe_read_as_4_columns_fails(real_data, tmp_path):
    keyframe = real_data / NUSCENES_KEYFRAME
    assert keyframe.stat().st_size % 16 == 0  # 34,688 rows of 5 columns divide into 43,360 rows of 4
    with pytest.raises(PointFileError, match="holds 5 float32 columns"):
        read_points(keyframe, file_columns=4)
    renamed = tmp_path / "sweep.bin"
    renamed.write_bytes(keyframe.read_bytes())
    with pytest.raises(PointFileError, match=r"column 4 \(intensity\) is negative at 17418 of 43360 points.*read as 5 "
                                             "columns its values are plausible"):
        read_points(renamed, file_columns=4)
    assert len(read_points(renamed, 5, ("x", "y", "z", "intensity")).points) == 34688
