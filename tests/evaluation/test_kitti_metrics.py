"""KITTI AP: hand-built cases whose AP follows from the official protocol, agreement with a literal
per-frame port of the devkit's loops on random scenes, and the real KITTI fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rdd3d.core.geometry import axis_aligned_iou, bev_iou, iou3d
from rdd3d.data.kitti.format import (
    DIFFICULTIES,
    MAX_OCCLUSION,
    MAX_TRUNCATION,
    MIN_HEIGHT,
    KittiObjects,
    camera_to_lidar_boxes,
    detections_from_lidar_boxes,
    read_calib_file,
    read_image_shape,
    read_label_file,
)
from rdd3d.evaluation.kitti_metrics import (
    MIN_OVERLAPS,
    METRICS,
    NEIGHBOUR_CLASS,
    average_precision,
    evaluate_kitti,
    sample_thresholds,
)

CAR_HWL = (1.5, 1.6, 4.0)


def objects(rows: list[dict], with_score: bool) -> KittiObjects:
    """Rows of keyword fields -> KittiObjects; defaults make a fully visible car 15 m ahead."""
    full = [
        dict(dict(name="Car", truncated=0.0, occluded=0, alpha=0.0, bbox=(500, 150, 700, 250), hwl=CAR_HWL,
                  location=(0.0, 1.6, 15.0), ry=0.0, score=1.0), **row)
        for row in rows
    ]
    if not full:
        return KittiObjects.empty(with_score)
    return KittiObjects(
        tuple(r["name"] for r in full), [r["truncated"] for r in full], [r["occluded"] for r in full],
        [r["alpha"] for r in full], [r["bbox"] for r in full], [r["hwl"] for r in full],
        [r["location"] for r in full], [r["ry"] for r in full],
        [r["score"] for r in full] if with_score else None,
    )


def one_car_frames(count: int, detected: int, score=lambda i: 1.0 - i / 1000) -> tuple[list, list]:
    """``count`` frames of one car each; the first ``detected`` hold a perfect detection."""
    gts = [objects([{}], False) for _ in range(count)]
    dets = [objects([{"score": score(i)}] if i < detected else [], True) for i in range(count)]
    return gts, dets


def all_values(result, class_name="Car", metrics=METRICS, overlap_set="strict"):
    return {(m, d, r): result.ap(class_name, m, d, r, overlap_set) for m in metrics for d in DIFFICULTIES
            for r in (11, 40)}


# ---------------------------------------------------------------- the protocol by hand


def test_sample_thresholds_follow_the_recall_grid():
    # 80 objects, 40 found: recall 0.5 is reached at the 40th score, in steps of 1/80, so the
    # scores at recall 0, 1/40, ..., 20/40 are kept: 21 of them.
    kept = sample_thresholds(np.linspace(1, 0.5, 40), 80)
    assert len(kept) == 21 and kept[0] == 1.0 and kept[-1] == 0.5
    assert len(sample_thresholds(np.ones(100), 100)) == 41
    # Fewer than 41 objects: every true positive is kept, one grid step each (the devkit's quirk).
    assert len(sample_thresholds(np.ones(4), 4)) == 4
    assert len(sample_thresholds(np.ones(40), 40)) == 40
    assert len(sample_thresholds(np.zeros(0), 7)) == 0


def test_average_precision_samples_the_41_point_curve():
    precision = np.zeros(41)
    precision[:21] = 1.0  # perfect precision up to recall 0.5
    r11, r40 = average_precision(precision)
    assert r11 == pytest.approx(600 / 11) and r40 == pytest.approx(50.0)


def test_every_object_found_gives_100():
    gts, dets = one_car_frames(41, 41)
    values = all_values(evaluate_kitti(gts, dets, classes=["Car"]))
    assert all(v == pytest.approx(100.0) for v in values.values()), values


def test_a_single_object_found_gives_the_official_small_sample_values():
    # One object: one threshold, its precision lands on the first recall sample only.
    gts, dets = one_car_frames(1, 1)
    result = evaluate_kitti(gts, dets, classes=["Car"])
    for metric in METRICS:
        assert result.ap("Car", metric, "moderate", 11) == pytest.approx(100 / 11)
        assert result.ap("Car", metric, "moderate", 40) == 0.0
    # 40 objects fill the curve up to entry 39 only: R40 = 39/40.
    assert evaluate_kitti(*one_car_frames(40, 40), classes=["Car"]).ap("Car", "3d") == pytest.approx(97.5)


def test_half_found_with_perfect_precision():
    gts, dets = one_car_frames(80, 40)
    values = all_values(evaluate_kitti(gts, dets, classes=["Car"]))
    for (metric, difficulty, positions), value in values.items():
        assert value == pytest.approx(50.0 if positions == 40 else 600 / 11), (metric, difficulty, positions)


def test_false_positive_above_every_true_positive_halves_precision():
    # 50 cars, each found, but each true positive is preceded by a false positive of higher score:
    # precision is 1/2 at every threshold.
    far = {"location": (30.0, 1.6, 60.0), "bbox": (100, 100, 200, 200)}
    gts = [objects([{}], False) for _ in range(50)]
    dets = [objects([{"score": 1 - i / 100}, dict(far, score=1 - i / 100 + 0.005)], True) for i in range(50)]
    result = evaluate_kitti(gts, dets, classes=["Car"])
    for metric in METRICS:
        assert result.ap("Car", metric, "moderate", 40) == pytest.approx(50.0)
        assert result.ap("Car", metric, "moderate", 11) == pytest.approx(50.0)


def test_low_overlap_detection_is_a_false_positive_and_a_miss():
    # Cars heading along z (l = 4 m along z); 41 perfect detections with high scores and 41
    # detections shifted 1 m along z with a low score: BEV and 3D IoU 3/5 = 0.6.
    along_z = {"ry": -np.pi / 2}
    gts = [objects([along_z], False) for _ in range(82)]
    dets = [objects([dict(along_z, score=1 - i / 1000)], True) for i in range(41)]
    dets += [objects([dict(along_z, location=(0.0, 1.6, 16.0), score=0.1)], True) for _ in range(41)]
    result = evaluate_kitti(gts, dets, classes=["Car"], metrics=["bev", "3d"])
    # strict (0.7): half the cars found, the others missed, their detections scored below every
    # true positive -> recall 0.5 at precision 1.
    assert result.ap("Car", "bev", "moderate", 40) == pytest.approx(50.0)
    assert result.ap("Car", "3d", "moderate", 40) == pytest.approx(50.0)
    # loose (0.5): all found.
    assert result.ap("Car", "bev", "moderate", 40, "loose") == pytest.approx(100.0)
    assert result.ap("Car", "3d", "moderate", 40, "loose") == pytest.approx(100.0)


@pytest.mark.parametrize("class_name", ["Car", "Pedestrian"])
def test_detection_on_the_neighbouring_class_is_not_a_false_positive(class_name):
    neighbour = {"Car": "Van", "Pedestrian": "Person_sitting"}[class_name]
    gts = [objects([{"name": class_name}], False) for _ in range(41)]
    dets = [objects([{"name": class_name, "score": 0.5}], True) for _ in range(41)]
    # An extra object 20 m further away with a top-scoring detection on it.
    away = {"location": (0.0, 1.6, 35.0), "bbox": (560, 160, 640, 220)}
    gts_with_neighbour = gts[:-1] + [objects([{"name": class_name}, dict(away, name=neighbour)], False)]
    dets_extra = dets[:-1] + [objects([{"name": class_name, "score": 0.5}, dict(away, name=class_name)], True)]
    on_neighbour = evaluate_kitti(gts_with_neighbour, dets_extra, classes=[class_name])
    assert all(v == pytest.approx(100.0) for v in all_values(on_neighbour, class_name).values())
    # The same detection on another class (a Truck) is a false positive.
    gts_with_truck = gts[:-1] + [objects([{"name": class_name}, dict(away, name="Truck")], False)]
    on_truck = evaluate_kitti(gts_with_truck, dets_extra, classes=[class_name])
    assert all(v < 100.0 for v in all_values(on_truck, class_name).values())


def test_dontcare_region_absorbs_detections_for_the_2d_metric_only():
    region = {"name": "DontCare", "truncated": -1, "occluded": -1, "alpha": -10, "bbox": (50, 100, 250, 300),
              "hwl": (-1, -1, -1), "location": (-1000, -1000, -1000), "ry": -10}
    gts = [objects([{}], False) for _ in range(40)] + [objects([{}, region], False)]
    extra = {"bbox": (60, 120, 240, 290), "location": (-8.0, 1.6, 15.0), "score": 2.0}  # top score
    dets = [objects([{}], True) for _ in range(40)] + [objects([{}, extra], True)]
    result = evaluate_kitti(gts, dets, classes=["Car"])
    assert result.ap("Car", "bbox", "moderate", 40) == pytest.approx(100.0)
    # For BEV and 3D the devkit applies no DontCare rule: the detection is a false positive.
    assert result.ap("Car", "bev", "moderate", 40) < 100.0
    assert result.ap("Car", "3d", "moderate", 40) < 100.0


def test_difficulty_rules_ignore_hard_objects_and_small_detections():
    occluded = [objects([{"occluded": 1}], False) for _ in range(41)]
    dets = [objects([{}], True) for _ in range(41)]
    result = evaluate_kitti(occluded, dets, classes=["Car"])
    assert result.entry("Car", "3d").num_ground_truth == (0, 41, 41)
    assert result.ap("Car", "3d", "easy") == 0.0  # nothing counts at easy
    assert result.ap("Car", "3d", "moderate") == pytest.approx(100.0)

    # A top-scoring 30-px-high detection on nothing: ignored at easy (< 40 px), a false positive at
    # moderate and hard (>= 25 px).
    small = {"location": (-8.0, 1.6, 30.0), "bbox": (100, 100, 150, 130), "score": 2.0}
    gts = [objects([{}], False) for _ in range(41)]
    dets = [objects([{}], True) for _ in range(40)] + [objects([{}, small], True)]
    result = evaluate_kitti(gts, dets, classes=["Car"])
    assert result.ap("Car", "3d", "easy") == pytest.approx(100.0)
    assert result.ap("Car", "3d", "moderate") < 100.0 and result.ap("Car", "3d", "hard") < 100.0


def test_orientation_similarity():
    gts = [objects([{"alpha": 0.3}], False) for _ in range(41)]
    right = [objects([{"alpha": 0.3}], True) for _ in range(41)]
    backwards = [objects([{"alpha": 0.3 - np.pi}], True) for _ in range(41)]
    assert evaluate_kitti(gts, right, ["Car"]).ap("Car", "aos") == pytest.approx(100.0)
    reversed_result = evaluate_kitti(gts, backwards, ["Car"])
    assert reversed_result.ap("Car", "bbox") == pytest.approx(100.0)
    assert reversed_result.ap("Car", "aos") == pytest.approx(0.0, abs=1e-9)
    no_alpha = [objects([{"alpha": -10}], True) for _ in range(41)]
    with pytest.raises(KeyError, match="aos"):
        evaluate_kitti(gts, no_alpha, ["Car"]).ap("Car", "aos")


def test_result_views_and_input_errors():
    gts, dets = one_car_frames(41, 41)
    result = evaluate_kitti(gts, dets, classes=["Car"])
    flat = result.to_dict()
    assert flat["Car_3d_moderate_R40"] == pytest.approx(100.0)
    assert flat["Car_image_easy"] == pytest.approx(100.0) and "Car_bev_hard_R40_loose" in flat
    table = result.format_table()
    assert "Car AP@0.70, 0.70, 0.70:" in table and "Car AP_R40@0.70, 0.50, 0.50:" in table
    with pytest.raises(ValueError, match="2 ground-truth frames but 1"):
        evaluate_kitti(gts[:2], dets[:1])
    with pytest.raises(ValueError, match="frame 0 have no scores"):
        evaluate_kitti(gts[:1], gts[:1])
    with pytest.raises(ValueError, match="unknown KITTI class 'Tram'"):
        evaluate_kitti(gts, dets, classes=["Tram"])
    with pytest.raises(ValueError, match="unknown KITTI metric"):
        evaluate_kitti(gts, dets, metrics=["2d"])
    flat_box = [objects([{"hwl": (1.5, 0.0, 4.0)}], True)]
    with pytest.raises(ValueError, match="detection 0 .Car. of frame 0 has non-positive dimensions"):
        evaluate_kitti(gts[:1], flat_box)


# ---------------------------------------------------------------- against a literal port of the devkit loops


def reference_curves(gts, dets, class_name, difficulty, metric, min_overlap):
    """The devkit's clean_data / compute_statistics / get_thresholds, frame by frame, object by object."""
    current = class_name.lower()
    frames = []
    for gt, det in zip(gts, dets):
        ignored_gt, ignored_det, num_valid = [], [], 0
        for i, name in enumerate(gt.names):
            name = name.lower()
            valid_class = 1 if name == current else 0 if NEIGHBOUR_CLASS.get(current) == name else -1
            ignore = (gt.occluded[i] > MAX_OCCLUSION[difficulty] or gt.truncated[i] > MAX_TRUNCATION[difficulty]
                      or gt.bbox[i, 3] - gt.bbox[i, 1] <= MIN_HEIGHT[difficulty])
            if valid_class == 1 and not ignore:
                ignored_gt.append(0)
                num_valid += 1
            elif valid_class == 0 or (ignore and valid_class == 1):
                ignored_gt.append(1)
            else:
                ignored_gt.append(-1)
        for j, name in enumerate(det.names):
            if abs(det.bbox[j, 3] - det.bbox[j, 1]) < MIN_HEIGHT[difficulty]:
                ignored_det.append(1)
            else:
                ignored_det.append(0 if name.lower() == current else -1)
        regions = gt.bbox[[n == "DontCare" for n in gt.names]]
        frames.append((gt, det, ignored_gt, ignored_det, num_valid, reference_overlaps(gt, det, metric), regions))
    total_valid = sum(f[4] for f in frames)

    def statistics(frame, thresh, compute_fp):
        gt, det, ignored_gt, ignored_det, _, overlaps, regions = frame
        assigned = [False] * len(det)
        below = [compute_fp and det.score[j] < thresh for j in range(len(det))]
        tp = fp = fn = 0
        similarity, scores = 0.0, []
        for i in range(len(gt)):
            if ignored_gt[i] == -1:
                continue
            chosen, best_score, best_overlap, took_ignored = -1, -1e7, 0.0, False
            for j in range(len(det)):
                if ignored_det[j] == -1 or assigned[j] or below[j]:
                    continue
                overlap = overlaps[i, j]
                if not compute_fp and overlap > min_overlap and det.score[j] > best_score:
                    chosen, best_score = j, det.score[j]
                elif compute_fp and overlap > min_overlap and (overlap > best_overlap or took_ignored) \
                        and ignored_det[j] == 0:
                    chosen, best_overlap, took_ignored = j, overlap, False
                elif compute_fp and overlap > min_overlap and chosen == -1 and ignored_det[j] == 1:
                    chosen, took_ignored = j, True
            if chosen == -1:
                fn += ignored_gt[i] == 0
            elif ignored_gt[i] == 1 or ignored_det[chosen] == 1:
                assigned[chosen] = True
            else:
                tp += 1
                scores.append(det.score[chosen])
                similarity += (1 + math.cos(gt.alpha[i] - det.alpha[chosen])) / 2
                assigned[chosen] = True
        if compute_fp:
            fp = sum(not (assigned[j] or ignored_det[j] != 0 or below[j]) for j in range(len(det)))
            if metric == "bbox":
                for region in regions:
                    for j in range(len(det)):
                        if assigned[j] or ignored_det[j] != 0 or below[j]:
                            continue
                        width = min(det.bbox[j, 2], region[2]) - max(det.bbox[j, 0], region[0])
                        height = min(det.bbox[j, 3], region[3]) - max(det.bbox[j, 1], region[1])
                        area = (det.bbox[j, 2] - det.bbox[j, 0]) * (det.bbox[j, 3] - det.bbox[j, 1])
                        if width > 0 and height > 0 and width * height / area > min_overlap:
                            assigned[j] = True
                            fp -= 1
        return tp, fp, fn, similarity, scores

    if total_valid == 0:
        return np.zeros(41), np.zeros(41)
    tp_scores = [s for frame in frames for s in statistics(frame, 0.0, False)[4]]
    tp_scores.sort(reverse=True)
    thresholds, current = [], 0.0
    for i, score in enumerate(tp_scores):
        left = (i + 1) / total_valid
        right = (i + 2) / total_valid if i < len(tp_scores) - 1 else left
        if (right - current) < (current - left) and i < len(tp_scores) - 1:
            continue
        thresholds.append(score)
        current += 1 / 40.0
    precision, recall = np.zeros(41), np.zeros(41)
    for k, thresh in enumerate(thresholds):
        tp = fp = fn = 0
        for frame in frames:
            stats = statistics(frame, thresh, True)
            tp, fp, fn = tp + stats[0], fp + stats[1], fn + stats[2]
        precision[k] = tp / (tp + fp) if tp + fp else 0.0
        recall[k] = tp / (tp + fn)
    for k in range(len(thresholds)):
        precision[k], recall[k] = precision[k:].max(), recall[k:].max()
    return precision, recall


