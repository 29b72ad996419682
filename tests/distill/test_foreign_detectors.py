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


# ----------------------------------------------------------------------------- through the public API only
class OpenPCDetStyleDetector(nn.Module):
    """As OpenPCDet writes detectors: a batch dict in, the same dict out with each module's results added;
    the BEV map under ``spatial_features_2d`` and one dict of maps per task under ``pred_dicts`` (OpenPCDet's
    names ``hm``, ``center``, ``center_z``, ``dim``, ``rot``, ``vel``). ``head`` names the dense head for the
    methods that ask it for targets (PP-Logit)."""

    KEYS = {"heatmap": "hm", "center": "center", "center_z": "center_z", "dim": "dim", "rot": "rot", "velocity": "vel"}

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.point_cloud_range = SYNTHETIC.point_cloud_range
        self.voxel_size = (CELL, CELL, 8.0)
        self.feature_stride = 1
        self.backbone_2d = _OccupancyNeck(channels, self.point_cloud_range)
        self.dense_head = _PredDictsHead(_centre_head(channels, self.point_cloud_range, self.voxel_size), self.KEYS)

    @property
    def head(self) -> "_PredDictsHead":
        return self.dense_head

    def forward(self, batch_dict: dict) -> dict:
        return self.dense_head(self.backbone_2d(batch_dict))

    def _predictions(self, batch_dict: dict) -> list[TaskPrediction]:
        return [TaskPrediction(**{field: task[key] for field, key in self.KEYS.items()})
                for task in batch_dict["pred_dicts"]]

    def loss(self, batch_dict: dict, gt_boxes, gt_labels):
        return self.dense_head.centre_head.loss(self._predictions(batch_dict), gt_boxes, gt_labels)

    def decode(self, batch_dict: dict) -> list[dict]:
        return [{"boxes": found.boxes, "scores": found.scores, "labels": found.labels}
                for found in self.dense_head.centre_head.decode(self._predictions(batch_dict))]


