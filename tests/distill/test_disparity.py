"""The disparity report: RDD's region-pair distances between a teacher and a student, as a tool."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from rdd3d.cli import main
from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset, WorldConfig
from rdd3d.distill.base import BEVGeometry, DistillStep, ModelView, adapter
from rdd3d.disparity_report import binned, histogram_edges, verdict
from rdd3d.distill.disparity import (
    ADAPTER_PREFIX, DisparityConfig, DisparityReport, _channel_means, fit_linear_map, measure_disparity,
    trained_adapter,
)
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.rdd import RDDConfig, RDDLoss
from rdd3d.core.checkpoint import CheckpointError, save_checkpoint
from rdd3d.engine.config import load_run_config
from rdd3d.core.config_loading import build_config
from rdd3d.engine.runs import build_model, plain_config
from rdd3d.models.presets import build_detector

#: A sparse world: a few thousand points a frame, so that every forward pass takes milliseconds.
SPARSE_WORLD = ["lidar.beams=8", "lidar.azimuth_resolution_deg=2.0", "lidar.num_sweeps=1",
                "objects_per_scene=[4,6]", "distractors_per_scene=[0,2]"]


@pytest.fixture(scope="module")
def frames():
    dataset = SyntheticDataset("val", 2, config=build_config(WorldConfig, overrides=SPARSE_WORLD))
    return [dataset[0], dataset[1]]


def _detector(preset: str, seed: int):
    torch.manual_seed(seed)
    return build_detector(preset).eval()


def test_identical_models_show_no_disparity(frames):
    teacher = _detector("cp-pillar-v0.64", 0)
    report = measure_disparity(teacher, copy.deepcopy(teacher), frames, DisparityConfig(batch_size=2))
    stats = report.summary()
    assert stats["pairs"] > 0 and stats["teacher_pairs"] == stats["student_pairs"]  # the same detections
    assert report.mapping == "identity" and stats["max"] == 0.0 and stats["share_above_lambda"] == 0.0
    assert verdict({"before": report})[0].startswith("before: no representation disparity")


@pytest.mark.parametrize("student, mapping", [("cp-pillar-v0.64", "identity"), ("cp-voxel-xxs", "channel-mean")])
def test_different_models_show_disparity(frames, student, mapping):
    teacher = _detector("cp-pillar-v0.64", 0)
    report = measure_disparity(teacher, _detector(student, 1), frames, DisparityConfig(batch_size=1))
    stats = report.summary()
    assert report.mapping == mapping and stats["mean"] > 0 and stats["frames"] == 2
    assert stats["pairs"] == stats["teacher_pairs"] + stats["student_pairs"] == report.normalised.size
    # d̃ is normalised per batch (here per frame): its largest value is 1 in each.
    assert report.normalised.max() == pytest.approx(1.0) and (report.normalised <= 1).all()
    assert stats["share_above_lambda"] == pytest.approx((report.normalised >= 0.1).mean())


def test_a_trained_adapter_measures_what_rdd_measures(frames):
    teacher, student = _detector("cp-voxel-xs", 0), _detector("cp-voxel-xxs", 1)
    psi = adapter(96, 192).eval()
    torch.nn.init.normal_(psi[0].weight)
    report = measure_disparity(teacher, student, frames, DisparityConfig(batch_size=2), psi)
    loss = RDDLoss(RDDConfig(), 96, 192)
    loss.adapter = psi
    step = Distiller(teacher, student, []).eval().step_views(collate_frames(frames))
    expected = loss.eval().pair_disparities(step)
    assert report.mapping == "adapter"
    torch.testing.assert_close(torch.from_numpy(report.distances), expected.disparity)


def test_the_callers_models_are_left_without_hooks(frames):
    teacher, student = _detector("cp-pillar-v0.64", 0), _detector("cp-pillar-v0.64", 1)
    measure_disparity(teacher, student, frames[:1])
    assert not any(module._forward_hooks for model in (teacher, student) for module in model.modules())


def test_channel_means_average_consecutive_channel_groups():
    geometry = BEVGeometry((0.0, 0.0, -1.0, 4.0, 4.0, 1.0), (1.0, 1.0, 2.0), 1.0)
    wide = torch.arange(6.0).reshape(1, 6, 1, 1).expand(1, 6, 2, 2)  # channel c holds c everywhere
    narrow = torch.zeros(1, 3, 2, 2)
    step = DistillStep(None, ModelView(None, None, {"bev": wide}, geometry), ModelView(None, None, {"bev": narrow},
                                                                                          geometry))
    matched = _channel_means(step, 3)
    assert matched.student.taps["bev"] is narrow
    torch.testing.assert_close(matched.teacher.taps["bev"][0, :, 0, 0], torch.tensor([0.5, 2.5, 4.5]))


def test_the_least_squares_fit_recovers_a_linear_map():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(7, 5, generator=generator), torch.randn(7, generator=generator)
    pairs = []
    for _ in range(3):  # the fit streams over batches
        student_map = torch.randn(2, 5, 6, 8, generator=generator)
        pairs.append((student_map, torch.einsum("ts,bshw->bthw", weight, student_map) + bias[:, None, None]))
    psi = fit_linear_map(pairs, ridge=0.0)
    assert psi.weight.shape == (7, 5, 1, 1) and not psi.training
    torch.testing.assert_close(psi.weight[:, :, 0, 0], weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(psi.bias, bias, atol=1e-4, rtol=0)
    # the default ridge shrinks W only slightly on well-conditioned maps
    torch.testing.assert_close(fit_linear_map(pairs).weight[:, :, 0, 0], weight, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="on one grid"):
        fit_linear_map([(torch.zeros(1, 5, 6, 8), torch.zeros(1, 7, 3, 4))])


class _LinearNeck(nn.Module):
    """A BEV neck whose map is ``weight @ map + bias`` (a fixed 1×1 conv) of the wrapped neck's map."""

    def __init__(self, neck: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.neck, self.mix = neck, nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=1)
        with torch.no_grad():
            self.mix.weight.copy_(weight[..., None, None])
            self.mix.bias.copy_(bias)

    def forward(self, bev):
        output = self.neck(bev)
        return output._replace(features=self.mix(output.features))


