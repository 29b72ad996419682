"""Detectors written as OpenPCDet and mmdetection3d write theirs, distilled through the public API: heads
that return dicts, decodes that return dicts or dataclasses."""

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.core.types import ClassTable
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.heads import task_dicts
from rdd3d.distill.methods import DistillConfig, build_method
from rdd3d.distill.taps import TapSpec
from rdd3d.models.heads import CenterHead, CenterHeadConfig, DecodeConfig, TaskPrediction
from rdd3d.models.presets import preset_config

SYNTHETIC = preset_config("cp-voxel-xxs", "synthetic")
CELL = 1.6  # metres: a 52 x 52 BEV map over the synthetic world's range
MMDET3D_KEYS = {"heatmap": "heatmap", "center": "reg", "center_z": "height", "dim": "dim", "rot": "rot",
                "velocity": "vel"}


@dataclass
class FoundBoxes:  # what a decode might return instead of rdd3d's Detections
    boxes: Tensor
    scores: Tensor
    labels: Tensor


class DictHeadDetector(nn.Module):
    """Points -> BEV occupancy -> a conv neck -> a CenterPoint head whose output is one dict of maps per task
    (mmdetection3d's key names); ``decode`` gives dicts (``as_dataclass``: dataclasses)."""

    def __init__(self, channels: int, as_dataclass: bool = False) -> None:
        super().__init__()
        self.point_cloud_range = SYNTHETIC.point_cloud_range
        self.voxel_size = (CELL, CELL, 8.0)
        self.feature_stride = 1
        self.size = round((self.point_cloud_range[3] - self.point_cloud_range[0]) / CELL)
        self.neck = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        head = CenterHead(channels, ClassTable(SYNTHETIC.classes), self.point_cloud_range, self.voxel_size, 1,
                          CenterHeadConfig(class_groups=SYNTHETIC.head.class_groups, head_channels=8, with_velocity=True,
                                           loss=SYNTHETIC.head.loss,
                                           decode=DecodeConfig(max_per_task=50)))
        self.head = _DictOutput(head)
        self.as_dataclass = as_dataclass

    def forward(self, points: list[Tensor]) -> dict:
        occupancy = torch.zeros(len(points), 1, self.size, self.size)
        for sample, cloud in enumerate(points):
            cell = ((cloud[:, :2] - torch.tensor(self.point_cloud_range[:2])) / CELL).long().clamp(0, self.size - 1)
            occupancy[sample, 0].index_put_((cell[:, 1], cell[:, 0]), torch.ones(len(cell)), accumulate=True)
        neck = self.neck(occupancy.clamp(max=8.0) / 8.0)
        return {"neck": neck, "preds": self.head(neck)}

    def _predictions(self, output: dict) -> list[TaskPrediction]:
        return [TaskPrediction(**{field: task[key] for field, key in MMDET3D_KEYS.items()}) for task in output["preds"]]

    def loss(self, output: dict, gt_boxes, gt_labels):
        return self.head.centre_head.loss(self._predictions(output), gt_boxes, gt_labels)

    def decode(self, output: dict) -> list:
        found = self.head.centre_head.decode(self._predictions(output))
        if self.as_dataclass:
            return [FoundBoxes(item.boxes, item.scores, item.labels) for item in found]
        return [{"boxes": item.boxes, "scores": item.scores, "labels": item.labels} for item in found]


class _DictOutput(nn.Module):
    """The head: dicts out; ``targets`` is what PP-Logit asks of ``model.head`` for its pivotal positions."""

    def __init__(self, head: CenterHead) -> None:
        super().__init__()
        self.centre_head = head

    def forward(self, features: Tensor) -> list[dict]:
        return [{key: getattr(task, field) for field, key in MMDET3D_KEYS.items()}
                for task in self.centre_head(features)]

    def targets(self, map_size, gt_boxes, gt_labels):
        return self.centre_head.targets(map_size, gt_boxes, gt_labels)


@pytest.fixture(scope="module")
def batch():
    dataset = SyntheticDataset("train", 2, seed=7)
    return collate_frames([dataset[0], dataset[1]])


@pytest.mark.parametrize("method, head_tap", [
    ("rdd", TapSpec("head")),  # RDD reads the heatmaps only: a list of dicts with "heatmap" is enough
    ("rdd", TapSpec("head", task_dicts())),
    ("pp-logit", TapSpec("head", task_dicts())),  # compares the regression maps too
])
@pytest.mark.parametrize("as_dataclass", [False, True], ids=["dict detections", "dataclass detections"])
def test_a_dict_head_detector_distils_through_the_public_api(batch, method, head_tap, as_dataclass):
    torch.manual_seed(0)
    teacher, student = DictHeadDetector(16, as_dataclass), DictHeadDetector(8, as_dataclass)
    losses = build_method(DistillConfig(method=method), 8, 16)
    taps = {"bev": TapSpec("neck"), "head": head_tap}
    with Distiller(teacher, student, losses, taps=taps, teacher_precision="fp32") as distiller:
        distiller.train()
        terms = distiller(batch)
        sum(terms.values()).backward()
    distilled = {name for name in terms if not name.startswith("det/")}
    assert distilled and all(torch.isfinite(terms[name]) for name in distilled)
    assert any(terms[name].item() != 0 for name in distilled)
    assert student.neck[0].weight.grad.abs().sum() > 0
    if method == "rdd":
        assert losses[0].last_pairs.proposals.num_boxes > 0  # proposals came from the dict decodes
    assert not any(module._forward_hooks for model in (teacher, student) for module in model.modules())


def test_a_dict_without_the_named_maps_is_refused_with_its_keys(batch):
    teacher, student = DictHeadDetector(16), DictHeadDetector(8)
    taps = {"bev": TapSpec("neck"), "head": TapSpec("head", task_dicts(center="center"))}
    with Distiller(teacher, student, build_method(DistillConfig(method="pp-logit"), 8, 16), taps=taps) as distiller:
        with pytest.raises(ValueError, match=r"task 0 of the head's output has no \['center'\]; its keys: \['dim', "):
            distiller(batch)
