"""Which of mmdetection3d's two nuScenes box conventions an info file follows, told from its boxes.

mmdetection3d stored nuScenes ground truth in one slot (``gt_boxes``, then ``bbox_3d``) in two conventions:

* **1.x** (its converter since v1.0.0rc0): ``[x, y, z, l, w, h, yaw]``, ``yaw`` the heading of the length
  axis about +z from +x: rdd3d's convention.
* **pre-1.0** (the v0.x converter, "SECOND format"): ``[x, y, z, w, l, h, -yaw - pi/2]``.

Its ``tools/dataset_converters/update_infos_to_v2.py`` copies ``gt_boxes`` unchanged into the v1.x layout
(``metainfo`` + ``data_list``), so a v0.x file converted with it has the new layout and the old boxes: the
layout cannot tell them apart, the boxes can. Two facts of the world give evidence, box by box:

* **size**: vehicles are longer than wide, so read in the right convention their ``dx > dy``;
* **motion**: a moving object travels along its length axis, so its velocity (stored alike in both
  conventions, in the LiDAR frame) lies along the heading of the right reading.

:class:`ConventionEvidence` counts the votes; read as the wrong convention, every car of a pre-1.0 file is
1.9 m long and 4.6 m wide and the headings of moving objects are off by ``2 yaw + pi/2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rdd3d.data.transforms import wrap_angle

V1 = "1.x"
PRE_V1 = "pre-1.0"
AMBIGUOUS = "ambiguous"
NO_EVIDENCE = "no evidence"

#: nuScenes detection classes whose objects are clearly longer than wide (a barrier's length is its thin
#: side; pedestrians and cones are about square).
ELONGATED_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "bicycle", "motorcycle")
#: Classes whose objects never move: their annotated velocity is noise of the annotation's centre.
STILL_CLASSES = ("barrier", "traffic_cone")
MIN_ASPECT = 1.2  # a vehicle votes when its longer side is at least this many times its shorter
MIN_SPEED = 1.0  # m/s: an object moving at least this fast votes
#: rad: a moving object votes for the reading whose heading axis is this much nearer its velocity's axis
#: (axes, not directions: a reversing car still travels along its length axis).
MIN_AXIS_MARGIN = np.pi / 6
#: A kind of evidence decides when at least this share of its votes agree.
DECISIVE_SHARE = 0.9


def from_pre_v1(boxes: np.ndarray) -> np.ndarray:
    """``(M, 7)`` pre-1.0 boxes ``[x, y, z, w, l, h, -yaw - pi/2]`` -> 1.x ``[x, y, z, l, w, h, yaw]``."""
    converted = np.array(boxes, dtype=np.float64)
    converted[:, [3, 4]] = converted[:, [4, 3]]
    converted[:, 6] = wrap_angle(-converted[:, 6] - np.pi / 2)
    return converted


@dataclass(frozen=True)
class ConventionEvidence:
    """Votes of an info file's boxes for each convention (module docstring)."""

    size_v1: int  # vehicles with dx > dy as stored
    size_pre_v1: int  # vehicles with dx < dy as stored
    motion_v1: int  # moving objects travelling along the stored heading
    motion_pre_v1: int  # moving objects travelling along the heading of the pre-1.0 reading

    def verdict(self) -> str:
        """:data:`V1` or :data:`PRE_V1` when every kind of evidence that has votes decides the same way;
        :data:`AMBIGUOUS` when one is split or the two disagree; :data:`NO_EVIDENCE` without votes."""
        decided = set()
        for for_v1, for_pre_v1 in ((self.size_v1, self.size_pre_v1), (self.motion_v1, self.motion_pre_v1)):
            votes = for_v1 + for_pre_v1
            if not votes:
                continue
            if for_v1 >= DECISIVE_SHARE * votes:
                decided.add(V1)
            elif for_pre_v1 >= DECISIVE_SHARE * votes:
                decided.add(PRE_V1)
            else:
                return AMBIGUOUS
        if not decided:
            return NO_EVIDENCE
        return decided.pop() if len(decided) == 1 else AMBIGUOUS

    def describe(self) -> str:
        """The counts in words, for messages."""
        sizes = self.size_v1 + self.size_pre_v1
        moving = self.motion_v1 + self.motion_pre_v1
        return (f"size: {self.size_v1} of {sizes} vehicles ({', '.join(ELONGATED_CLASSES)}) are longer than wide as "
                f"stored (dx > dy), {self.size_pre_v1} wider than long; motion: {self.motion_v1} of {moving} objects "
                f"moving at >= {MIN_SPEED:g} m/s travel along the stored heading, {self.motion_pre_v1} along the "
                "pre-1.0 reading's (-yaw - pi/2)")


def convention_evidence(boxes: np.ndarray, names: Sequence[str], velocity: np.ndarray,
                        velocity_valid: np.ndarray) -> ConventionEvidence:
    """Count the votes of ``boxes`` ``(M, 7)`` as stored, with their class ``names``, ``velocity`` ``(M, 2)``
    (LiDAR frame) and ``velocity_valid`` ``(M,)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    names = np.asarray(names, dtype=object)
    dx, dy = boxes[:, 3], boxes[:, 4]
    elongated = np.isin(names, ELONGATED_CLASSES) & (np.maximum(dx, dy) >= MIN_ASPECT * np.minimum(dx, dy))
    velocity = np.asarray(velocity, dtype=np.float64).reshape(-1, 2)
    moving = (np.asarray(velocity_valid, dtype=bool) & ~np.isin(names, STILL_CLASSES)
              & (np.hypot(velocity[:, 0], velocity[:, 1]) >= MIN_SPEED))
    travel = np.arctan2(velocity[moving, 1], velocity[moving, 0])
    off_v1 = _axis_angle(boxes[moving, 6] - travel)
    off_pre_v1 = _axis_angle(-boxes[moving, 6] - np.pi / 2 - travel)
    return ConventionEvidence(
        size_v1=int((elongated & (dx > dy)).sum()), size_pre_v1=int((elongated & (dx < dy)).sum()),
        motion_v1=int((off_v1 + MIN_AXIS_MARGIN <= off_pre_v1).sum()),
        motion_pre_v1=int((off_pre_v1 + MIN_AXIS_MARGIN <= off_v1).sum()),
    )


def _axis_angle(difference: np.ndarray) -> np.ndarray:
    """The angle in ``[0, pi/2]`` between two axes (lines, not directions) ``difference`` apart."""
    return np.abs(np.remainder(difference + np.pi / 2, np.pi) - np.pi / 2)