def reference_overlaps(gt, det, metric):
    """(G, D) overlaps per frame with the all-pairs geometry functions (the module uses aligned pairs)."""
    if len(gt) == 0 or len(det) == 0:
        return np.zeros((len(gt), len(det)))
    if metric == "bbox":
        return axis_aligned_iou(gt.bbox, det.bbox).numpy()

    def boxes(o):
        x, y, z = o.location.T
        h, w, l = o.dimensions_hwl.T
        return np.column_stack([x, z, h / 2 - y, l, w, h, -o.rotation_y])

    real = np.array([n != "DontCare" for n in gt.names])
    result = np.zeros((len(gt), len(det)))
    fn = bev_iou if metric == "bev" else iou3d
    result[real] = fn(boxes(gt.select(real)), boxes(det)).numpy()
    return result


def random_scene(rng, num_frames):
    """Crowded frames: overlapping objects of neighbouring classes, DontCare, small boxes, duplicates."""
    names = ["Car", "Car", "Van", "Pedestrian", "Person_sitting", "Cyclist", "Truck"]
    gts, dets = [], []
    for _ in range(num_frames):
        gt_rows, det_rows = [], []
        for _ in range(rng.integers(0, 7)):
            x1, y1 = rng.uniform(0, 300), rng.uniform(0, 100)
            w, h = rng.uniform(20, 120), rng.uniform(15, 90)
            row = dict(name=str(rng.choice(names)), truncated=float(rng.choice([0, 0, 0.1, 0.2, 0.4, 0.6])),
                       occluded=int(rng.choice([0, 0, 1, 2, 3])), alpha=float(rng.uniform(-3, 3)), bbox=(x1, y1, x1 + w, y1 + h),
                       hwl=tuple(rng.uniform(1, 4, 3)), location=(rng.uniform(-3, 3), 1.5, rng.uniform(10, 16)),
                       ry=float(rng.uniform(-3, 3)))
            gt_rows.append(row)
            for _ in range(rng.integers(0, 3)):  # 0-2 jittered detections per object
                jitter = rng.normal(0, 0.1, 3) * [1, 0.2, 1]
                det_rows.append(dict(row, name=str(rng.choice([row["name"], "Car", "Pedestrian"])),
                                     bbox=tuple(np.array(row["bbox"]) + rng.normal(0, 3, 4)),
                                     location=tuple(np.array(row["location"]) + jitter),
                                     ry=row["ry"] + rng.normal(0, 0.1), score=float(rng.choice([0.9, 0.5, rng.uniform()]))))
        if rng.uniform() < 0.5:
            gt_rows.append(dict(name="DontCare", truncated=-1, occluded=-1, alpha=-10, bbox=(0, 0, 200, 120),
                                hwl=(-1, -1, -1), location=(-1000, -1000, -1000), ry=-10))
        for _ in range(rng.integers(0, 3)):  # false positives, some inside the DontCare region
            x1, y1 = rng.uniform(0, 250), rng.uniform(0, 80)
            det_rows.append(dict(name=str(rng.choice(["Car", "Pedestrian"])), alpha=0.0,
                                 bbox=(x1, y1, x1 + rng.uniform(10, 60), y1 + rng.uniform(10, 60)),
                                 location=(rng.uniform(-3, 3), 1.5, rng.uniform(10, 16)), score=float(rng.uniform())))
        gts.append(objects(gt_rows, False))
        dets.append(objects(det_rows, True))
    return gts, dets


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_a_literal_port_of_the_devkit_loops(seed):
    rng = np.random.default_rng(seed)
    gts, dets = random_scene(rng, 100)
    result = evaluate_kitti(gts, dets, classes=["Car", "Pedestrian"])
    for class_name in ("Car", "Pedestrian"):
        for metric in METRICS:
            for overlap_set in ("strict", "loose"):
                min_overlap = MIN_OVERLAPS[overlap_set][class_name][METRICS.index(metric)]
                ours = result.entry(class_name, metric, overlap_set)
                for d in range(3):
                    precision, recall = reference_curves(gts, dets, class_name, d, metric, min_overlap)
                    where = f"{class_name} {metric} {overlap_set} {DIFFICULTIES[d]}"
                    np.testing.assert_allclose(ours.precision[d], precision, atol=1e-12, err_msg=where)
                    np.testing.assert_allclose(ours.recall[d], recall, atol=1e-12, err_msg=where)
    assert 0 < result.ap("Car", "bbox", "hard", 40) < 100  # the scene is neither trivial nor hopeless


