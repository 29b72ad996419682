import json
from pathlib import Path

import numpy as np
import pytest

from rdd3d.data.gt_sampling import (
    INDEX_NAME, GroundTruthSampler, GTDatabaseError, GTSamplingConfig, build_gt_database, read_gt_database,
)
from rdd3d.data.io import read_point_array
from rdd3d.data.kitti import KittiDataset
from rdd3d.data.synthetic.dataset import SyntheticDataset
from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud
from rdd3d.core.config_loading import build_config
from rdd3d.core.geometry import bev_overlap_area

CLASSES = ClassTable(("car", "pedestrian"))
COLUMNS = ("x", "y", "z", "intensity")
CAR_SIZE, PEDESTRIAN_SIZE = (4.0, 1.8, 1.6), (0.7, 0.7, 1.8)


def _points_inside(box: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``(count, 3)`` points uniformly inside the box, shrunk a little so float error cannot push them out."""
    local = rng.uniform(-0.45, 0.45, size=(count, 3)) * box[3:6]
    cos, sin = np.cos(box[6]), np.sin(box[6])
    return np.stack([local[:, 0] * cos - local[:, 1] * sin, local[:, 0] * sin + local[:, 1] * cos, local[:, 2]],
                    axis=1) + box[:3]


def _frame(frame_id, boxes, labels, counts, seed=0, extra_xyz=None, columns=COLUMNS, metadata=None) -> Frame:
    """Boxes with ``counts`` points inside each, plus clutter well below every box (z < -3)."""
    rng = np.random.default_rng(seed)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 7)
    parts = [_points_inside(box, n, rng) for box, n in zip(boxes, counts)]
    parts.append(np.column_stack([rng.uniform(-50, 50, (200, 2)), rng.uniform(-5, -3, 200)]))
    if extra_xyz is not None:
        parts.append(extra_xyz)
    xyz = np.concatenate(parts)
    extra = rng.uniform(0, 1, size=(len(xyz), len(columns) - 3))
    return Frame(frame_id, PointCloud(np.concatenate([xyz, extra], axis=1), columns), Boxes3D(boxes),
                 np.asarray(labels), CLASSES, metadata or {})


def _box(x, y, size, yaw=0.0):
    return [x, y, size[2] / 2, *size, yaw]


def _source_frames(num_frames=4):
    """Per frame 3 cars (5, 15, 25 points) and 3 pedestrians (2, 5, 8 points), every object at its own
    place, so no two database objects overlap; difficulty = position in the frame mod 3."""
    frames = []
    for f in range(num_frames):
        rng = np.random.default_rng(100 + f)
        boxes = [_box(10 + 12 * j, -30 + 15 * f, CAR_SIZE, rng.uniform(-3, 3)) for j in range(3)]
        boxes += [_box(15 + 12 * j, -30 + 15 * f, PEDESTRIAN_SIZE, rng.uniform(-3, 3)) for j in range(3)]
        frames.append(_frame(f"src/{f}", boxes, [0, 0, 0, 1, 1, 1], [5, 15, 25, 2, 5, 8], seed=f,
                             metadata={"difficulty": np.arange(6) % 3}))
    return frames


@pytest.fixture
def database(tmp_path) -> Path:
    return build_gt_database(_source_frames(), tmp_path / "db", progress=False)


def _target_frame(boxes=None, extra_xyz=None, **kwargs) -> Frame:
    # Two cars: one far from every database object, one exactly where database car src/0 #0 stands.
    if boxes is None:
        boxes = [_box(-20, 20, CAR_SIZE, 0.3), _box(10, -30, CAR_SIZE, 1.0)]
    return _frame("target", boxes, [0] * len(boxes), [30] * len(boxes), seed=7, extra_xyz=extra_xyz, **kwargs)


def _sampler(database, columns=COLUMNS, **fields) -> GroundTruthSampler:
    fields.setdefault("sample_counts", {"car": 6, "pedestrian": 4})
    return GroundTruthSampler(GTSamplingConfig(enabled=True, database=str(database), **fields), CLASSES, columns)


def _wall_over_database() -> np.ndarray:
    """Points covering every database object's place (what a real scene would have there)."""
    grid = np.stack(np.meshgrid(np.arange(5, 45, 0.25), np.arange(-33, 30, 0.25), indexing="ij"), -1).reshape(-1, 2)
    return np.column_stack([grid, np.full(len(grid), 0.5)])


def test_database_round_trip(tmp_path):
    boxes = [_box(5, 5, CAR_SIZE, 0.7), _box(-8, 3, PEDESTRIAN_SIZE, -2.0), _box(30, -9, CAR_SIZE)]
    frame = _frame("seq 1/000", boxes, [0, 1, 0], [50, 20, 0], metadata={"difficulty": np.array([0, 2, 1])})
    index = build_gt_database([frame], tmp_path, progress=True)
    assert index == tmp_path / INDEX_NAME
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    objects = read_gt_database(tmp_path)
    assert [(o.class_name, o.num_points, o.difficulty, o.frame_id) for o in objects] == [
        ("car", 50, 0, "seq 1/000"), ("pedestrian", 20, 2, "seq 1/000")]  # the empty third box is left out
    for k, obj in enumerate(objects):
        assert obj.path.name == f"seq_1_000_{obj.class_name}_{k}.bin"
        assert obj.points_origin == "box_center" and obj.point_columns == COLUMNS
        np.testing.assert_array_equal(obj.box[:7], frame.boxes.tensor[k])
        inside = frame.points.points[frame.boxes.select([k]).contains_points(frame.points.xyz)[:, 0]]
        stored = read_point_array(obj.path, 4)
        np.testing.assert_allclose(stored[:, :3], inside[:, :3] - frame.boxes.centers[k], atol=1e-6)
        np.testing.assert_array_equal(stored[:, 3], inside[:, 3])
        np.testing.assert_allclose(obj.read_points(COLUMNS), inside, atol=1e-5)
    only_pedestrians = build_gt_database([frame], tmp_path / "ped", classes=["pedestrian"], progress=False)
    assert [o.class_name for o in read_gt_database(only_pedestrians)] == ["pedestrian"]


def test_database_refuses_clashing_frame_ids_and_unknown_classes(tmp_path):
    frame = _frame("a/b", [_box(5, 5, CAR_SIZE)], [0], [10])
    with pytest.raises(ValueError, match="frame ids must be unique"):
        build_gt_database([frame, frame.replace(frame_id="a_b")], tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown class name 'bus'"):
        build_gt_database([frame], tmp_path, classes=["bus"], progress=False)


def test_sampling_tops_up_without_any_bev_overlap(database):
    sampler = _sampler(database)
    blocked = sampler.pools["car"].boxes[0, :7]  # database car src/0 #0: where a target car stands
    np.testing.assert_allclose(blocked[:2], [10, -30])
    frame = _target_frame()
    counts = []
    for seed in range(12):
        result = sampler.sample(frame, np.random.default_rng(seed))
        np.testing.assert_array_equal(result.boxes.tensor[:2], frame.boxes.tensor)
        overlap = bev_overlap_area(result.boxes.tensor, result.boxes.tensor).numpy()
        np.fill_diagonal(overlap, 0)
        assert (overlap == 0).all()
        assert not (np.abs(result.boxes.tensor[2:, :2] - blocked[:2]).sum(axis=1) < 1e-3).any()
        assert (result.labels == 1).sum() == 4  # no pedestrian is ever blocked
        counts.append(int((result.labels == 0).sum()))
    # 4 more cars are drawn from 12; a frame falls short only when it drew the blocked one.
    assert set(counts) == {5, 6}


def test_overlapping_candidates_keep_the_first(tmp_path):
    # Two database cars from different frames on the same spot: they never land in one frame together.
    frames = [_frame(f"f{i}", [_box(10, 10, CAR_SIZE, 0.1 * i)], [0], [10], seed=i) for i in range(2)]
    sampler = _sampler(build_gt_database(frames, tmp_path, progress=False), sample_counts={"car": 2})
    empty = _frame("empty", np.zeros((0, 7)), [], [])
    for seed in range(5):
        assert len(sampler.sample(empty, np.random.default_rng(seed)).boxes) == 1


def test_pasted_points_inside_pasted_boxes_and_frame_points_there_removed(database):
    wall = _wall_over_database()
    frame = _target_frame(extra_xyz=wall)
    result = _sampler(database).sample(frame, np.random.default_rng(3))
    pasted = result.boxes.select(np.arange(2, len(result.boxes)))
    counts = np.array([obj.num_points for obj in _chosen(database, pasted)])
    # the pasted points are the tail of the cloud, object after object, each inside its own box
    tail = result.points.xyz[len(result.points) - counts.sum():]
    for k, chunk in enumerate(np.split(tail, np.cumsum(counts)[:-1])):
        assert pasted.select([k]).contains_points(chunk, margin=1e-4).all()
    # inside a pasted box there is nothing but its own points: the wall there is gone
    np.testing.assert_array_equal(pasted.contains_points(result.points.xyz).sum(axis=0), counts)
    wall_inside = pasted.contains_points(wall).any(axis=1)
    assert wall_inside.sum() > 100
    assert len(result.points) == len(frame.points) - wall_inside.sum() + counts.sum()
    kept = _sampler(database, remove_overlapping_points=False).sample(frame, np.random.default_rng(3))
    assert len(kept.points) == len(frame.points) + counts.sum()


def _chosen(database, pasted: Boxes3D):
    """The database objects whose boxes were pasted, in order."""
    by_box = {tuple(obj.box[:7].tolist()): obj for obj in read_gt_database(database)}
    return [by_box[tuple(box[:7].tolist())] for box in pasted.tensor]


def test_counts_respect_sample_counts_min_points_and_difficulty(database):
    frame = _target_frame()
    sampler = _sampler(database, sample_counts={"car": 40, "pedestrian": 1}, min_points={"car": 15})
    assert sampler.pool_size("car") == 8 and sampler.pool_size("pedestrian") == 12
    result = sampler.sample(frame, np.random.default_rng(0))
    pasted = _chosen(database, result.boxes.select(np.arange(2, len(result.boxes))))
    assert sum(o.class_name == "car" for o in pasted) == 8  # the blocked car has 5 points: filtered out
    assert sum(o.class_name == "pedestrian" for o in pasted) == 1
    assert all(o.num_points >= 15 for o in pasted if o.class_name == "car")
    # a frame that already holds enough objects of a class gets none of it
    full = _target_frame(boxes=[_box(-20, 5 * i, PEDESTRIAN_SIZE) for i in range(3)])
    full = full.replace(labels=np.ones(3, dtype=np.int64))
    only_cars = _sampler(database, sample_counts={"car": 2, "pedestrian": 3}).sample(full, np.random.default_rng(1))
    assert (only_cars.labels == 1).sum() == 3 and (only_cars.labels == 0).sum() == 2
    no_hard = _sampler(database, exclude_difficulties=[2])
    assert no_hard.pool_size("car") == 8 and no_hard.pool_size("pedestrian") == 8
    result = no_hard.sample(frame, np.random.default_rng(2))
    assert all(o.difficulty != 2 for o in _chosen(database, result.boxes.select(np.arange(2, len(result.boxes)))))


def test_same_seed_same_frame(database):
    frame = _target_frame(extra_xyz=_wall_over_database())
    sampler = _sampler(database)
    first, again = (sampler.sample(frame, np.random.default_rng(11)) for _ in range(2))
    np.testing.assert_array_equal(first.points.points, again.points.points)
    np.testing.assert_array_equal(first.boxes.tensor, again.boxes.tensor)
    np.testing.assert_array_equal(first.labels, again.labels)
    other = sampler.sample(frame, np.random.default_rng(12))
    assert not np.array_equal(first.boxes.tensor, other.boxes.tensor)


def test_velocity_and_per_box_metadata_follow_the_pasted_boxes(database):
    frame = _target_frame()
    moving = np.concatenate([frame.boxes.tensor, [[1.0, 2.0], [0.0, -3.0]]], axis=1)
    frame = frame.replace(boxes=Boxes3D(moving), metadata={
        "num_points": np.array([30, 30]), "row": np.array([[4, 1], [5, 1]]), "score": np.array([0.5, 0.7]),
        "sensor": "lidar"})
    result = _sampler(database).sample(frame, np.random.default_rng(0))
    count = len(result.boxes)
    assert result.boxes.has_velocity and count > 2
    np.testing.assert_array_equal(result.boxes.velocity[:2], moving[:, 7:9])
    assert (result.boxes.velocity[2:] == 0).all()
    assert result.metadata["sensor"] == "lidar"
    np.testing.assert_array_equal(result.metadata["num_points"],
                                  [30, 30] + [o.num_points for o in _chosen(database, result.boxes.select(
                                      np.arange(2, count)))])
    assert result.metadata["row"].shape == (count, 2) and (result.metadata["row"][2:] == -1).all()
    assert result.metadata["score"].tolist() == [0.5, 0.7] + [0.0] * (count - 2)
    last = result.select_boxes(np.array([count - 1]))
    assert last.metadata["num_points"].shape == (1,) and last.metadata["row"].shape == (1, 2)


def test_point_columns_are_matched_to_the_frame(database, tmp_path):
    with_time = ("x", "y", "z", "intensity", "time_lag")
    frame = _target_frame(columns=with_time)
    result = _sampler(database, columns=with_time).sample(frame, np.random.default_rng(0))
    pasted = _chosen(database, result.boxes.select(np.arange(2, len(result.boxes))))
    added = result.points.points[-sum(o.num_points for o in pasted):]
    assert len(pasted) and (added[:, 4] == 0).all()
    # a database with a time_lag column pasted into a frame without one: the column is dropped
    timed_source = [_frame("t", [_box(0, 0, CAR_SIZE)], [0], [40], columns=with_time)]
    timed = build_gt_database(timed_source, tmp_path / "timed", progress=False)
    pasted = _sampler(timed, sample_counts={"car": 1}).sample(_target_frame(boxes=[]), np.random.default_rng(0))
    np.testing.assert_allclose(pasted.points.points[-40:], timed_source[0].points.points[:40, :4], atol=1e-5)
    with pytest.raises(ValueError, match="point columns"):
        _sampler(database).sample(frame, np.random.default_rng(0))


def test_real_kitti_pedestrian_as_a_bottom_centre_entry(real_data, tmp_path):
    path = real_data / "kitti" / "gt_database" / "000000_Pedestrian_0.bin"
    bottom = np.array([8.73, -1.856, -1.600], dtype=np.float32)
    length, width, height, yaw = 1.20, 0.48, 1.89, -1.5808  # from SOURCE.md (mmdetection3d's dbinfos)
    entry = {"class_name": "Pedestrian", "box": [8.73, -1.856, -1.600 + height / 2, length, width, height, yaw],
             "num_points": 377, "frame_id": "000000", "path": str(path.resolve()),
             "point_columns": list(COLUMNS), "points_origin": "box_bottom_center", "difficulty": 0}
    index = tmp_path / INDEX_NAME
    index.write_text(json.dumps({"format": "rdd3d-gt-database", "version": 1, "objects": [entry]}))
    classes = ClassTable(("Car", "Pedestrian", "Cyclist"))
    config = GTSamplingConfig(enabled=True, database=str(tmp_path), sample_counts={"Pedestrian": 1})
    sampler = GroundTruthSampler(config, classes, COLUMNS)
    rng = np.random.default_rng(0)
    wall = np.column_stack([rng.uniform(7, 10.5, 400), rng.uniform(-3.5, 0, 400), rng.uniform(-1.6, 0.2, 400)])
    frame = Frame("000008", PointCloud(np.column_stack([wall, np.ones(400)]), COLUMNS),
                  Boxes3D(np.array([[30.0, 5.0, -0.9, 3.9, 1.6, 1.5, 0.1]])), np.array([0]), classes,
                  {"difficulty": np.array([1])})
    result = sampler.sample(frame, rng)
    box = result.boxes.select([1])
    np.testing.assert_allclose(box.centers[0] - [0, 0, box.dims[0, 2] / 2], bottom, atol=1e-6)
    assert result.labels.tolist() == [0, 1] and result.metadata["difficulty"].tolist() == [1, 0]
    raw = read_point_array(path, 4)
    np.testing.assert_allclose(result.points.points[-377:, :3], raw[:, :3] + bottom, atol=1e-5)
    np.testing.assert_array_equal(result.points.points[-377:, 3], raw[:, 3])
    assert box.contains_points(result.points.xyz[-377:]).all()
    inside_before = box.contains_points(wall).any(axis=1).sum()
    assert inside_before > 0 and box.contains_points(result.points.xyz).sum() == 377
    assert len(result.points) == 400 - inside_before + 377


def test_kitti_cars_pasted_into_another_kitti_frame(real_data, tmp_path):
    dataset = KittiDataset(real_data / "kitti", frame_ids=["000008", "000000"])
    source, target = dataset[0], dataset[1]
    index = build_gt_database([source], tmp_path, classes=["Car"], progress=False)
    assert [o.num_points for o in read_gt_database(index)] == source.metadata["num_points"].tolist()
    config = GTSamplingConfig(enabled=True, database=str(index), sample_counts={"Car": 6}, min_points={"Car": 5})
    result = GroundTruthSampler(config, dataset.classes, target.points.columns).sample(
        target, np.random.default_rng(0))
    pasted = result.boxes.select(np.arange(1, len(result.boxes)))
    assert len(pasted) == 6 and (result.labels[1:] == 0).all()  # none of them meets the pedestrian
    overlap = bev_overlap_area(result.boxes.tensor, result.boxes.tensor).numpy()
    np.fill_diagonal(overlap, 0)
    assert (overlap == 0).all()
    np.testing.assert_array_equal(pasted.contains_points(result.points.xyz).sum(axis=0),
                                  result.metadata["num_points"][1:])
    assert result.metadata["kitti_object_index"].tolist() == [0] + [-1] * len(pasted)


def test_synthetic_world_round_trip(tmp_path):
    dataset = SyntheticDataset("train", 3)
    index = build_gt_database((dataset[i] for i in range(2)), tmp_path, classes=["car", "pedestrian"],
                              progress=False)
    config = GTSamplingConfig(enabled=True, database=str(index), sample_counts={"car": 20, "pedestrian": 10},
                              min_points={"car": 5})
    sampler = GroundTruthSampler(config, dataset.classes, dataset[0].points.columns)
    frame = dataset[2]
    result = sampler.sample(frame, np.random.default_rng(0))
    assert len(result.boxes) > len(frame.boxes) and result.boxes.has_velocity
    overlap = bev_overlap_area(result.boxes.tensor, result.boxes.tensor).numpy()
    np.fill_diagonal(overlap, 0)
    assert (overlap[len(frame.boxes):] == 0).all()
    assert len(result.metadata["num_points"]) == len(result.boxes)


VALID_ENTRY_CHANGES = {
    "missing box": (lambda e: e.pop("box"), "missing field(s) ['box']"),
    "short box": (lambda e: e.update(box=[1, 2, 3, 4, 5, 6]), "field 'box': expected 7 or 9 numbers"),
    "flat box": (lambda e: e.update(box=[1, 2, 3, 4, 0, 6, 0]), "field 'box': Boxes3D box 0 has a non-positive"),
    "misspelt field": (lambda e: e.update(difficuly=1), "unknown field(s) ['difficuly']"),
    "bad origin": (lambda e: e.update(points_origin="bottom"), "field 'points_origin': expected one of"),
    "negative count": (lambda e: e.update(num_points=-1), "field 'num_points': expected an integer >= 0"),
    "no z": (lambda e: e.update(point_columns=["x", "y", "intensity", "w"]), "field 'point_columns'"),
    "wrong count": (lambda e: e.update(num_points=e["num_points"] + 1), "bytes, but"),
    "missing file": (lambda e: e.update(path="nowhere.bin"), "nowhere.bin: object file not found"),
}


@pytest.mark.parametrize("change", VALID_ENTRY_CHANGES)
def test_bad_index_entries_are_named(database, change):
    modify, message = VALID_ENTRY_CHANGES[change]
    content = json.loads(database.read_text())
    modify(content["objects"][0])
    database.write_text(json.dumps(content))
    with pytest.raises(GTDatabaseError) as error:
        _sampler(database)
    assert message in str(error.value)
    assert f"{database}: objects[0]" in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other", "objects": []}', "not a gt database index"),
    ('{"format": "rdd3d-gt-database", "version": 2, "objects": []}', "field 'version': expected 1"),
    ('{"format": "rdd3d-gt-database", "version": 1, "objects": {}}', "field 'objects'"),
])
def test_bad_index_files_are_named(tmp_path, text, message):
    index = tmp_path / "index.json"
    index.write_text(text)
    with pytest.raises(GTDatabaseError, match=message) as error:
        read_gt_database(index)
    assert str(index) in str(error.value)
    with pytest.raises(GTDatabaseError, match="index not found"):
        read_gt_database(tmp_path / "missing.json")


def test_config_and_sampler_refuse_what_cannot_work(database):
    with pytest.raises(ValueError, match="needs gt_sampling.database"):
        GTSamplingConfig(enabled=True, sample_counts={"car": 1})
    with pytest.raises(ValueError, match="must be >= 0"):
        GTSamplingConfig(min_points={"car": -1})
    with pytest.raises(ValueError, match="unknown class name 'truck'"):
        _sampler(database, sample_counts={"truck": 1})
    with pytest.raises(GTDatabaseError, match="no 'car' object passes the filters"):
        _sampler(database, min_points={"car": 1000})
    loaded = build_config(GTSamplingConfig, overrides=[f"database={database}", "enabled=true",
                                                        "sample_counts.car=15", "min_points.car=5"])
    assert loaded.sample_counts == {"car": 15} and loaded.min_points == {"car": 5}
