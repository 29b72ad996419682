import logging

import numpy as np
import pytest

from rdd3d.data.io import PointFileError, read_points, write_points
from rdd3d.core.types import PointCloud


def test_round_trip(tmp_path):
    cloud = PointCloud(np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32))
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
