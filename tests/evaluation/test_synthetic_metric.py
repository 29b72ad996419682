"""The nuScenes-style metric on Frames: equal to the devkit's functions, and right on known cases."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest

from rdd3d.data.synthetic.dataset import SyntheticDataset
from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud
from rdd3d.evaluation.detection_metrics import FRAME_TP_METRICS, evaluate_frames, frame_metric_config

pytest.importorskip("nuscenes")
from nuscenes.eval.common.data_classes import EvalBoxes  # noqa: E402
from nuscenes.eval.common.loaders import filter_eval_boxes  # noqa: E402
from nuscenes.eval.common.utils import center_distance  # noqa: E402
from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp  # noqa: E402
from nuscenes.eval.detection.data_classes import DetectionBox  # noqa: E402

CLASSES = ClassTable(("car", "truck", "bus", "pedestrian", "cyclist", "traffic_cone", "barrier"))
RANGES = {"car": 40.0, "truck": 40.0, "bus": 40.0, "pedestrian": 30.0, "cyclist": 30.0,
          "traffic_cone": 30.0, "barrier": 30.0}
DEVKIT_NAME = {"cyclist": "bicycle"}  # the devkit only knows its own class names
THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


class Found(NamedTuple):
    boxes: Boxes3D
    scores: np.ndarray
    labels: np.ndarray


def _frame(frame_id: str, boxes: np.ndarray, labels: np.ndarray, num_points: np.ndarray) -> Frame:
    return Frame(frame_id, PointCloud(np.zeros((0, 4))), Boxes3D(boxes), labels, CLASSES,
                 {"num_points": num_points})


def random_frames(seed: int, n_frames: int = 10) -> tuple[list[Frame], list[Found]]:
    rng = np.random.default_rng(seed)
    frames, found = [], []
    for f in range(n_frames):
        n = 0 if f == 2 else int(rng.integers(4, 25))
        labels = rng.integers(0, len(CLASSES) - 1, size=n)  # the last class (barrier) only sometimes
        labels[rng.random(n) < 0.1] = len(CLASSES) - 1
        boxes = np.c_[rng.uniform(-45, 45, size=(n, 2)), rng.uniform(-1, 1, size=n), rng.uniform(0.4, 6, size=(n, 3)),
                      rng.uniform(-np.pi, np.pi, size=n), rng.normal(0, 3, size=(n, 2))]
        num_points = np.where(rng.random(n) < 0.15, 0, rng.integers(1, 50, size=n))
        frames.append(_frame(f"frame-{f}", boxes, labels, num_points))
        hit = rng.random(n) < 0.8
        noisy = boxes[hit] + np.c_[rng.normal(0, 0.7, size=(hit.sum(), 2)), np.zeros((hit.sum(), 1)),
                                   rng.normal(0, 0.3, size=(hit.sum(), 3)).clip(-0.3, 0.3),
                                   rng.normal(0, 0.5, size=hit.sum()) + np.pi * (rng.random(hit.sum()) < 0.2),
                                   rng.normal(0, 1, size=(hit.sum(), 2))]
        n_fp = int(rng.integers(0, 8))
        false = np.c_[rng.uniform(-45, 45, size=(n_fp, 2)), np.zeros(n_fp), rng.uniform(0.4, 6, size=(n_fp, 3)),
                      rng.uniform(-np.pi, np.pi, size=n_fp), np.zeros((n_fp, 2))]
        scores = np.round(rng.uniform(0, 1, size=hit.sum() + n_fp), 1)
        pred_labels = np.r_[labels[hit], rng.integers(0, len(CLASSES), size=n_fp)]
        found.append(Found(Boxes3D(np.r_[noisy, false]), scores, pred_labels))
    return frames, found


def _devkit_boxes(frames: list[Frame], boxes: list[Boxes3D], labels: list[np.ndarray], scores=None,
                  num_points=None) -> EvalBoxes:
    eval_boxes = EvalBoxes()
    for i, frame in enumerate(frames):
        rows = []
        for j, (x, y, z, dx, dy, dz, yaw, vx, vy) in enumerate(boxes[i].tensor.astype(np.float64).tolist()):
            name = CLASSES.names[labels[i][j]]
            rows.append(DetectionBox(
                sample_token=frame.frame_id, translation=(x, y, z), size=(dy, dx, dz),
                rotation=(math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)), velocity=(vx, vy),
                ego_translation=(x, y, z), num_pts=-1 if num_points is None else int(num_points[i][j]),
                detection_name=DEVKIT_NAME.get(name, name),
                detection_score=-1.0 if scores is None else float(scores[i][j])))
        eval_boxes.add_boxes(frame.frame_id, rows)
    return eval_boxes


class _NoBikeRacks:
    def get(self, table: str, token: str) -> dict:
        return {"anns": []}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frames_metric_equals_devkit_functions(seed: int) -> None:
    frames, found = random_frames(seed)
    ours = evaluate_frames(frames, found, RANGES)

    ranges = {name: 1.0 for name in ("trailer", "construction_vehicle", "motorcycle")}
    ranges.update({DEVKIT_NAME.get(name, name): r for name, r in RANGES.items()})
    gt = _devkit_boxes(frames, [f.boxes for f in frames], [f.labels for f in frames],
                       num_points=[f.metadata["num_points"] for f in frames])
    pred = _devkit_boxes(frames, [d.boxes for d in found], [d.labels for d in found], [d.scores for d in found])
    gt = filter_eval_boxes(_NoBikeRacks(), gt, ranges)
    pred = filter_eval_boxes(_NoBikeRacks(), pred, ranges)
    class_errors = {m: [] for m in FRAME_TP_METRICS}
    for name in CLASSES.names:
        devkit_name = DEVKIT_NAME.get(name, name)
        curves = {th: accumulate(gt, pred, devkit_name, center_distance, th) for th in THRESHOLDS}
        for th in THRESHOLDS:
            assert ours.label_aps[name][th] == pytest.approx(calc_ap(curves[th], 0.1, 0.1), abs=1e-6), (name, th)
        for metric in FRAME_TP_METRICS:
            if (name, metric) in {("traffic_cone", "orient_err"), ("traffic_cone", "vel_err"), ("barrier", "vel_err")}:
                assert math.isnan(ours.label_tp_errors[name][metric])
                continue
            expected = calc_tp(curves[2.0], 0.1, metric)
            assert ours.label_tp_errors[name][metric] == pytest.approx(expected, abs=1e-6), (name, metric)
            class_errors[metric].append(expected)
    # mAP over our 7 classes; NDS from 5 x mAP and the four TP scores (no attributes), over 9.
    assert ours.mean_ap == pytest.approx(np.mean([np.mean(list(a.values())) for a in ours.label_aps.values()]))
    scores = [max(0.0, 1 - np.mean(errors)) for errors in class_errors.values()]
    assert ours.nd_score == pytest.approx((5 * ours.mean_ap + sum(scores)) / 9, abs=1e-6)
    assert set(ours.tp_errors) == set(FRAME_TP_METRICS)


def test_barrier_heading_counts_modulo_pi() -> None:
    boxes = np.array([[10.0, 0, 0, 2.0, 0.5, 1.0, 0.3, 0, 0]])
    frames = [_frame("f", boxes, np.array([6]), np.array([5]))]  # a barrier
    flipped = boxes.copy()
    flipped[0, 6] += np.pi
    metrics = evaluate_frames(frames, [Found(Boxes3D(flipped), np.array([0.9]), np.array([6]))], RANGES)
    assert metrics.label_tp_errors["barrier"]["orient_err"] == pytest.approx(0.0, abs=1e-6)
    as_car = evaluate_frames([_frame("f", boxes, np.array([0]), np.array([5]))],
                             [Found(Boxes3D(flipped), np.array([0.9]), np.array([0]))], RANGES)
    assert as_car.label_tp_errors["car"]["orient_err"] == pytest.approx(np.pi, abs=1e-6)


def test_synthetic_ground_truth_as_detections_scores_perfectly() -> None:
    dataset = SyntheticDataset("val", size=3)
    frames = [dataset[i] for i in range(len(dataset))]
    found = []
    for frame in frames:
        counted = frame.metadata["num_points"] > 0
        found.append(Found(frame.boxes.select(counted), np.linspace(1, 0.5, counted.sum()), frame.labels[counted]))
    metrics = evaluate_frames(frames, found, SyntheticDataset.class_ranges)
    centre_dist = [np.hypot(*f.boxes.centers[:, :2].T) for f in frames]
    for c, name in enumerate(CLASSES.names):
        evaluated = sum(int(((f.labels == c) & (f.metadata["num_points"] > 0)
                             & (d < SyntheticDataset.class_ranges[name])).sum()) for f, d in zip(frames, centre_dist))
        if evaluated:
            assert metrics.mean_dist_aps[name] == pytest.approx(1.0), name
            assert metrics.label_tp_errors[name]["trans_err"] == pytest.approx(0.0, abs=1e-6)
            assert metrics.label_tp_errors[name]["scale_err"] == pytest.approx(0.0, abs=1e-6)
        else:  # no ground truth: the devkit's "no predictions" values
            assert metrics.mean_dist_aps[name] == 0.0, name
            assert metrics.label_tp_errors[name]["trans_err"] == 1.0


def test_detections_from_the_model_head_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    from rdd3d.core.types import Detections

    frames, found = random_frames(4, n_frames=3)
    as_tensors = [Detections(torch.from_numpy(d.boxes.tensor), torch.from_numpy(d.scores), torch.from_numpy(d.labels))
                  for d in found]
    assert evaluate_frames(frames, as_tensors, RANGES).nd_score == pytest.approx(
        evaluate_frames(frames, found, RANGES).nd_score)


def test_bad_inputs_name_the_frame() -> None:
    frames, found = random_frames(5, n_frames=3)
    with pytest.raises(ValueError, match="3 frames but 2 detections"):
        evaluate_frames(frames, found[:2], RANGES)
    with pytest.raises(ValueError, match=r"no range for \['barrier'\]"):
        evaluate_frames(frames, found, {k: v for k, v in RANGES.items() if k != "barrier"})
    no_counts = [frames[0].replace(metadata={})] + frames[1:]
    with pytest.raises(ValueError, match="frame frame-0: metadata\\['num_points'\\]"):
        evaluate_frames(no_counts, found, RANGES)
    bad = found[1]._replace(boxes=np.c_[found[1].boxes.tensor[:, :6], np.full(len(found[1].boxes), np.nan)])
    with pytest.raises(ValueError, match="detections of frame frame-1: Boxes3D box 0 has a non-finite yaw"):
        evaluate_frames(frames, [found[0], bad, found[2]], RANGES)
    wrong_label = found[2]._replace(labels=np.full(len(found[2].labels), 9))
    with pytest.raises(ValueError, match="detections of frame frame-2: labels must lie in 0..6"):
        evaluate_frames(frames, found[:2] + [wrong_label], RANGES)


def test_frame_config_drops_attributes_and_keeps_special_cases() -> None:
    config = frame_metric_config(RANGES, CLASSES.names)
    assert "attr_err" not in config.tp_metrics
    assert config.half_period_orientation == ("barrier",)
    assert set(config.tp_not_applicable) == {"traffic_cone", "barrier"}
    custom = frame_metric_config(RANGES, CLASSES.names, not_applicable={}, half_period_orientation=())
    assert custom.tp_not_applicable == {} and custom.half_period_orientation == ()
