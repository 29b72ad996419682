"""Plain training throughput of every synthetic preset (CPU), optionally of another checkout beside this one.

Each preset trains 2 epochs of 40 frames at batch 4 (frames cached, no loader workers) in a fresh process;
the figure is the ``frames_per_s`` the trainer logs at the end of the second epoch, the median of
``--repeats`` runs. ``--source DIR`` runs
the ``src/`` of another checkout of rdd3d (e.g. ``git worktree add /tmp/before <commit>``) with this
environment, so that two versions are timed side by side on the same machine.

    .venv/bin/python benchmarks/plain_throughput.py --threads 2 --label after --json after.json
    .venv/bin/python benchmarks/plain_throughput.py --threads 2 --label before --source /tmp/before --json before.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rdd3d.core.fileio import write_json

PRESETS = ("cp-voxel", "cp-voxel-s", "cp-voxel-xxs", "cp-pillar", "cp-pillar-v0.64", "second", "second-xs")


def frames_per_second(preset: str, threads: int, source: Path | None, out: Path) -> float:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if source is not None:
        environment["PYTHONPATH"] = str(source / "src")
    subprocess.run([sys.executable, "-m", "rdd3d", "train", "--set", f"output_dir={out}", "--set",
                    f"model.preset={preset}", "--set", "data.train_size=40", "--set", "data.val_size=1", "--set",
                    "trainer.epochs=2", "--set", "trainer.batch_size=4", "--set", "trainer.num_workers=0", "--set",
                    "trainer.eval_interval=0"], check=True, env=environment,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"][-1]["frames_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--source", type=Path, help="another checkout of rdd3d to time instead of this one")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--repeats", type=int, default=2, help="runs per preset; the median is reported")
    parser.add_argument("--json", default="outputs/benchmarks/plain_throughput.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            runs = [frames_per_second(preset, args.threads, args.source, Path(tmp) / f"{preset}-{repeat}")
                    for repeat in range(args.repeats)]
            rows.append({"preset": preset, "frames_per_s": statistics.median(runs), "runs": runs})
            print(f"{args.label:12} {preset:16} {statistics.median(runs):6.2f} frames/s (median of {runs})", flush=True)
    write_json(args.json, {"label": args.label, "threads": args.threads, "batch": 4, "rows": rows})


if __name__ == "__main__":
    main()
