"""PP-Logit KD and plain logit KD on the heatmaps."""

import math

import pytest
import torch

from baselines_support import (
    COARSE_GRID, COARSE_SIZE, INPUT_CHANNELS, TEACHER_GRID, TEACHER_SIZE, TinyDetector, box, cell_of,
    heads_from_probabilities, map_view, run, step_of,
)
from rdd3d.distill.baselines import LogitKDConfig, LogitKDLoss, PPLogitConfig, PPLogitLoss
from rdd3d.models.heads import clamped_sigmoid

CAR, PEDESTRIAN = 0, 1
GT_BOXES = [torch.tensor([box(2.25, 2.25), box(5.75, 5.75, 0.8, 0.8)])]
GT_LABELS = [torch.tensor([CAR, PEDESTRIAN])]
ASSIGNER = TinyDetector(4, TEACHER_GRID)  # its head draws the ground truth's heatmaps on the teacher grid


def _view(car, others, grid=TEACHER_GRID):
    return map_view(torch.zeros(1, 4, *car.shape[-2:]), heads_from_probabilities(car, others), grid, model=ASSIGNER)


def _uniform(probability, size=TEACHER_SIZE):
    return torch.full((1, 1, *size), probability), torch.full((1, 2, *size), probability)


def _models_step(student_grid, student_size, seed=3):
    torch.manual_seed(seed)
    teacher, student = TinyDetector(8, TEACHER_GRID), TinyDetector(4, student_grid)
    step = step_of(run(teacher, torch.randn(1, INPUT_CHANNELS, *TEACHER_SIZE)),
                   run(student, torch.randn(1, INPUT_CHANNELS, *student_size)), GT_BOXES, GT_LABELS)
    return step, teacher, student


@pytest.mark.parametrize("loss", [PPLogitLoss(PPLogitConfig()), LogitKDLoss(LogitKDConfig()),
                                  LogitKDLoss(LogitKDConfig(divergence="mse", temperature=2.0))])
def test_zero_when_the_student_equals_the_teacher(loss):
    torch.manual_seed(0)
    model = TinyDetector(6, TEACHER_GRID).eval()
    inputs = torch.randn(1, INPUT_CHANNELS, *TEACHER_SIZE)
    terms = loss(step_of(run(model, inputs), run(model, inputs), GT_BOXES, GT_LABELS))
    assert all(value.item() == 0.0 for value in terms.values())


@pytest.mark.parametrize("student_grid, student_size", [(TEACHER_GRID, TEACHER_SIZE), (COARSE_GRID, COARSE_SIZE)])
@pytest.mark.parametrize("loss", [PPLogitLoss(PPLogitConfig()), LogitKDLoss(LogitKDConfig())])
def test_gradients_reach_the_student_never_the_teacher(loss, student_grid, student_size):
    step, teacher, student = _models_step(student_grid, student_size)
    terms = loss(step)
    assert terms[next(iter(terms))] > 0
    sum(terms.values()).backward()
    assert student.backbone_2d[0].weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in teacher.parameters())


def test_pp_logit_heatmap_term_is_sparsekds_confidence_and_foreground_weighted_mse():
    torch.manual_seed(4)
    teacher_probabilities = [torch.rand(1, 1, *TEACHER_SIZE) * 0.9 + 0.05, torch.rand(1, 2, *TEACHER_SIZE) * 0.9 + 0.05]
    student_probabilities = [torch.rand(1, 1, *TEACHER_SIZE) * 0.9 + 0.05, torch.rand(1, 2, *TEACHER_SIZE) * 0.9 + 0.05]
    step = step_of(_view(*teacher_probabilities), _view(*student_probabilities), GT_BOXES, GT_LABELS)
    targets = ASSIGNER.head.targets(TEACHER_SIZE, GT_BOXES, GT_LABELS)
    expected = []
    for p_teacher, p_student, target in zip(teacher_probabilities, student_probabilities, targets):
        p_teacher, p_student = (clamped_sigmoid(torch.logit(p)) for p in (p_teacher, p_student))
        mask = p_teacher.max(dim=1).values * target.heatmap.max(dim=1).values  # confidence x soft foreground
        expected.append(((p_student - p_teacher) ** 2 * mask[:, None]).sum() / (mask.sum() + 1e-6))
    heatmap = PPLogitLoss(PPLogitConfig(weight=7.0))(step)["pp-logit/heatmap"]
    assert heatmap.item() == pytest.approx(7.0 * (expected[0] + expected[1]).item() / 2, rel=1e-5)