def test_a_fitted_psi_sees_no_disparity_in_a_linear_transform_of_the_teacher(frames):
    teacher = _detector("cp-pillar-v0.64", 0)
    channels = 288
    # An untrained neck's map varies by ~1e-4, where τ's softmax sees almost nothing: amplified.
    teacher.backbone_2d = _LinearNeck(teacher.backbone_2d, 1000 * torch.eye(channels), torch.zeros(channels))
    student = copy.deepcopy(teacher)  # the teacher's map through a well-conditioned invertible map
    generator = torch.Generator().manual_seed(2)
    mix = torch.eye(channels) + 0.3 * torch.randn(channels, channels, generator=generator) / channels ** 0.5
    student.backbone_2d = _LinearNeck(student.backbone_2d, mix, torch.randn(channels, generator=generator))
    as_they_are = measure_disparity(teacher, student, frames[:1])
    fitted = measure_disparity(teacher, student, frames[:1], fit_psi=True)
    assert as_they_are.mapping == "identity" and fitted.mapping == "fitted"
    assert fitted.summary()["pairs"] > 0 and as_they_are.summary()["mean"] > 1e-4
    assert fitted.summary()["mean"] < 1e-3 * as_they_are.summary()["mean"]
    with pytest.raises(ValueError, match="not both"):
        measure_disparity(teacher, student, frames, trained_psi=nn.Identity(), fit_psi=True)


# ----------------------------------------------------------------------------- the command
def _checkpoint(path, preset: str, seed: int, method: str = "none", psi_channels: tuple[int, int] | None = None):
    """A checkpoint as `rdd3d train` (method none) or `rdd3d distill` writes it, without training."""
    config = load_run_config((), [f"model.preset={preset}", f"distill.method={method}", "data.val_size=2",
                                  *(f"data.world.{override}" for override in SPARSE_WORLD)])
    torch.manual_seed(seed)
    prefix = "detector." if method == "none" else "student."
    model = {prefix + key: value for key, value in build_model(config).state_dict().items()}
    if psi_channels is not None:
        model.update({ADAPTER_PREFIX + key: value for key, value in adapter(*psi_channels).state_dict().items()})
    save_checkpoint(path, {"config": plain_config(config), "model": model})
    return path


