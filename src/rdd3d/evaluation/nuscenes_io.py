"""Reading nuScenes submission files and ground truth into :class:`BoxTable` columns.

Submission schema (the devkit's): ``{"meta": {...}, "results": {sample_token: [box, ...]}}`` where
a box holds ``sample_token, translation (x, y, z), size (w, l, h), rotation (w, x, y, z),
velocity (vx, vy), detection_name, detection_score, attribute_name`` and, for ground truth,
``num_pts``; ``ego_translation`` is optional. Every ground-truth sample needs an entry, possibly
empty. NaN is refused everywhere except in ``velocity``, where it means "unknown", as in the devkit.

Ground truth comes from a nuScenes dataroot through nuscenes-devkit (imported lazily, an optional
dependency) or from a JSON file of the same schema whose boxes are in the ego frame (then the ego
translation defaults to the translation).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rdd3d.evaluation.nuscenes_metrics import (
    NO_ATTRIBUTE, NUSCENES_ATTRIBUTES, UNKNOWN_NUM_PTS, BoxTable, MetricConfig, NuScenesMetrics,
    check_boxes_per_sample, detection_cvpr_2019, evaluate_detections,
)
from rdd3d.core.fileio import write_json

_VECTOR_FIELDS = {"translation": 3, "size": 3, "rotation": 4, "velocity": 2, "ego_translation": 3}
_COMMON_FIELDS = ("sample_token", "translation", "size", "rotation", "velocity", "detection_name", "attribute_name")


def quaternion_yaw(rotation: np.ndarray) -> np.ndarray:
    """``(N, 4)`` quaternions (w, x, y, z) -> ``(N,)`` heading of the rotated x axis, as the
    devkit's ``quaternion_yaw`` (scale-free, so unnormalised quaternions give the same yaw)."""
    w, x, y, z = np.asarray(rotation, dtype=np.float64).T
    return np.arctan2(2 * (x * y + w * z), w * w + x * x - y * y - z * z)


def yaw_quaternion(yaw: np.ndarray) -> np.ndarray:
    """``(N,)`` heading -> ``(N, 4)`` quaternions (w, x, y, z) of a rotation about +z."""
    half = np.asarray(yaw, dtype=np.float64) / 2
    zeros = np.zeros_like(half)
    return np.stack([np.cos(half), zeros, zeros, np.sin(half)], axis=1)


