"""engine/runs.py: how a distillation run is assembled."""

from __future__ import annotations

import dataclasses

import torch

from rdd3d.core.checkpoint import save_checkpoint
from rdd3d.engine.config import RunConfig
from rdd3d.engine.runs import build_model, distillation_trainee, plain_config
from rdd3d.engine.trainer import seed_everything


def _teacher_checkpoint(path) -> None:
    config = RunConfig()
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
