"""Region proposals for distillation: the boxes a model detects, per sample, best first, detached.

RDD pairs regions at the boxes each model detects (rdd-method §3). Two sources:

* ``nms`` (:func:`select_proposals`): the model's decoded detections; per sample, scores strictly above
  ``score_threshold``, then greedy rotated BEV NMS at ``nms_iou`` over all of them together
  (**class-agnostic**: a proposal names a region of the map, and two overlapping boxes of different
  classes are the same region; counting it twice would weigh it twice), then the ``max_per_sample`` best.
* ``peaks`` (:func:`peak_proposals`): the 3×3 local maxima of the model's class-agnostic score map above
  ``score_threshold``, the ``max_per_sample`` best, each decoded to its box (``decode_peaks`` of the
  detector). One top-K per sample and K boxes decoded instead of a full decode and an NMS.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from rdd3d.distill.base import ModelView
from rdd3d.core.types import Detections
from rdd3d.models.nms import rotated_nms

#: Where a method's proposals come from (see the module's docstring).
PROPOSAL_SOURCES = ("nms", "peaks")


class Proposals(NamedTuple):
    """Boxes of a whole batch, flat; ``batch_index`` says which sample each belongs to."""

    boxes: Tensor  # (K, 7+) metric x y z dx dy dz yaw [...]
    batch_index: Tensor  # (K,) long
    scores: Tensor  # (K,)
    labels: Tensor  # (K,) long

    @property
    def num_boxes(self) -> int:
        return self.boxes.shape[0]

    def subset(self, index: Tensor) -> "Proposals":
        """The proposals at ``index`` (a long index or a bool mask), in its order."""
        return Proposals(*(part[index] for part in self))

    @staticmethod
    def cat(*parts: "Proposals") -> "Proposals":
        """Join proposal sets in order (RDD: the teacher's, then the student's). Boxes keep the
        columns every part has, so a 7-column set joins a 9-column one."""
        if not parts:
            raise ValueError("Proposals.cat needs at least one set of proposals")
        columns = min(part.boxes.shape[1] for part in parts)
        return Proposals(
            torch.cat([part.boxes[:, :columns] for part in parts]),
            torch.cat([part.batch_index for part in parts]),
            torch.cat([part.scores for part in parts]),
            torch.cat([part.labels for part in parts]),
        )


def select_proposals(
    detections: Sequence[Detections],
    score_threshold: float = 0.1,
    nms_iou: float = 0.2,
    max_per_sample: int = 100,
) -> Proposals:
    """One model's detections of a batch (``detections[b]`` for sample b) -> its proposals, sample by
    sample and best first within a sample."""
    if not detections:
        raise ValueError("select_proposals: got no samples (an empty list of Detections)")
    if max_per_sample < 0:
        raise ValueError(f"select_proposals: max_per_sample must be >= 0, got {max_per_sample}")
    detections = [Detections.of(found) for found in detections]
    boxes = torch.cat([found.boxes.detach() for found in detections])
    scores = torch.cat([found.scores.detach() for found in detections])
    labels = torch.cat([found.labels.detach() for found in detections]).long()
    samples = torch.cat([torch.full_like(found.labels, sample, dtype=torch.long)
                         for sample, found in enumerate(detections)])
    confident = scores > score_threshold
    boxes, scores, labels, samples = boxes[confident], scores[confident], labels[confident], samples[confident]
    # One NMS call for the batch, each sample its own group: sample by sample, best first.
    order = rotated_nms(boxes, scores, nms_iou, post_max_size=max_per_sample, groups=samples)
    return Proposals(boxes[order], samples[order], scores[order], labels[order])


def peak_proposals(view: ModelView, score_threshold: float = 0.1, max_per_sample: int = 100) -> Proposals:
    """One model's proposals from the peaks of its score maps (``view.model.decode_peaks``), best first
    within each sample."""
    decode_peaks = getattr(view.model, "decode_peaks", None)
    if not callable(decode_peaks):
        raise ValueError(f"proposals='peaks' needs {type(view.model).__name__}.decode_peaks(output, max_per_sample, "
                         f"score_threshold) -> one Detections per sample (rdd3d's Detector has it); use "
                         f"proposals='nms' for a detector that only decodes")
    with torch.no_grad():
        found = [Detections.of(item) for item in decode_peaks(view.output, max_per_sample, score_threshold)]
    return Proposals.cat(*(
        Proposals(item.boxes, torch.full_like(item.scores, sample, dtype=torch.long), item.scores, item.labels.long())
        for sample, item in enumerate(found)
    ))
