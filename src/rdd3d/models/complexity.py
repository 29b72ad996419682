"""Parameters and multiply-accumulates (MACs) of a model, measured on a real input.

Counting rules (SparseKD's, so our numbers sit beside the paper's "FLOPs", which are MACs):

* ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d``: output elements x kernel volume x C_in / groups.
  For a transposed convolution this charges every kernel tap at every *output* cell (the thop/SparseKD
  convention), stride^2 times the multiplications it actually does; the paper's CP-Pillar 333.9 G
  is only reproduced this way.
* ``Linear``: output elements x in_features (per point for the pillar encoder).
* Sparse convolutions: active input-output pairs x C_in x C_out, from the pair count each sparse
  convolution records in its forward (the centre tap of a submanifold convolution included).
* Not counted: BatchNorm, activations, biases, pooling, scatter, voxelisation, target assignment,
  decoding and NMS.

The forward runs in eval mode without gradients (``max_voxels_test`` applies to detectors).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rdd3d.models.sparse import SparseConvolution

#: The paper's (SparseKD's) GFLOPs, which are MACs counted as above: CenterPoint on Waymo (RDD's Table 1
#: repeats them), SECOND and PointPillars on KITTI (Table 4). SECOND-XS has no published figure.
PAPER_GFLOPS: dict[str, float] = {
    "cp-voxel": 114.8, "cp-voxel-s": 47.8, "cp-voxel-xs": 36.0, "cp-voxel-xxs": 12.0,
    "cp-pillar": 333.9, "cp-pillar-v0.4": 212.9, "cp-pillar-v0.48": 149.4, "cp-pillar-v0.64": 85.1,
    "second": 80.5, "second-s": 23.0, "pointpillars": 34.3, "pointpillars-s": 9.8, "pointpillars-xs": 8.7,
}
#: Parameter ratios student / teacher that the paper states (Table 4: SECOND 5.3 M, SECOND-S 1.6 M;
#: PointPillars 4.8 M, -S 1.5 M, -XS 1.3 M).
PAPER_PARAMS_RATIO: dict[str, float] = {
    "cp-voxel": 1.0, "cp-voxel-s": 0.513, "cp-pillar": 1.0,
    "second": 1.0, "second-s": 1.6 / 5.3, "pointpillars": 1.0, "pointpillars-s": 1.5 / 4.8, "pointpillars-xs": 1.3 / 4.8,
}


class ComplexityReport(NamedTuple):
    params: int
    macs: int
    params_by_part: dict[str, int]  # top-level submodule -> parameters
    macs_by_part: dict[str, int]  # top-level submodule -> MACs (every part of the model listed)
    macs_by_layer: dict[str, int]  # qualified name of each counted layer -> MACs


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_macs(module: nn.Module, output: Any) -> int | None:
    """MACs of one call of ``module`` that produced ``output``; ``None`` for layers that are not counted."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return output.numel() * math.prod(module.kernel_size) * module.in_channels // module.groups
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, SparseConvolution):
        return module.last_active_pairs * module.in_channels * module.out_channels
    return None


