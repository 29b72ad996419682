"""The baselines on anchor heads: each in the distiller with SECOND -> SECOND-XS, the anchor recipes of
FG, GID-L and PP-Logit on hand-made maps, and the clear errors where two heads cannot be compared."""

import math

import pytest
import torch

from anchor_support import (
    CAR_SIZE, CLASSES, CODES, SIZE, TYPES, AnchorModel, anchor_view, box, copy_prediction, detections, random_prediction,
)
from baselines_support import make_identity, step_of
from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.baselines import (
    BASELINES, FGConfig, FGLoss, GIDFeatureConfig, GIDFeatureLoss, GIDLogitConfig, GIDLogitLoss, LADConfig, LADLoss,
    LogitKDConfig, LogitKDLoss, PPLogitConfig, PPLogitLoss, build_baseline,
)
from rdd3d.distill.baselines.common import binary_kl_with_logits
from rdd3d.distill.baselines.fg import anchor_imitation_mask
from rdd3d.distill.distiller import Distiller
from rdd3d.models.heads import clamped_sigmoid
from rdd3d.models.presets import build_detector

DETECTION = {"det/classification", "det/regression", "det/direction"}
TERMS = {"hint": {"hint/feature"}, "fg": {"fg/feature"}, "gid-l": {"gid-l/logit", "gid-l/regression"},
         "gid-f": {"gid-f/feature", "gid-f/relation"}, "lad": set(),
         "pp-logit": {"pp-logit/class", "pp-logit/regression"}, "kd": {"kd/class"}}
READS_HEADS = ("gid-l", "gid-f", "pp-logit", "kd")
SMALL = {"point_cloud_range": (-20.8, -20.8, -5.0, 20.8, 20.8, 3.0), "head.decode.nms.pre_max_size": 300,
         "head.decode.nms.post_max_size": 50}