def boxes_from_results(results: Any, config: MetricConfig, *, ground_truth: bool = False,
                       source: str = "results") -> BoxTable:
    """Validate and convert ``{sample_token: [box dict, ...]}`` (see the module docstring).

    Errors name ``source``, the sample token, the box index and the field.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"{source}: expected an object mapping sample tokens to lists of boxes, "
                         f"got {type(results).__name__}")
    for token, boxes in results.items():
        if not isinstance(boxes, list):
            raise ValueError(f"{source}[{token!r}]: expected a list of boxes, got {type(boxes).__name__}")
    records = [box for boxes in results.values() for box in boxes]
    with_ego = any(isinstance(r, dict) and "ego_translation" in r for r in records)
    required = _COMMON_FIELDS + (("num_pts",) if ground_truth else ("detection_score",)) \
        + (("ego_translation",) if with_ego else ())
    table = _columns_or_none(results, records, required, config)
    if table is not None:
        return table
    # The fast path saw something wrong. Names of another class table (results of another dataset) are
    # reported as a whole; otherwise the first bad box is named.
    names = [r.get("detection_name") for r in records if isinstance(r, dict)]
    unknown = sorted({name for name in names if isinstance(name, str) and name not in config.class_names})
    if unknown:
        count = sum(name in unknown for name in names)
        token, index = next((token, index) for token, boxes in results.items() for index, box in enumerate(boxes)
                            if isinstance(box, dict) and box.get("detection_name") in unknown)
        raise ValueError(f"{source}: {count} of {len(records)} boxes have a detection_name that is not a class of "
                         f"this evaluation: {unknown} (the first: [{token!r}][{index}]); its classes: "
                         f"{list(config.class_names)}. Were the results made for another dataset than the ground "
                         "truth?")
    for token, boxes in results.items():
        for index, box in enumerate(boxes):
            _check_box(box, token, f"{source}[{token!r}][{index}]", required, config)
    raise ValueError(f"{source}: the boxes could not be read as numbers (no single bad field found)")


def _columns_or_none(results: Mapping[str, list], records: list, required: tuple[str, ...],
                     config: MetricConfig) -> BoxTable | None:
    """The table built by list comprehensions and checked as arrays; None on any bad value."""
    n = len(records)
    tokens = list(results)
    sample = np.repeat(np.arange(len(tokens)), [len(boxes) for boxes in results.values()])
    class_index = {name: i for i, name in enumerate(config.class_names)}
    attribute_index = {name: i for i, name in enumerate(NUSCENES_ATTRIBUTES)} | {"": NO_ATTRIBUTE}
    try:
        if not all(isinstance(r, dict) and all(f in r for f in required) for r in records):
            return None
        if any(r["sample_token"] != tokens[s] for r, s in zip(records, sample)):
            return None
        vectors = {name: _stack([r[name] for r in records], (n, length))
                   for name, length in _VECTOR_FIELDS.items() if name in required}
        scores = _stack([r.get("detection_score", -1.0) for r in records], (n,))
        num_pts = _stack([r.get("num_pts", UNKNOWN_NUM_PTS) for r in records], (n,))
        labels = [class_index[r["detection_name"]] for r in records]
        attributes = [attribute_index[r["attribute_name"]] for r in records]
    except (KeyError, TypeError, ValueError):
        return None
    numbers = [*vectors.values(), scores]
    if any(a.dtype.kind not in "iuf" for a in numbers) or num_pts.dtype.kind not in "iu":
        return None
    if any(not np.isfinite(a).all() for name, a in vectors.items() if name != "velocity"):
        return None
    if not np.isfinite(scores).all() or np.isinf(vectors["velocity"]).any() or (vectors["size"] <= 0).any():
        return None
    return BoxTable(
        sample_tokens=tuple(tokens), sample=sample, translation=vectors["translation"], size=vectors["size"],
        yaw=quaternion_yaw(vectors["rotation"]), velocity=vectors["velocity"],
        ego_translation=vectors.get("ego_translation", vectors["translation"]),
        label=labels, score=scores, attribute=attributes, num_pts=num_pts,
    )


def _stack(values: list, shape: tuple[int, ...]) -> np.ndarray:
    array = np.array(values) if values else np.zeros(shape, dtype=np.int64)
    if array.shape != shape:
        raise ValueError(f"expected shape {shape}, got {array.shape}")
    return array


def _check_box(box: Any, token: str, where: str, required: tuple[str, ...], config: MetricConfig) -> None:
    """Raise a ValueError naming the first bad field of one box dict."""
    if not isinstance(box, dict):
        raise ValueError(f"{where}: expected a box object, got {type(box).__name__}")
    missing = [f for f in required if f not in box]
    if missing:
        hint = " (once one box has ego_translation, all need it)" if missing[0] == "ego_translation" else ""
        raise ValueError(f"{where}: missing field {missing[0]!r}{hint}; a box needs {list(required)}")
    if box["sample_token"] != token:
        raise ValueError(f"{where}: field 'sample_token' is {box['sample_token']!r} but the box is listed "
                         f"under sample {token!r}")
    for name, length in _VECTOR_FIELDS.items():
        if name not in required:
            continue
        value = box[name]
        if not isinstance(value, (list, tuple)) or len(value) != length or not all(_is_number(v) for v in value):
            raise ValueError(f"{where}: field {name!r} must be a list of {length} numbers, got {value!r}")
        if any(math.isinf(v) for v in value) or (name != "velocity" and any(math.isnan(v) for v in value)):
            allowed = " (NaN is allowed there and means unknown)" if name == "velocity" else ""
            raise ValueError(f"{where}: field {name!r} holds NaN or infinity: {value!r}{allowed}")
    if not all(v > 0 for v in box["size"]):
        raise ValueError(f"{where}: field 'size' must be positive (w, l, h), got {box['size']!r}")
    if box["detection_name"] not in config.class_names:
        raise ValueError(f"{where}: field 'detection_name' is {box['detection_name']!r}; "
                         f"valid names: {list(config.class_names)}")
    if box["attribute_name"] not in NUSCENES_ATTRIBUTES + ("",):
        raise ValueError(f"{where}: field 'attribute_name' is {box['attribute_name']!r}; "
                         f"valid names: {list(NUSCENES_ATTRIBUTES)} or ''")
    score = box.get("detection_score", -1.0)
    if not (_is_number(score) and math.isfinite(score)):
        raise ValueError(f"{where}: field 'detection_score' must be a finite number, got {score!r}")
    num_pts = box.get("num_pts", UNKNOWN_NUM_PTS)
    if not (isinstance(num_pts, int) and not isinstance(num_pts, bool)):
        raise ValueError(f"{where}: field 'num_pts' must be an integer, got {num_pts!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_results(path: str | os.PathLike, config: MetricConfig | None = None) -> tuple[BoxTable, dict]:
    """A submission file -> (predictions, its ``meta`` object). At most ``max_boxes_per_sample``
    boxes per sample, as the devkit's ``load_prediction`` demands."""
    config = config or detection_cvpr_2019()
    data = _read_results_json(path, "results")
    if not isinstance(data.get("meta"), dict):
        raise ValueError(f"{path}: missing or malformed top-level field 'meta' (expected an object, "
                         f"e.g. {{\"use_lidar\": true, ...}})")
    predictions = boxes_from_results(data["results"], config, source=str(path))
    check_boxes_per_sample(predictions, config)
    return predictions, data["meta"]


