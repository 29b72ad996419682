import math

import pytest
import torch

from rdd3d.core.types import ClassTable
from rdd3d.core.config_loading import config_from_dict
from rdd3d.models.heads import (
    IGNORED, KITTI_ANCHORS, NEGATIVE, AnchorClassConfig, AnchorDecodeConfig, AnchorHead, AnchorHeadConfig,
    AnchorLossConfig, AnchorPrediction, AnchorTargets, NMSConfig, anchor_loss, apply_direction,
    assign_anchor_targets, decode_box_deltas, direction_bins, encode_box_deltas, match_anchors, per_anchor,
    sigmoid_focal_loss,
)

KITTI = ClassTable(("Car", "Pedestrian", "Cyclist"))
SECOND_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
SMALL_RANGE = (0.0, -8.0, -3.0, 16.0, 8.0, 1.0)  # with align_center: 4 m cells on a 4 x 4 map
CENTRED = AnchorHeadConfig(align_center=True)
CAR = (3.9, 1.6, 1.56)


def _small_head(config: AnchorHeadConfig = CENTRED, channels: int = 8) -> AnchorHead:
    return AnchorHead(channels, KITTI, SMALL_RANGE, config)


def _car_on_anchor(row: int, column: int, size=CAR, yaw: float = 0.0) -> torch.Tensor:
    """A car box centred on the cell (row, column) of the small map's centred anchors."""
    return torch.tensor([[2.0 + 4 * column, -6.0 + 4 * row, -1.0, *size, yaw]])


def _anchor_index(row: int, column: int, anchor_type: int, width: int = 4, types: int = 6) -> int:
    return (row * width + column) * types + anchor_type


def test_kitti_anchors_span_the_range_edge_to_edge_like_openpcdet():
    head = AnchorHead(16, KITTI, SECOND_RANGE)
    anchors = head.anchors((200, 176))
    assert anchors.shape == (200, 176, 6, 7) and head.num_anchor_types == 6
    assert anchors[0, 0, :, :2].tolist() == [[0.0, -40.0]] * 6
    assert anchors[-1, -1, :, :2] == pytest.approx(torch.tensor([[70.4, 40.0]] * 6))
    assert anchors[0, 1, 0, 0].item() == pytest.approx(70.4 / 175)  # (range) / (W - 1)
    assert anchors[1, 0, 0, 1].item() == pytest.approx(-40.0 + 80.0 / 199)
    # Types: Car, Pedestrian, Cyclist, each at yaw 0 and pi/2; z is the bottom plus half the height.
    expected = [(-1.78 + 1.56 / 2, *CAR), (-0.6 + 1.73 / 2, 0.8, 0.6, 1.73), (-0.6 + 1.73 / 2, 1.76, 0.6, 1.73)]
    for anchor_type in range(6):
        z, *size = expected[anchor_type // 2]
        assert anchors[5, 7, anchor_type, 2:6].tolist() == pytest.approx([z, *size])
        assert anchors[5, 7, anchor_type, 6].item() == pytest.approx((anchor_type % 2) * math.pi / 2)


def test_centred_anchors_sit_at_cell_centres():
    anchors = AnchorHead(16, KITTI, SECOND_RANGE, CENTRED).anchors((200, 176))
    assert anchors[0, 0, 0, :2].tolist() == pytest.approx([0.2, -39.8])
    assert anchors[-1, -1, 0, :2].tolist() == pytest.approx([70.2, 39.8])
    with pytest.raises(ValueError, match="at least 2 cells"):
        AnchorHead(16, KITTI, SECOND_RANGE).anchors((1, 176))


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="exactly once"):
        AnchorHead(8, KITTI, SMALL_RANGE, AnchorHeadConfig(anchors=KITTI_ANCHORS[:2]))
    with pytest.raises(ValueError, match="unknown class name 'Van'"):
        AnchorHead(8, ClassTable(("Car",)), SMALL_RANGE, AnchorHeadConfig(anchors=(
            KITTI_ANCHORS[0], AnchorClassConfig("Van", (CAR,), -1.78, 0.6, 0.45))))
    with pytest.raises(ValueError, match="unmatched_threshold <= matched_threshold"):
        AnchorClassConfig("Car", (CAR,), -1.78, matched_threshold=0.4, unmatched_threshold=0.5)
    with pytest.raises(ValueError, match="positive sizes"):
        AnchorClassConfig("Car", ((3.9, 0.0, 1.5),), -1.78, 0.6, 0.45)
    with pytest.raises(ValueError, match="matching must be one of"):
        AnchorHeadConfig(matching="3d")
    with pytest.raises(ValueError, match="code_weights needs 7"):
        AnchorLossConfig(code_weights=(1.0,) * 8)
    with pytest.raises(ValueError, match="circle NMS needs 1 circle_distances"):
        _small_head(AnchorHeadConfig(decode=AnchorDecodeConfig(nms=NMSConfig(kind="circle", circle_distances=(1, 2)))))
    with pytest.raises(ValueError, match=r"sample 0 needs boxes \(M, 7\|9\)"):
        _small_head().targets((4, 4), [torch.zeros(2, 6)], [torch.zeros(2, dtype=torch.long)])


