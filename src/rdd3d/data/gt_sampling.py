"""Ground-truth database sampling ("GT-paste"), as SECOND, PointPillars and CenterPoint train.

Two halves, both generic over datasets because they work on :class:`Frame`:

* :func:`build_gt_database` cuts every labelled object out of a set of frames: the points inside
  its box, **translated so that the box centre is the origin** (not rotated), one float32 ``.bin``
  per object, and one JSON index describing them all.
* :class:`GroundTruthSampler` pastes objects from such a database into a training frame: per class
  it tops the frame up to ``sample_counts[class]`` objects, drops candidates whose bird's-eye-view
  box overlaps a box already there, removes the frame's points inside the pasted boxes and appends
  the objects' points, boxes and labels. Objects go back exactly where they were recorded.

The index may also describe object files written by other tools: OpenPCDet's are relative to the
box centre like ours, mmdetection3d's to the centre of the box's *bottom* face; each entry says
which origin its points use (``points_origin``). The ``box`` of an entry is always in rdd3d's
convention (centre, see :mod:`rdd3d.core.types`), whatever the origin of its points.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from rdd3d.data.io import read_point_array, write_points
from rdd3d.core.types import BOX_FIELDS, Boxes3D, ClassTable, Frame, PointCloud
from rdd3d.core.geometry import bev_overlap_area
from rdd3d.core.fileio import write_json

#: File name of the index inside a database folder.
INDEX_NAME = "gt_database.json"
INDEX_FORMAT = "rdd3d-gt-database"
INDEX_VERSION = 1
#: Where an object's stored points have their origin: the box centre (what we and OpenPCDet write)
#: or the centre of the box's bottom face (mmdetection3d's databases).
POINT_ORIGINS = ("box_center", "box_bottom_center")
_REQUIRED_FIELDS = ("class_name", "box", "num_points", "frame_id", "path", "point_columns", "points_origin")
_OPTIONAL_FIELDS = ("difficulty",)
#: Difficulty given to a pasted box whose database entry has none (KITTI's "unknown").
UNKNOWN_DIFFICULTY = -1


class GTDatabaseError(ValueError):
    """A database index or object file that cannot be used; the message names the file and field."""


@dataclass
class GTSamplingConfig:
    """Ground-truth sampling of a training run (pasted before the global flips/rotation/scaling)."""

    enabled: bool = False
    database: str = ""  # the index written by build_gt_database, or the folder holding it
    # Class -> how many objects of that class a frame should hold after pasting (OpenPCDet's
    # SAMPLE_GROUPS with LIMIT_WHOLE_SCENE): a frame with 3 cars and {"car": 15} gets up to 12 more.
    sample_counts: dict[str, int] = field(default_factory=dict)
    # Class -> fewest points an object needs to be pasted (classes not listed: at least 1).
    min_points: dict[str, int] = field(default_factory=dict)
    # Objects whose difficulty is listed are never pasted (KITTI: [-1] drops the unknown ones).
    exclude_difficulties: list[int] = field(default_factory=list)
    # Drop the frame's own points inside a pasted box (a pasted car must not hold a wall's points).
    remove_overlapping_points: bool = True

    def __post_init__(self) -> None:
        for name, table in (("sample_counts", self.sample_counts), ("min_points", self.min_points)):
            negative = {key: value for key, value in table.items() if value < 0}
            if negative:
                raise ValueError(f"gt_sampling.{name} must be >= 0, got {negative}")
        if self.enabled and not self.database:
            raise ValueError("gt_sampling.enabled needs gt_sampling.database (an index from build_gt_database)")
        if self.enabled and not any(self.sample_counts.values()):
            raise ValueError("gt_sampling.enabled but gt_sampling.sample_counts asks for no object")


@dataclass(frozen=True)
class DatabaseObject:
    """One entry of a database index, validated."""

    source: str  # "<index file>: objects[i]", for messages
    class_name: str
    box: np.ndarray  # (9,) float32, centre convention; vx, vy are 0 when the entry had 7 values
    num_points: int
    frame_id: str
    path: Path
    point_columns: tuple[str, ...]
    points_origin: str
    difficulty: int | None

    def origin(self) -> np.ndarray:  # (3,) where the stored points' origin lies in the LiDAR frame
        origin = self.box[:3].copy()
        if self.points_origin == "box_bottom_center":
            origin[2] -= self.box[5] / 2
        return origin

    def read_points(self, columns: Sequence[str]) -> np.ndarray:
        """``(num_points, len(columns))`` float32 points back in the LiDAR frame, with ``columns``:
        a column the file lacks (e.g. time_lag) is 0, one it has beyond ``columns`` is dropped."""
        stored = read_point_array(self.path, len(self.point_columns))
        if len(stored) != self.num_points:
            raise GTDatabaseError(f"{self.path}: holds {len(stored)} points but {self.source} "
                                  f"says num_points {self.num_points}")
        points = np.zeros((len(stored), len(columns)), dtype=np.float32)
        for target, name in enumerate(columns):
            if name in self.point_columns:
                points[:, target] = stored[:, self.point_columns.index(name)]
        points[:, :3] += self.origin()
        return points


def index_path(database: str | os.PathLike) -> Path:
    """The index file of ``database`` (the index itself or the folder holding it)."""
    path = Path(database)
    return path / INDEX_NAME if path.is_dir() else path


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _points_in_each_box(boxes: Boxes3D, xyz: np.ndarray) -> list[np.ndarray]:
    """Per box, the indices of the points inside it (faces included). One box at a time after a
    bounding-square test, so memory stays O(points) however many boxes there are."""
    reach = np.hypot(boxes.dims[:, 0], boxes.dims[:, 1]) / 2 * (1 + 1e-6) + 1e-6
    x, y = np.ascontiguousarray(xyz[:, 0]), np.ascontiguousarray(xyz[:, 1])
    members = []
    for k in range(len(boxes)):
        (cx, cy), r = boxes.centers[k, :2], reach[k]
        near = np.flatnonzero((x >= cx - r) & (x <= cx + r) & (y >= cy - r) & (y <= cy + r))
        members.append(near[boxes.select([k]).contains_points(xyz[near])[:, 0]])
    return members


def build_gt_database(
    frames: Iterable[Frame],
    out_dir: str | os.PathLike,
    classes: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Write every object of ``frames`` (of ``classes``, default all) with at least one point to
    ``out_dir``: ``<frame>_<class>_<box index>.bin`` holding the points inside its box relative to
    the box centre, all columns of the cloud, and the index ``gt_database.json``; returns the index.

    The index is written last and atomically: it exists only once every object file is complete.
    A frame's per-box ``metadata["difficulty"]``, when present, is recorded.
    """
    out_dir = Path(out_dir)
    objects: list[dict] = []
    stems: dict[str, str] = {}
    for frame in tqdm(frames, desc="gt database", unit="frame", disable=not progress):
        stem = _file_stem(frame.frame_id)
        if stem in stems:
            raise ValueError(f"frames {stems[stem]!r} and {frame.frame_id!r} both write {stem}_*.bin: "
                             "frame ids must be unique")
        stems[stem] = frame.frame_id
        wanted = None if classes is None else set(frame.classes.indices(classes, source="build_gt_database"))
        difficulty = frame.metadata.get("difficulty")
        if not (isinstance(difficulty, np.ndarray) and difficulty.shape == (len(frame.boxes),)):
            difficulty = None
        members = _points_in_each_box(frame.boxes, frame.points.xyz)
        for k, inside in enumerate(members):
            label = int(frame.labels[k])
            if (wanted is not None and label not in wanted) or len(inside) == 0:
                continue
            class_name = frame.classes.name(label)
            points = frame.points.points[inside]  # a copy: fancy indexing
            points[:, :3] -= frame.boxes.centers[k]
            file_name = f"{stem}_{_file_stem(class_name)}_{k}.bin"
            write_points(out_dir / file_name, PointCloud(points, frame.points.columns))
            entry = {
                "class_name": class_name,
                "box": [float(value) for value in frame.boxes.tensor[k]],
                "num_points": int(len(inside)),
                "frame_id": frame.frame_id,
                "path": file_name,
                "point_columns": list(frame.points.columns),
                "points_origin": "box_center",
            }
            if difficulty is not None:
                entry["difficulty"] = int(difficulty[k])
            objects.append(entry)
    index = out_dir / INDEX_NAME
    # Compact: a nuScenes database holds over a million objects.
    write_json(index, {"format": INDEX_FORMAT, "version": INDEX_VERSION, "objects": objects}, indent=None)
    return index


