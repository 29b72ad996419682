"""Training throughput on an idle and on a busy machine, under three thread settings.

Each case trains the demo's teacher (CP-Voxel on the demo's world, batch 2) for one short epoch in a fresh
process at torch's default thread count, once alone and once beside one single-threaded busy process
(``python -c "while True: pass"``), under three thread settings: ``fixed`` (``trainer.adaptive_threads``
off, the old behaviour), ``passive`` (the same with ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep
instead of spinning) and ``adaptive`` (the trainer's default). The figure is the epoch's frames/s from
the run's log; each case runs ``--repeats`` times, interleaved, and the medians are compared.

    .venv/bin/python benchmarks/busy_machine.py --frames 60 --json benchmarks/results/busy_machine.json
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

from rdd3d.demo import TEACHER, DemoBudget, demo_config
from rdd3d.engine.runs import train_detector
from rdd3d.core.fileio import write_json

BUSY_LOOP = "while True: pass"


SETTINGS = ("fixed", "passive", "adaptive")


def train_once(out: Path, frames: int, setting: str) -> float:
    """Frames/s of one epoch of the demo's teacher, trained by this script's ``--child`` in a new process."""
    environment = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if setting == "passive":
        environment["OMP_WAIT_POLICY"] = "PASSIVE"
    subprocess.run([sys.executable, __file__, "--child", str(out), "--frames", str(frames),
                    f"--adaptive={setting == 'adaptive'}"], check=True, env=environment,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"][-1]["frames_per_s"]


def child(out: Path, frames: int, adaptive: bool) -> None:
    budget = DemoBudget(train_frames=frames, val_frames=1, teacher_epochs=1, student_epochs=1, batch_size=2)
    train_detector(demo_config(out, TEACHER, "none", budget, 1, 0, [
        f"trainer.adaptive_threads={str(adaptive).lower()}", "trainer.eval_interval=0", "trainer.log_interval=1000"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="training frames (one epoch, batch 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case; the medians are reported")
    parser.add_argument("--json", default="outputs/benchmarks/busy_machine.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adaptive", choices=("True", "False"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.frames, args.adaptive == "True")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # settings interleaved, so that a slower spell hits each alike
            for setting in SETTINGS:
                for busy in (False, True):
                    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
                    try:
                        fps = train_once(Path(tmp) / f"{setting}-{busy}-{repeat}", args.frames, setting)
                    finally:
                        if competitor is not None:
                            competitor.kill()
                            competitor.wait()
                    rows.append({"threads": setting, "busy_process": busy, "repeat": repeat, "frames_per_s": fps})
                    print(f"{setting:8} busy={busy!s:5} {fps:6.2f} frames/s", flush=True)
    medians = {(setting, busy): statistics.median(r["frames_per_s"] for r in rows
                                                  if r["threads"] == setting and r["busy_process"] == busy)
               for setting in SETTINGS for busy in (False, True)}
    fixed_idle = medians[("fixed", False)]
    summary = []
    for setting in SETTINGS:
        idle, busy = medians[(setting, False)], medians[(setting, True)]
        summary.append({"threads": setting, "idle_frames_per_s": idle, "busy_frames_per_s": busy,
                        "busy_over_fixed_idle": busy / fixed_idle})
        print(f"{setting:8} median idle {idle:.2f}, busy {busy:.2f} frames/s: busy / fixed idle = "
              f"{busy / fixed_idle:.2f}")
    write_json(args.json, {"case": "demo teacher (cp-voxel), batch 2, one epoch", "frames": args.frames,
                           "median": summary, "rows": rows})


if __name__ == "__main__":
    main()