class MMDet3DStyleDetector(nn.Module):
    """As mmdetection3d writes detectors: separate neck and head modules, the head returning one dict of maps
    per task (mmdetection3d's names), detections as dataclasses."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.point_cloud_range = SYNTHETIC.point_cloud_range
        self.voxel_size = (CELL, CELL, 8.0)
        self.feature_stride = 1
        self.pts_neck = _OccupancyNeck(channels, self.point_cloud_range)
        self.head = _DictOutput(_centre_head(channels, self.point_cloud_range, self.voxel_size))

    def forward(self, points: list[Tensor]) -> list[dict]:
        return self.head(self.pts_neck({"points": points})["spatial_features_2d"])

    def _predictions(self, output: list[dict]) -> list[TaskPrediction]:
        return [TaskPrediction(**{field: task[key] for field, key in MMDET3D_KEYS.items()}) for task in output]

    def loss(self, output, gt_boxes, gt_labels):
        return self.head.centre_head.loss(self._predictions(output), gt_boxes, gt_labels)

    def decode(self, output) -> list[FoundBoxes]:
        return [FoundBoxes(found.boxes, found.scores, found.labels)
                for found in self.head.centre_head.decode(self._predictions(output))]


def _centre_head(channels: int, point_cloud_range, voxel_size) -> CenterHead:
    return CenterHead(channels, ClassTable(SYNTHETIC.classes), point_cloud_range, voxel_size, 1,
                      CenterHeadConfig(class_groups=SYNTHETIC.head.class_groups, head_channels=8, with_velocity=True,
                                       loss=SYNTHETIC.head.loss, decode=DecodeConfig(max_per_task=50)))


class _OccupancyNeck(nn.Module):
    """Points -> BEV occupancy -> one conv block; a batch dict in, the dict with ``spatial_features_2d`` out."""

    def __init__(self, channels: int, point_cloud_range) -> None:
        super().__init__()
        self.origin = point_cloud_range[:2]
        self.size = round((point_cloud_range[3] - point_cloud_range[0]) / CELL)
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, batch_dict: dict) -> dict:
        points = batch_dict["points"]
        occupancy = torch.zeros(len(points), 1, self.size, self.size)
        for sample, cloud in enumerate(points):
            cell = ((cloud[:, :2] - torch.tensor(self.origin)) / CELL).long().clamp(0, self.size - 1)
            occupancy[sample, 0].index_put_((cell[:, 1], cell[:, 0]), torch.ones(len(cell)), accumulate=True)
        return {**batch_dict, "spatial_features_2d": self.conv(occupancy.clamp(max=8.0) / 8.0)}


class _PredDictsHead(nn.Module):
    def __init__(self, head: CenterHead, keys: dict) -> None:
        super().__init__()
        self.centre_head, self.keys = head, keys

    def forward(self, batch_dict: dict) -> dict:
        tasks = self.centre_head(batch_dict["spatial_features_2d"])
        pred_dicts = [{key: getattr(task, field) for field, key in self.keys.items()} for task in tasks]
        return {**batch_dict, "pred_dicts": pred_dicts}

    def targets(self, *args):
        return self.centre_head.targets(*args)


OPENPCDET_TASKS = task_dicts(heatmap="hm", center="center", center_z="center_z")
OPENPCDET_TAPS = {"bev": TapSpec("backbone_2d", "spatial_features_2d"),
                  "head": TapSpec("dense_head", lambda out: OPENPCDET_TASKS(out["pred_dicts"]))}
MMDET3D_TAPS = {"bev": TapSpec("pts_neck", "spatial_features_2d"), "head": TapSpec("head", task_dicts())}


def _openpcdet_input(batch):
    return {"points": batch.points, "batch_size": len(batch.points)}


@pytest.mark.parametrize("method", ["rdd", "pp-logit"])
@pytest.mark.parametrize("style", ["openpcdet", "mmdetection3d"])
def test_a_foreign_detector_trains_with_the_project_trainer_checkpoints_and_reloads(tmp_path, style, method):
    from rdd3d.core.checkpoint import load_checkpoint
    from rdd3d.data import SyntheticDataset as Frames, TrainingFrames
    from rdd3d.distill import DistillConfig as Config, Distiller as PublicDistiller, build_method as build
    from rdd3d.engine import OptimConfig, Trainer, TrainerConfig, init_distributed

    detector, taps, model_input = {
        "openpcdet": (OpenPCDetStyleDetector, OPENPCDET_TAPS, _openpcdet_input),
        "mmdetection3d": (MMDet3DStyleDetector, MMDET3D_TAPS, None),
    }[style]
    torch.manual_seed(0)
    teacher, student = detector(16).eval(), detector(8)
    options = {"model_input": model_input} if model_input else {}
    distiller = PublicDistiller(teacher, student, build(Config(method=method), 8, 16), taps=taps,
                                teacher_precision="fp32", **options)
    frames = TrainingFrames([Frames("train", 4, seed=3)[i] for i in range(4)], SYNTHETIC.point_cloud_range)
    config = TrainerConfig(epochs=1, batch_size=2, num_workers=0, log_interval=1, checkpoint_interval=1,
                           adaptive_threads=False)
    result = Trainer(distiller, frames, config, OptimConfig(lr=1e-3), tmp_path, init_distributed("cpu")).fit()
    assert result.step == 2

    state = load_checkpoint(tmp_path / "last.pt")
    assert any(key.startswith("losses.0.") for key in state["model"]) == (method == "rdd")  # RDD's adapter ψ
    reloaded = detector(8)
    reloaded.load_state_dict({key.removeprefix("student."): value for key, value in state["model"].items()
                              if key.startswith("student.")})
    for name, value in student.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, rtol=0, atol=0)

    distiller.close()
    assert not any(module._forward_hooks for model in (teacher, student) for module in model.modules())
    torch.save(student, tmp_path / "student.pt")  # the whole module pickles once the taps are off


def test_a_model_without_what_the_distiller_needs_is_refused_naming_it():
    from rdd3d.distill import Distiller as PublicDistiller

    with pytest.raises(TypeError, match=r"the student Sequential lacks \['point_cloud_range', 'voxel_size', "
                                        r"'feature_stride', 'decode'\]: a distilled detector offers"):
        PublicDistiller(MMDet3DStyleDetector(8), nn.Sequential(nn.Identity()), [])