@pytest.fixture(scope="module")
def second_pair():
    torch.manual_seed(0)
    teacher = build_detector("second", "synthetic", **SMALL)
    with torch.no_grad():  # a fresh head scores every anchor ~0.01: give the teacher detections
        teacher.head.conv_cls.bias.normal_(-1.5, 0.5)
    student = build_detector("second-xs", "synthetic", **SMALL)
    return teacher, student, collate_frames([SyntheticDataset("train", 1, seed=5)[0]])


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_trains_an_anchor_student_in_the_distiller(name, second_pair):
    teacher, student, batch = second_pair
    loss = build_baseline(name, None, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    student.zero_grad()
    terms = Distiller(teacher, student, [loss]).train()(batch)
    assert set(terms) == DETECTION | TERMS[name]
    assert all(math.isfinite(value.item()) for value in terms.values())
    assert all(terms[term].item() > 0 for term in TERMS[name] if term != "gid-f/relation")
    # The distillation terms alone (LAD acts through the detection targets) must reach the student.
    sum(terms[term] for term in (TERMS[name] or DETECTION)).backward()
    assert all(parameter.grad is None for parameter in teacher.parameters())
    assert all(parameter.grad is not None for parameter in loss.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone_2d.parameters())
    if name in ("gid-l", "pp-logit", "kd"):
        assert student.head.conv_cls.weight.grad.abs().sum() > 0


# --- the anchor recipes on hand-made maps --------------------------------------------------------

# A car on the anchor location (row 3, column 2), exactly its yaw-0 car anchor (type 0): that anchor is the
# only positive (its neighbours and the turned car anchor overlap it by 1/3 < 0.6).
CAR = [torch.tensor([box(2.5, 3.5, *CAR_SIZE[:2])])]
CAR_LABEL = [torch.tensor([0])]


def test_pp_logit_distils_the_positive_anchors_only():
    teacher = random_prediction(1)
    loss = PPLogitLoss(PPLogitConfig(weight=15.0, regression_weight=0.2, label_score_threshold=None))

    def terms(student):
        return {name: value.item() for name, value in
                loss(step_of(anchor_view(teacher), anchor_view(student), CAR, CAR_LABEL)).items()}

    assert terms(copy_prediction(teacher)) == {"pp-logit/class": 0.0, "pp-logit/regression": 0.0}
    elsewhere = copy_prediction(teacher)
    elsewhere.cls_logits[0, 2:, 3, 2] += 3.0  # the other anchor types at that location
    elsewhere.cls_logits[0, :2, 3, 3] += 3.0  # type 0 at the next location
    elsewhere.box_deltas[0, CODES:, 3, 2] += 1.0
    assert terms(elsewhere) == {"pp-logit/class": 0.0, "pp-logit/regression": 0.0}
    positive = copy_prediction(teacher)
    positive.cls_logits[0, 1, 3, 2] += 3.0  # type 0, class pedestrian
    positive.box_deltas[0, 4, 3, 2] += 0.05  # type 0, width: within smooth L1's quadratic part (β = 1/9)
    squared = (clamped_sigmoid(positive.cls_logits[0, 1, 3, 2]) - clamped_sigmoid(teacher.cls_logits[0, 1, 3, 2])) ** 2
    result = terms(positive)
    assert result["pp-logit/class"] == pytest.approx(15.0 * squared.item(), rel=1e-4)  # one positive anchor
    assert result["pp-logit/regression"] == pytest.approx(0.2 * 0.5 * 0.05 ** 2 * 9, rel=1e-3)


def test_pp_logit_label_kd_gives_an_anchor_student_seven_column_targets():
    teacher = anchor_view(random_prediction(), detections((6.0, 6.0, *CAR_SIZE[:2])))
    ground_truth = [torch.cat([CAR[0], torch.ones(1, 2)], dim=1)]  # with a velocity, as the synthetic world's
    boxes, labels = PPLogitLoss(PPLogitConfig()).detection_targets(
        step_of(teacher, anchor_view(random_prediction()), ground_truth, CAR_LABEL))
    assert boxes[0].shape == (2, 7) and labels[0].tolist() == [0, 0]
    assert boxes[0][0, :2].tolist() == [6.0, 6.0] and boxes[0][1].tolist() == ground_truth[0][0, :7].tolist()


def test_fg_mask_of_an_anchor_teacher_is_fgs_anchor_iou_rule():
    # A 3 m car between two anchor locations: both yaw-0 car anchors overlap it by 2/3 (its best), the next
    # ones by 1/4 and every other anchor by at most 1/4 < 0.5 · 2/3.
    car = [torch.tensor([box(3.0, 3.5, 3.0, 1.0)])]
    anchors = AnchorModel().head.anchors(SIZE)
    mask = anchor_imitation_mask(anchors, car, 0.5)
    assert mask.shape == (1, *SIZE) and torch.nonzero(mask[0]).tolist() == [[3, 2], [3, 3]]
    assert not anchor_imitation_mask(anchors, [torch.zeros(0, 7)], 0.5).any()

    loss = FGLoss(FGConfig(weight=1.0), 4, 4)
    make_identity(loss.adapter)
    teacher_bev = torch.rand(1, 4, *SIZE)
    teacher = anchor_view(random_prediction(), bev=teacher_bev)

    def fg(student_bev):
        return loss(step_of(teacher, anchor_view(random_prediction(), bev=student_bev), car, CAR_LABEL))["fg/feature"]

    outside, inside = teacher_bev.clone(), teacher_bev.clone()
    outside[0, :, 3, 4] += 1.0
    inside[0, 0, 3, 3] += 1.0
    assert fg(outside).item() == 0.0
    assert fg(inside).item() == pytest.approx(1.0 / (2 * 2))  # Σ squared / (2 · N_mask)


def test_gid_l_distils_both_responses_over_the_instances_anchors():
    teacher = random_prediction(2)
    loss = GIDLogitLoss(GIDLogitConfig())
    found = detections((2.5, 3.5, 2.2, 1.2))  # anchor locations (3, 1), (3, 2), (3, 3)

    def terms(student):
        step = step_of(anchor_view(teacher, found), anchor_view(student, detections()), CAR, CAR_LABEL)
        return {name: value.item() for name, value in loss(step).items()}

    assert terms(copy_prediction(teacher)) == {"gid-l/logit": 0.0, "gid-l/regression": 0.0}  # no instance
    student = copy_prediction(teacher)
    student.cls_logits[0, 5, 3, 2] += 2.0  # at the box centre: a general instance
    student.box_deltas[0, 20, 3, 1] += 0.05  # inside the box
    student.box_deltas[0, 20, 3, 5] += 1.0  # outside
    divergence = binary_kl_with_logits(teacher.cls_logits[0, 5, 3, 2], student.cls_logits[0, 5, 3, 2])
    result = terms(student)
    assert result["gid-l/logit"] == pytest.approx(0.1 * divergence.item() / 3, rel=1e-4)
    assert result["gid-l/regression"] == pytest.approx(0.1 * 0.5 * 0.05 ** 2 * 9 / 3, rel=1e-3)


def test_lad_moves_the_anchor_students_positive_anchor_to_the_teachers_place():
    # The teacher sees the car 0.8 m further along x (BEV IoU 0.43 with it): the moved box now matches the
    # yaw-0 car anchor at (3, 3) (IoU 0.82), no longer the one at (3, 2) (0.43, below 0.45: negative).
    teacher = anchor_view(random_prediction(), detections((3.3, 3.5, *CAR_SIZE[:2])))
    boxes, labels = LADLoss(LADConfig(match_iou=0.4)).detection_targets(
        step_of(teacher, anchor_view(random_prediction()), CAR, CAR_LABEL))
    assert boxes[0][0, :2].tolist() == pytest.approx([3.3, 3.5]) and boxes[0][0, 2:].tolist() == CAR[0][0, 2:].tolist()
    positive = AnchorModel().head.targets(SIZE, boxes, labels).positive[0]  # (H * W * A,)
    assert torch.nonzero(positive).flatten().tolist() == [(3 * 8 + 3) * TYPES]


# --- what cannot be compared ----------------------------------------------------------------------

def _head_losses():
    return {"gid-l": GIDLogitLoss(GIDLogitConfig()), "gid-f": GIDFeatureLoss(GIDFeatureConfig(), 4, 4),
            "pp-logit": PPLogitLoss(PPLogitConfig()), "kd": LogitKDLoss(LogitKDConfig())}


@pytest.mark.parametrize("name", READS_HEADS)
def test_head_reading_baselines_refuse_an_anchor_teacher_with_a_centre_student(name):
    heatmaps = (torch.zeros(1, CLASSES, *SIZE),)
    step = step_of(anchor_view(random_prediction(), detections()), anchor_view(heatmaps, detections()), CAR, CAR_LABEL)
    with pytest.raises(ValueError, match=f"{name}: the teacher .* has an anchor head and the student .* a centre head"):
        _head_losses()[name](step)


@pytest.mark.parametrize("name", READS_HEADS)
def test_head_reading_baselines_refuse_anchor_heads_on_other_anchors(name):
    coarse = anchor_view(random_prediction(size=(4, 4)), detections(), torch.ones(1, 4, 4, 4))
    step = step_of(anchor_view(random_prediction(), detections()), coarse, CAR, CAR_LABEL)
    with pytest.raises(ValueError, match=f"{name}: anchor heads are compared anchor by anchor"):
        _head_losses()[name](step)


def test_feature_baselines_need_no_common_head():
    heatmaps = (torch.zeros(1, CLASSES, *SIZE),)
    step = step_of(anchor_view(random_prediction()), anchor_view(heatmaps), CAR, CAR_LABEL)
    for name in ("hint", "fg"):
        terms = build_baseline(name, None, 4, 4)(step)
        assert all(math.isfinite(value.item()) for value in terms.values())
