"""Writing synthetic splits to disk and reading them back as identical Frames.

Layout (docs/synthetic-world.md)::

    root/dataset.json            format, version, classes (the world config's, labels' table), point
                                 columns, class ranges, and per split: seed, world config, frame ids
    root/points/<frame_id>.bin   raw little-endian float32 rows (x, y, z, intensity, time_lag)
    root/labels/<frame_id>.txt   one box per line: class x y z dx dy dz yaw vx vy num_points

A dataset is written into a staging folder beside ``root`` (``.<name>.partial``) and renamed into place
when complete: an interrupted write leaves ``root`` as it was, and the next write starts afresh. Floats are written as the shortest decimal of their float64 value, so
float32 values read back bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

from rdd3d.data.io import read_points, write_points
from rdd3d.data.synthetic.config import WorldConfig
from rdd3d.data.synthetic.dataset import CLASS_RANGES, SyntheticDataset
from rdd3d.data.synthetic.lidar import POINT_COLUMNS
from rdd3d.core.types import BOX_FIELDS, VELOCITY_FIELDS, Boxes3D, ClassTable, Frame
from rdd3d.core.fileio import atomic_open, write_json

FORMAT = "rdd3d-synthetic"
FORMAT_VERSION = 1
LABEL_FIELDS = ("class", *BOX_FIELDS, *VELOCITY_FIELDS, "num_points")


class DatasetFormatError(ValueError):
    """A dataset directory or label file that does not follow the documented layout."""


def write_dataset(root: str | os.PathLike, datasets: Mapping[str, SyntheticDataset], progress: bool = True,
                  overwrite: bool = False) -> Path:
    """Write every frame of every split under ``root``; returns the path of dataset.json.

    ``root`` must be absent or empty unless ``overwrite``, which replaces it once the new dataset is complete:
    frames of two worlds never mix under one dataset.json."""
    root = Path(root)
    class_names = {tuple(d.classes.names) for d in datasets.values()}
    if len(class_names) > 1:
        raise ValueError(f"write_dataset: splits disagree on their classes: {sorted(class_names)}")
    occupied = root.exists() and (not root.is_dir() or any(root.iterdir()))
    if occupied and not overwrite:
        raise FileExistsError(f"{root}: exists and is not empty; write the dataset elsewhere or replace it "
                              "(overwrite, `rdd3d simulate --overwrite`)")
    if occupied and not root.is_dir():
        raise FileExistsError(f"{root}: is a file, not a dataset folder; not replaced")
    staging = root.parent / f".{root.name}.partial"
    if staging.exists():  # left by a write that was killed
        shutil.rmtree(staging)
    total = sum(len(d) for d in datasets.values())
    with tqdm(total=total, desc=f"writing {root}", unit="frame", disable=not progress) as bar:
        for dataset in datasets.values():
            for index in range(len(dataset)):
                frame = dataset[index]
                write_points(staging / "points" / f"{frame.frame_id}.bin", frame.points)
                _write_labels(staging / "labels" / f"{frame.frame_id}.txt", frame)
                bar.update()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(next(iter(class_names), ())),
        "point_columns": list(POINT_COLUMNS),
        "class_ranges": CLASS_RANGES,
        "splits": {split: split_entry(d) for split, d in datasets.items()},
    }
    write_json(staging / "dataset.json", manifest)
    _replace_folder(root, staging)
    return root / "dataset.json"


def _replace_folder(root: Path, complete: Path) -> None:
    replaced = root.parent / f".{root.name}.replaced"
    if replaced.exists():
        shutil.rmtree(replaced)
    if root.exists():
        root.rename(replaced)
    complete.rename(root)
    if replaced.exists():
        shutil.rmtree(replaced)


def split_entry(dataset: SyntheticDataset) -> dict:
    """What dataset.json records of a split: its seed, world config and frame ids."""
    return {"seed": dataset.seed, "world_config": dataclasses.asdict(dataset.config),
            "frames": [dataset.frame_id(i) for i in range(len(dataset))]}


def simulate(root: str | os.PathLike, train_size: int, val_size: int, seed: int = 0,
             config: WorldConfig = WorldConfig(), progress: bool = True, overwrite: bool = False) -> Path:
    """Generate a train and a val split of the synthetic world and write them under ``root``."""
    datasets = {split: SyntheticDataset(split, size, seed, config)
                for split, size in (("train", train_size), ("val", val_size))}
    return write_dataset(root, datasets, progress, overwrite)


def _write_labels(path: Path, frame: Frame) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("# " + " ".join(LABEL_FIELDS) + "\n")
        for box, label, count in zip(frame.boxes.tensor, frame.labels, frame.metadata["num_points"]):
            numbers = " ".join(repr(float(v)) for v in box)
            handle.write(f"{frame.classes.name(label)} {numbers} {int(count)}\n")


class DiskDataset:
    """A split written by :func:`write_dataset`, read back as the same Frames."""

    evaluation = "nuscenes"  # as SyntheticDataset

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        self.root = Path(root)
        manifest = _read_manifest(self.root / "dataset.json")
        if split not in manifest["splits"]:
            raise DatasetFormatError(
                f"{self.root / 'dataset.json'}: no split {split!r}; it has {sorted(manifest['splits'])}"
            )
        entry = manifest["splits"][split]
        self.split = split
        self.classes = ClassTable(tuple(manifest["classes"]))
        self.columns = tuple(manifest["point_columns"])
        self.class_ranges = dict(manifest["class_ranges"])
        self.seed = entry["seed"]
        self.world_config = WorldConfig(**entry["world_config"])
        if self.world_config.classes != self.classes.names:
            # Labels are written by name and read into the manifest's table: a split whose world placed
            # other classes was not written by write_dataset, or was edited since.
            raise DatasetFormatError(
                f"{self.root / 'dataset.json'}: split {split!r} was generated with world_config.classes "
                f"{list(self.world_config.classes)}, but the dataset's classes are {list(self.classes.names)}"
            )
        self.frame_ids = list(entry["frames"])

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> Frame:
        frame_id = self.frame_ids[index]
        points = read_points(self.root / "points" / f"{frame_id}.bin", len(self.columns), self.columns)
        boxes, labels, num_points = _read_labels(self.root / "labels" / f"{frame_id}.txt", self.classes)
        return Frame(frame_id, points, boxes, labels, self.classes, {"num_points": num_points})


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: not found; write a dataset with `rdd3d simulate` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetFormatError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    missing = [key for key in ("classes", "point_columns", "class_ranges", "splits") if key not in manifest]
    if missing:
        raise DatasetFormatError(f"{path}: missing field(s) {missing}")
    return manifest


def _read_labels(path: Path, classes: ClassTable) -> tuple[Boxes3D, np.ndarray, np.ndarray]:
    """Boxes (M, 9), labels (M,) and num_points (M,) of one label file; errors name file, line and field."""
    if not path.is_file():
        raise DatasetFormatError(f"{path}: label file not found")
    boxes, labels, counts = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) != len(LABEL_FIELDS):
            raise DatasetFormatError(
                f"{where}: expected {len(LABEL_FIELDS)} fields ({' '.join(LABEL_FIELDS)}), got {len(fields)}"
            )
        labels.append(classes.index(fields[0], source=where))
        boxes.append([_parse_number(where, name, text) for name, text in zip(LABEL_FIELDS[1:-1], fields[1:-1])])
        for name, value in zip(BOX_FIELDS[3:6], boxes[-1][3:6]):
            if value <= 0:
                raise DatasetFormatError(f"{where}: field {name!r} = {value} must be > 0")
        counts.append(_parse_count(where, fields[-1]))
    tensor = np.array(boxes, np.float32).reshape(-1, len(LABEL_FIELDS) - 2)
    return Boxes3D(tensor), np.array(labels, np.int64), np.array(counts, np.int64)


def _parse_number(where: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetFormatError(f"{where}: field {name!r} = {text!r} is not a number") from None
    if not np.isfinite(value):
        raise DatasetFormatError(f"{where}: field {name!r} = {text!r} is not finite")
    return value


def _parse_count(where: str, text: str) -> int:
    if not text.isdigit():
        raise DatasetFormatError(f"{where}: field 'num_points' = {text!r} is not a non-negative integer")
    return int(text)
