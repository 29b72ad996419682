"""The distiller: a frozen teacher, a training student, and a list of distillation losses.

It is a trainee for :class:`rdd3d.engine.trainer.Trainer` (``forward(batch)`` -> loss terms). It
wraps any :class:`~rdd3d.core.protocols.DistillableDetector`: called with ``model_input(batch)`` (by
default the points; an OpenPCDet-style model takes a dict), it offers ``decode`` (and ``loss``, or a
``detection_loss`` of one's own) and states its BEV geometry; intermediate maps come from taps (forward
hooks), never from a subclass.

The frozen teacher runs after the student, under ``torch.inference_mode`` and, by default, in reduced
precision (``teacher_precision``: bf16 autocast on a CPU with native bf16, bf16 or fp16 on CUDA), with its
2D convolutions in channels-last layout; what the losses read of it is handed over in float32. Both run
inside :func:`~rdd3d.models.detector.shared_voxel_structure`, so a teacher on the student's voxel grid
reuses the student's voxels and rulebooks.

The teacher is held, not registered as a submodule: the trainee's parameters, state dict, checkpoints,
DistributedDataParallel buffer broadcasts and SyncBatchNorm conversion are the student's and the losses'
only. Device and dtype moves (``.to``) still reach it. Its weights live in its own checkpoint, which
``distill.teacher_checkpoint`` names.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from rdd3d.core.protocols import DistillableDetector, missing_members
from rdd3d.data.collate import DetectionBatch
from rdd3d.distill.base import BEVGeometry, DetectionLoss, DistillLoss, DistillStep, ModelView
from rdd3d.distill.precision import teacher_dtype
from rdd3d.distill.taps import DETECTOR_TAPS, TapRecorder, TapSpec
from rdd3d.models.detector import channels_last_convolutions, detection_loss_terms, shared_voxel_structure


def _ordinary_float32(value: Any) -> Any:
    """A tensor made under inference mode as an ordinary one (those cannot be saved for the student's
    backward), floating point in float32; anything else as it is."""
    if not isinstance(value, Tensor):
        return value
    return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value.clone()


def points_of(batch: DetectionBatch) -> list[Tensor]:
    """What a detector is called with by default: one ``(N_i, C)`` point tensor per sample."""
    return batch.points


def _remove_all(recorders: Sequence[TapRecorder]) -> None:
    for recorder in recorders:
        recorder.remove()


class Distiller(nn.Module):
    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        losses: Sequence[DistillLoss],
        taps: Mapping[str, TapSpec] = DETECTOR_TAPS,
        detection_loss: DetectionLoss = detection_loss_terms,
        teacher_precision: str = "auto",
        model_input: Callable[[DetectionBatch], Any] = points_of,
    ) -> None:
        for role, model in (("teacher", teacher), ("student", student)):
            missing = missing_members(model, DistillableDetector)
            if missing:
                raise TypeError(f"the {role} {type(model).__name__} lacks {missing}: a distilled detector offers "
                                "rdd3d.core.protocols.DistillableDetector (docs/distillation.md)")
        super().__init__()
        self._held_teacher = (teacher,)  # a tuple: nn.Module does not register what it holds
        self.student = student
        self.losses = nn.ModuleList(losses)
        self.detection_loss = detection_loss
        self.model_input = model_input
        teacher_dtype(teacher_precision, torch.device("cpu"))  # checks the name now, not at the first step
        self.teacher_precision = teacher_precision
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher.eval()
        channels_last_convolutions(self.teacher)
        self._teacher_taps = TapRecorder(teacher, taps)
        self._student_taps = TapRecorder(student, taps)
        # No hook outlives its distiller: close() takes them off, and so does garbage collection.
        self._release_taps = weakref.finalize(self, _remove_all, (self._teacher_taps, self._student_taps))
        self._geometry = (BEVGeometry.of(teacher), BEVGeometry.of(student))

    def close(self) -> None:
        """Take the taps off both models, which are then plain detectors again (the student can be pickled
        whole); the distiller cannot step after this. Also the end of a ``with Distiller(...)`` block."""
        self._release_taps()

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def teacher(self) -> nn.Module:
        return self._held_teacher[0]

    def _apply(self, fn, recurse: bool = True):
        # .to(), .cuda(), .double() and the like all come through here; move the held teacher alike.
        self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm statistics never move
        return self

    def step_views(self, batch: DetectionBatch) -> DistillStep:
        """Run both models on the batch and collect what the losses read.

        The student goes first: the voxels and rulebooks the teacher may reuse must be ordinary tensors, which
        the student's backward can save (tensors made under inference mode cannot be)."""
        if not self._release_taps.alive:
            raise RuntimeError("this Distiller is closed: its taps are off the models")
        with shared_voxel_structure():
            student_output = self.student(self.model_input(batch))
            student = ModelView(self.student, student_output, self._student_taps.take(), self._geometry[1])
            device = batch.points[0].device if batch.points else torch.device("cpu")
            dtype = teacher_dtype(self.teacher_precision, device)
            with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype is not None
                                          else contextlib.nullcontext()):
                teacher_output = self.teacher(self.model_input(batch))
                teacher_taps = self._teacher_taps.take()
        teacher_output, teacher_taps = tree_map(_ordinary_float32, (teacher_output, teacher_taps))
        teacher = ModelView(self.teacher, teacher_output, teacher_taps, self._geometry[0])
        return DistillStep(batch, teacher, student)

    def forward(self, batch: DetectionBatch) -> dict[str, Tensor]:
        step = self.step_views(batch)
        targets = batch
        for loss in self.losses:
            replaced = loss.detection_targets(step)
            if replaced is not None:
                targets = DetectionBatch(batch.points, list(replaced[0]), list(replaced[1]), batch.frame_ids,
                                         batch.point_columns, batch.metadata)
        terms = self.detection_loss(self.student, step.student.output, targets)
        for loss in self.losses:
            terms.update(loss(step))
        return terms
