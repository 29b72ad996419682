import math

import pytest
import torch

from rdd3d.core.types import ClassTable
from rdd3d.models.heads import (
    BEVGrid, CenterHead, CenterHeadConfig, DecodeConfig, LossConfig, NMSConfig, TargetConfig, TaskPrediction,
    assign_targets, box_cells, draw_gaussians, gaussian_radius,
)

# 64 x 48 cells of 0.5 m (voxel 0.125 m, stride 4) from (-16, -12).
GRID = BEVGrid.from_voxels((-16.0, -12.0, -3.0, 16.0, 12.0, 3.0), (0.125, 0.125, 6.0), 4, (48, 64))
CLASSES = ClassTable(("car", "truck", "pedestrian"))
GROUPS = (("car", "truck"), ("pedestrian",))


def _boxes(with_velocity=False):
    boxes = torch.tensor([
        [1.3, -2.6, -0.5, 4.2, 1.9, 1.6, 0.4, 3.0, -1.0],     # car
        [-9.8, 7.1, 0.2, 10.0, 2.8, 3.2, -2.9, 0.5, 0.25],    # truck
        [6.05, 4.4, -0.9, 0.7, 0.6, 1.8, 1.2, -0.4, 1.1],     # pedestrian
        [-3.3, -8.7, -0.4, 4.5, 2.0, 1.5, 3.1, 0.0, 0.0],     # car
    ])
    return boxes if with_velocity else boxes[:, :7]


LABELS = torch.tensor([0, 1, 2, 0])


def test_gaussian_radius_matches_hand_computation():
    # 10 x 10 cells, overlap 0.1: r1 = (20 + sqrt(400 - 4 * 900/11)) / 2 = 14.264,
    # r2 = (40 + sqrt(1600 - 16 * 90)) / 2 = 26.325, r3 = (-4 + sqrt(16 + 4 * 0.4 * 90)) / 2 = 4.3246.
    radius = gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), 0.1)
    assert radius.item() == pytest.approx((-4 + math.sqrt(160)) / 2, rel=1e-6)
    # 4 x 2 cells: r3 = (-1.2 + sqrt(1.44 + 1.6 * 7.2)) / 2 = 1.2 (r1 = 4.57, r2 = 8.68).
    assert gaussian_radius(torch.tensor([4.0]), torch.tensor([2.0]), 0.1).item() == pytest.approx(1.2, rel=1e-6)


def test_box_cells_centre_cell_and_radius():
    cells = box_cells(_boxes(), GRID, gaussian_overlap=0.1, min_radius=2)
    # car: x 1.3 -> (1.3 + 16) / 0.5 = 34.6, y -2.6 -> (-2.6 + 12) / 0.5 = 18.8
    assert cells.centre[0].tolist() == pytest.approx([34.6, 18.8], abs=1e-5)
    assert cells.cell[0].tolist() == [34, 18]
    # truck 20 x 5.6 cells: r3 = (-5.12 + sqrt(26.21 + 1.6 * 100.8)) / 2 = 4.29 -> 4;
    # car 8.4 x 3.8 cells: r3 = 2.38 -> 2; pedestrian 1.4 x 1.2 cells: 0.4 -> min radius 2.
    assert cells.radius.tolist() == [2, 4, 2, 2]
    assert cells.inside.all()


def test_box_cells_marks_boxes_off_the_map():
    boxes = torch.tensor([[16.5, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0], [15.9, 11.9, 0.0, 2.0, 2.0, 2.0, 0.0]])
    cells = box_cells(boxes, GRID)
    assert cells.inside.tolist() == [False, True]
    assert cells.cell[1].tolist() == [63, 47]


def test_heatmap_peak_is_one_at_each_box_centre_cell():
    targets = assign_targets([_boxes()], [LABELS], [[0, 1], [2]], GRID)
    cells = box_cells(_boxes(), GRID).cell
    vehicle, pedestrian = targets[0].heatmap[0], targets[1].heatmap[0]
    for box, (task_map, channel) in enumerate([(vehicle, 0), (vehicle, 1), (pedestrian, 0), (vehicle, 0)]):
        column, row = cells[box].tolist()
        assert task_map[channel, row, column] == 1.0
    assert (vehicle == 1).sum() == 3 and (pedestrian == 1).sum() == 1
    assert vehicle.max() <= 1.0 and vehicle[1].sum() > 0 and vehicle.min() == 0.0


def test_regression_targets_and_slots():
    targets = assign_targets([_boxes(with_velocity=True)], [LABELS], [[0, 1], [2]], GRID, with_velocity=True)
    vehicle = targets[0]
    assert vehicle.mask[0].tolist()[:4] == [True, True, True, False]
    car = vehicle.box_codes[0, 0]
    expected = [0.6, 0.8, -0.5, math.log(4.2), math.log(1.9), math.log(1.6), math.cos(0.4), math.sin(0.4), 3.0, -1.0]
    assert car.tolist() == pytest.approx(expected, abs=1e-5)
    assert vehicle.indices[0, 0].item() == 18 * 64 + 34
    assert targets[1].box_codes.shape == (1, 500, 10)


