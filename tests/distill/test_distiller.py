import gc

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


class DictHeadModel(nn.Module):
    """Outputs as OpenPCDet and mmdetection3d heads give them: a dict of maps, a tuple of per-level outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(2, 3, 1)
        self.levels = nn.Identity()

    def forward(self, x):
        maps = self.head(x)
        return self.levels(({"heatmap": maps[:, :1], "reg": maps[:, 1:]}, maps))


def test_taps_select_by_key_index_attribute_or_callable_and_name_what_is_missing():
    model = DictHeadModel()
    recorder = TapRecorder(model, {"dict": TapSpec("levels", 0), "heatmap": TapSpec("levels", lambda out: out[0]["heatmap"]),
                                   "last": TapSpec("levels", -1), "shape": TapSpec("head", "shape")})
    x = torch.randn(1, 2, 4, 4)
    output = model(x)
    records = recorder.take()
    assert records["dict"] is output[0] and records["last"] is output[1] and records["shape"] == (1, 3, 4, 4)
    assert records["heatmap"] is output[0]["heatmap"]
    recorder.remove()
    for spec, message in ((TapSpec("levels", 2), "tap 'bad': output of 'levels' \\(tuple of 2\\) has no item 2"),
                          (TapSpec("head", "heatmaps"), "tap 'bad': output of 'head' \\(Tensor\\) has no field 'heatmaps'")):
        with TapRecorder(model, {"bad": spec}), pytest.raises(ValueError, match=message):
            model(x)
    with pytest.raises(ValueError, match="no key 'heatmaps'; keys: \\['heatmap', 'reg'\\]"):
        TapSpec("levels", "heatmaps").select(output[0])
    assert not any(module._forward_hooks for module in model.modules())


def test_a_closed_distiller_leaves_plain_models_that_pickle(batch, tmp_path):
    teacher, student = _pair()
    with Distiller(teacher, student, []) as distiller:
        distiller.train()
        distiller(batch)
        assert student.backbone_2d._forward_hooks and teacher.head._forward_hooks
    assert not any(module._forward_hooks for model in (teacher, student) for module in model.modules())
    torch.save(student, tmp_path / "student.pt")  # the whole module: no local hook function left on it
    with pytest.raises(RuntimeError, match="closed"):
        distiller(batch)
    # A distiller that is simply dropped takes its taps with it too.
    teacher, student = _pair()
    Distiller(teacher, student, [])
    gc.collect()
    assert not any(module._forward_hooks for model in (teacher, student) for module in model.modules())


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
