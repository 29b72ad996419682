"""The distiller: a frozen teacher, a training student, and a list of distillation losses.

It is a trainee for :class:`rdd3d.engine.trainer.Trainer` (``forward(batch)`` -> loss terms). It
wraps any detector that returns its output from ``forward(points)``, offers ``loss``/``decode`` and
states its BEV geometry; intermediate maps come from taps (forward hooks), never from a subclass.

The teacher is held, not registered as a submodule: the trainee's parameters, state dict, checkpoints,
DistributedDataParallel buffer broadcasts and SyncBatchNorm conversion are the student's and the losses'
only. Device and dtype moves (``.to``) still reach it. Its weights live in its own checkpoint, which
``distill.teacher_checkpoint`` names.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from rdd3d.data.collate import DetectionBatch
from rdd3d.distill.base import BEVGeometry, DetectionLoss, DistillLoss, DistillStep, ModelView
from rdd3d.distill.taps import DETECTOR_TAPS, TapRecorder, TapSpec
from rdd3d.engine.detection_task import detection_loss_terms


class Distiller(nn.Module):
    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        losses: Sequence[DistillLoss],
        taps: Mapping[str, TapSpec] = DETECTOR_TAPS,
        detection_loss: DetectionLoss = detection_loss_terms,
    ) -> None:
        super().__init__()
        self._held_teacher = (teacher,)  # a tuple: nn.Module does not register what it holds
        self.student = student
        self.losses = nn.ModuleList(losses)
        self.detection_loss = detection_loss
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher.eval()
        self._teacher_taps = TapRecorder(teacher, taps)
        self._student_taps = TapRecorder(student, taps)
        self._geometry = (BEVGeometry.of(teacher), BEVGeometry.of(student))

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
        """Run both models on the batch and collect what the losses read."""
        with torch.no_grad():
            teacher_output = self.teacher(batch.points)
        teacher = ModelView(self.teacher, teacher_output, self._teacher_taps.take(), self._geometry[0])
        student_output = self.student(batch.points)
        student = ModelView(self.student, student_output, self._student_taps.take(), self._geometry[1])
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