def test_forward_shapes_layout_and_prior():
    head = _small_head()
    prediction = head(torch.zeros(2, 8, 4, 4))
    assert prediction.cls_logits.shape == (2, 6 * 3, 4, 4)
    assert prediction.box_deltas.shape == (2, 6 * 7, 4, 4)
    assert prediction.dir_logits.shape == (2, 6 * 2, 4, 4)
    assert prediction.cls_logits.sigmoid().mean().item() == pytest.approx(0.01, rel=1e-4)
    assert _small_head(AnchorHeadConfig(use_direction_classifier=False))(torch.zeros(1, 8, 4, 4)).dir_logits is None
    # per_anchor: channel a * D + d at (row, column) is value d of anchor (row * W + column) * A + a.
    maps = torch.arange(2 * 6 * 3 * 4 * 4, dtype=torch.float32).view(2, 18, 4, 4)
    flat = per_anchor(maps, 6)
    assert flat.shape == (2, 4 * 4 * 6, 3)
    assert flat[1, _anchor_index(2, 3, 4)].tolist() == maps[1, 12:15, 2, 3].tolist()


def test_a_box_on_an_anchor_makes_it_positive_with_zero_deltas():
    head = _small_head()
    box = _car_on_anchor(2, 1, yaw=0.3)
    targets = head.targets((4, 4), [box], [torch.tensor([0])])
    exact = _anchor_index(2, 1, 0)
    assert targets.labels.shape == (1, 96) and targets.box_deltas.shape == (1, 96, 7)
    assert targets.labels[0].tolist().count(0) >= 1 and targets.labels[0, exact] == 0
    assert targets.box_deltas[0, exact].tolist() == pytest.approx([0, 0, 0, 0, 0, 0, 0.3], abs=1e-6)
    # Pedestrian and cyclist anchors never match a car: with no box of their class they are background.
    class_of_type = torch.tensor([0, 0, 1, 1, 2, 2]).repeat(16)
    assert (targets.labels[0, class_of_type > 0] == NEGATIVE).all()


def test_the_best_anchor_of_a_box_is_positive_even_below_the_threshold():
    head = _small_head()
    # Twice a car anchor in length and width: IoU 0.25 with the anchor at its centre, below the unmatched
    # threshold (0.45); every other anchor overlaps less.
    big = _car_on_anchor(1, 2, size=(7.8, 3.2, 1.56))
    labels = head.targets((4, 4), [big], [torch.tensor([0])]).labels[0]
    positives = (labels >= 0).nonzero().flatten().tolist()
    assert positives == [_anchor_index(1, 2, 0)]
    assert (labels[labels < 0] == NEGATIVE).all()
    # A box that overlaps no anchor of its class forces nothing.
    outside = torch.tensor([[40.0, 40.0, -0.6, 0.8, 0.6, 1.73, 0.0]])
    labels = head.targets((4, 4), [outside], [torch.tensor([1])]).labels[0]
    assert (labels == NEGATIVE).all()