def test_pp_logit_sees_only_the_ground_truth_foreground():
    teacher = _view(*_uniform(0.3))
    base_car, others = _uniform(0.3)
    base = PPLogitLoss(PPLogitConfig())(step_of(teacher, _view(base_car, others), GT_BOXES, GT_LABELS))
    assert base["pp-logit/heatmap"].item() == 0.0
    far, near = base_car.clone(), base_car.clone()
    far[(0, 0, *cell_of(TEACHER_GRID, 7.25, 0.75))] = 0.9  # no ground truth near: the soft mask is 0
    near[(0, 0, *cell_of(TEACHER_GRID, 2.25, 2.25))] = 0.9  # the car's centre: the soft mask is 1
    loss = PPLogitLoss(PPLogitConfig(weight=10.0))
    assert loss(step_of(teacher, _view(far, others), GT_BOXES, GT_LABELS))["pp-logit/heatmap"].item() == 0.0
    near_value = loss(step_of(teacher, _view(near, others), GT_BOXES, GT_LABELS))["pp-logit/heatmap"].item()
    car_gaussian = ASSIGNER.head.targets(TEACHER_SIZE, GT_BOXES, GT_LABELS)[0].heatmap.sum().item()
    # Uniform teacher confidence cancels; the car task's mean is halved by the pedestrian task's 0.
    assert near_value == pytest.approx(10.0 * (0.9 - 0.3) ** 2 / car_gaussian / 2, rel=1e-4)


@pytest.mark.parametrize("student_grid, student_size, expected", [(TEACHER_GRID, TEACHER_SIZE, 0.2 * 0.5 / 2),
                                                                  (COARSE_GRID, COARSE_SIZE, 0.0)])
def test_pp_logit_regression_is_l1_at_target_centres_and_off_across_resolutions(student_grid, student_size, expected):
    teacher = _view(*_uniform(0.3))
    student = _view(*_uniform(0.3, student_size), grid=student_grid)
    car_task = student.taps["head"][0]
    car_task.center[(0, 0, *cell_of(student_grid, 2.25, 2.25))] = 0.5  # off by 0.5 cell along x at the car
    car_task.center[(0, 0, *cell_of(student_grid, 7.25, 0.75))] = 3.0  # no target there
    regression = PPLogitLoss(PPLogitConfig())(step_of(teacher, student, GT_BOXES, GT_LABELS))["pp-logit/regression"]
    assert regression.item() == pytest.approx(expected)  # the pedestrian task has nothing to correct: mean / 2


def test_pp_logit_settings_per_student():
    assert PPLogitConfig.for_student("cp-voxel-s") == PPLogitConfig(weight=10.0, regression_weight=0.2)
    assert PPLogitConfig.for_student("cp-voxel-xs").weight == 15.0
    assert PPLogitConfig.for_student("cp-pillar-v0.48") == PPLogitConfig(weight=7.0, regression_weight=0.0)
    with pytest.raises(ValueError, match="cp-voxel.*known students"):
        PPLogitConfig.for_student("cp-voxel")


def _binary_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logit_kd_is_the_binary_kl_of_softened_heatmaps_per_object(temperature):
    teacher_car, others = _uniform(0.2)
    student_car = teacher_car.clone()
    student_car[0, 0, 3, 3] = 0.6
    step = step_of(_view(teacher_car, others), _view(student_car, others), GT_BOXES, GT_LABELS)
    value = LogitKDLoss(LogitKDConfig(weight=1.5, temperature=temperature))(step)["kd/heatmap"]

    def soften(p):
        return 1 / (1 + math.exp(-math.log(p / (1 - p)) / temperature))

    expected = 1.5 * temperature ** 2 * _binary_kl(soften(0.2), soften(0.6)) / 2  # two ground-truth objects
    assert value.item() == pytest.approx(expected, rel=1e-4)
    mse = LogitKDLoss(LogitKDConfig(divergence="mse", temperature=temperature))(step)["kd/heatmap"]
    assert mse.item() == pytest.approx(temperature ** 2 * (soften(0.6) - soften(0.2)) ** 2 / 2, rel=1e-4)


def test_logit_kd_reads_a_coarse_student_at_the_teacher_cells():
    def linear_logits(grid, size):  # the same logit field on both grids
        height, width = size
        x = grid.point_cloud_range[0] + (torch.arange(width) + 0.5) * grid.cell_size[0]
        y = grid.point_cloud_range[1] + (torch.arange(height) + 0.5) * grid.cell_size[1]
        logits = (0.3 * x[None, :] - 0.2 * y[:, None] - 1.0)[None, None]
        return torch.sigmoid(logits), torch.sigmoid(logits.expand(1, 2, height, width))

    step = step_of(_view(*linear_logits(TEACHER_GRID, TEACHER_SIZE)),
                   _view(*linear_logits(COARSE_GRID, COARSE_SIZE), grid=COARSE_GRID), GT_BOXES, GT_LABELS)
    # float32 rounding of ~800 cells' KL terms stays below 1e-6 (it is CPU-dependent); one cell read 0.1
    # logit off would already give about 1e-3
    assert LogitKDLoss(LogitKDConfig())(step)["kd/heatmap"].item() < 1e-6