def test_draw_gaussians_equals_per_box_max_of_explicit_gaussians():
    heatmap = torch.zeros(2, 10, 12)
    classes, cells, radii = torch.tensor([0, 0, 1]), torch.tensor([[1, 1], [3, 2], [11, 9]]), torch.tensor([2, 3, 4])
    draw_gaussians(heatmap, classes, cells, radii)
    expected = torch.zeros(2, 10, 12)
    rows, columns = torch.meshgrid(torch.arange(10), torch.arange(12), indexing="ij")
    for c, (x, y), r in zip(classes.tolist(), cells.tolist(), radii.tolist()):
        sigma = (2 * r + 1) / 6
        within = ((columns - x).abs() <= r) & ((rows - y).abs() <= r)
        gaussian = torch.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * sigma ** 2)) * within
        expected[c] = torch.maximum(expected[c], gaussian)
    torch.testing.assert_close(heatmap, expected)


def test_max_objects_and_empty_samples():
    config = TargetConfig(max_objects=2)
    boxes = _boxes()
    targets = assign_targets([boxes, boxes[:0]], [torch.zeros(4, dtype=torch.long), LABELS[:0]], [[0, 1], [2]],
                             GRID, config)
    assert targets[0].mask.tolist() == [[True, True], [False, False]]
    assert (targets[0].heatmap[0, 0] == 1).sum() == 2  # boxes beyond max_objects are ignored entirely
    assert targets[0].heatmap[1].sum() == 0


def test_velocity_head_needs_velocity_boxes():
    with pytest.raises(ValueError, match="velocity"):
        assign_targets([_boxes()], [LABELS], [[0, 1], [2]], GRID, with_velocity=True)


def _predictions_from_targets(targets, height, width):
    """Maps that a perfect head would output: heatmap logits of the targets, box codes at the box cells."""
    predictions = []
    for target in targets:
        batch, _, code_size = target.box_codes.shape
        codes = torch.zeros(batch, code_size, height * width)
        for b in range(batch):
            slots = target.mask[b]
            codes[b][:, target.indices[b, slots]] = target.box_codes[b, slots].T
        codes = codes.view(batch, code_size, height, width)
        logits = torch.logit(target.heatmap.clamp(1e-4, 1 - 1e-4))
        velocity = codes[:, 8:10] if code_size == 10 else None
        predictions.append(TaskPrediction(logits, codes[:, 0:2], codes[:, 2:3], codes[:, 3:6], codes[:, 6:8], velocity))
    return predictions


@pytest.mark.parametrize("with_velocity", [False, True])
def test_encode_decode_round_trip_returns_the_boxes(with_velocity):
    decode = DecodeConfig(score_threshold=0.99, nms=NMSConfig(kind="none"))
    loss = LossConfig(code_weights=(1.0,) * (10 if with_velocity else 8))
    config = CenterHeadConfig(class_groups=GROUPS, with_velocity=with_velocity, loss=loss, decode=decode)
    head = CenterHead(8, CLASSES, (-16.0, -12.0, -3.0, 16.0, 12.0, 3.0), (0.125, 0.125, 6.0), 4, config)
    boxes = _boxes(with_velocity)
    shifted = boxes.clone()
    shifted[:, 0] += 0.8
    gt_boxes, gt_labels = [boxes, shifted], [LABELS, LABELS]
    predictions = _predictions_from_targets(head.targets((48, 64), gt_boxes, gt_labels), 48, 64)
    for detections, expected_boxes in zip(head.decode(predictions), gt_boxes):
        assert detections.boxes.shape == (4, 9 if with_velocity else 7)
        order = torch.argsort(detections.boxes[:, 0])
        expected_order = torch.argsort(expected_boxes[:, 0])
        torch.testing.assert_close(detections.boxes[order], expected_boxes[expected_order], atol=1e-4, rtol=1e-4)
        assert detections.labels[order].tolist() == LABELS[expected_order].tolist()
        assert detections.scores.min() > 0.99


def test_decoded_sizes_stay_finite_and_positive_for_wild_log_sizes():
    from rdd3d.models.heads.targets import decode_boxes

    codes = torch.zeros(3, 8)
    codes[:, 6] = 1.0  # cos yaw
    codes[0, 3:6] = 200.0  # exp overflows float32
    codes[1, 3:6] = -200.0  # exp underflows to 0
    codes[2, 3:6] = math.log(2.0)
    boxes = decode_boxes(codes, torch.zeros(3, 2, dtype=torch.long), GRID)
    sizes = boxes[:, 3:6]
    assert torch.isfinite(sizes).all() and (sizes > 0).all()
    torch.testing.assert_close(sizes[2], torch.full((3,), 2.0))
    assert sizes[0].max() <= 1000.0 + 1e-3