def read_ground_truth(path: str | os.PathLike, config: MetricConfig | None = None) -> BoxTable:
    """A ground-truth file in the submission schema (boxes need ``num_pts``; ``detection_score`` is
    optional). Without ``ego_translation`` the boxes are taken to be in the ego frame."""
    data = _read_results_json(path, "ground-truth")
    return boxes_from_results(data["results"], config or detection_cvpr_2019(), ground_truth=True,
                              source=str(path))


def _read_results_json(path: str | os.PathLike, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
                         f"a {what} file is JSON in UTF-8") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError(f"{path}: missing top-level field 'results'; expected "
                         f"{{\"meta\": {{...}}, \"results\": {{sample_token: [box, ...]}}}}")
    return data


@dataclass(frozen=True)
class NuScenesGroundTruth:
    """Ground truth of one nuScenes split, with what filtering the predictions needs.

    ``boxes`` are in the global frame, their ego translations already set and the bicycles and
    motorcycles inside bike racks removed; ``ego_positions[i]`` is the ego pose translation of
    ``boxes.sample_tokens[i]`` (LIDAR_TOP keyframe); ``bike_racks`` holds the devkit ``Box``es of
    the bike racks of each sample that has any.
    """

    boxes: BoxTable
    ego_positions: np.ndarray  # (S, 3) float64
    bike_racks: Mapping[str, list]
    class_names: tuple[str, ...]

    def localise(self, boxes: BoxTable) -> BoxTable:
        """The devkit's ``add_center_dist`` and bike-rack filter applied to ``boxes`` (global frame)."""
        position = {token: i for i, token in enumerate(self.boxes.sample_tokens)}
        unknown = [t for t in boxes.sample_tokens if t not in position]
        if unknown:
            raise ValueError(f"sample {unknown[0]!r} is not in the ground truth ({len(unknown)} such samples)")
        ego = self.ego_positions[np.array([position[t] for t in boxes.sample_tokens], dtype=np.int64)]
        located = replace(boxes, ego_translation=boxes.translation - ego[boxes.sample].reshape(-1, 3))
        return located.select(self._outside_bike_racks(located))

    def _outside_bike_racks(self, boxes: BoxTable) -> np.ndarray:  # (N,) bool
        from nuscenes.utils.geometry_utils import points_in_box

        cycle_labels = [i for i, name in enumerate(self.class_names) if name in ("bicycle", "motorcycle")]
        cycles = np.flatnonzero(np.isin(boxes.label, cycle_labels))
        keep = np.ones(len(boxes), dtype=bool)
        for sample, token in enumerate(boxes.sample_tokens):
            if token not in self.bike_racks:
                continue
            rows = cycles[boxes.sample[cycles] == sample]
            for rack in self.bike_racks[token]:
                keep[rows[points_in_box(rack, boxes.translation[rows].T)]] = False
        return keep


