"""Our nuScenes metrics against nuscenes-devkit's own code on random scenes, to 1e-6.

The reference runs the devkit's ``filter_eval_boxes`` and ``DetectionEval.evaluate`` (which calls
``accumulate``, ``calc_ap`` and ``calc_tp`` and applies the traffic-cone/barrier special cases).
``filter_eval_boxes`` reads bike racks from a ``NuScenes`` database; a stub whose samples have no
annotations stands in for it, so the devkit's range and point filters run unchanged and no box is
in a bike rack. ``DetectionEval.__init__`` needs a dataroot, so the instance is made with
``__new__`` and given the boxes and the configuration that ``__init__`` would have set.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rdd3d.data.nuscenes.classes import NUSCENES_CLASSES
from rdd3d.evaluation.nuscenes_io import boxes_from_results
from rdd3d.evaluation.nuscenes_metrics import (
    NUSCENES_ATTRIBUTES, TP_METRICS, BoxTable, MetricConfig, detection_cvpr_2019,
    evaluate_detections, filter_boxes,
)

devkit_config = pytest.importorskip("nuscenes.eval.common.config")
from nuscenes.eval.common.data_classes import EvalBoxes  # noqa: E402
from nuscenes.eval.common.loaders import filter_eval_boxes  # noqa: E402
from nuscenes.eval.detection import constants as devkit_constants  # noqa: E402
from nuscenes.eval.detection.data_classes import DetectionBox, DetectionMetrics  # noqa: E402
from nuscenes.eval.detection.evaluate import DetectionEval  # noqa: E402

TOLERANCE = 1e-6


class _DatabaseWithoutBikeRacks:
    """What ``filter_eval_boxes`` asks of a ``NuScenes`` object: samples without annotations."""

    def get(self, table: str, token: str) -> dict:
        assert table == "sample"
        return {"anns": []}


def devkit_evaluate(gt_results: dict, pred_results: dict):
    """The devkit's filtering and evaluation of two ``{sample_token: [box dict]}`` mappings."""
    cfg = devkit_config.config_factory("detection_cvpr_2019")
    gt = EvalBoxes.deserialize(gt_results, DetectionBox)
    pred = EvalBoxes.deserialize(pred_results, DetectionBox)
    gt = filter_eval_boxes(_DatabaseWithoutBikeRacks(), gt, cfg.class_range)
    pred = filter_eval_boxes(_DatabaseWithoutBikeRacks(), pred, cfg.class_range)
    evaluation = DetectionEval.__new__(DetectionEval)
    evaluation.cfg, evaluation.gt_boxes, evaluation.pred_boxes, evaluation.verbose = cfg, gt, pred, False
    return evaluation.evaluate()


