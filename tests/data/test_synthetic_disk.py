"""Writing the synthetic world to disk and reading it back: exact round trip, clear errors on bad files."""

import json

import numpy as np
import pytest

from rdd3d.data.io import PointFileError
from rdd3d.data.synthetic import DatasetFormatError, DiskDataset, LidarConfig, SyntheticDataset, WorldConfig, simulate

TINY = WorldConfig(lidar=LidarConfig(beams=8, azimuth_resolution_deg=2.0), objects_per_scene=(4, 6),
                   distractors_per_scene=(2, 4))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    simulate(root, train_size=2, val_size=1, seed=5, config=TINY, progress=False)
    return root


def _copy(written, tmp_path):
    """A private copy of the written dataset, safe to damage."""
    for path in written.rglob("*"):
        if path.is_file():
            target = tmp_path / path.relative_to(written)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return tmp_path


def test_round_trip_is_exact(written):
    for split, size in (("train", 2), ("val", 1)):
        generated = SyntheticDataset(split, size, seed=5, config=TINY)
        loaded = DiskDataset(written, split)
        assert len(loaded) == size and loaded.classes == generated.classes
        assert loaded.world_config == TINY and loaded.class_ranges == generated.class_ranges and loaded.seed == 5
        for index in range(size):
            a, b = generated[index], loaded[index]
            assert a.frame_id == b.frame_id
            assert a.points.columns == b.points.columns
            np.testing.assert_array_equal(a.points.points, b.points.points)
            np.testing.assert_array_equal(a.boxes.tensor, b.boxes.tensor)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.metadata["num_points"], b.metadata["num_points"])


def test_layout_is_as_documented(written):
    manifest = json.loads((written / "dataset.json").read_text())
    assert manifest["format_version"] == 1 and manifest["point_columns"][-1] == "time_lag"
    assert manifest["splits"]["val"]["frames"] == ["val_000000"]
    assert (written / "points" / "train_000001.bin").stat().st_size % (5 * 4) == 0
    header, *lines = (written / "labels" / "train_000000.txt").read_text().splitlines()
    assert header.startswith("# class x y z dx dy dz yaw vx vy num_points") and len(lines[0].split()) == 11


@pytest.mark.parametrize("bad_line, message", [
    ("car 1 2 3 4 5 6 7 8 9", r"train_000000\.txt:3: expected 11 fields"),
    ("car 1 2 3 4 x 6 7 8 9 10", r"train_000000\.txt:3: field 'dy' = 'x' is not a number"),
    ("car 1 2 nan 4 5 6 7 8 9 10", r"train_000000\.txt:3: field 'z' = 'nan' is not finite"),
    ("car 1 2 3 4 5 0 7 8 9 10", r"train_000000\.txt:3: field 'dz' = 0.0 must be > 0"),
    ("car 1 2 3 4 5 6 7 8 9 -1", r"train_000000\.txt:3: field 'num_points' = '-1'"),
    ("tram 1 2 3 4 5 6 7 8 9 10", r"train_000000\.txt:3: unknown class name 'tram'; known classes are \['car',"),
])
def test_bad_label_lines_name_file_line_and_field(written, tmp_path, bad_line, message):
    root = _copy(written, tmp_path)
    labels = root / "labels" / "train_000000.txt"
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([*lines[:2], bad_line, *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=message):
        DiskDataset(root, "train")[0]


def test_missing_or_foreign_dataset_and_split(written, tmp_path):
    with pytest.raises(DatasetFormatError, match="dataset.json: not found"):
        DiskDataset(tmp_path / "nowhere")
    with pytest.raises(DatasetFormatError, match=r"no split 'test'; it has \['train', 'val'\]"):
        DiskDataset(written, "test")
    root = _copy(written, tmp_path)
    manifest = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DatasetFormatError, match="version 99; expected 'rdd3d-synthetic' version 1"):
        DiskDataset(root)


def test_truncated_point_file_is_reported(written, tmp_path):
    root = _copy(written, tmp_path)
    points = root / "points" / "val_000000.bin"
    points.write_bytes(points.read_bytes()[:-4])
    with pytest.raises(PointFileError, match="val_000000.bin.*not a multiple of 5 columns"):
        DiskDataset(root, "val")[0]


def test_a_class_subset_is_recorded_and_read_back(tmp_path):
    config = WorldConfig(lidar=TINY.lidar, objects_per_scene=(4, 6), distractors_per_scene=(2, 4),
                         classes=("pedestrian", "barrier"))
    simulate(tmp_path / "subset", train_size=1, val_size=1, seed=2, config=config, progress=False)
    manifest = json.loads((tmp_path / "subset" / "dataset.json").read_text())
    assert manifest["classes"] == ["pedestrian", "barrier"]
    assert manifest["splits"]["train"]["world_config"]["classes"] == ["pedestrian", "barrier"]
    loaded, generated = DiskDataset(tmp_path / "subset", "train"), SyntheticDataset("train", 1, seed=2, config=config)
    assert loaded.classes.names == ("pedestrian", "barrier") and loaded.world_config == config
    np.testing.assert_array_equal(loaded[0].labels, generated[0].labels)
    # A split whose world placed other classes than the dataset's table names is refused.
    manifest["splits"]["train"]["world_config"]["classes"] = ["car", "barrier"]
    (tmp_path / "subset" / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetFormatError, match=r"dataset.json: split 'train' was generated with world_config.classes"):
        DiskDataset(tmp_path / "subset", "train")
    assert DiskDataset(tmp_path / "subset", "val").classes.names == ("pedestrian", "barrier")


def test_a_dataset_written_before_class_subsets_reads_with_every_class(written, tmp_path):
    copy = _copy(written, tmp_path)
    manifest = json.loads((copy / "dataset.json").read_text())
    for entry in manifest["splits"].values():
        del entry["world_config"]["classes"]
    (copy / "dataset.json").write_text(json.dumps(manifest))
    assert DiskDataset(copy, "train").world_config == TINY