def _part(name: str) -> str:
    return name.split(".", 1)[0]


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: Any) -> ComplexityReport:
    """Run ``model(*inputs)`` once (eval mode, no gradients) and count its MACs and parameters."""
    by_layer: dict[str, int] = defaultdict(int)

    def record(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            macs = layer_macs(module, output)
            if macs is not None:
                by_layer[name] += macs
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        model(*inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    parts = [name for name, _ in model.named_children()]
    macs_by_part = {part: 0 for part in parts}
    for name, macs in by_layer.items():
        macs_by_part[_part(name)] += macs
    params_by_part = {part: 0 for part in parts}
    for name, parameter in model.named_parameters():
        params_by_part[_part(name)] += parameter.numel()
    return ComplexityReport(
        count_parameters(model), sum(by_layer.values()), params_by_part, macs_by_part, dict(by_layer)
    )


def format_report(report: ComplexityReport, title: str = "") -> str:
    """A per-part table of one model."""
    lines = [title] if title else []
    lines.append(f"{'part':<14}{'params':>12}{'GMACs':>10}")
    for part in report.params_by_part:
        lines.append(f"{part:<14}{report.params_by_part[part]:>12,}{report.macs_by_part[part] / 1e9:>10.3f}")
    lines.append(f"{'total':<14}{report.params:>12,}{report.macs / 1e9:>10.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- teacher vs students


@dataclass(frozen=True)
class FlopsRow:
    preset: str
    teacher: str
    params: int
    macs: int
    params_ratio: float  # of the teacher's
    macs_ratio: float
    paper_gflops: float | None  # None: the paper gives no figure
    paper_macs_ratio: float | None  # the paper's GFLOPs over its teacher's
    paper_params_ratio: float | None  # where the paper states it
    macs_by_part: dict[str, int]


@dataclass(frozen=True)
class FlopsReport:
    dataset: str
    num_points: int  # points of the input frame the MACs were measured on
    rows: tuple[FlopsRow, ...]

    def table(self) -> str:
        """Markdown table: ours beside the paper's, ratios to each row's teacher."""
        header = (
            "| preset | params | GMACs | params / teacher | MACs / teacher | paper GFLOPs | paper FLOPs / teacher "
            "| paper params / teacher |"
        )
        lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            paper_params = "" if row.paper_params_ratio is None else f"{row.paper_params_ratio:.1%}"
            paper_gflops = "" if row.paper_gflops is None else f"{row.paper_gflops:.1f}"
            paper_ratio = "" if row.paper_macs_ratio is None else f"{row.paper_macs_ratio:.1%}"
            lines.append(
                f"| {row.preset} | {row.params / 1e6:.2f} M | {row.macs / 1e9:.2f} | {row.params_ratio:.1%} "
                f"| {row.macs_ratio:.1%} | {paper_gflops} | {paper_ratio} | {paper_params} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"{self.dataset}, one frame of {self.num_points:,} points\n{self.table()}"


def flops_report(preset_names: Sequence[str], dataset: str, points: Tensor) -> FlopsReport:
    """Parameters and MACs of each preset on ``dataset``, measured on ``points`` (N, C), with ratios
    to its family's teacher (measured too, on the same points, even when not listed)."""
    from rdd3d.models.presets import build_detector, teacher_of

    reports: dict[str, ComplexityReport] = {}

    def measure(name: str) -> ComplexityReport:
        if name not in reports:
            torch.manual_seed(0)
            reports[name] = count_macs(build_detector(name, dataset), [points])
        return reports[name]

    rows = []
    for name in preset_names:
        teacher = teacher_of(name)
        report, teacher_report = measure(name), measure(teacher)
        rows.append(FlopsRow(
            preset=name, teacher=teacher, params=report.params, macs=report.macs,
            params_ratio=report.params / teacher_report.params, macs_ratio=report.macs / teacher_report.macs,
            paper_gflops=PAPER_GFLOPS.get(name),
            paper_macs_ratio=PAPER_GFLOPS[name] / PAPER_GFLOPS[teacher] if name in PAPER_GFLOPS else None,
            paper_params_ratio=PAPER_PARAMS_RATIO.get(name), macs_by_part=report.macs_by_part,
        ))
    return FlopsReport(dataset, int(points.shape[0]), tuple(rows))


# ----------------------------------------------------------------------------- reference frames


def real_data_root() -> Path:
    """``$RDD3D_REAL_DATA``, by default ``shared/data/real`` beside the repository."""
    default = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "real"
    return Path(os.environ.get("RDD3D_REAL_DATA", default))


def reference_points(dataset: str) -> Tensor:
    """The frame complexity is measured on, with the columns the dataset's presets read.

    ``nuscenes``: the real LIDAR_TOP keyframe (one sweep, so time_lag is 0 everywhere; the paper's
    models read 10 accumulated sweeps). ``kitti``: real scan 000008. ``synthetic``: validation frame 0.
    """
    if dataset == "synthetic":
        from rdd3d.data.synthetic import SyntheticDataset

        return torch.from_numpy(SyntheticDataset("val", size=1)[0].points.points)
    from rdd3d.data.io import read_point_array

    root = real_data_root()
    if dataset == "nuscenes":
        files = sorted((root / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
        if not files:
            raise FileNotFoundError(f"no nuScenes sweep under {root}/nuscenes/samples/LIDAR_TOP (set RDD3D_REAL_DATA)")
        sweep = read_point_array(files[0], 5)  # x y z intensity ring
        points = np.concatenate([sweep[:, :4], np.zeros_like(sweep[:, :1])], axis=1)  # ring -> time_lag 0
        return torch.from_numpy(points)
    if dataset == "kitti":
        return torch.from_numpy(read_point_array(root / "kitti" / "training" / "velodyne" / "000008.bin", 4))
    raise ValueError(f"no reference frame for dataset {dataset!r}; known: nuscenes, kitti, synthetic")
