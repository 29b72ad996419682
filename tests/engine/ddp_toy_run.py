"""Run the toy trainee under the engine; launched by torchrun (or plainly) from test_distributed.py."""

import sys
from pathlib import Path

import torch

from rdd3d.data.collate import TrainingFrames
from rdd3d.engine.distributed import init_distributed, shutdown_distributed
from rdd3d.engine.trainer import OptimConfig, Trainer, TrainerConfig

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import ToyTrainee, toy_frames  # noqa: E402


def main(output_dir: str, batch_size: int) -> None:
    context = init_distributed("cpu")
    torch.manual_seed(0)
    trainee = ToyTrainee(batchnorm=False)  # BatchNorm statistics differ per rank by design; leave them out
    dataset = TrainingFrames(toy_frames(), [-50, -50, -5, 50, 50, 5], augmentation=None)
    config = TrainerConfig(epochs=2, batch_size=batch_size, num_workers=0, log_interval=1, seed=3)
    Trainer(trainee, dataset, config, OptimConfig(lr=1e-2), output_dir, context).fit()
    torch.save(trainee.state_dict(), Path(output_dir) / f"rank{context.rank}.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
