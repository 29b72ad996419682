"""engine/runs.py: how a distillation run is assembled."""

from __future__ import annotations

import dataclasses

import torch

import pytest

from rdd3d.core.checkpoint import save_checkpoint
from rdd3d.core.config_loading import ConfigError
from rdd3d.engine.config import RunConfig, load_run_config
from rdd3d.engine.runs import build_model, check_teacher, distillation_trainee, plain_config
from rdd3d.engine.trainer import seed_everything


def _teacher_checkpoint(path, config: RunConfig | None = None) -> None:
    config = config or RunConfig()
    config.model.preset = "cp-pillar-v0.64"
    torch.manual_seed(123)
    weights = {f"detector.{name}": value for name, value in build_model(config).state_dict().items()}
    save_checkpoint(path, {"config": plain_config(config), "model": weights})


def test_a_distilled_student_starts_where_the_no_kd_student_of_its_seed_starts(tmp_path):
    _teacher_checkpoint(tmp_path / "teacher.pt")
    config = RunConfig()
    config.model.preset = "cp-voxel-xxs"
    config.distill = dataclasses.replace(config.distill, method="rdd", teacher_checkpoint=str(tmp_path / "teacher.pt"))

    seed_everything(7)
    no_kd = build_model(config).state_dict()
    after_no_kd = torch.rand(4)
    seed_everything(7)
    trainee = distillation_trainee(config, "cpu")
    after_distill = torch.rand(4)

    distilled = trainee.student.state_dict()
    assert distilled.keys() == no_kd.keys()
    assert all(torch.equal(distilled[name], no_kd[name]) for name in no_kd)
    assert torch.equal(after_distill, after_no_kd)  # building the teacher and the losses drew nothing


@pytest.mark.parametrize("teacher_settings, student_settings, named", [
    (["data.world.classes=[car,barrier]"], [], "the teacher detects \\['car', 'barrier'\\], the student \\['car', 'truck'"),
    (['model.overrides={"head.half_period_classes": [barrier]}'], [],
     "the teacher codes the yaw of \\['barrier'\\] modulo π, the student .* of \\[\\]"),
])
def test_a_teacher_of_other_classes_or_another_yaw_code_is_refused(tmp_path, teacher_settings, student_settings,
                                                                   named):
    _teacher_checkpoint(tmp_path / "teacher.pt", load_run_config(overrides=teacher_settings))
    student = load_run_config(overrides=[*student_settings, "model.preset=cp-voxel-xxs", "distill.method=rdd",
                                         f"distill.teacher_checkpoint={tmp_path / 'teacher.pt'}"])
    with pytest.raises(ConfigError, match=named):
        check_teacher(student)
    check_teacher(load_run_config(overrides=[*teacher_settings, "model.preset=cp-voxel-xxs", "distill.method=rdd",
                                             f"distill.teacher_checkpoint={tmp_path / 'teacher.pt'}"]))