def load_nuscenes_ground_truth(dataroot: str | os.PathLike, version: str = "v1.0-trainval",
                               eval_set: str = "val", config: MetricConfig | None = None,
                               verbose: bool = False) -> NuScenesGroundTruth:
    """Ground truth of a predefined split (``val``, ``mini_val``, ...) through the devkit's ``load_gt``."""
    config = config or detection_cvpr_2019()
    try:
        from nuscenes import NuScenes
        from nuscenes.eval.common.loaders import load_gt
        from nuscenes.eval.detection.data_classes import DetectionBox
        from nuscenes.utils.data_classes import Box
        from pyquaternion import Quaternion
    except ImportError as error:
        raise ImportError("reading a nuScenes dataroot needs nuscenes-devkit: pip install 'rdd3d[nuscenes]'") \
            from error
    if not (Path(dataroot) / version).is_dir():
        raise FileNotFoundError(f"{dataroot}: no nuScenes table folder {version!r} (check dataroot and version)")
    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)
    boxes = table_from_eval_boxes(load_gt(nusc, eval_set, DetectionBox, verbose=verbose), config)
    ego_positions, bike_racks = [], {}
    for token in boxes.sample_tokens:
        sample = nusc.get("sample", token)
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ego_positions.append(nusc.get("ego_pose", lidar["ego_pose_token"])["translation"])
        racks = [nusc.get("sample_annotation", ann) for ann in sample["anns"]]
        racks = [Box(r["translation"], r["size"], Quaternion(r["rotation"]))
                 for r in racks if r["category_name"] == "static_object.bicycle_rack"]
        if racks:
            bike_racks[token] = racks
    ground_truth = NuScenesGroundTruth(boxes, np.array(ego_positions, dtype=np.float64).reshape(-1, 3),
                                       bike_racks, config.class_names)
    return replace(ground_truth, boxes=ground_truth.localise(boxes))


def table_from_eval_boxes(eval_boxes: Any, config: MetricConfig) -> BoxTable:
    """A devkit ``EvalBoxes`` of ``DetectionBox``es -> :class:`BoxTable`; boxes of classes outside
    ``config`` take no part in the evaluation and are left out."""
    class_index = {name: i for i, name in enumerate(config.class_names)}
    attribute_index = {name: i for i, name in enumerate(NUSCENES_ATTRIBUTES)} | {"": NO_ATTRIBUTE}
    tokens = list(eval_boxes.sample_tokens)
    rows = [(s, box) for s, token in enumerate(tokens) for box in eval_boxes[token]
            if box.detection_name in class_index]
    n = len(rows)
    return BoxTable(
        sample_tokens=tuple(tokens),
        sample=[s for s, _ in rows],
        translation=np.array([b.translation for _, b in rows], dtype=np.float64).reshape(n, 3),
        size=np.array([b.size for _, b in rows], dtype=np.float64).reshape(n, 3),
        yaw=quaternion_yaw(np.array([b.rotation for _, b in rows], dtype=np.float64).reshape(n, 4)),
        velocity=np.array([b.velocity for _, b in rows], dtype=np.float64).reshape(n, 2),
        ego_translation=np.array([b.ego_translation for _, b in rows], dtype=np.float64).reshape(n, 3),
        label=[class_index[b.detection_name] for _, b in rows],
        score=[b.detection_score for _, b in rows],
        attribute=[attribute_index[b.attribute_name] for _, b in rows],
        num_pts=[b.num_pts for _, b in rows],
    )


