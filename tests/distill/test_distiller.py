import pytest
import torch
from torch import nn

from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.base import DistillLoss
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.taps import TapRecorder, TapSpec
from rdd3d.models.presets import build_detector


class NeckMSE(DistillLoss):
    """A minimal method: whole-map MSE through an adapter (teacher and student of one resolution)."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)

    def forward(self, step):
        return {"neck/mse": (self.adapter(step.student.taps["bev"]) - step.teacher.taps["bev"]).pow(2).mean()}


@pytest.fixture(scope="module")
def batch():
    dataset = SyntheticDataset("train", 2, seed=5)
    return collate_frames([dataset[0], dataset[1]])


def _pair():
    torch.manual_seed(0)
    teacher = build_detector("cp-voxel-s", dataset="synthetic")
    student = build_detector("cp-voxel-xxs", dataset="synthetic")
    return teacher, student


def test_teacher_frozen_student_and_adapter_learn(batch):
    teacher, student = _pair()
    loss = NeckMSE(student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, student, [loss]).train()
    running_mean = teacher.backbone_2d.state_dict()
    running_mean = {k: v.clone() for k, v in running_mean.items() if "running_mean" in k}
    terms = distiller(batch)
    assert {"det/heatmap", "det/location", "neck/mse"} <= set(terms)
    sum(terms.values()).backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for key, value in teacher.backbone_2d.state_dict().items():
        if key in running_mean:
            torch.testing.assert_close(value, running_mean[key])  # BatchNorm statistics untouched


def test_taps_record_named_outputs_and_report_bad_names(batch):
    teacher, _ = _pair()
    recorder = TapRecorder(teacher, {"bev": TapSpec("backbone_2d", "features"), "all": TapSpec("")})
    teacher.eval()
    with torch.no_grad():
        output = teacher(batch.points)
    records = recorder.take()
    torch.testing.assert_close(records["bev"], output.bev_features)
    assert records["all"] is output
    assert recorder.take() == {}
    recorder.remove()
    with pytest.raises(ValueError, match="no submodule 'neck'.*backbone_2d"):
        TapRecorder(teacher, {"bev": TapSpec("neck")})


def test_teacher_is_held_outside_the_trainees_state_and_moves_with_it():
    teacher, student = _pair()
    loss = NeckMSE(student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, student, [loss])
    keys = set(distiller.state_dict())
    assert keys == {f"student.{k}" for k in student.state_dict()} | {f"losses.0.{k}" for k in loss.state_dict()}
    trainable = {id(p) for p in distiller.parameters()}
    assert not trainable & {id(p) for p in teacher.parameters()}
    distiller.to(torch.float64)
    assert all(t.dtype == torch.float64 for t in teacher.state_dict().values() if t.is_floating_point())
    assert distiller.teacher is teacher
