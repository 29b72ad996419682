"""GID: general instances where teacher and student disagree most; GID-L on their logits, GID-F on
their pooled features and the relation between them."""

import math

import pytest
import torch

from baselines_support import (
    COARSE_GRID, COARSE_SIZE, INPUT_CHANNELS, TEACHER_GRID, TEACHER_SIZE, TinyDetector, box, cell_of,
    heads_from_probabilities, linear_map, make_identity, map_view, run, step_of,
)
from rdd3d.distill.baselines import GIDFeatureConfig, GIDFeatureLoss, GIDLogitConfig, GIDLogitLoss
from rdd3d.distill.baselines.gid import select_general_instances
from rdd3d.models.heads import Detections

BACKGROUND = 0.01
PLACES = {"A": (1.25, 1.25), "B": (4.25, 1.25), "C": (1.25, 4.25), "D": (6.25, 6.25)}
TEACHER_SCORES = {"A": 0.9, "B": 0.8, "C": 0.7}
STUDENT_SCORES = {"A": 0.85, "B": 0.2, "C": 0.6, "D": 0.9}  # |difference|: A 0.05, B 0.6, C 0.1, D 0.89
CHANNELS = 5


def _car_heads(scores, grid, size):
    car = torch.full((1, 1, *size), BACKGROUND)
    for name, score in scores.items():
        car[(0, 0, *cell_of(grid, *PLACES[name]))] = score
    return heads_from_probabilities(car, torch.full((1, 2, *size), BACKGROUND))


def _detections(scores):
    names = list(scores)
    boxes = torch.tensor([box(*PLACES[name], length=1.0, width=1.0) for name in names])
    return [Detections(boxes, torch.tensor([scores[name] for name in names]), torch.zeros(len(names), dtype=torch.long))]


def _step(student_scores=STUDENT_SCORES, student_grid=TEACHER_GRID, student_size=TEACHER_SIZE,
          teacher_bev=None, student_bev=None):
    teacher_bev = torch.rand(1, CHANNELS, *TEACHER_SIZE) if teacher_bev is None else teacher_bev
    student_bev = teacher_bev.clone() if student_bev is None else student_bev
    teacher = map_view(teacher_bev, _car_heads(TEACHER_SCORES, TEACHER_GRID, TEACHER_SIZE), TEACHER_GRID,
                       _detections(TEACHER_SCORES))
    student = map_view(student_bev, _car_heads(student_scores, student_grid, student_size), student_grid,
                       _detections(student_scores))
    return step_of(teacher, student, [torch.zeros(0, 7)], [torch.zeros(0, dtype=torch.long)])


@pytest.mark.parametrize("student_grid, student_size", [(TEACHER_GRID, TEACHER_SIZE), (COARSE_GRID, COARSE_SIZE)])
def test_general_instances_are_the_most_disagreeing_places_after_nms(student_grid, student_size):
    instances = select_general_instances(_step(student_grid=student_grid, student_size=student_size),
                                         max_instances=3, nms_iou=0.3, method="test")
    # Both models detect A, B and C: NMS keeps one box per place; A (0.05) is the least disagreeing.
    torch.testing.assert_close(instances.scores, torch.tensor([0.89, 0.6, 0.1]))
    torch.testing.assert_close(instances.boxes[:, :2], torch.tensor([PLACES["D"], PLACES["B"], PLACES["C"]]))
    assert instances.batch_index.tolist() == [0, 0, 0]


def test_no_general_instance_where_the_models_agree():
    instances = select_general_instances(_step(student_scores=TEACHER_SCORES), 10, 0.3, "test")
    assert instances.num_boxes == 0


def _binary_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_gid_l_is_the_mean_kl_over_the_instance_area():
    loss = GIDLogitLoss(GIDLogitConfig(weight=0.1, max_instances=1))
    value = loss(_step())["gid-l/logit"]
    # Only D is distilled; its radius-2 disc holds 13 cells, of which only the centre differs.
    assert value.item() == pytest.approx(0.1 * _binary_kl(BACKGROUND, 0.9) / 13, rel=1e-4)