def test_disparity_command_before_and_after(tmp_path, capsys):
    teacher = _checkpoint(tmp_path / "teacher.pt", "cp-pillar-v0.64", 0)
    after = _checkpoint(tmp_path / "after.pt", "cp-pillar-v0.64", 1, "rdd", (288, 288))
    out = tmp_path / "report"
    assert main(["disparity", "--teacher", str(teacher), "--student", str(teacher), "--student-after", str(after),
                 "--frames", "2", "--batch-size", "2", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "disparity.json").read_text())
    assert report["before"]["max"] == 0.0 and report["before"]["mapping"] == "identity"
    assert report["after"]["mean"] > 0 and report["after"]["mapping"] == "adapter"
    for field in ("pairs", "mean", "median", "p90", "share_above_lambda", "histogram_counts"):
        assert field in report["after"]
    assert sum(report["after"]["histogram_counts"]) == report["after"]["pairs"]
    assert len(report["histogram_edges"]) == len(report["before"]["histogram_counts"]) + 1
    assert (out / "disparity.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "before: no representation disparity" in printed and "warning: before was measured with" in printed
    assert report["verdict"] == printed.splitlines()[:len(report["verdict"])]


def test_disparity_command_fits_a_psi_for_every_student(tmp_path, capsys):
    # A finer teacher than its pillar students (0.48 vs 0.64 m cells): the fit reads the students on its grid.
    teacher = _checkpoint(tmp_path / "teacher.pt", "cp-pillar-v0.48", 0)
    before = _checkpoint(tmp_path / "before.pt", "cp-pillar-v0.64", 1)
    after = _checkpoint(tmp_path / "after.pt", "cp-pillar-v0.64", 2, "rdd", (288, 288))
    out = tmp_path / "report"
    assert main(["disparity", "--teacher", str(teacher), "--student", str(before), "--student-after", str(after),
                 "--fit-psi", "--frames", "1", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "disparity.json").read_text())
    assert report["before"]["mapping"] == report["after"]["mapping"] == "fitted"
    assert report["before"]["pairs"] > 0 and report["after"]["pairs"] > 0
    assert "warning" not in capsys.readouterr().out


def test_trained_adapter_reads_the_distillation_checkpoint(tmp_path):
    path = _checkpoint(tmp_path / "rdd.pt", "cp-pillar-v0.64", 0, "rdd", (288, 288))
    psi = trained_adapter(path)
    assert psi[0].weight.shape == (288, 288, 1, 1) and not psi.training
    with pytest.raises(CheckpointError, match="holds no RDD adapter"):
        trained_adapter(_checkpoint(tmp_path / "plain.pt", "cp-pillar-v0.64", 0))


def _report(distances: list[float]):
    values = np.asarray(distances)
    return DisparityReport(values, values / values.max(), np.ones(values.size, bool), 1, 0.1, "identity")


@pytest.mark.parametrize("after, reading", [
    ([0.5, 1.0, 2.0, 8.0, 8.0], "median) shrank, the high-disparity tail (p90) stayed — the paper's observation"),
    ([0.5, 1.0, 2.0, 7.0, 7.5], "median) shrank, the high-disparity tail (p90) shrank less — the paper's observation"),
    ([0.5, 1.0, 1.0, 2.0, 2.0], "median) shrank, the high-disparity tail (p90) shrank"),
    ([0.5, 1.0, 2.0, 7.99, 8.0], "median) shrank, the high-disparity tail (p90) stayed — the paper's observation"),
    ([2.0, 4.0, 8.0, 16.0, 16.0], "median) grew, the high-disparity tail (p90) grew"),
])
def test_verdict_says_which_way_bulk_and_tail_moved(after, reading):
    lines = verdict({"before": _report([1.0, 2.0, 4.0, 8.0, 8.0]), "after": _report(after)})
    assert lines[-1].startswith("after vs before:") and reading in lines[-1]
    assert ("paper's observation" in lines[-1]) == ("paper's observation" in reading)


def test_histogram_bins_are_log_spaced_and_count_every_pair():
    reports = {"before": _report([1e-9, 1e-6, 1e-3]), "after": _report([0.0, 2e-3, 1e-5])}
    edges = histogram_edges(reports, bins=12)
    assert edges[0] == pytest.approx(1e-9) and edges[-1] == pytest.approx(2e-3)
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))  # equal steps in log d
    for report in reports.values():  # a d of 0 is clipped into the first bin, not dropped
        assert np.histogram(binned(report.distances, edges), bins=edges)[0].sum() == report.distances.size
