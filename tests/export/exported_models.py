"""Exports shared by the export and runtime tests: the two smallest presets of the two families, with
heads that give a sensible number of boxes; the same for the anchor-head presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch

from rdd3d.core.checkpoint import save_checkpoint
from rdd3d.engine.config import RunConfig
from rdd3d.engine.runs import build_model, plain_config
from rdd3d.export import export_detector
from rdd3d.export.exporter import verification_points
from rdd3d.models.detector import Detector
from rdd3d.models.heads import AnchorHead, per_anchor
from rdd3d.models.presets import build_detector

PILLAR_PRESET = "cp-pillar-v0.64"
VOXEL_PRESET = "cp-voxel-xxs"
ANCHOR_PILLAR_PRESET = "pointpillars-xs"
ANCHOR_VOXEL_PRESET = "second-xs"
#: Candidates above the score threshold the tests aim at (before NMS).
CANDIDATES = 150


class Exported(NamedTuple):
    detector: Detector
    folder: Path
    points: torch.Tensor  # a frame other than the export's own check frame


def _candidate_scores(detector: Detector, points: torch.Tensor) -> torch.Tensor:
    """The scores the head's decoding compares with its threshold: every cell and class (CenterPoint), every
    anchor's best class (class-agnostic anchor NMS) or every anchor and class."""
    predictions = detector([points]).predictions
    head = detector.head
    if not isinstance(head, AnchorHead):
        return torch.cat([task.heatmap.sigmoid().flatten() for task in predictions])
    scores = per_anchor(predictions.cls_logits, head.num_anchor_types).sigmoid()
    return scores.amax(dim=-1).flatten() if head.config.decode.class_agnostic_nms else scores.flatten()


def peaked_detector(preset: str, points: torch.Tensor, seed: int = 0, **overrides) -> Detector:
    """An untrained detector whose scores vary from cell to cell (an untrained head scores every cell about
    0.1, every anchor 0.01) and whose boxes vary from anchor to anchor, with a score threshold that leaves
    fewer than CANDIDATES candidates of ``points``: fewer than top-K keeps, so that which of equal scores
    top-K keeps never matters."""
    torch.manual_seed(seed)
    detector = build_detector(preset, "synthetic", **overrides).eval()
    head = detector.head
    with torch.no_grad():
        if isinstance(head, AnchorHead):
            # logits of spread up to 2 and box deltas up to 0.3, whatever the (tiny) scale of untrained features
            unit = 1 / float(detector([points]).bev_features.norm(dim=1).amax())
            torch.nn.init.normal_(head.conv_cls.weight, std=2 * unit)
            torch.nn.init.normal_(head.conv_box.weight, std=0.3 * unit)
        else:
            for task in head.tasks:
                torch.nn.init.normal_(task.heatmap[-1].weight, std=1.0)
        scores = _candidate_scores(detector, points)
    values = scores.unique()  # ascending
    above = values[values >= float(scores.sort(descending=True).values[CANDIDATES])]
    # The middle of the first gap of at least 1e-5: onnxruntime's scores, 1e-7 away, fall on the same side.
    gap = int(torch.nonzero(above.diff() >= 1e-5)[0, 0])
    threshold = float(above[gap] + above[gap + 1]) / 2
    head.config = dataclasses.replace(head.config, decode=dataclasses.replace(head.config.decode,
                                                                              score_threshold=threshold))
    return detector


def export_peaked(preset: str, folder: Path, **overrides) -> Exported:
    probe = build_detector(preset, "synthetic")
    points = verification_points(probe, seed=3)
    detector = peaked_detector(preset, points, **overrides)
    export_detector(detector, folder, preset=preset, dataset="synthetic")
    return Exported(detector, folder, points)


def write_checkpoint(path: Path, preset: str = PILLAR_PRESET) -> None:
    """A training checkpoint of an untrained ``preset``, as ``rdd3d train`` writes one."""
    config = RunConfig()
    config.model.preset = preset
    weights = {f"detector.{name}": value for name, value in build_model(config).state_dict().items()}
    save_checkpoint(path, {"config": plain_config(config), "model": weights})
