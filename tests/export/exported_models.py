"""Exports shared by the export and runtime tests: the two smallest presets of the two families, with
heads that give a sensible number of boxes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch

from rdd3d.export import export_detector
from rdd3d.export.exporter import verification_points
from rdd3d.models.detector import Detector
from rdd3d.models.presets import build_detector

PILLAR_PRESET = "cp-pillar-v0.64"
VOXEL_PRESET = "cp-voxel-xxs"
#: Candidates above the score threshold the tests aim at (before NMS).
CANDIDATES = 150


class Exported(NamedTuple):
    detector: Detector
    folder: Path
    points: torch.Tensor  # a frame other than the export's own check frame


def peaked_detector(preset: str, points: torch.Tensor, seed: int = 0, **overrides) -> Detector:
    """An untrained detector whose heatmaps vary from cell to cell (an untrained head scores every cell about
    0.1), with a score threshold that leaves fewer than CANDIDATES cells of ``points``: fewer than top-K
    keeps, so that which of equal scores top-K keeps never matters."""
    torch.manual_seed(seed)
    detector = build_detector(preset, "synthetic", **overrides).eval()
    with torch.no_grad():
        for task in detector.head.tasks:
            torch.nn.init.normal_(task.heatmap[-1].weight, std=1.0)
        scores = torch.cat([task.heatmap.sigmoid().flatten() for task in detector([points]).predictions])
    values = scores.unique()  # ascending
    above = values[values >= float(scores.sort(descending=True).values[CANDIDATES])]
    # The middle of the first gap of at least 1e-5: onnxruntime's scores, 1e-7 away, fall on the same side.
    gap = int(torch.nonzero(above.diff() >= 1e-5)[0, 0])
    threshold = float(above[gap] + above[gap + 1]) / 2
    head = detector.head
    head.config = dataclasses.replace(head.config, decode=dataclasses.replace(head.config.decode,
                                                                              score_threshold=threshold))
    return detector


def export_peaked(preset: str, folder: Path, **overrides) -> Exported:
    probe = build_detector(preset, "synthetic")
    points = verification_points(probe, seed=3)
    detector = peaked_detector(preset, points, **overrides)
    export_detector(detector, folder, preset=preset, dataset="synthetic")
    return Exported(detector, folder, points)
