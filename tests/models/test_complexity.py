import pytest
import torch
from torch import nn

from rdd3d.models.complexity import (
    PAPER_GFLOPS, count_macs, count_parameters, flops_report, format_report, reference_points,
)
from rdd3d.models.detector import Detector
from rdd3d.models.presets import build_detector, list_presets, preset_config
from rdd3d.models.sparse import SparseTensor, SubMConv3d, spconv_available


class TinyNet(nn.Module):
    """One submanifold conv on a (1, 4, 4) grid, two dense convs, a BatchNorm and a linear layer."""

    def __init__(self, backend: str = "torch") -> None:
        super().__init__()
        self.sparse = SubMConv3d(2, 3, 3, backend=backend)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.up = nn.ConvTranspose2d(5, 2, 2, stride=2)
        self.norm = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 7)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        bev = self.sparse(x).dense().flatten(1, 2)  # (1, 3, 4, 4)
        y = self.norm(self.up(self.conv(bev)))  # (1, 2, 8, 8)
        return self.fc(y.permute(0, 2, 3, 1))  # (1, 8, 8, 7)


def _tiny_input() -> SparseTensor:
    # Sites (y, x): (0,0), (0,1), (1,1) touch one another; (3,3) is alone.
    indices = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 3, 3]], dtype=torch.int32)
    return SparseTensor(torch.randn(4, 2), indices, (1, 4, 4), batch_size=1)


HAND_COUNT = {
    "sparse": 10 * 2 * 3,  # 4 sites with themselves + 3 touching pairs both ways = 10 pairs, x C_in x C_out
    "conv": 4 * 4 * 5 * 9 * 3,  # output cells x C_out x kernel x C_in
    "up": 8 * 8 * 2 * 4 * 5,  # transposed: every output cell x C_out x kernel x C_in
    "norm": 0,
    "fc": 8 * 8 * 7 * 2,  # output rows x out x in
}


def test_macs_match_a_hand_count():
    model = TinyNet().train()
    report = count_macs(model, _tiny_input())
    assert report.macs_by_part == HAND_COUNT
    assert report.macs == sum(HAND_COUNT.values())
    assert report.params == count_parameters(model) == 3 * 27 * 2 + (5 * 3 * 9 + 5) + (5 * 2 * 4 + 2) + 4 + 21
    assert report.params_by_part["sparse"] == 162
    assert model.training  # mode restored


@pytest.mark.skipif(not spconv_available(), reason="spconv not installed")
def test_spconv_backend_reports_the_same_pairs():
    report = count_macs(TinyNet(backend="spconv"), _tiny_input())
    assert report.macs_by_part["sparse"] == HAND_COUNT["sparse"]


@pytest.fixture(scope="module")
def synthetic_points():
    return reference_points("synthetic")


def test_detector_parts_add_up_and_the_pillar_encoder_is_counted_per_point(synthetic_points):
    detector = build_detector("cp-pillar-v0.64", "synthetic")
    report = count_macs(detector, [synthetic_points])
    assert set(report.macs_by_part) == {"voxelizer", "encoder", "scatter", "backbone_2d", "head"}
    assert sum(report.macs_by_part.values()) == report.macs
    assert sum(report.params_by_part.values()) == report.params
    assert report.macs_by_part["voxelizer"] == report.macs_by_part["scatter"] == 0
    detector.eval()
    kept_points = int(detector.voxelizer([synthetic_points]).num_points.sum())
    first, last = (layer.linear for layer in detector.encoder.layers)
    per_point = first.in_features * first.out_features + last.in_features * last.out_features
    assert report.macs_by_part["encoder"] == kept_points * per_point
    assert "backbone_2d" in format_report(report, "cp-pillar-v0.64")


def test_flops_report_measures_the_teacher_for_the_ratio(synthetic_points):
    report = flops_report(["cp-voxel-xxs"], "synthetic", synthetic_points)
    (row,) = report.rows
    teacher = count_macs(build_detector("cp-voxel", "synthetic"), [synthetic_points])
    assert row.teacher == "cp-voxel"
    assert row.macs_ratio == pytest.approx(row.macs / teacher.macs)
    assert row.params_ratio == pytest.approx(row.params / teacher.params)
    assert row.paper_macs_ratio == pytest.approx(12.0 / 114.8)
    assert "| cp-voxel-xxs |" in report.table() and "12.0" in report.table()


@pytest.mark.slow
def test_nuscenes_ratios_are_the_papers(real_data):
    """Student / teacher MACs on the real nuScenes sweep within 3 points of the paper's ratios."""
    papers = [name for name in list_presets("nuscenes") if name in PAPER_GFLOPS]  # not the model zoos' teachers
    report = flops_report(papers, "nuscenes", reference_points("nuscenes"))
    for row in report.rows:
        assert row.macs_ratio == pytest.approx(row.paper_macs_ratio, abs=0.03), row.preset
        assert PAPER_GFLOPS[row.preset] == row.paper_gflops


@pytest.mark.parametrize("name, pillar", [
    ("cp-pillar-v0.64", 0.64),
    pytest.param("cp-pillar", 0.32, marks=pytest.mark.slow),  # 4x the grid cells: ~4 s
])
def test_counter_reproduces_the_papers_cp_pillar_on_its_waymo_geometry(name, pillar):
    """SparseKD measured CP-Pillar (333.9 G) and CP-Pillar-v0.64 (85.1 G) on Waymo: +-74.24 m, z -2..4,
    one head for three classes. The dense part depends only on the grid, so any cloud will do."""
    waymo = {
        "classes": ("car", "pedestrian", "cyclist"), "point_cloud_range": (-74.24, -74.24, -2.0, 74.24, 74.24, 4.0),
        "voxel_size": (pillar, pillar, 6.0), "head.class_groups": (("car", "pedestrian", "cyclist"),),
        "head.with_velocity": False, "head.loss.code_weights": (1.0,) * 8, "head.decode.nms.kind": "none",
    }
    torch.manual_seed(0)
    points = torch.rand(2000, 5) * torch.tensor([100.0, 100.0, 4.0, 1.0, 0.0]) - torch.tensor([50.0, 50.0, 1.0, 0, 0])
    macs = count_macs(Detector(preset_config(name, "nuscenes", **waymo)), [points]).macs
    assert macs / 1e9 == pytest.approx(PAPER_GFLOPS[name], rel=0.02)


@pytest.mark.slow
def test_kitti_anchor_students_keep_the_papers_ratios(real_data):
    """SECOND-S and PointPillars-XS on the real KITTI scan: MACs and parameter ratios within 3 points of Table 4's."""
    report = flops_report(["second-s", "pointpillars-xs"], "kitti", reference_points("kitti"))
    for row in report.rows:
        assert row.macs_ratio == pytest.approx(row.paper_macs_ratio, abs=0.03), row.preset
    second_s = report.rows[0]
    assert second_s.params_ratio == pytest.approx(second_s.paper_params_ratio, abs=0.03)
    assert second_s.macs == pytest.approx(23.0e9, rel=0.05)  # the paper's 23.0 GFLOPs