def test_gid_l_ignores_places_outside_the_instances():
    loss = GIDLogitLoss(GIDLogitConfig(max_instances=3))
    base = loss(_step())["gid-l/logit"].item()
    assert base > 0
    quieter_a = dict(STUDENT_SCORES, A=0.88)  # A stays the least disagreeing place, never selected
    assert loss(_step(student_scores=quieter_a))["gid-l/logit"].item() == pytest.approx(base)
    louder_b = dict(STUDENT_SCORES, B=0.1)
    assert loss(_step(student_scores=louder_b))["gid-l/logit"].item() > base


def test_gid_l_is_zero_when_the_student_equals_the_teacher():
    torch.manual_seed(0)
    model = TinyDetector(CHANNELS, TEACHER_GRID).eval()
    inputs = torch.randn(1, INPUT_CHANNELS, *TEACHER_SIZE)
    step = step_of(run(model, inputs), run(model, inputs), [torch.zeros(0, 7)], [torch.zeros(0, dtype=torch.long)])
    assert GIDLogitLoss(GIDLogitConfig())(step)["gid-l/logit"].item() == 0.0


def test_gid_f_is_zero_for_equal_features_and_its_relation_ignores_scale():
    loss = GIDFeatureLoss(GIDFeatureConfig(max_instances=3), CHANNELS, CHANNELS)
    make_identity(loss.adapter)
    teacher_bev = torch.rand(1, CHANNELS, *TEACHER_SIZE)
    terms = loss(_step(teacher_bev=teacher_bev))  # the heads disagree, the features do not
    assert terms["gid-f/feature"].item() < 1e-12 and terms["gid-f/relation"].item() < 1e-12
    scaled = loss(_step(teacher_bev=teacher_bev, student_bev=3 * teacher_bev))
    assert scaled["gid-f/feature"].item() > 1e-3
    assert scaled["gid-f/relation"].item() < 1e-10  # distances divided by their mean: scale drops out


def test_gid_f_pools_the_same_metric_boxes_on_a_coarse_student():
    loss = GIDFeatureLoss(GIDFeatureConfig(max_instances=3), CHANNELS, CHANNELS)
    make_identity(loss.adapter)
    step = _step(student_grid=COARSE_GRID, student_size=COARSE_SIZE,
                 teacher_bev=linear_map(TEACHER_GRID, TEACHER_SIZE, CHANNELS),
                 student_bev=linear_map(COARSE_GRID, COARSE_SIZE, CHANNELS))
    terms = loss(step)
    assert terms["gid-f/feature"].item() < 1e-9 and terms["gid-f/relation"].item() < 1e-9


@pytest.mark.parametrize("student_grid, student_size", [(TEACHER_GRID, TEACHER_SIZE), (COARSE_GRID, COARSE_SIZE)])
@pytest.mark.parametrize("make_loss", [lambda s, t: GIDLogitLoss(GIDLogitConfig()),
                                       lambda s, t: GIDFeatureLoss(GIDFeatureConfig(), s, t)])
def test_gradients_reach_student_and_adapter_never_the_teacher(make_loss, student_grid, student_size):
    torch.manual_seed(2)
    teacher, student = TinyDetector(8, TEACHER_GRID), TinyDetector(4, student_grid)
    step = step_of(run(teacher, torch.randn(1, INPUT_CHANNELS, *TEACHER_SIZE)),
                   run(student, torch.randn(1, INPUT_CHANNELS, *student_size)),
                   [torch.zeros(0, 7)], [torch.zeros(0, dtype=torch.long)])
    assert select_general_instances(step, 10, 0.3, "test").num_boxes >= 2
    loss = make_loss(4, 8)
    terms = loss(step)
    assert all(value > 0 for value in terms.values())
    sum(terms.values()).backward()
    assert student.backbone_2d[0].weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in teacher.parameters())
    if isinstance(loss, GIDFeatureLoss):
        assert loss.adapter[0].weight.grad.abs().sum() > 0


def test_gid_f_without_instances_is_zero_and_still_reaches_the_adapter():
    loss = GIDFeatureLoss(GIDFeatureConfig(), CHANNELS, CHANNELS)
    terms = loss(_step(student_scores=TEACHER_SCORES, student_bev=torch.rand(1, CHANNELS, *TEACHER_SIZE)))
    assert all(value.item() == 0.0 for value in terms.values())
    sum(terms.values()).backward()
    assert loss.adapter[0].weight.grad is not None