def test_a_half_period_yaw_and_its_turn_by_pi_give_one_target():
    from rdd3d.models.heads.targets import decode_boxes, encode_boxes

    yaws = torch.tensor([-3.0, -1.2, 0.0, 0.4, 1.5, 2.9])
    boxes = torch.zeros(12, 7)
    boxes[:, 3:6] = 1.0
    boxes[:, 6] = torch.cat([yaws, yaws + math.pi])
    cells = box_cells(boxes, GRID)
    half = torch.ones(12, dtype=torch.bool)
    codes = encode_boxes(boxes, cells, with_velocity=False, half_period=half)
    torch.testing.assert_close(codes[:6], codes[6:], atol=1e-5, rtol=0)
    torch.testing.assert_close(codes[:, 6:8], torch.stack([torch.cos(2 * boxes[:, 6]), torch.sin(2 * boxes[:, 6])], 1))
    decoded = decode_boxes(codes, cells.cell, GRID, half)[:, 6]
    assert decoded.abs().max() <= math.pi / 2 + 1e-6
    # The decoded yaw is the true one modulo π; a full-period box keeps its own yaw.
    torch.testing.assert_close(torch.sin(decoded - boxes[:, 6]), torch.zeros(12), atol=1e-5, rtol=0)
    full = encode_boxes(boxes, cells, with_velocity=False)
    assert not torch.allclose(full[:6], full[6:])
    torch.testing.assert_close(decode_boxes(full, cells.cell, GRID)[:6, 6], yaws, atol=1e-5, rtol=0)


def test_half_period_codes_are_continuous_across_the_turn():
    # Wrapping a yaw into [-π/2, π/2) would jump from -1 to +1 in sin at ±π/2; (cos 2θ, sin 2θ) does not.
    from rdd3d.models.heads.targets import encode_boxes

    boxes = torch.zeros(2, 7)
    boxes[:, 3:6] = 1.0
    boxes[:, 6] = torch.tensor([math.pi / 2 - 1e-3, math.pi / 2 + 1e-3])
    codes = encode_boxes(boxes, box_cells(boxes, GRID), False, torch.ones(2, dtype=torch.bool))
    assert (codes[0, 6:8] - codes[1, 6:8]).abs().max() < 1e-2


def test_the_decoded_yaw_of_a_barrier_equals_its_true_yaw_modulo_pi():
    classes = ClassTable(("car", "barrier"))
    decode = DecodeConfig(score_threshold=0.99, nms=NMSConfig(kind="none"))
    config = CenterHeadConfig(class_groups=(("car",), ("barrier",)), decode=decode, half_period_classes=("barrier",))
    head = CenterHead(8, classes, (-16.0, -12.0, -3.0, 16.0, 12.0, 3.0), (0.125, 0.125, 6.0), 4, config)
    assert head.half_period_labels == (1,)
    boxes = torch.tensor([
        [1.3, -2.6, -0.5, 4.2, 1.9, 1.6, 2.8],  # car: yaw kept over the full circle
        [-6.1, 5.2, -0.6, 2.5, 0.5, 1.0, 2.8],  # barriers at yaws in every quadrant
        [8.3, -7.9, -0.6, 2.5, 0.5, 1.0, -2.0],
        [-10.2, -4.4, -0.6, 2.5, 0.5, 1.0, 0.7],
        [11.6, 6.6, -0.6, 2.5, 0.5, 1.0, -1.1],
    ])
    labels = torch.tensor([0, 1, 1, 1, 1])
    targets = head.targets((48, 64), [boxes], [labels])
    barrier_codes = targets[1].box_codes[0, targets[1].mask[0]]
    torch.testing.assert_close(barrier_codes[:, 6:8], torch.stack([torch.cos(2 * boxes[1:, 6]),
                                                                   torch.sin(2 * boxes[1:, 6])], 1))
    predictions = _predictions_from_targets(targets, 48, 64)
    for detections in (head.decode(predictions)[0],
                       head.decode_peaks(predictions, max_per_sample=10, score_threshold=0.99)[0]):
        order = torch.argsort(detections.boxes[:, 0])
        expected_order = torch.argsort(boxes[:, 0])
        found, expected = detections.boxes[order], boxes[expected_order]
        assert detections.labels[order].tolist() == labels[expected_order].tolist()
        torch.testing.assert_close(found[:, :6], expected[:, :6], atol=1e-4, rtol=1e-4)
        is_barrier = labels[expected_order] == 1
        turn = found[:, 6] - expected[:, 6]
        torch.testing.assert_close(torch.sin(turn[is_barrier]), torch.zeros(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(found[~is_barrier, 6], expected[~is_barrier, 6], atol=1e-4, rtol=0)


def test_a_half_period_class_must_be_a_class_of_the_head():
    config = CenterHeadConfig(class_groups=GROUPS, half_period_classes=("barrier",))
    with pytest.raises(ValueError, match="half_period_classes"):
        CenterHead(8, CLASSES, (-16.0, -12.0, -3.0, 16.0, 12.0, 3.0), (0.125, 0.125, 6.0), 4, config)
