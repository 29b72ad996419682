"""Hand-made anchor-head views for the anchor distillation tests: a real AnchorHead on an 8 x 8 map of
1 m cells over x, y in [0, 8), anchors at the cell centres (location (row i, column j) at x = j + 0.5,
y = i + 0.5), two classes with one size each and two rotations: A = 4 anchor types."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rdd3d.core.types import ClassTable
from rdd3d.distill.base import BEVGeometry, ModelView
from rdd3d.models.heads import AnchorClassConfig, AnchorHead, AnchorHeadConfig, AnchorPrediction, Detections

RANGE = (0.0, 0.0, -2.0, 8.0, 8.0, 2.0)
GEOMETRY = BEVGeometry(RANGE, (0.25, 0.25, 4.0), 4.0)
SIZE = (8, 8)
CAR_SIZE = (2.0, 1.0, 1.5)
HEAD_CONFIG = AnchorHeadConfig(
    anchors=(AnchorClassConfig("car", (CAR_SIZE,), -1.0, 0.6, 0.45),
             AnchorClassConfig("pedestrian", ((0.6, 0.6, 1.7),), -1.0, 0.5, 0.35)),
    align_center=True)
TYPES, CLASSES, CODES = 4, 2, 7


class AnchorModel(nn.Module):
    """Stands in for an anchor detector whose output is already its decoded detections."""

    def __init__(self) -> None:
        super().__init__()
        self.head = AnchorHead(4, ClassTable(("car", "pedestrian")), RANGE, HEAD_CONFIG)

    def decode(self, output):
        return output


def box(x: float, y: float, length: float, width: float, yaw: float = 0.0) -> list[float]:
    return [x, y, 0.0, length, width, 1.5, yaw]


def detections(*boxes: Sequence[float]) -> list[Detections]:
    """One sample's detections (label car, score 0.9) of ``box(*b)`` for each ``b``."""
    tensor = torch.tensor([box(*b) for b in boxes]).reshape(-1, 7)
    return [Detections(tensor, torch.full((len(boxes),), 0.9), torch.zeros(len(boxes), dtype=torch.long))]


def random_prediction(seed: int = 0, size: tuple[int, int] = SIZE) -> AnchorPrediction:
    generator = torch.Generator().manual_seed(seed)
    return AnchorPrediction(torch.randn(1, TYPES * CLASSES, *size, generator=generator),
                            torch.randn(1, TYPES * CODES, *size, generator=generator), None)


def copy_prediction(prediction: AnchorPrediction) -> AnchorPrediction:
    return AnchorPrediction(prediction.cls_logits.clone(), prediction.box_deltas.clone(), None)


def anchor_view(prediction, found: Sequence[Detections] = (), bev: Tensor | None = None) -> ModelView:
    """A view of hand-made anchor maps (``prediction`` may also be a centre head's heatmaps); ``found``
    stands for the model's decoded detections."""
    bev = torch.ones(1, 4, *SIZE) if bev is None else bev
    return ModelView(AnchorModel(), list(found), {"bev": bev, "head": prediction}, GEOMETRY)
