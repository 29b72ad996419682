"""Time the plain-PyTorch sparse convolution backend against spconv on the real nuScenes sweep (CPU).

The sweep is voxelised at ``--voxel`` m (nuScenes range, 8 m of height at 0.2 m) and mean-encoded.
Timed, best of ``--repeats`` after one warm-up:

* single layers with 16 channels: a 3x3x3 submanifold conv and a stride-2 sparse conv;
* the whole ``VoxelResBackBone8x`` (BN in eval mode) at each ``--widths`` multiplier.

spconv runs forward only and with one thread (its CPU backward raises, and with more threads its
output is wrong: docs/sparse-convolution.md). The torch backend runs forward at every
``--threads`` count and forward + backward at the last one. Outputs of both backends are compared.

    .venv/bin/python benchmarks/bench_sparse_conv.py
    .venv/bin/python benchmarks/bench_sparse_conv.py --voxel 0.075 --widths 1 0.5 --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench_voxelize import load_sweep  # benchmarks/ is the script's directory
from timing import best_time
from rdd3d.data.voxelize import Voxelizer
from rdd3d.core.fileio import write_json
from rdd3d.models.backbones3d import VoxelResBackBone8x
from rdd3d.models.encoders import MeanVFE
from rdd3d.models.sparse import (
    SparseConv3d, SparseConvolution, SparseTensor, SubMConv3d, set_sparse_backend,
)


def best_time_with(function: Callable[[], object], repeats: int, threads: int) -> float:
    torch.set_num_threads(threads)
    return best_time(function, repeats)


def macs(network: nn.Module) -> int:
    """SparseKD's count for the sparse convolutions of the last forward: pairs x C_in x C_out."""
    return sum(
        m.last_active_pairs * m.in_channels * m.out_channels for m in network.modules()
        if isinstance(m, SparseConvolution)
    )


def features_of(output: SparseTensor | torch.Tensor) -> torch.Tensor:
    return output.features if isinstance(output, SparseTensor) else output


def comparable(output: SparseTensor | torch.Tensor) -> torch.Tensor:
    """Rows sorted by site: backends may order the sites of a strided output differently."""
    if not isinstance(output, SparseTensor):
        return output
    depth, height, width = output.spatial_shape
    b, z, y, x = output.indices.long().unbind(1)
    return output.features[(((b * depth + z) * height + y) * width + x).argsort()]


def time_network(name: str, network: nn.Module, run: Callable[[], SparseTensor | torch.Tensor], args) -> dict:
    """Forward times for both backends, forward + backward for torch, and their agreement."""
    network.eval()
    set_sparse_backend(network, "spconv")
    with torch.no_grad():
        spconv_output = comparable(run())
        spconv_ms = 1e3 * best_time_with(run, args.repeats, threads=1)
    set_sparse_backend(network, "torch")
    with torch.no_grad():
        torch_output = comparable(run())
        row = dict(name=name, gmacs=macs(network) / 1e9, spconv_fwd_1t_ms=spconv_ms)
        for threads in args.threads:
            row[f"torch_fwd_{threads}t_ms"] = 1e3 * best_time_with(run, args.repeats, threads)
    row[f"torch_fwd_bwd_{args.threads[-1]}t_ms"] = 1e3 * best_time_with(
        lambda: features_of(run()).sum().backward(), args.repeats, args.threads[-1]
    )
    row["max_abs_diff"] = float((spconv_output - torch_output).abs().max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel", type=float, default=0.1, help="voxel size in x and y (m)")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch backend thread counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/sparse_conv.json"))
    args = parser.parse_args()

    half = 51.2 if args.voxel != 0.075 else 54.0
    voxelizer = Voxelizer((args.voxel, args.voxel, 0.2), (-half, -half, -5.0, half, half, 3.0), 10, 120_000)
    batch = voxelizer.voxelize_batch([load_sweep()])
    features = MeanVFE(4)(batch.features, batch.num_points)
    print(f"sweep: {len(batch.coords)} voxels in a grid of {batch.grid_size} (x, y, z) at {args.voxel} m")

    torch.manual_seed(0)
    nx, ny, nz = batch.grid_size
    inputs = SparseTensor(torch.randn(len(batch.coords), 16), batch.coords, (nz, ny, nx), batch_size=1)
    rows = []
    for name, layer in [
        ("SubMConv3d 16->16 k3", SubMConv3d(16, 16, 3)),
        ("SparseConv3d 16->32 k3 s2", SparseConv3d(16, 32, 3, stride=2, padding=1)),
    ]:
        rows.append(time_network(name, layer, lambda layer=layer: layer(inputs), args))
    for width in args.widths:
        backbone = VoxelResBackBone8x(4, batch.grid_size, width=width)
        run = lambda backbone=backbone: backbone(features, batch.coords, 1).features  # noqa: E731
        rows.append(time_network(f"VoxelResBackBone8x width {width}", backbone, run, args))

    last = args.threads[-1]
    columns = ["spconv_fwd_1t_ms", *(f"torch_fwd_{t}t_ms" for t in args.threads), f"torch_fwd_bwd_{last}t_ms"]
    titles = ["spconv fwd 1t", *(f"torch fwd {t}t" for t in args.threads), f"torch f+b {last}t"]
    print(f"{'network':34s} {'GMACs':>7s} " + " ".join(f"{t:>14s}" for t in titles) + f" {'torch/spconv':>12s} max|diff|")
    for row in rows:
        ratio = row["torch_fwd_1t_ms"] / row["spconv_fwd_1t_ms"] if "torch_fwd_1t_ms" in row else float("nan")
        print(f"{row['name']:34s} {row['gmacs']:7.2f} " + " ".join(f"{row[c]:11.0f} ms" for c in columns)
              + f" {ratio:12.2f} {row['max_abs_diff']:.1e}")
    write_json(args.out, dict(
        machine=platform.processor() or platform.machine(), cpus=os.cpu_count(), torch=torch.__version__,
        voxel=args.voxel, voxels=len(batch.coords), grid=list(batch.grid_size), repeats=args.repeats, rows=rows,
    ))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