def test_thresholds_split_positive_ignored_and_negative():
    length = 4.0
    box = torch.tensor([[0.0, 0.0, 0.0, length, 2.0, 1.5, 0.0]])
    # Sliding a box along its length by s gives IoU (L - s) / (L + s).
    shifts = [0.0, length / 3, length * 0.7 / 1.3, 3 * length]  # IoU 1, 0.5, 0.3, 0
    anchors = box.repeat(4, 1)
    anchors[:, 0] = torch.tensor(shifts)
    match = match_anchors(anchors, box, matched_threshold=0.6, unmatched_threshold=0.45)
    assert match.positive.tolist() == [True, False, False, False]
    assert match.negative.tolist() == [False, False, True, True]
    # Several positives: above the matched threshold (0.45 here) counts, not only the best one.
    match = match_anchors(anchors, box, matched_threshold=0.45, unmatched_threshold=0.35)
    assert match.positive.tolist() == [True, True, False, False]
    # No box: everything is background.
    match = match_anchors(anchors, box[:0], 0.6, 0.45)
    assert match.negative.all() and not match.positive.any()


def test_nearest_bev_matching_snaps_yaw():
    head = _small_head(AnchorHeadConfig(align_center=True, matching="nearest_bev"))
    tilted = _car_on_anchor(2, 2, yaw=0.5)  # snaps to yaw 0: IoU 1 with the yaw-0 anchor
    targets = head.targets((4, 4), [tilted], [torch.tensor([0])])
    assert targets.labels[0, _anchor_index(2, 2, 0)] == 0
    assert targets.box_deltas[0, _anchor_index(2, 2, 0), 6].item() == pytest.approx(0.5)


def test_encode_decode_round_trip():
    torch.manual_seed(0)
    boxes = torch.cat([torch.randn(50, 3) * 10, torch.rand(50, 3) * 4 + 0.2, (torch.rand(50, 1) * 2 - 1) * math.pi], 1)
    anchors = torch.cat([torch.randn(50, 3) * 10, torch.rand(50, 3) * 4 + 0.2, torch.rand(50, 1) * math.pi], 1)
    deltas = encode_box_deltas(boxes, anchors)
    assert deltas[:, 0].tolist() == pytest.approx(
        ((boxes[:, 0] - anchors[:, 0]) / torch.hypot(anchors[:, 3], anchors[:, 4])).tolist(), abs=1e-6)
    assert deltas[:, 5].tolist() == pytest.approx(torch.log(boxes[:, 5] / anchors[:, 5]).tolist(), abs=1e-6)
    assert torch.allclose(decode_box_deltas(deltas, anchors), boxes, atol=1e-5)


def test_direction_bins_resolve_a_yaw_flipped_by_pi():
    yaw = torch.linspace(-math.pi + 0.01, math.pi - 0.01, 37)
    bins = direction_bins(yaw, 0.78539, 2)
    assert set(bins.tolist()) == {0, 1}
    for guess in (yaw + math.pi, yaw, yaw - 3 * math.pi):  # the regression only knows the yaw modulo pi
        recovered = apply_direction(guess, bins, 0.78539, 0.0, 2)
        assert torch.allclose(torch.sin(recovered), torch.sin(yaw), atol=1e-5)
        assert torch.allclose(torch.cos(recovered), torch.cos(yaw), atol=1e-5)


def test_head_decodes_a_flipped_regression_into_the_right_heading():
    head = _small_head()
    yaw = 2.8
    box = _car_on_anchor(1, 1, yaw=yaw)
    targets = head.targets((4, 4), [box], [torch.tensor([0])])
    exact = _anchor_index(1, 1, 0)
    prediction = _prediction_from_flat(head, (4, 4), deltas=targets.box_deltas,
                                       dir_bins=targets.direction_bins, flip_yaw=True)
    decoded = head.decode_boxes(prediction)[0, exact]
    assert decoded[:6].tolist() == pytest.approx(box[0, :6].tolist(), abs=1e-5)
    assert (math.sin(decoded[6]), math.cos(decoded[6])) == pytest.approx((math.sin(yaw), math.cos(yaw)), abs=1e-5)
    wrong_bin = _prediction_from_flat(head, (4, 4), deltas=targets.box_deltas, dir_bins=1 - targets.direction_bins)
    assert math.cos(head.decode_boxes(wrong_bin)[0, exact, 6] - yaw) == pytest.approx(-1.0, abs=1e-5)


