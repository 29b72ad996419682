"""RDD's logit loss on anchor heads (SECOND, PointPillars): both terms over the anchors centred in each
region pair's box, and the anchor areas behind it."""

import copy
import math

import pytest
import torch

from anchor_support import SIZE, AnchorModel, anchor_view, box, copy_prediction, detections, random_prediction
from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.base import DistillStep
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.rdd import RDDConfig, RDDLoss
from rdd3d.distill.regions import anchor_areas
from rdd3d.models.heads import AnchorPrediction
from rdd3d.models.presets import build_detector

# A 2.2 x 1.2 m box at (2.5, 3.5): anchor centres x in {1.5, 2.5, 3.5}, y = 3.5, i.e. row 3, columns 1-3.
BOX = (2.5, 3.5, 2.2, 1.2)


def _rdd(channels=4, **options) -> RDDLoss:
    """RDD distilling every pair, through an identity ψ (eval-mode BatchNorm dividing by exactly 1)."""
    loss = RDDLoss(RDDConfig(selection="all", **options), channels, channels)
    conv, norm, _ = loss.adapter
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels)[:, :, None, None])
        norm.running_var.fill_(1 - norm.eps)
    return loss.eval()


# --- anchor areas --------------------------------------------------------------------------------

def test_anchor_areas_hold_the_locations_whose_anchor_centre_lies_in_the_rotated_box():
    anchors = AnchorModel().head.anchors(SIZE)
    boxes = torch.tensor([
        box(*BOX),  # row 3, columns 1-3
        box(*BOX, yaw=math.pi / 2),  # turned: column 2, rows 2-4
        box(4.0, 4.0, 2.9, 0.5, yaw=math.pi / 4),  # the diagonal: (3, 3) and (4, 4) only
        box(4.5, 4.5, 2.0, 2.0, yaw=math.pi / 4),  # a diamond on (4, 4): its 4 neighbours, not the corners
        box(2.2, 3.3, 0.4, 0.4),  # between anchor centres: the nearest location, (3, 2)
        box(20.0, 3.0, 0.4, 0.4),  # off the map: nothing
        box(4.0, 4.0, 1e4, 1e4),  # an untrained model's box: the whole map
    ])
    area = anchor_areas(boxes, anchors)
    assert area.count.tolist() == [3, 3, 2, 5, 1, 0, 64]
    assert area.on_map.tolist() == [True, True, True, True, True, False, True]

    def cells(index):
        flat = area.flat_index[area.owner == index]
        return sorted(zip((flat // 8).tolist(), (flat % 8).tolist()))

    assert cells(0) == [(3, 1), (3, 2), (3, 3)]
    assert cells(1) == [(2, 2), (3, 2), (4, 2)]
    assert cells(2) == [(3, 3), (4, 4)]
    assert cells(3) == [(3, 4), (4, 3), (4, 4), (4, 5), (5, 4)]
    assert cells(4) == [(3, 2)]
    empty = anchor_areas(torch.zeros(0, 7), anchors)
    assert empty.count.numel() == 0 and empty.owner.numel() == 0


# --- the logit loss on hand-made anchor maps -----------------------------------------------------

def _logit_term(loss, teacher_prediction, student_prediction):
    teacher = anchor_view(teacher_prediction, detections(BOX))
    student = anchor_view(student_prediction, detections())
    return loss(DistillStep(None, teacher, student))["rdd/logit"].item()


def test_anchor_logit_loss_is_zero_for_identical_outputs_and_sees_only_anchors_in_thebox():
    teacher = random_prediction()
    loss = _rdd()
    assert _logit_term(loss, teacher, copy_prediction(teacher)) == 0.0
    outside_cls, outside_box = teacher.cls_logits.clone(), teacher.box_deltas.clone()
    outside_cls[0, :, 3, 4] += 5.0  # the next location along the box's row
    outside_cls[0, :, 2, 2] += 5.0  # the row above
    outside_box[0, :, 4, 1] += 5.0
    assert _logit_term(loss, teacher, AnchorPrediction(outside_cls, outside_box, None)) == 0.0

    # Inside: class channel 3 (anchor type 1, pedestrian) at (3, 1); box code 9 (type 1's y) at (3, 3).
    inside_cls, inside_box = teacher.cls_logits.clone(), teacher.box_deltas.clone()
    inside_cls[0, 3, 3, 1] = 10.0
    inside_box[0, 9, 3, 3] += 0.5
    class_change = (torch.sigmoid(torch.tensor(10.0)) - teacher.cls_logits[0, 3, 3, 1].sigmoid()).abs().item()
    # α2 · (|Δp| / (3 locations · 8 class channels) + |Δδ| / (3 locations · 28 box channels)), one pair
    expected = 0.2 * (class_change / 24 + 0.5 / 84)
    assert _logit_term(loss, teacher, AnchorPrediction(inside_cls, inside_box, None)) == pytest.approx(expected, rel=1e-4)
    literal = _rdd(logit_norm="l1")  # the L1 norm read literally: the sums
    assert _logit_term(literal, teacher, AnchorPrediction(inside_cls, inside_box, None)) == pytest.approx(
        0.2 * (class_change + 0.5), rel=1e-4)
    box_weighted = _rdd(logit_norm="l1", anchor_box_weight=0.1)  # [ours] the box term's weight
    assert _logit_term(box_weighted, teacher, AnchorPrediction(inside_cls, inside_box, None)) == pytest.approx(
        0.2 * (class_change + 0.1 * 0.5), rel=1e-4)


def test_anchor_logit_loss_refuses_other_anchors_and_a_centre_head_student():
    loss = _rdd()
    teacher = anchor_view(random_prediction(), detections(BOX))
    coarse = AnchorPrediction(torch.zeros(1, 8, 4, 4), torch.zeros(1, 28, 4, 4), None)
    with pytest.raises(ValueError, match="RDD: anchor heads are compared anchor by anchor.*do not share"):
        loss(DistillStep(None, teacher, anchor_view(coarse, detections(), torch.ones(1, 4, 4, 4))))
    heatmaps = (torch.zeros(1, 2, *SIZE),)
    with pytest.raises(ValueError, match="RDD: the teacher .* has an anchor head and the student .* a centre head"):
        loss(DistillStep(None, teacher, anchor_view(heatmaps, detections())))
    feature_only = _rdd(use_logit=False)  # the feature term reads metric places: any student map is fine
    assert set(feature_only(DistillStep(None, teacher, anchor_view(coarse, detections(), torch.ones(1, 4, 4, 4))))) == {
        "rdd/feature"}


# --- on SECOND detectors through the distiller ----------------------------------------------------

# Half the synthetic range (26 x 26 cells of 1.6 m) and a short NMS keep these fast.
SMALL = {"point_cloud_range": (-20.8, -20.8, -5.0, 20.8, 20.8, 3.0), "head.decode.nms.pre_max_size": 300,
         "head.decode.nms.post_max_size": 50}


@pytest.fixture(scope="module")
def batch():
    return collate_frames([SyntheticDataset("train", 1, seed=5)[0]])


def _teacher():
    torch.manual_seed(0)
    teacher = build_detector("second", "synthetic", **SMALL)
    with torch.no_grad():  # a fresh head scores every anchor ~0.01: give the teacher detections to propose
        teacher.head.conv_cls.bias.normal_(-1.5, 0.5)
    return teacher


def test_student_equal_to_the_anchor_teacher_gives_zero_logit_term(batch):
    teacher = _teacher()
    loss = _rdd(teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, copy.deepcopy(teacher), [loss], teacher_precision="fp32").eval()
    terms = distiller(batch)
    assert loss.last_pairs.num_teacher > 0
    # Zero up to rounding: the teacher's 2D convolutions run channels-last, the student's copy does not.
    assert abs(terms["rdd/feature"].item()) < 1e-8 and abs(terms["rdd/logit"].item()) < 1e-8


def test_gradients_reach_student_head_and_adapter_never_the_teacher(batch):
    teacher = _teacher()
    student = build_detector("second-xs", "synthetic", **SMALL)
    loss = RDDLoss(RDDConfig(), student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, student, [loss]).train()
    terms = distiller(batch)
    assert {"det/classification", "det/regression", "det/direction", "rdd/feature", "rdd/logit"} == set(terms)
    pairs = loss.last_pairs
    assert pairs.num_teacher > 0 and pairs.weights.sum() > 0
    (terms["rdd/feature"] + terms["rdd/logit"]).backward()
    for module in (student.head.conv_cls, student.head.conv_box, student.backbone_2d, loss.adapter):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert student.head.conv_dir.weight.grad is None  # the direction classifier is not distilled
    assert all(p.grad is None for p in teacher.parameters())
