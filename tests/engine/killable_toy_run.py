"""The toy trainee under the engine in a process of its own, for tests that kill it with SIGKILL.

``python killable_toy_run.py OUT [--pause-at evaluation:N | checkpoint-write:N]``: at the N-th evaluation
(or halfway through writing the N-th checkpoint) the run creates ``OUT/paused`` and sleeps, for the test to
kill it there. A run finds ``OUT/last.pt`` and resumes from it.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

import rdd3d.core.checkpoint as checkpoint_module
from rdd3d.data.collate import TrainingFrames
from rdd3d.engine.distributed import init_distributed
from rdd3d.engine.trainer import OptimConfig, Trainer, TrainerConfig

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import ToyTrainee, toy_evaluator, toy_frames  # noqa: E402


def pause_forever(out: Path) -> None:
    (out / "paused").touch()
    time.sleep(600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--pause-at", default="")
    args = parser.parse_args()
    where, _, count = args.pause_at.partition(":")
    calls = {"evaluation": 0, "checkpoint-write": 0}

    def evaluate(model, context):
        calls["evaluation"] += 1
        if where == "evaluation" and calls["evaluation"] == int(count):
            pause_forever(args.out)
        return toy_evaluator(model, context)

    real_atomic_open = checkpoint_module.atomic_open

    class HalfWritten:  # writes half the bytes, then pauses: a kill lands inside the write
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            data = bytes(data)
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            pause_forever(args.out)

    def atomic_open(path, mode="w", **kwargs):
        calls["checkpoint-write"] += 1
        opened = real_atomic_open(path, mode, **kwargs)
        if where != "checkpoint-write" or calls["checkpoint-write"] != int(count):
            return opened

        class Pausing:
            def __enter__(self):
                return HalfWritten(opened.__enter__())

            def __exit__(self, *exc):
                return opened.__exit__(*exc)

        return Pausing()

    checkpoint_module.atomic_open = atomic_open
    torch.manual_seed(0)
    trainee = ToyTrainee()
    dataset = TrainingFrames(toy_frames(), [-50, -50, -5, 50, 50, 5], augmentation=None)
    config = TrainerConfig(epochs=3, batch_size=4, num_workers=0, log_interval=1, checkpoint_interval=4, seed=3)
    trainer = Trainer(trainee, dataset, config, OptimConfig(lr=1e-2), args.out, init_distributed("cpu"),
                      evaluate=evaluate)
    if (args.out / "last.pt").is_file():
        trainer.resume(args.out / "last.pt")
    trainer.fit()


if __name__ == "__main__":
    main()