def _prediction_from_flat(head: AnchorHead, map_size, deltas, dir_bins=None, logits=None, flip_yaw=False):
    """An AnchorPrediction whose per-anchor values are the given (B, N, .) tensors."""
    height, width = map_size
    types = head.num_anchor_types

    def fold(flat: torch.Tensor) -> torch.Tensor:  # inverse of per_anchor
        batch = flat.shape[0]
        return flat.view(batch, height, width, types, -1).permute(0, 3, 4, 1, 2).reshape(batch, -1, height, width)

    deltas = deltas.clone()
    if flip_yaw:
        deltas[..., 6] += math.pi
    if logits is None:
        logits = torch.full((*deltas.shape[:2], len(head.classes)), -10.0)
    dir_logits = None if dir_bins is None else torch.nn.functional.one_hot(dir_bins, 2).float() * 10
    return AnchorPrediction(fold(logits), fold(deltas), None if dir_logits is None else fold(dir_logits))


def test_focal_loss_is_near_zero_for_right_logits_and_grows_when_wrong():
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    right = sigmoid_focal_loss(torch.where(targets > 0, 12.0, -12.0), targets)
    unsure = sigmoid_focal_loss(torch.zeros(2, 3), targets)
    wrong = sigmoid_focal_loss(torch.where(targets > 0, -12.0, 12.0), targets)
    assert right.sum() < 1e-8 < unsure.min()
    assert (wrong > unsure).all()
    # RetinaNet's alpha: a positive at p = 0.5 costs alpha * 0.25 * log 2, a negative (1 - alpha) * 0.25 * log 2.
    assert unsure[0, 0].item() == pytest.approx(0.25 * 0.25 * math.log(2))
    assert unsure[0, 1].item() == pytest.approx(0.75 * 0.25 * math.log(2))


def test_anchor_loss_vanishes_for_perfect_predictions_and_skips_ignored_anchors():
    # A second, shorter car anchor overlaps the box by IoU 2.2 / 3.9 = 0.56: between the thresholds.
    anchors = (AnchorClassConfig("Car", (CAR, (2.2, 1.6, 1.56)), -1.78, 0.6, 0.45), *KITTI_ANCHORS[1:])
    head = _small_head(AnchorHeadConfig(anchors=anchors, align_center=True))
    box = _car_on_anchor(2, 1, yaw=-math.pi)  # heading backwards, IoU 1 with the yaw-0 anchor
    targets = head.targets((4, 4), [box, box[:0]], [torch.tensor([0]), torch.tensor([], dtype=torch.long)])
    assert (targets.labels[1] == NEGATIVE).all()
    positive = targets.positive
    assert positive[0].sum() == 1 and (targets.labels[0] == IGNORED).sum() == 1
    one_hot = torch.nn.functional.one_hot(targets.labels.clamp_min(0), 3).bool() & positive[..., None]
    perfect_logits = torch.where(one_hot, 15.0, -15.0)
    perfect = _prediction_from_flat(head, (4, 4), targets.box_deltas, targets.direction_bins, perfect_logits)
    loss = anchor_loss(perfect, targets, head.num_anchor_types, head.config.loss)
    assert loss.total.item() < 1e-5
    # A yaw off by pi costs the regression nothing: the direction term carries it.
    flipped = _prediction_from_flat(head, (4, 4), targets.box_deltas, 1 - targets.direction_bins, perfect_logits,
                                    flip_yaw=True)
    flipped_loss = anchor_loss(flipped, targets, head.num_anchor_types, head.config.loss)
    assert flipped_loss.regression.item() < 1e-5 and flipped_loss.direction.item() > 1.0
    # Ignored anchors weigh nothing: any logits there leave the loss alone.
    ignored = (targets.labels == IGNORED)[..., None].expand_as(perfect_logits)
    noisy = _prediction_from_flat(head, (4, 4), targets.box_deltas, targets.direction_bins,
                                  torch.where(ignored, 15.0, perfect_logits))
    assert anchor_loss(noisy, targets, head.num_anchor_types, head.config.loss).total.item() < 1e-5


