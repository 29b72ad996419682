"""Hint and FG: neck imitation over the whole map, and only near ground-truth objects."""

import pytest
import torch

from baselines_support import (
    COARSE_GRID, COARSE_SIZE, INPUT_CHANNELS, TEACHER_GRID, TEACHER_SIZE, TinyDetector, box, cell_of,
    heads_from_probabilities, linear_map, make_identity, map_view, run, step_of,
)
from rdd3d.distill.baselines import FGConfig, FGLoss, HintConfig, HintLoss

CHANNELS = 6
GT = [torch.tensor([box(2.2, 2.3)])]
GT_LABELS = [torch.tensor([0])]


def _heads(size):
    return heads_from_probabilities(torch.full((1, 1, *size), 0.1), torch.full((1, 2, *size), 0.1))


def _feature_step(teacher_bev, student_bev, student_grid=TEACHER_GRID):
    size = tuple(student_bev.shape[-2:])
    return step_of(map_view(teacher_bev, _heads(TEACHER_SIZE), TEACHER_GRID),
                   map_view(student_bev, _heads(size), student_grid), GT, GT_LABELS)


@pytest.mark.parametrize("make_loss", [lambda: HintLoss(HintConfig(), CHANNELS, CHANNELS),
                                       lambda: FGLoss(FGConfig(), CHANNELS, CHANNELS)])
def test_zero_when_the_adapted_student_equals_the_teacher(make_loss):
    torch.manual_seed(0)
    model = TinyDetector(CHANNELS, TEACHER_GRID).eval()
    inputs = torch.randn(1, INPUT_CHANNELS, *TEACHER_SIZE)
    loss = make_loss()
    make_identity(loss.adapter)
    step = step_of(run(model, inputs), run(model, inputs), GT, GT_LABELS)
    (value,) = loss(step).values()
    assert value.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("student_grid, student_size", [(TEACHER_GRID, TEACHER_SIZE), (COARSE_GRID, COARSE_SIZE)])
@pytest.mark.parametrize("make_loss, name", [(lambda s, t: HintLoss(HintConfig(), s, t), "hint/feature"),
                                             (lambda s, t: FGLoss(FGConfig(), s, t), "fg/feature")])
def test_gradients_reach_student_and_adapter_never_the_teacher(make_loss, name, student_grid, student_size):
    torch.manual_seed(1)
    teacher, student = TinyDetector(8, TEACHER_GRID), TinyDetector(4, student_grid)
    loss = make_loss(4, 8)
    step = step_of(run(teacher, torch.randn(1, INPUT_CHANNELS, *TEACHER_SIZE)),
                   run(student, torch.randn(1, INPUT_CHANNELS, *student_size)), GT, GT_LABELS)
    terms = loss(step)
    assert set(terms) == {name} and terms[name] > 0
    terms[name].backward()
    assert student.backbone_2d[0].weight.grad.abs().sum() > 0
    assert loss.adapter[0].weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in teacher.parameters())


def test_hint_compares_the_same_metric_places_when_resolutions_differ():
    teacher_bev = linear_map(TEACHER_GRID, TEACHER_SIZE, CHANNELS)
    student_bev = linear_map(COARSE_GRID, COARSE_SIZE, CHANNELS)  # the same field on 1 m cells, other origin
    loss = HintLoss(HintConfig(), CHANNELS, CHANNELS)
    make_identity(loss.adapter)
    assert loss(_feature_step(teacher_bev, student_bev, COARSE_GRID))["hint/feature"].item() < 1e-10
    shifted = linear_map(COARSE_GRID, COARSE_SIZE, CHANNELS).roll(1, dims=-1)  # one cell off
    assert loss(_feature_step(teacher_bev, shifted, COARSE_GRID))["hint/feature"].item() > 1e-3


def test_hint_is_the_weighted_mean_squared_difference():
    teacher_bev, student_bev = torch.zeros(1, CHANNELS, *TEACHER_SIZE), torch.zeros(1, CHANNELS, *TEACHER_SIZE)
    student_bev[0, :, 3, 4] = 2.0
    loss = HintLoss(HintConfig(weight=0.5), CHANNELS, CHANNELS)
    make_identity(loss.adapter)
    expected = 0.5 * 4.0 * CHANNELS / (CHANNELS * 16 * 16)
    assert loss(_feature_step(teacher_bev, student_bev))["hint/feature"].item() == pytest.approx(expected)


def test_fg_sees_only_the_gaussian_area_of_ground_truth_and_normalises_by_its_size():
    loss = FGLoss(FGConfig(weight=0.01), CHANNELS, CHANNELS)
    make_identity(loss.adapter)
    teacher_bev = torch.zeros(1, CHANNELS, *TEACHER_SIZE)
    student_bev = torch.ones(1, CHANNELS, *TEACHER_SIZE)
    # Every masked cell is off by 1 in every channel: Σ / (2 N) = C / 2 whatever the area's size.
    base = loss(_feature_step(teacher_bev, student_bev))["fg/feature"].item()
    assert base == pytest.approx(0.01 * CHANNELS / 2)

    row, column = cell_of(TEACHER_GRID, 2.2, 2.3)
    far, near = student_bev.clone(), student_bev.clone()
    far[0, :, row + 6, column + 6] = 50.0  # 6 cells away: outside the radius-2 disc
    near[0, :, row + 1, column + 1] = 50.0  # inside it
    assert loss(_feature_step(teacher_bev, far))["fg/feature"].item() == pytest.approx(base)
    assert loss(_feature_step(teacher_bev, near))["fg/feature"].item() > 2 * base


def test_fg_without_ground_truth_is_zero_and_still_reaches_the_adapter():
    loss = FGLoss(FGConfig(), CHANNELS, 8)
    student_bev = torch.randn(1, CHANNELS, *TEACHER_SIZE, requires_grad=True)
    step = step_of(map_view(torch.randn(1, 8, *TEACHER_SIZE), _heads(TEACHER_SIZE), TEACHER_GRID),
                   map_view(student_bev, _heads(TEACHER_SIZE), TEACHER_GRID), [torch.zeros(0, 7)],
                   [torch.zeros(0, dtype=torch.long)])
    value = loss(step)["fg/feature"]
    value.backward()
    assert value.item() == 0.0
    assert loss.adapter[0].weight.grad is not None  # used, so DDP sees every parameter


def test_fg_mask_follows_the_metric_box_on_a_coarse_student():
    teacher_bev = linear_map(TEACHER_GRID, TEACHER_SIZE, CHANNELS)
    student_bev = linear_map(COARSE_GRID, COARSE_SIZE, CHANNELS)
    row, column = cell_of(COARSE_GRID, 7.5, 7.5)  # far corner, away from the box at (2.2, 2.3)
    student_bev[0, :, row, column] += 10.0
    loss = FGLoss(FGConfig(), CHANNELS, CHANNELS)
    make_identity(loss.adapter)
    assert loss(_feature_step(teacher_bev, student_bev, COARSE_GRID))["fg/feature"].item() < 1e-10