def _yaw_rotation(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def random_scene(seed: int, n_samples: int = 14) -> tuple[dict, dict]:
    """Ground truth and predictions (submission schema) exercising the devkit's corner cases:
    empty samples, classes without ground truth, boxes beyond their class range, ground truth
    without points, NaN velocities, missing attributes, equal scores (rounded to 0.1, some 0),
    all-miss classes, duplicates and a prediction exactly between two ground truths."""
    rng = np.random.default_rng(seed)
    absent = set(rng.choice(NUSCENES_CLASSES, size=2, replace=False))  # predicted, never in ground truth
    present = [c for c in NUSCENES_CLASSES if c not in absent]
    all_miss = present[int(rng.integers(len(present)))]  # its predictions never come near
    gt_results, pred_results = {}, {}
    for s in range(n_samples):
        token = f"sample-{seed}-{s}"
        ego = rng.uniform(-500, 500, size=3)
        n_gt = 0 if s % 5 == 1 else int(rng.integers(3, 30))
        n_fp = 0 if s % 5 in (1, 2) else int(rng.integers(0, 25))
        gt_boxes, pred_boxes = [], []

        def box(name, offset, yaw, size, velocity, attribute, **extra):
            return {"sample_token": token, "translation": (ego + offset).tolist(), "size": list(size),
                    "rotation": _yaw_rotation(yaw), "velocity": list(velocity), "detection_name": name,
                    "attribute_name": attribute, "ego_translation": list(offset), **extra}

        for _ in range(n_gt):
            name = present[int(rng.integers(len(present)))]
            offset = np.r_[rng.uniform(-60, 60, size=2), rng.uniform(-2, 2)]
            yaw = rng.uniform(-np.pi, np.pi)
            size = rng.uniform(0.3, 8, size=3)
            velocity = [math.nan, math.nan] if rng.random() < 0.1 else rng.normal(0, 3, size=2).tolist()
            attribute = "" if rng.random() < 0.2 else str(rng.choice(NUSCENES_ATTRIBUTES))
            num_pts = 0 if rng.random() < 0.15 else int(rng.integers(1, 200))
            gt_boxes.append(box(name, offset, yaw, size, velocity, attribute, num_pts=num_pts))
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, or found twice
                if name == all_miss:
                    continue
                noise = np.r_[rng.normal(0, 0.8, size=2), rng.normal(0, 0.2)]
                pred_boxes.append(box(
                    name, offset + noise, yaw + rng.normal(0, 0.4) + (np.pi if rng.random() < 0.2 else 0),
                    size * rng.uniform(0.7, 1.3, size=3), np.asarray(velocity) + rng.normal(0, 1, size=2)
                    if rng.random() < 0.9 else [math.nan, math.nan],
                    str(rng.choice(NUSCENES_ATTRIBUTES)) if rng.random() < 0.8 else "",
                    detection_score=round(float(rng.uniform(0, 1)), 1)))
        for _ in range(n_fp):
            offset = np.r_[rng.uniform(-60, 60, size=2), 0.0]
            name = str(rng.choice(sorted(absent) + [all_miss] + present))
            pred_boxes.append(box(name, offset, rng.uniform(-3, 3), rng.uniform(0.3, 8, size=3),
                                  rng.normal(0, 3, size=2), "", detection_score=float(rng.uniform(0, 1))))
        if s % 5 == 3 and all_miss != "car":  # equidistant ground truths: the earlier one must win
            gt_boxes += [box("car", np.array([10.0, 5.0, 0.0]), 0.0, [2, 4, 1.5], [0, 0], "vehicle.parked",
                             num_pts=5),
                         box("car", np.array([10.5, 5.0, 0.0]), 0.0, [2, 5, 1.5], [1, 0], "vehicle.moving",
                             num_pts=5)]
            pred_boxes.append(box("car", np.array([10.25, 5.0, 0.0]), 0.1, [2, 4, 1.5], [0, 0], "vehicle.parked",
                                  detection_score=0.95))
        order = rng.permutation(len(pred_boxes))  # interleave classes as a detector would
        gt_results[token] = gt_boxes
        pred_results[token] = [pred_boxes[i] for i in order]
    # Samples listed in another order in the results than in the ground truth.
    pred_results = dict(reversed(list(pred_results.items())))
    return gt_results, pred_results


def ours_evaluate(gt_results: dict, pred_results: dict):
    config = detection_cvpr_2019()
    gt = boxes_from_results(gt_results, config, ground_truth=True)
    pred = boxes_from_results(pred_results, config)
    return evaluate_detections(gt, pred, config)


def assert_close(ours: float, theirs: float, what: str) -> None:
    if math.isnan(theirs):
        assert math.isnan(ours), f"{what}: ours {ours}, devkit NaN"
    else:
        assert ours == pytest.approx(theirs, abs=TOLERANCE), f"{what}: ours {ours}, devkit {theirs}"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_random_scenes_equal_devkit(seed: int) -> None:
    gt_results, pred_results = random_scene(seed)
    theirs, their_curves = devkit_evaluate(gt_results, pred_results)
    ours = ours_evaluate(gt_results, pred_results)

    for name in NUSCENES_CLASSES:
        for th in (0.5, 1.0, 2.0, 4.0):
            assert_close(ours.label_aps[name][th], theirs.get_label_ap(name, th), f"AP {name}@{th}")
            curve, their_curve = ours.curves[name, th], their_curves[(name, th)]
            for field in ("recall", "precision", "confidence", *TP_METRICS):
                np.testing.assert_allclose(getattr(curve, field), getattr(their_curve, field),
                                           atol=TOLERANCE, err_msg=f"{field} curve {name}@{th}")
        for metric in TP_METRICS:
            assert_close(ours.label_tp_errors[name][metric], theirs.get_label_tp(name, metric), f"{metric} {name}")
    for metric in TP_METRICS:
        assert_close(ours.tp_errors[metric], theirs.tp_errors[metric], f"mean {metric}")
        assert_close(ours.tp_scores[metric], theirs.tp_scores[metric], f"{metric} score")
    for name in NUSCENES_CLASSES:
        assert_close(ours.mean_dist_aps[name], theirs.mean_dist_aps[name], f"mean AP {name}")
    assert_close(ours.mean_ap, theirs.mean_ap, "mAP")
    assert_close(ours.nd_score, theirs.nd_score, "NDS")
    # The scenes are not trivial: something is found and something is missed.
    assert 0 < ours.mean_ap < 1


def test_scene_edge_cases_are_present() -> None:
    gt_results, pred_results = random_scene(0)
    config = detection_cvpr_2019()
    gt = boxes_from_results(gt_results, config, ground_truth=True)
    pred = boxes_from_results(pred_results, config)
    kept = filter_boxes(gt, config)
    assert 0 < len(kept) < len(gt)  # some ground truth filtered by range or points
    assert (gt.num_pts == 0).any() and len(filter_boxes(pred, config)) < len(pred)
    assert len(set(gt.label.tolist())) == len(NUSCENES_CLASSES) - 2  # two classes without ground truth
    assert len(np.unique(pred.score)) < len(pred)  # equal scores
    assert any(len(boxes) == 0 for boxes in gt_results.values())


def test_to_dict_round_trips_through_devkit_metrics() -> None:
    gt_results, pred_results = random_scene(7)
    ours = ours_evaluate(gt_results, pred_results)
    theirs = DetectionMetrics.deserialize(ours.to_dict())
    assert theirs.nd_score == pytest.approx(ours.nd_score, abs=TOLERANCE)
    assert theirs.mean_ap == pytest.approx(ours.mean_ap, abs=TOLERANCE)
    assert set(ours.to_dict()) == set(theirs.serialize())


def test_config_equals_devkit_detection_cvpr_2019() -> None:
    ours = detection_cvpr_2019().to_dict()
    theirs = devkit_config.config_factory("detection_cvpr_2019").serialize()
    assert {key: ours[key] for key in theirs} == theirs
    assert MetricConfig.from_dict(theirs) == detection_cvpr_2019() == MetricConfig.from_dict(ours)
    with pytest.raises(ValueError, match=r"unknown metric configuration keys \['min_recal'\]"):
        MetricConfig.from_dict({**theirs, "min_recal": 0.1})
    assert NUSCENES_CLASSES == tuple(devkit_constants.DETECTION_NAMES)
    assert NUSCENES_ATTRIBUTES == tuple(devkit_constants.ATTRIBUTE_NAMES)
    assert TP_METRICS == tuple(devkit_constants.TP_METRICS)


CAR_ONLY = MetricConfig(class_range={"car": 50.0})


def _car_boxes(xy: list[list[float]], scores: np.ndarray) -> BoxTable:
    """Unit cars on one sample; scores -1 and 10 points make ground truth."""
    n = len(xy)
    xyz = np.c_[np.asarray(xy, dtype=float), np.zeros(n)]
    is_gt = bool((scores == -1).all())
    return BoxTable(("s",), sample=np.zeros(n), translation=xyz, size=np.ones((n, 3)), yaw=np.zeros(n),
                    velocity=np.zeros((n, 2)), ego_translation=xyz, label=np.zeros(n), score=scores,
                    attribute=-np.ones(n), num_pts=np.full(n, 10 if is_gt else -1))


def test_perfect_and_shifted_predictions() -> None:
    gt_xy = [[float(i), 0.0] for i in range(0, 40, 4)]
    gt, scores = _car_boxes(gt_xy, -np.ones(len(gt_xy))), np.linspace(0.9, 0.5, len(gt_xy))
    metrics = evaluate_detections(gt, _car_boxes(gt_xy, scores), CAR_ONLY)
    assert metrics.mean_ap == pytest.approx(1.0)
    assert metrics.label_tp_errors["car"]["trans_err"] == pytest.approx(0.0)
    # 0.75 m off: a miss at 0.5 m, a hit at 1, 2 and 4 m.
    shifted = _car_boxes([[x + 0.75, y] for x, y in gt_xy], scores)
    metrics = evaluate_detections(gt, shifted, CAR_ONLY)
    assert metrics.label_aps["car"] == pytest.approx({0.5: 0.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0})
    assert metrics.label_tp_errors["car"]["trans_err"] == pytest.approx(0.75)


def test_missing_sample_and_too_many_boxes_are_errors() -> None:
    gt_results, pred_results = random_scene(3, n_samples=4)
    dropped = dict(pred_results)
    token = next(iter(gt_results))
    del dropped[token]
    with pytest.raises(ValueError, match=f"no entry for ground-truth sample '{token}'"):
        ours_evaluate(gt_results, dropped)
    extra = dict(pred_results, unknown_sample=[])
    with pytest.raises(ValueError, match="'unknown_sample' which is not in the ground truth"):
        ours_evaluate(gt_results, extra)
    crowded = dict(pred_results)
    crowded[token] = [dict(pred_results[token][0]) if pred_results[token] else
                      {**gt_results[token][0], "detection_score": 0.5}] * 501
    for box in crowded[token]:
        box.pop("num_pts", None)
    with pytest.raises(ValueError, match=f"sample '{token}' has 501 predictions"):
        ours_evaluate(gt_results, crowded)


@pytest.mark.parametrize("seed", [0, 1])
def test_crowded_samples_equal_devkit(seed: int) -> None:
    """Hundreds of predictions contending for a few dozen ground truths in a few square metres:
    the greedy matching order decides every result."""
    rng = np.random.default_rng(seed)
    gt_results, pred_results = {}, {}
    for s in range(3):
        token = f"crowd-{s}"

        def box(name, xy, **extra):
            return {"sample_token": token, "translation": [*xy, 0.0], "size": [1.0, 2.0, 1.0],
                    "rotation": _yaw_rotation(float(rng.uniform(-3, 3))), "velocity": [0.0, 0.0],
                    "detection_name": name, "attribute_name": "", "ego_translation": [*xy, 0.0], **extra}

        names = ["car", "pedestrian"]
        gt_results[token] = [box(names[i % 2], np.round(rng.uniform(0, 5, size=2), 1).tolist(), num_pts=3)
                             for i in range(40)]
        pred_results[token] = [box(names[i % 2], np.round(rng.uniform(0, 5, size=2), 1).tolist(),
                                   detection_score=round(float(rng.uniform(0, 1)), 1)) for i in range(300)]
    theirs, _ = devkit_evaluate(gt_results, pred_results)
    ours = ours_evaluate(gt_results, pred_results)
    for name in ("car", "pedestrian"):
        for th in (0.5, 1.0, 2.0, 4.0):
            assert_close(ours.label_aps[name][th], theirs.get_label_ap(name, th), f"AP {name}@{th}")
        for metric in TP_METRICS:
            assert_close(ours.label_tp_errors[name][metric], theirs.get_label_tp(name, metric), f"{metric} {name}")
    assert_close(ours.nd_score, theirs.nd_score, "NDS")


def test_no_predictions_at_all() -> None:
    """The devkit's no-predictions case (its own code cannot run here: its filter needs one box)."""
    gt_results, pred_results = random_scene(8, n_samples=3)
    metrics = ours_evaluate(gt_results, {token: [] for token in pred_results})
    assert metrics.mean_ap == 0.0 and metrics.nd_score == 0.0
    for name, errors in metrics.label_tp_errors.items():
        not_applicable = detection_cvpr_2019().tp_not_applicable.get(name, ())
        assert all(math.isnan(v) if m in not_applicable else v == 1.0 for m, v in errors.items()), name
    table = metrics.format_table().splitlines()
    assert table[0].startswith("mAP:") and sum(line.startswith(NUSCENES_CLASSES) for line in table) == 10