def _parse_entry(entry, source: str, folder: Path) -> DatabaseObject:
    def bad(name: str, expected: str) -> GTDatabaseError:
        value = entry.get(name, "<missing>") if isinstance(entry, dict) else entry
        return GTDatabaseError(f"{source}: field {name!r}: expected {expected}, got {value!r}")

    if not isinstance(entry, dict):
        raise GTDatabaseError(f"{source}: expected an object (JSON mapping), got {entry!r}")
    missing = [name for name in _REQUIRED_FIELDS if name not in entry]
    if missing:
        raise GTDatabaseError(f"{source}: missing field(s) {missing}")
    unknown = sorted(set(entry) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise GTDatabaseError(f"{source}: unknown field(s) {unknown}; known: {_REQUIRED_FIELDS + _OPTIONAL_FIELDS}")
    for name in ("class_name", "frame_id", "path"):
        if not isinstance(entry[name], str) or not entry[name]:
            raise bad(name, "a non-empty string")
    box = entry["box"]
    if (not isinstance(box, list) or len(box) not in (7, 9)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise bad("box", f"7 or 9 numbers ({', '.join(BOX_FIELDS)}[, vx, vy]) with x, y, z the box centre")
    try:
        Boxes3D(np.array([box], dtype=np.float32))
    except ValueError as error:
        raise GTDatabaseError(f"{source}: field 'box': {error}") from None
    num_points = entry["num_points"]
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 0:
        raise bad("num_points", "an integer >= 0")
    columns = entry["point_columns"]
    if (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
            or len(set(columns)) != len(columns) or not {"x", "y", "z"} <= set(columns)):
        raise bad("point_columns", "a list of unique column names including x, y and z")
    if entry["points_origin"] not in POINT_ORIGINS:
        raise bad("points_origin", f"one of {POINT_ORIGINS}")
    difficulty = entry.get("difficulty")
    if difficulty is not None and (not isinstance(difficulty, int) or isinstance(difficulty, bool)):
        raise bad("difficulty", "an integer")
    padded = np.zeros(9, dtype=np.float32)
    padded[: len(box)] = box
    return DatabaseObject(
        source=source, class_name=entry["class_name"], box=padded,
        num_points=num_points, frame_id=entry["frame_id"], path=folder / entry["path"],
        point_columns=tuple(columns), points_origin=entry["points_origin"], difficulty=difficulty,
    )


def read_gt_database(database: str | os.PathLike) -> list[DatabaseObject]:
    """Every entry of a database index (the file or its folder), validated; paths in the index are
    relative to the index's folder. Object files are not opened here."""
    path = index_path(database)
    if not path.is_file():
        raise GTDatabaseError(f"{path}: gt database index not found (write one with build_gt_database)")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise GTDatabaseError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(content, dict) or content.get("format") != INDEX_FORMAT:
        raise GTDatabaseError(f"{path}: not a gt database index (expected a mapping with "
                              f"\"format\": {INDEX_FORMAT!r})")
    if content.get("version") != INDEX_VERSION:
        raise GTDatabaseError(f"{path}: field 'version': expected {INDEX_VERSION}, got {content.get('version')!r}")
    unknown = sorted(set(content) - {"format", "version", "objects"})
    if unknown:
        raise GTDatabaseError(f"{path}: unknown top-level field(s) {unknown}")
    if not isinstance(content.get("objects"), list):
        raise GTDatabaseError(f"{path}: field 'objects': expected a list of objects")
    return [_parse_entry(entry, f"{path}: objects[{i}]", path.parent) for i, entry in enumerate(content["objects"])]


@dataclass(frozen=True)
class _ClassPool:
    label: int
    objects: list[DatabaseObject]
    boxes: np.ndarray  # (K, 9) float32


def _non_overlapping(candidates: np.ndarray, occupied: np.ndarray) -> np.ndarray:
    """``(P,)`` bool: candidates kept, in order, each overlapping in BEV neither an ``occupied`` box
    nor a candidate kept before it. (OpenPCDet drops both of two overlapping candidates; keeping the
    first brings the frame closer to its target count.)"""
    blocked = np.zeros(len(candidates), dtype=bool)
    if len(occupied):
        blocked = (bev_overlap_area(candidates, occupied) > 0).any(dim=1).numpy()
    among = (bev_overlap_area(candidates, candidates) > 0).numpy()
    keep = np.zeros(len(candidates), dtype=bool)
    for i in range(len(candidates)):
        keep[i] = not blocked[i] and not (among[i] & keep).any()
    return keep


class GroundTruthSampler:
    """Pastes database objects into frames of ``classes`` whose points have ``point_columns``.

    The index is read and every object file it will use checked (exists, right size) once, here;
    object points are read when an object is pasted.
    """

    def __init__(self, config: GTSamplingConfig, classes: ClassTable, point_columns: Sequence[str]) -> None:
        self.config = config
        self.classes = classes
        self.point_columns = tuple(point_columns)
        index = index_path(config.database)
        for name in (*config.sample_counts, *config.min_points):
            classes.index(name, source=f"gt_sampling config (database {index})")
        excluded = set(config.exclude_difficulties)
        by_class: dict[str, list[DatabaseObject]] = {name: [] for name in config.sample_counts}
        for obj in read_gt_database(index):
            if (obj.class_name in by_class and obj.num_points >= max(1, config.min_points.get(obj.class_name, 0))
                    and obj.difficulty not in excluded):
                _check_object_file(obj)
                by_class[obj.class_name].append(obj)
        self.pools: dict[str, _ClassPool] = {}
        for name, objects in by_class.items():
            if config.sample_counts[name] == 0:
                continue
            if not objects:
                raise GTDatabaseError(
                    f"{index}: no {name!r} object passes the filters (min_points "
                    f"{max(1, config.min_points.get(name, 0))}, exclude_difficulties {sorted(excluded)}) "
                    f"but gt_sampling.sample_counts asks for {config.sample_counts[name]}")
            boxes = np.stack([obj.box for obj in objects])
            self.pools[name] = _ClassPool(classes.index(name), objects, boxes)

    def pool_size(self, class_name: str) -> int:
        """How many objects of the class may be pasted (after the filters)."""
        return len(self.pools[class_name].objects) if class_name in self.pools else 0

    def sample(self, frame: Frame, rng: np.random.Generator) -> Frame:
        """``frame`` with objects pasted in; the same ``rng`` state gives the same frame."""
        if frame.classes != self.classes:
            raise ValueError(f"frame {frame.frame_id} has classes {frame.classes.names}, "
                             f"the gt sampler {self.classes.names}")
        if frame.points.columns != self.point_columns:
            raise ValueError(f"frame {frame.frame_id} has point columns {frame.points.columns}, "
                             f"the gt sampler {self.point_columns}")
        occupied = frame.boxes.tensor[:, :7]
        chosen: list[DatabaseObject] = []
        for name, pool in self.pools.items():
            wanted = self.config.sample_counts[name] - int((frame.labels == pool.label).sum())
            if wanted <= 0:
                continue
            # Without replacement within a frame; a fresh draw per frame keeps frames independent
            # of the order (and the worker) in which they are loaded.
            picks = rng.choice(len(pool.objects), size=min(wanted, len(pool.objects)), replace=False)
            candidates = pool.boxes[picks, :7]
            keep = _non_overlapping(candidates, occupied)
            occupied = np.concatenate([occupied, candidates[keep]])
            chosen.extend(pool.objects[i] for i in picks[keep])
        return self._paste(frame, chosen) if chosen else frame

    def _paste(self, frame: Frame, chosen: list[DatabaseObject]) -> Frame:
        width = frame.boxes.tensor.shape[1]  # pasted boxes get vx = vy = 0 if the database has none
        pasted_boxes = Boxes3D(np.stack([obj.box[:width] for obj in chosen]))
        points = frame.points.points
        if self.config.remove_overlapping_points:
            inside = np.concatenate(_points_in_each_box(pasted_boxes, frame.points.xyz))
            points = np.delete(points, inside, axis=0)  # an index listed twice is deleted once
        points = np.concatenate([points] + [obj.read_points(self.point_columns) for obj in chosen])
        labels = np.concatenate([frame.labels, [self.classes.index(obj.class_name) for obj in chosen]])
        return frame.replace(
            points=frame.points.replace(points),
            boxes=Boxes3D(np.concatenate([frame.boxes.tensor, pasted_boxes.tensor])),
            labels=labels,
            metadata=_extend_per_box_metadata(frame.metadata, len(frame.boxes), chosen),
        )


def _check_object_file(obj: DatabaseObject) -> None:
    if not obj.path.is_file():
        raise GTDatabaseError(f"{obj.path}: object file not found ({obj.source})")
    expected = obj.num_points * len(obj.point_columns) * 4
    size = obj.path.stat().st_size
    if size != expected:
        raise GTDatabaseError(
            f"{obj.path}: {size} bytes, but {obj.source} says {obj.num_points} points x "
            f"{len(obj.point_columns)} float32 columns = {expected} bytes")


def _extend_per_box_metadata(metadata: dict, count: int, chosen: list[DatabaseObject]) -> dict:
    """Per-box arrays (leading dimension ``count``) grow by one row per pasted object, so that they
    keep following the boxes: ``num_points`` gets the object's point count, ``difficulty`` its
    difficulty (``UNKNOWN_DIFFICULTY`` if the database has none); any other signed-integer array
    gets -1, as a pasted box has no row in the frame's own tables (e.g. KITTI's
    ``kitti_object_index``), and any other array zeros."""
    extended = {}
    for key, value in metadata.items():
        if not (isinstance(value, np.ndarray) and value.shape[:1] == (count,)):
            extended[key] = value
            continue
        if key == "num_points":
            rows = np.array([obj.num_points for obj in chosen], dtype=value.dtype)
        elif key == "difficulty":
            rows = np.array([UNKNOWN_DIFFICULTY if obj.difficulty is None else obj.difficulty for obj in chosen],
                            dtype=value.dtype)
        else:
            fill = -1 if np.issubdtype(value.dtype, np.signedinteger) else 0
            rows = np.full((len(chosen), *value.shape[1:]), fill, dtype=value.dtype)
        extended[key] = np.concatenate([value, rows])
    return extended
