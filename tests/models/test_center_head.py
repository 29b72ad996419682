import math

import pytest
import torch

from rdd3d.core.types import ClassTable
from rdd3d.models.heads import (
    CenterHead, CenterHeadConfig, DecodeConfig, LossConfig, NMSConfig, TaskPrediction, TaskTargets,
    center_loss, clamped_sigmoid, focal_loss, masked_l1,
)

NUSCENES = ClassTable(("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle",
                       "bicycle", "pedestrian", "traffic_cone"))
NUSCENES_GROUPS = (("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
                   ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"))
RANGE = (-8.0, -8.0, -3.0, 8.0, 8.0, 3.0)
VOXEL = (0.25, 0.25, 0.2)  # stride 2 -> 0.5 m cells, 32 x 32 map
NUSCENES_LOSS = LossConfig(code_weights=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2))


def _head(**config):
    config.setdefault("class_groups", NUSCENES_GROUPS)
    config.setdefault("head_channels", 16)
    return CenterHead(24, NUSCENES, RANGE, VOXEL, 2, CenterHeadConfig(**config))


def test_nuscenes_groups_map_to_class_table_labels():
    assert _head().task_labels == ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))


def test_bad_class_groups_are_named():
    with pytest.raises(ValueError, match="unknown class name 'van'"):
        _head(class_groups=(("car", "van"),))
    with pytest.raises(ValueError, match="exactly once"):
        _head(class_groups=NUSCENES_GROUPS[:-1])
    with pytest.raises(ValueError, match="circle_distances"):
        _head(decode=DecodeConfig(nms=NMSConfig(kind="circle", circle_distances=(4.0,))))
    with pytest.raises(ValueError, match="code_weights has 8 values but the head regresses 10"):
        _head(with_velocity=True)


def test_forward_backward_on_a_random_bev_map():
    torch.manual_seed(0)
    head = _head(with_velocity=True, loss=NUSCENES_LOSS)
    predictions = head(torch.randn(2, 24, 32, 32))
    assert len(predictions) == 6
    assert [p.heatmap.shape[1] for p in predictions] == [1, 2, 2, 1, 2, 2]
    first = predictions[0]
    assert (first.center.shape, first.center_z.shape, first.dim.shape, first.rot.shape, first.velocity.shape) == (
        (2, 2, 32, 32), (2, 1, 32, 32), (2, 3, 32, 32), (2, 2, 32, 32), (2, 2, 32, 32))
    car = [1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]
    pedestrian = [-5.0, 3.0, 0.5, 0.6, 0.6, 1.7, 2.0, 0.0, 1.0]
    boxes = [torch.tensor([car, pedestrian]), torch.zeros(0, 9)]
    loss = head.loss(predictions, boxes, [torch.tensor([0, 8]), torch.zeros(0, dtype=torch.long)])
    assert loss.heatmap.shape == (6,) and loss.location.shape == (6,) and loss.per_code.shape == (6, 10)
    assert loss.location[1] == 0  # no truck or construction vehicle: nothing to regress
    loss.total.backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert head.shared_conv[0].weight.grad.abs().sum() > 0


def test_heatmap_starts_from_the_low_prior():
    head = _head(hidden_convs_per_branch=0)
    assert head.tasks[0].heatmap[-1].bias.tolist() == pytest.approx([-2.19])
    assert head.tasks[0].rot[-1].bias.abs().sum() == 0
    heatmap = head(torch.zeros(1, 24, 8, 8))[0].heatmap
    assert torch.sigmoid(heatmap).mean().item() == pytest.approx(1 / (1 + math.exp(2.19)), rel=0.05)


def test_focal_loss_is_small_for_right_heatmaps_and_large_for_wrong_ones():
    peaks = torch.zeros(1, 1, 8, 8)
    peaks[0, 0, 3, 4] = 1.0
    exact = focal_loss(clamped_sigmoid(torch.logit(peaks.clamp(1e-6, 1 - 1e-6))), peaks)
    assert exact.item() < 1e-6
    gaussian = peaks.clone()
    gaussian[0, 0, 2:5, 3:6] = torch.maximum(gaussian[0, 0, 2:5, 3:6], torch.tensor(0.5))
    matched = focal_loss(clamped_sigmoid(torch.logit(gaussian)), gaussian)
    uncertain = focal_loss(clamped_sigmoid(torch.zeros(1, 1, 8, 8)), gaussian)
    inverted = focal_loss(clamped_sigmoid(torch.logit((1 - gaussian).clamp(1e-4, 1 - 1e-4))), gaussian)
    assert matched < 0.5 < uncertain < inverted
    # no peak: the negative term alone, not divided
    background = focal_loss(torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2))
    assert background.item() == pytest.approx(-4 * math.log(0.5) * 0.25, rel=1e-6)