def test_loss_is_normalised_per_sample_and_averaged_over_the_batch():
    torch.manual_seed(0)
    head = _small_head()
    box = _car_on_anchor(2, 1, yaw=0.4)
    features = torch.randn(1, 8, 4, 4)
    single = head.loss(head(features), [box], [torch.tensor([0])])
    double = head.loss(head(features.repeat(2, 1, 1, 1)), [box, box], [torch.tensor([0])] * 2)
    for one, two in zip(single, double):
        assert one.item() == pytest.approx(two.item(), rel=1e-5)
    assert single.classification > 0 and single.regression > 0 and single.direction > 0
    assert single.total.item() == pytest.approx((single.classification + single.regression + single.direction).item())


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    head = _small_head()
    features = torch.randn(2, 8, 4, 4, requires_grad=True)
    boxes = [torch.cat([_car_on_anchor(1, 1, yaw=1.0), torch.tensor([[9.0, 1.0, 0.3, 0.8, 0.6, 1.7, 0.2]])]),
             torch.tensor([[6.0, -2.0, 0.3, 1.8, 0.6, 1.7, -1.0, 0.5, 0.5]])]  # 9 columns: velocity unused
    loss = head.loss(head(features), boxes, [torch.tensor([0, 1]), torch.tensor([2])])
    loss.total.backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
    assert features.grad.abs().sum() > 0


def _two_overlapping_cars(head: AnchorHead, second_class: int):
    """Predictions where anchors (1, 1) and (1, 2) of type 0 both decode onto one car, scores 0.9 and 0.8."""
    anchors = head.anchors((4, 4)).view(1, -1, 7)
    car = _car_on_anchor(1, 1, yaw=0.2)
    first, second = _anchor_index(1, 1, 0), _anchor_index(1, 2, 0)
    deltas = torch.zeros(1, 96, 7)
    deltas[0, [first, second]] = encode_box_deltas(car.expand(2, 7), anchors[0, [first, second]])
    deltas[0, second, 0] += 0.05  # slightly apart
    logits = torch.full((1, 96, 3), -10.0)
    logits[0, first, 0] = math.log(0.9 / 0.1)
    logits[0, second, second_class] = math.log(0.8 / 0.2)
    bins = direction_bins(torch.full((1, 96), 0.2), head.config.dir_offset, 2)
    return _prediction_from_flat(head, (4, 4), deltas, bins, logits), car


def test_decode_keeps_the_higher_scoring_of_two_overlapping_boxes():
    head = _small_head()
    prediction, car = _two_overlapping_cars(head, second_class=0)
    (detections,) = head.decode(prediction)
    assert detections.scores.tolist() == pytest.approx([0.9])
    assert detections.labels.tolist() == [0]
    assert detections.boxes[0].tolist() == pytest.approx(car[0].tolist(), abs=1e-5)
    # Class-agnostic NMS (OpenPCDet's KITTI setting) suppresses across classes; per-class NMS does not.
    prediction, _ = _two_overlapping_cars(head, second_class=2)
    assert head.decode(prediction)[0].labels.tolist() == [0]
    per_class = _small_head(AnchorHeadConfig(align_center=True, decode=AnchorDecodeConfig(class_agnostic_nms=False)))
    detections = per_class.decode(prediction)[0]
    assert detections.labels.tolist() == [0, 2] and detections.scores.tolist() == pytest.approx([0.9, 0.8])


def test_assign_rejects_anchors_that_do_not_fit_the_classes():
    anchors = torch.zeros(2, 2, 5, 7)
    with pytest.raises(ValueError, match="define 6 anchor types, the anchors have 5"):
        assign_anchor_targets(anchors, KITTI_ANCHORS, (0, 1, 2), [torch.zeros(0, 7)], [torch.zeros(0, dtype=torch.long)])
    assert isinstance(_small_head().targets((4, 4), [torch.zeros(0, 7)], [torch.zeros(0, dtype=torch.long)]),
                      AnchorTargets)


def test_config_reads_anchor_classes_from_plain_mappings():
    car = {"class_name": "Car", "sizes": [[4.0, 2.0, 1.5]], "bottom_z": -1.7, "matched_threshold": 0.6,
           "unmatched_threshold": 0.45}
    config = config_from_dict(AnchorHeadConfig, {"anchors": [car], "decode": {"nms": {"iou_threshold": 0.5}}}, "test")
    assert config.anchors == (AnchorClassConfig("Car", ((4.0, 2.0, 1.5),), -1.7, 0.6, 0.45),)
    assert config.decode.nms.iou_threshold == 0.5 and config.decode.nms.pre_max_size == 4096
    with pytest.raises(ValueError, match="unexpected keyword argument 'size'"):
        config_from_dict(AnchorHeadConfig, {"anchors": [{"class_name": "Car", "size": [[4, 2, 1.5]]}]}, "test")
