"""A tiny trainee and data set for exercising the training engine without a detector."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud

CLASSES = ClassTable(("car", "pedestrian"))


def toy_frames(count: int = 24, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        points = rng.normal(size=(64, 4)).astype(np.float32)
        boxes = np.array([[rng.uniform(-5, 5), rng.uniform(-5, 5), 0.0, 4.0, 2.0, 1.5, 0.0]], dtype=np.float32)
        frames.append(Frame(f"{index:04d}", PointCloud(points), Boxes3D(boxes), np.array([index % 2]), CLASSES))
    return frames


class ToyTrainee(nn.Module):
    """Regress each frame's box centre from its points, with BatchNorm to make state non-trivial."""

    def __init__(self, nan_at_call: int | None = None, interrupt_at_call: int | None = None,
                 batchnorm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm1d(16) if batchnorm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(4, 16), norm, nn.ReLU(), nn.Linear(16, 2))
        self.calls = 0
        self.nan_at_call = nan_at_call
        self.interrupt_at_call = interrupt_at_call

    def forward(self, batch) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt
        features = torch.stack([points.mean(0) for points in batch.points])
        target = torch.stack([boxes[0, :2] for boxes in batch.gt_boxes])
        error = self.net(features) - target
        regression = error.pow(2).mean()
        if self.calls == self.nan_at_call:
            regression = regression * math.nan
        return {"toy/regression": regression, "toy/l1": 0.1 * error.abs().mean()}


def toy_evaluator(model, context) -> dict[str, float]:
    # Deterministic score that depends on the weights, so "best" tracking has something to track.
    return {"mAP": float(torch.sigmoid(model.net[0].weight.detach().sum())), "NDS": 0.0}