def test_masked_l1_averages_over_real_slots_only():
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [9.0, 9.0]]])
    target = torch.tensor([[[0.0, 0.0], [5.0, 4.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_l1(pred, target, mask).tolist() == [0.5, 1.5]


def _one_box_targets(code_size):
    heatmap = torch.zeros(1, 1, 4, 4)
    heatmap[0, 0, 1, 2] = 1.0
    codes = torch.zeros(1, 3, code_size)
    codes[0, 0] = torch.arange(code_size, dtype=torch.float32) / 10
    return TaskTargets(heatmap, codes, torch.tensor([[1 * 4 + 2, 0, 0]]), torch.tensor([[True, False, False]]))


def _perfect_prediction(target, shift_channel=None):
    maps = torch.zeros(1, 8, 4, 4)
    maps[0, :, 1, 2] = target.box_codes[0, 0]
    if shift_channel is not None:
        maps[0, shift_channel] += 1.0
    heatmap = torch.logit(target.heatmap.clamp(1e-6, 1 - 1e-6))
    return TaskPrediction(heatmap, maps[:, 0:2], maps[:, 2:3], maps[:, 3:6], maps[:, 6:8], None)


def test_center_loss_applies_loss_and_code_weights():
    config = LossConfig(code_weights=(1.0,) * 7 + (0.2,))  # down-weight sin to see the weight applied
    target = _one_box_targets(8)
    perfect = center_loss([_perfect_prediction(target)], [target], config)
    assert perfect.location.item() == 0 and perfect.per_code.abs().sum() == 0
    assert perfect.total.item() == pytest.approx(perfect.heatmap.item()) and perfect.heatmap.item() < 1e-6
    sin_off = center_loss([_perfect_prediction(target, shift_channel=7)], [target], config)
    assert sin_off.per_code[0].tolist() == pytest.approx([0] * 7 + [1.0])
    assert sin_off.location.item() == pytest.approx(0.25 * 0.2)
    with pytest.raises(ValueError, match="code_weights has 10 values"):
        center_loss([_perfect_prediction(target)], [target], NUSCENES_LOSS)


def _prediction_with_peaks(peaks, height=32, width=32, num_classes=1):
    """``peaks``: (class, row, column, probability, z); all boxes 2 x 1 x 1 m, yaw 0."""
    heatmap = torch.full((1, num_classes, height, width), -20.0)
    center_z = torch.zeros(1, 1, height, width)
    for channel, row, column, probability, z in peaks:
        heatmap[0, channel, row, column] = math.log(probability / (1 - probability))
        center_z[0, 0, row, column] = z
    dim = torch.zeros(1, 3, height, width)
    dim[:, 0] = math.log(2.0)
    rot = torch.zeros(1, 2, height, width)
    rot[:, 0] = 1.0
    return TaskPrediction(heatmap, torch.full((1, 2, height, width), 0.5), center_z, dim, rot, None)


def test_decode_filters_by_score_and_range_and_maps_labels():
    head = _head(class_groups=(("car",), ("truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle",
                                          "bicycle", "pedestrian", "traffic_cone")),
                 decode=DecodeConfig(post_center_range=(-6.0, -8.0, -1.0, 8.0, 8.0, 1.0), nms=NMSConfig(kind="none")))
    car = _prediction_with_peaks([(0, 10, 20, 0.9, 0.0), (0, 10, 2, 0.8, 0.0), (0, 5, 5, 0.05, 0.0),
                                  (0, 20, 20, 0.7, 2.0)])
    others = _prediction_with_peaks([(7, 16, 16, 0.6, 0.0)], num_classes=9)
    (detections,) = head.decode([car, others])
    # kept: (row 10, column 20) -> x = (20.5) * 0.5 - 8 = 2.25, y = 10.5 * 0.5 - 8 = -2.75; the pedestrian.
    # dropped: column 2 (x = -6.75 < -6), score 0.05 <= 0.1, z = 2 > 1.
    assert detections.scores.tolist() == pytest.approx([0.9, 0.6], abs=1e-6)
    assert detections.labels.tolist() == [0, 8]
    assert detections.boxes[0].tolist() == pytest.approx([2.25, -2.75, 0.0, 2.0, 1.0, 1.0, 0.0], abs=1e-5)
    assert detections.boxes.shape == (2, 7)


def test_decode_keeps_the_best_of_a_sample_across_tasks():
    head = _head(class_groups=(("car",), ("truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle",
                                          "bicycle", "pedestrian", "traffic_cone")),
                 decode=DecodeConfig(nms=NMSConfig(kind="none"), max_per_sample=2))
    car = _prediction_with_peaks([(0, 10, 20, 0.5, 0.0), (0, 12, 2, 0.8, 0.0)])
    others = _prediction_with_peaks([(7, 16, 16, 0.6, 0.0), (3, 20, 20, 0.3, 0.0)], num_classes=9)
    (detections,) = head.decode([car, others])
    assert detections.scores.tolist() == pytest.approx([0.8, 0.6], abs=1e-6)  # 0.5 and 0.3 fall off
    assert detections.labels.tolist() == [0, 8]
    with pytest.raises(ValueError, match="max_per_sample"):
        DecodeConfig(max_per_sample=0)


@pytest.mark.parametrize("nms", [NMSConfig(kind="rotated", iou_threshold=0.2),
                                 NMSConfig(kind="circle", circle_distances=(1.0,))])
def test_decode_suppresses_neighbouring_peaks(nms):
    head = _head(class_groups=(tuple(NUSCENES.names),), decode=DecodeConfig(nms=nms))
    # two peaks one cell apart along x (0.5 m: IoU of 2 m boxes 0.6, squared distance 0.25) and one far away
    peaks = _prediction_with_peaks([(0, 10, 10, 0.9, 0.0), (0, 10, 11, 0.8, 0.0), (0, 25, 25, 0.7, 0.0)],
                                   num_classes=10)
    (detections,) = head.decode([peaks])
    assert detections.scores.tolist() == pytest.approx([0.9, 0.7], abs=1e-6)


@pytest.mark.parametrize("nms", [NMSConfig(kind="rotated", iou_threshold=0.2, post_max_size=30),
                                 NMSConfig(kind="circle", circle_distances=(1.0, 0.5, 2.0, 0.3, 0.8, 0.2),
                                           pre_max_size=100, post_max_size=20)])
def test_decode_of_a_batch_equals_one_nms_per_sample_and_task(nms):
    # The batched decode runs one NMS call for every sample and task; each must keep what it alone keeps.
    from rdd3d.models.heads.decode import suppress
    from rdd3d.models.heads.targets import decode_boxes

    head = _head(decode=DecodeConfig(nms=nms, max_per_task=150))
    generator = torch.Generator().manual_seed(2)
    predictions = []
    for labels in head.task_labels:
        def maps(channels, scale=1.0):
            return torch.randn(2, channels, 32, 32, generator=generator) * scale
        predictions.append(TaskPrediction(maps(len(labels), 2.0) - 1.0, maps(2, 0.3), maps(1), maps(3, 0.3),
                                          maps(2), maps(2)))
    decoded = head.decode(predictions)
    for sample, detections in enumerate(decoded):
        expected = []
        for task, (prediction, labels) in enumerate(zip(predictions, head.task_labels)):
            probs = prediction.heatmap[sample].sigmoid().flatten()
            scores, flat = probs.topk(150)
            keep = scores > 0.1
            cells = flat % (32 * 32)
            codes = prediction.box_code()[sample].flatten(1).t()[cells]
            boxes = decode_boxes(codes[None], torch.stack([cells % 32, cells // 32], dim=-1)[None], head.grid((32, 32)))[0]
            kept = suppress(boxes[keep], scores[keep], nms, task)
            expected.append((boxes[keep][kept], scores[keep][kept]))
            assert kept.numel() > 0
        assert torch.allclose(detections.boxes, torch.cat([boxes for boxes, _ in expected]), atol=1e-5)
        assert detections.scores.tolist() == torch.cat([scores for _, scores in expected]).tolist()
    assert decoded[0].scores.shape != decoded[1].scores.shape or not torch.equal(decoded[0].boxes, decoded[1].boxes)
