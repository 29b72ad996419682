"""Time our vectorised voxeliser against spconv's ``PointToVoxel`` on the real nuScenes sweep.

Cases: CenterPoint-Voxel grids (0.1 m and 0.075 m), PointPillars-style pillars (0.2 m), and a
10-sweep accumulation (the sweep repeated 10 times with small jitter, ~350k points, as nuScenes
training inputs). Each time is the best of ``--repeats`` calls after one warm-up; spconv's
generator is built once per case (its CPU version allocates a dense int32 hash grid of the whole
voxel grid at construction, which is not timed). Both outputs are compared for equality.

    .venv/bin/python benchmarks/bench_voxelize.py
    .venv/bin/python benchmarks/bench_voxelize.py --threads 1 2 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rdd3d.data.voxelize import Voxelizer
from timing import best_time  # benchmarks/ is the script's directory
from rdd3d.core.fileio import write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
NUSCENES_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


class Case(NamedTuple):
    name: str
    voxel_size: tuple[float, float, float]
    point_cloud_range: tuple[float, ...]
    max_points: int
    max_voxels: int
    sweeps: int


CASES = (
    Case("voxel 0.1 m", (0.1, 0.1, 0.2), NUSCENES_RANGE, 10, 60_000, 1),
    Case("voxel 0.075 m", (0.075, 0.075, 0.2), (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 10, 120_000, 1),
    Case("pillar 0.2 m", (0.2, 0.2, 8.0), NUSCENES_RANGE, 20, 30_000, 1),
    Case("voxel 0.1 m, 10 sweeps", (0.1, 0.1, 0.2), NUSCENES_RANGE, 10, 60_000, 10),
)


def load_sweep() -> torch.Tensor:
    root = Path(os.environ.get("RDD3D_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))
    files = sorted((root / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    if not files:
        raise SystemExit(f"no nuScenes sweep under {root}/nuscenes/samples/LIDAR_TOP (set RDD3D_REAL_DATA)")
    points = np.fromfile(files[0], dtype=np.float32).reshape(-1, 5)
    return torch.from_numpy(points[:, :4].copy())


def accumulate(points: torch.Tensor, sweeps: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    copies = [points] + [points + 0.05 * torch.randn(points.shape, generator=generator) for _ in range(sweeps - 1)]
    return torch.cat(copies)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts for ours")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/voxelize.json"))
    args = parser.parse_args()
    from spconv.pytorch.utils import PointToVoxel

    sweep = load_sweep()
    rows = []
    for case in CASES:
        points = accumulate(sweep, case.sweeps)
        voxelizer = Voxelizer(case.voxel_size, case.point_cloud_range, case.max_points, case.max_voxels)
        generator = PointToVoxel(
            vsize_xyz=list(case.voxel_size), coors_range_xyz=list(case.point_cloud_range),
            num_point_features=points.shape[1], max_num_voxels=case.max_voxels,
            max_num_points_per_voxel=case.max_points,
        )
        ours, (features, coords, num_points) = voxelizer(points), generator(points)
        equal = all(torch.equal(a, b) for a, b in zip(ours[:3], (features, num_points, coords)))
        row = dict(case=case.name, points=len(points), voxels=len(ours.coords), grid=list(voxelizer.grid_size),
                   equal_to_spconv=equal, spconv_ms=1e3 * best_time(lambda: generator(points), args.repeats))
        for threads in args.threads:
            torch.set_num_threads(threads)
            row[f"ours_ms_{threads}t"] = 1e3 * best_time(lambda: voxelizer(points), args.repeats)
        rows.append(row)

    header = f"{'case':24s} {'points':>8s} {'voxels':>7s} {'PointToVoxel':>13s} " + " ".join(
        f"{f'ours {t} thr':>11s}" for t in args.threads) + "  equal"
    print(header)
    for row in rows:
        ours = " ".join(f"{row[f'ours_ms_{t}t']:8.1f} ms" for t in args.threads)
        print(f"{row['case']:24s} {row['points']:8d} {row['voxels']:7d} {row['spconv_ms']:10.1f} ms {ours}  "
              f"{row['equal_to_spconv']}")
    write_json(args.out, dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                              torch=torch.__version__, repeats=args.repeats, rows=rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