# ---------------------------------------------------------------- real KITTI frames


def kitti_frames(real_data, copies: int, lift_fraction: float = 0.0):
    """Ground truth of frames 000008 and 000000 (repeated), and detections made from their LiDAR boxes
    (optionally lifted by a fraction of their height) the way a LiDAR detector's output is."""
    training = real_data / "kitti" / "training"
    gts, dets = [], []
    for frame_id in ("000008", "000000"):
        gt = read_label_file(training / "label_2" / f"{frame_id}.txt")
        calib = read_calib_file(training / "calib" / f"{frame_id}.txt")
        image_shape = (375, 1242)
        if (training / "image_2" / f"{frame_id}.png").exists():
            image_shape = read_image_shape(training / "image_2" / f"{frame_id}.png")
        real = gt.select(~gt.is_dontcare)
        boxes = camera_to_lidar_boxes(real, calib)
        tensor = boxes.tensor.copy()
        tensor[:, 2] += lift_fraction * tensor[:, 5]
        det = detections_from_lidar_boxes(boxes.replace(tensor), np.ones(len(real)), real.names, calib, image_shape)
        gts.append(gt)
        dets.append(det)
    return gts * copies, dets * copies


def test_real_ground_truth_as_detections(real_data):
    gts, dets = kitti_frames(real_data, copies=41)
    result = evaluate_kitti(gts, dets, classes=["Car", "Pedestrian"])
    # Frame 000008: of its 6 cars 1 counts at easy, 4 at moderate and hard (the others are occluded
    # or truncated beyond every level and are ignored).
    assert result.entry("Car", "3d").num_ground_truth == (41, 164, 164)
    for class_name in ("Car", "Pedestrian"):
        values = all_values(result, class_name)
        assert all(v == pytest.approx(100.0) for v in values.values()), (class_name, values)
    assert result.ap("Car", "aos", "moderate") == pytest.approx(100.0, abs=0.01)

    # The label files themselves as detections (DontCare lines included, as the devkit allows).
    labels = [KittiObjects(*[getattr(gt, f) for f in ("names", "truncated", "occluded", "alpha", "bbox",
                                                      "dimensions_hwl", "location", "rotation_y")], np.ones(len(gt)))
              for gt in gts[:2]]
    as_labels = evaluate_kitti(gts, labels * 41, classes=["Car", "Pedestrian"])
    assert all(v == pytest.approx(100.0) for v in all_values(as_labels, "Car").values())

    few = evaluate_kitti(*kitti_frames(real_data, copies=1), classes=["Car"])
    assert few.ap("Car", "3d", "moderate", 40) == pytest.approx(3 / 40 * 100)  # 4 objects: 4 thresholds


def test_real_boxes_lifted_lose_3d_ap_but_keep_bev_ap(real_data):
    slightly = evaluate_kitti(*kitti_frames(real_data, copies=41, lift_fraction=0.1), classes=["Car"])
    # 3D IoU of a box and itself lifted by 0.1 h is 0.9 / 1.1 > 0.7: still all found.
    assert slightly.ap("Car", "3d", "moderate") == pytest.approx(100.0)
    halfway = evaluate_kitti(*kitti_frames(real_data, copies=41, lift_fraction=0.5), classes=["Car"])
    # Lifted by half the height: 3D IoU 1/3, below 0.7 and 0.5; BEV does not see height.
    assert halfway.ap("Car", "3d", "moderate") == 0.0
    assert halfway.ap("Car", "3d", "moderate", overlap_set="loose") == 0.0
    assert halfway.ap("Car", "bev", "moderate") == pytest.approx(100.0)
