"""What distillation reads from a detector's ``head`` tap: a centre head's class heatmaps (CenterPoint) or
an anchor head's per-anchor maps (SECOND, PointPillars).

The tap records the head module's output, and its type tells the kind of head: a sequence of
:class:`~rdd3d.models.heads.TaskPrediction` (or of heatmap tensors, or one tensor) for a centre head, one
:class:`~rdd3d.models.heads.AnchorPrediction` for an anchor head. Methods dispatch on it; no detector
subclass is involved.

Anchor heads are compared **anchor by anchor**. Class logits and box deltas of anchor type ``a`` at
location ``(i, j)`` mean the same in both models only when both heads lay out the same anchors (map
size, range, anchor types and classes in the same order); box deltas are relative to each model's own
anchors, so a student of another BEV resolution or range would need its deltas re-encoded against the
teacher's anchors. That case is refused with a clear error (the RDD paper's anchor students, SECOND-S/XS
and PointPillars-S/XS, keep their teacher's resolution); feature terms, read at metric places, still work.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import Tensor

from rdd3d.distill.base import DistillStep, ModelView
from rdd3d.models.heads import AnchorPrediction, TaskPrediction

#: The tap holding the head's output (:data:`rdd3d.distill.taps.DETECTOR_TAPS` declares it).
HEAD_TAP = "head"
CENTRE, ANCHOR = "centre head", "anchor head"


def head_kind(record: Any) -> str:
    """:data:`ANCHOR` for an :class:`AnchorPrediction`, else :data:`CENTRE`."""
    return ANCHOR if isinstance(record, AnchorPrediction) else CENTRE


def class_logit_maps(record: Any) -> list[Tensor]:
    """A head tap as class-logit maps: one ``(B, C, H, W)`` heatmap per task of a centre head (from one
    tensor, a sequence of tensors, objects with a ``heatmap`` field or dicts with a ``"heatmap"`` key, as
    mmdetection3d's CenterHead gives per task), or the anchor head's ``(B, A * C, H, W)`` class logits
    (anchor-major channels: every anchor type's classes). Other layouts: narrow the tap with a
    :class:`~rdd3d.distill.taps.TapSpec` field (a key, an index or a callable)."""
    if isinstance(record, AnchorPrediction):
        return [record.cls_logits]
    if isinstance(record, (Tensor, Mapping)) or hasattr(record, "heatmap"):
        return [_heatmap(record)]
    return [_heatmap(item) for item in record]


def _heatmap(item: Any) -> Tensor:
    if isinstance(item, Mapping):
        if "heatmap" not in item:
            raise ValueError(f"the head tap recorded a dict with keys {sorted(map(str, item))} and no 'heatmap'; "
                             f"select the class-logit maps with the tap's field (a key, an index or a callable)")
        return item["heatmap"]
    heatmap = getattr(item, "heatmap", item)
    if not isinstance(heatmap, Tensor):
        raise ValueError(f"the head tap recorded a {type(item).__name__}, not class-logit maps (a tensor, or "
                         f"items with a 'heatmap' field or key); narrow it with the tap's field")
    return heatmap


def task_dicts(heatmap: str = "heatmap", center: str = "reg", center_z: str = "height", dim: str = "dim",
               rot: str = "rot", velocity: str | None = "vel") -> Callable[[Any], tuple[TaskPrediction, ...]]:
    """A :class:`~rdd3d.distill.taps.TapSpec` field for a centre head that returns one dict of maps per task:
    each dict as a :class:`~rdd3d.models.heads.TaskPrediction`, the maps found under the given keys. The
    defaults are mmdetection3d's CenterHead names; OpenPCDet's are ``heatmap="hm", center="center",
    center_z="center_z"``. The maps are taken as they are (both models of one framework share its
    conventions), so every method can compare them, the regression maps included."""
    keys = {"heatmap": heatmap, "center": center, "center_z": center_z, "dim": dim, "rot": rot}

    def read(output: Any) -> tuple[TaskPrediction, ...]:
        tasks = [output] if isinstance(output, Mapping) else list(output)
        predictions = []
        for index, task in enumerate(tasks):
            missing = [key for key in (*keys.values(), velocity) if key is not None and key not in task]
            if missing:
                raise ValueError(f"task {index} of the head's output has no {missing}; its keys: "
                                 f"{sorted(map(str, task))} (task_dicts names the keys of each map)")
            predictions.append(TaskPrediction(**{field: task[key] for field, key in keys.items()},
                                              velocity=task[velocity] if velocity is not None else None))
        return tuple(predictions)

    return read


def step_head_kind(step: DistillStep, method: str) -> str:
    """The kind of head both models have; a clear error when they differ, since ``method`` compares the
    two heads' outputs."""
    teacher = head_kind(step.teacher.tap(HEAD_TAP, method))
    student = head_kind(step.student.tap(HEAD_TAP, method))
    if teacher != student:
        article = {CENTRE: "a", ANCHOR: "an"}
        raise ValueError(f"{method}: the teacher ({type(step.teacher.model).__name__}) has {article[teacher]} {teacher} "
                         f"and the student ({type(step.student.model).__name__}) {article[student]} {student}; "
                         f"{method} compares the two heads' outputs, so both must be centre heads or both anchor heads")
    return teacher


def anchors_of(view: ModelView, map_size: tuple[int, int], method: str) -> Tensor:
    """``(H, W, A, 7)`` anchors of the model's anchor head on an ``(H, W)`` map, from ``model.head.anchors``."""
    head = getattr(view.model, "head", None)
    if not callable(getattr(head, "anchors", None)):
        raise ValueError(f"{method}: {type(view.model).__name__} outputs anchor predictions but has no "
                         f"head.anchors(map_size, device) -> (H, W, A, 7) to place them (rdd3d's AnchorHead has)")
    return head.anchors(map_size, device=view.taps[HEAD_TAP].cls_logits.device)


class AnchorPair(NamedTuple):
    """Both anchor heads' outputs in one step, on the anchors they share."""

    student: AnchorPrediction  # with gradient
    teacher: AnchorPrediction  # detached
    anchors: Tensor  # (H, W, A, 7) the shared anchors

    @property
    def map_size(self) -> tuple[int, int]:
        return int(self.anchors.shape[0]), int(self.anchors.shape[1])


def anchor_pair(step: DistillStep, method: str) -> AnchorPair:
    """The two anchor heads' outputs; a clear error unless both are anchor heads with the same anchors."""
    if step_head_kind(step, method) != ANCHOR:
        raise ValueError(f"{method}: expected anchor heads, got centre heads")
    student, teacher = step.student.tap(HEAD_TAP, method), step.teacher.tap(HEAD_TAP, method)
    teacher_size = tuple(teacher.cls_logits.shape[-2:])
    student_size = tuple(student.cls_logits.shape[-2:])
    anchors = anchors_of(step.teacher, teacher_size, method)
    same = (teacher_size == student_size and teacher.cls_logits.shape[1] == student.cls_logits.shape[1]
            and torch.equal(anchors, anchors_of(step.student, student_size, method)))
    if not same:
        raise ValueError(
            f"{method}: anchor heads are compared anchor by anchor, but the teacher's {teacher_size} map with "
            f"{teacher.cls_logits.shape[1]} class channels and the student's {student_size} map with "
            f"{student.cls_logits.shape[1]} do not share their anchors; the student needs the teacher's BEV "
            f"resolution, range and anchor types (box deltas are relative to each model's own anchors)")
    detached = AnchorPrediction(*(None if part is None else part.detach() for part in teacher))
    return AnchorPair(student, detached, anchors)