def results_from_table(boxes: BoxTable, config: MetricConfig, *, ground_truth: bool = False) -> dict:
    """:class:`BoxTable` -> ``{sample_token: [box dict, ...]}`` in the submission schema (every
    sample listed; rotation about +z from the yaw). Ground truth also gets ``num_pts`` and
    ``ego_translation``. The inverse of :func:`boxes_from_results`."""
    attribute_names = ("",) + NUSCENES_ATTRIBUTES  # attribute + 1 indexes it: NO_ATTRIBUTE is -1
    results: dict[str, list] = {token: [] for token in boxes.sample_tokens}
    columns = zip(boxes.sample.tolist(), boxes.translation.tolist(), boxes.size.tolist(),
                  yaw_quaternion(boxes.yaw).tolist(), boxes.velocity.tolist(), boxes.label.tolist(),
                  boxes.score.tolist(), boxes.attribute.tolist(), boxes.ego_translation.tolist(),
                  boxes.num_pts.tolist())
    for sample, translation, size, rotation, velocity, label, score, attribute, ego, num_pts in columns:
        token = boxes.sample_tokens[sample]
        box = {"sample_token": token, "translation": translation, "size": size, "rotation": rotation,
               "velocity": velocity, "detection_name": config.class_names[label], "detection_score": score,
               "attribute_name": attribute_names[attribute + 1]}
        if ground_truth:
            box.update(ego_translation=ego, num_pts=num_pts)
        results[token].append(box)
    return results


def write_results(path: str | os.PathLike, boxes: BoxTable, config: MetricConfig, meta: Mapping) -> None:
    """Write predictions as a submission file (atomically)."""
    write_json(path, {"meta": dict(meta), "results": results_from_table(boxes, config)}, indent=None)


def table_to_eval_boxes(boxes: BoxTable, config: MetricConfig) -> Any:
    """:class:`BoxTable` -> devkit ``EvalBoxes`` of ``DetectionBox``es, e.g. to cross-check with the
    devkit's own functions."""
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionBox

    return EvalBoxes.deserialize(results_from_table(boxes, config, ground_truth=True), DetectionBox)


def evaluate_results_file(results_path: str | os.PathLike,
                          gt_source: str | os.PathLike | BoxTable | NuScenesGroundTruth, *,
                          version: str = "v1.0-trainval", eval_set: str = "val",
                          config: MetricConfig | None = None) -> NuScenesMetrics:
    """Evaluate a submission file against ground truth from

    * a nuScenes dataroot folder (read through the devkit: ``version`` and ``eval_set`` apply),
    * an already loaded :class:`NuScenesGroundTruth` (to evaluate several files against one split),
    * a ground-truth JSON file in the submission schema (see :func:`read_ground_truth`), or
    * a :class:`BoxTable` of ground truth in the predictions' frame.
    """
    config = config or detection_cvpr_2019()
    predictions, _ = read_results(results_path, config)
    if isinstance(gt_source, (str, os.PathLike)) and Path(gt_source).is_dir():
        gt_source = load_nuscenes_ground_truth(gt_source, version, eval_set, config)
    if isinstance(gt_source, NuScenesGroundTruth):
        return evaluate_detections(gt_source.boxes, gt_source.localise(predictions), config)
    ground_truth = gt_source if isinstance(gt_source, BoxTable) else read_ground_truth(gt_source, config)
    return evaluate_detections(ground_truth, predictions, config)
