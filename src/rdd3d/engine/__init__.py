"""Training loop, configuration, checkpoints, distributed plumbing and logging.

What a user trains with: :class:`Trainer` (any trainee whose ``forward(batch)`` returns loss terms, e.g. a
:class:`~rdd3d.distill.Distiller`), the run schema :class:`RunConfig` with :func:`load_run_config`, and
the runs the command line makes (:func:`train_detector`, :func:`distill_student`,
:func:`detector_from_checkpoint`).
"""

from rdd3d.engine.config import RunConfig, load_run_config
from rdd3d.engine.distributed import DistributedContext, init_distributed
from rdd3d.engine.runs import detector_from_checkpoint, distill_student, train_detector
from rdd3d.engine.trainer import OptimConfig, Preempted, Trainer, TrainerConfig, TrainingDivergedError, TrainingResult

__all__ = [
    "DistributedContext", "OptimConfig", "Preempted", "RunConfig", "Trainer", "TrainerConfig",
    "TrainingDivergedError", "TrainingResult", "detector_from_checkpoint", "distill_student", "init_distributed",
    "load_run_config", "train_detector",
]
