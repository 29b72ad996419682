"""SparseKD's teacher-guided initialisation: a student starts from slices of its teacher's weights.

Every tensor of the student's state dict takes the leading slice of the teacher tensor with the same
name: ``teacher[:s0, :s1, ...]`` for a student shape ``(s0, s1, ...)``. Width-compressed students
(CP-Voxel-S/XS/XXS) thus inherit the teacher's first channels in every layer; resolution-compressed
ones (CP-Pillar-v0.x) have the teacher's shapes and inherit its weights whole.

Like SparseKD's plain variant it slices the input channels of the first BEV convolution as they are
stored, although height compression stacks them channel-major (``c * D + d``): the student's first
channels there are not exactly the teacher's channels it keeps. The initialisation only has to be a
good start, not an equivalent network.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import Tensor, nn


class TeacherInit(NamedTuple):
    """What :func:`init_student_from_teacher` did, by state-dict name."""

    copied: tuple[str, ...]  # same shape: the whole teacher tensor
    sliced: tuple[str, ...]  # smaller student: the teacher tensor's leading slice
    skipped: tuple[str, ...]  # left as initialised (only with ``strict=False``)


def _mismatch(name: str, student: Tensor, teacher: Tensor | None) -> str | None:
    if teacher is None:
        return f"{name}: not in the teacher's state dict"
    if student.ndim != teacher.ndim:
        return f"{name}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} differ in rank"
    if any(s > t for s, t in zip(student.shape, teacher.shape)):
        return f"{name}: student shape {tuple(student.shape)} is larger than the teacher's {tuple(teacher.shape)}"
    return None


@torch.no_grad()
def init_student_from_teacher(
    student: nn.Module, teacher_state_dict: Mapping[str, Tensor], strict: bool = True
) -> TeacherInit:
    """Load the leading slice of each matching teacher tensor into ``student`` (parameters and buffers).

    With ``strict`` (the default) any student tensor without a usable teacher tensor (missing name,
    other rank, or a dimension larger than the teacher's) is an error listing all of them; otherwise
    those keep their initialisation and are reported as skipped.
    """
    targets = student.state_dict()  # tensors sharing storage with the student's parameters and buffers
    problems = {
        name: problem for name, target in targets.items()
        if (problem := _mismatch(name, target, teacher_state_dict.get(name))) is not None
    }
    if strict and problems:
        raise ValueError(
            f"teacher-guided initialisation: {len(problems)} student tensor(s) have no usable teacher tensor "
            "(nothing was loaded):\n  " + "\n  ".join(problems.values())
        )
    copied, sliced = [], []
    for name, target in targets.items():
        if name in problems:
            continue
        source = teacher_state_dict[name]
        target.copy_(source[tuple(slice(0, size) for size in target.shape)])
        (copied if target.shape == source.shape else sliced).append(name)
    return TeacherInit(tuple(copied), tuple(sliced), tuple(problems))
