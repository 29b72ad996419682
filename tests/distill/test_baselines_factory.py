"""The baseline factory, and every baseline inside the distiller on real CenterPoint presets whose maps
differ in resolution (CP-Pillar teacher, CP-Pillar-v0.64 student)."""

import math

import pytest
import torch

from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.baselines import BASELINES, FGConfig, GIDFeatureConfig, HintConfig, build_baseline
from rdd3d.distill.distiller import Distiller
from rdd3d.core.config_loading import ConfigError
from rdd3d.models.presets import build_detector

TERMS = {"hint": {"hint/feature"}, "fg": {"fg/feature"}, "gid-l": {"gid-l/logit"},
         "gid-f": {"gid-f/feature", "gid-f/relation"}, "lad": set(), "pp-logit": {"pp-logit/heatmap",
         "pp-logit/regression"}, "kd": {"kd/heatmap"}}


def test_the_factory_knows_the_papers_baselines():
    assert list(BASELINES) == ["hint", "fg", "gid-l", "gid-f", "lad", "pp-logit", "kd"]
    with pytest.raises(ValueError, match="unknown baseline 'rdd'; known baselines: \\['hint'"):
        build_baseline("rdd", None, 8, 16)


def test_the_factory_takes_a_config_a_mapping_or_nothing():
    assert build_baseline("hint", None, 8, 16).config == HintConfig()
    assert build_baseline("fg", FGConfig(weight=0.5), 8, 16).config.weight == 0.5
    assert build_baseline("gid-f", {"max_instances": 20}, 8, 16).config == GIDFeatureConfig(max_instances=20)
    assert build_baseline("hint", None, 8, 16).adapter[0].weight.shape == (16, 8, 1, 1)
    with pytest.raises(ConfigError, match="wieght.*Did you mean.*weight"):
        build_baseline("fg", {"wieght": 1.0}, 8, 16)
    with pytest.raises(ValueError, match="FGConfig.weight must be >= 0"):
        build_baseline("fg", {"weight": -1.0}, 8, 16)
    with pytest.raises(TypeError, match="'fg' takes a FGConfig"):
        build_baseline("fg", HintConfig(), 8, 16)


@pytest.fixture(scope="module")
def pillar_pair():
    dataset = SyntheticDataset("train", 1, seed=5)
    torch.manual_seed(0)
    return build_detector("cp-pillar"), build_detector("cp-pillar-v0.64"), collate_frames([dataset[0]])


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_trains_a_coarser_student_in_the_distiller(name, pillar_pair):
    teacher, student, batch = pillar_pair
    assert teacher.feature_stride * teacher.voxel_size[0] != student.feature_stride * student.voxel_size[0]
    loss = build_baseline(name, None, student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    student.zero_grad()
    terms = Distiller(teacher, student, [loss]).train()(batch)
    assert set(terms) == {"det/heatmap", "det/location"} | TERMS[name]
    assert all(math.isfinite(value.item()) for value in terms.values())
    sum(terms.values()).backward()
    assert all(parameter.grad is None for parameter in teacher.parameters())
    assert all(parameter.grad is not None for parameter in loss.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone_2d.parameters())
