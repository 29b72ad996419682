"""Plain detector training and evaluation, as the engine sees them.

:class:`DetectorTraining` is the trainee for teacher (or no-KD student) training;
:func:`evaluate_detector` runs a detector over validation frames on every rank and scores the
gathered detections on rank 0 with the dataset's metric.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from rdd3d.core.types import Detections, Frame
from rdd3d.data.collate import DetectionBatch, collate_frames
from rdd3d.engine.datasets import evaluate, summary_metrics
from rdd3d.engine.distributed import DistributedContext, gather_objects
from rdd3d.models.detector import detection_loss_terms


class DetectorTraining(nn.Module):
    """Trainee: a detector and its own detection loss."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, batch: DetectionBatch) -> dict[str, Tensor]:
        return detection_loss_terms(self.detector, self.detector(batch.points), batch)


@torch.no_grad()
def predict(detector: nn.Module, frames: Sequence[Frame], device: torch.device, batch_size: int = 4,
            show_progress: bool = False) -> list:
    """Detections (on CPU) for each frame, in order."""
    was_training = detector.training
    detector.eval()
    detections = []
    starts = range(0, len(frames), batch_size)
    for start in tqdm(starts, desc="predict", disable=not show_progress, leave=False):
        batch = collate_frames(frames[start:start + batch_size]).to(device)
        for item in detector.decode(detector(batch.points)):
            detections.append(Detections(*(part.cpu() for part in Detections.of(item))))
    detector.train(was_training)
    return detections


def evaluate_detector(detector: nn.Module, frames: Sequence[Frame], dataset, context: DistributedContext,
                      batch_size: int = 4) -> dict[str, float] | None:
    """Score ``detector`` on ``frames`` of ``dataset`` with its metric: each rank predicts its share,
    rank 0 computes the metric's summary (``rdd3d.engine.datasets.summary_metrics``).

    Returns the summary on rank 0 and ``None`` on the other ranks.
    """
    share = list(range(context.rank, len(frames), context.world_size))
    local = predict(detector, [frames[i] for i in share], context.device, batch_size, context.is_main)
    gathered = gather_objects(list(zip(share, local)), context)
    if not context.is_main:
        return None
    by_index = dict(pair for rank_pairs in gathered for pair in rank_pairs)
    detections = [by_index[i] for i in range(len(frames))]
    return summary_metrics(dataset, evaluate(dataset, list(frames), detections))
