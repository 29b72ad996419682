"""Representation disparity between a teacher and a student, measured on RDD's region pairs: the
paper's key observation (its Fig. 1–2) made into a tool.

Batch by batch, without gradient, both models run through a :class:`Distiller`; RDD's bilateral
proposals (the teacher's and the student's decoded detections) give the region pairs; both BEV maps
are pooled at every pair's box through each model's own geometry and channel-softmax-normalised with
τ; ``d_i`` is the mean over the pooled grid of ``||R̂_i^S − R̂_i^T||²`` and ``d̃_i = d_i / max d`` over the
batch — exactly what :meth:`RDDLoss.pair_disparities` computes during training.

The student's channels must be put beside the teacher's (``DisparityReport.mapping``):

* ``adapter``: the ψ trained with the student by RDD (a ``rdd3d distill --method rdd`` checkpoint),
  as RDD itself measures disparity.
* ``identity``: no trained ψ, equal channel counts (e.g. CP-Pillar and its pillar students): the maps
  are compared as they are.
* ``channel-mean``: no trained ψ, different counts (e.g. CP-Voxel's 384 and XXS's 96): the wider map's
  channels are averaged in consecutive groups down to the narrower map's count (adaptive average
  pooling over channels; a parameter-free ψ that averages rather than learns).
* ``fitted``: ψ_fit, a 1×1 conv with bias fitted for this student by least squares (a small ridge)
  from its BEV map to the teacher's over every BEV cell of the measured frames
  (:func:`fit_linear_map`), used in place of the adapter.

Without a trained ψ, channel ``c`` of one model has no reason to mean channel ``c`` of the other, so
``identity`` and ``channel-mean`` distances measure how differently the models spread their activation
over channels and space. ``fitted`` gives every student, distilled or not, its own best linear ψ: the
distances then measure how much of the teacher's representation the student holds up to a linear map
— the question RDD's trained ψ answers — so they compare like for like across students. Compare two
checkpoints only when both were measured with the same mapping.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdd3d.data.collate import collate_frames
from rdd3d.core.types import Frame
from rdd3d.distill.base import DistillStep, ModelView, adapter
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.rdd import RDDConfig, RDDLoss
from rdd3d.distill.regions import resample_to
from rdd3d.models.detector import channels_last_convolutions
from rdd3d.core.checkpoint import CheckpointError, load_checkpoint, load_model_state

MAPPINGS = ("adapter", "identity", "channel-mean", "fitted")
#: Where a distillation checkpoint keeps RDD's ψ (the Distiller's first loss module, its ``adapter``).
ADAPTER_PREFIX = "losses.0.adapter."
#: Largest d still read as agreement: identical maps give exact zeros; float noise stays far below
#: the ~1e-9 of two untrained models of one preset (d shrinks with the channel count at τ = 4).
AGREEMENT = 1e-12


@dataclass(frozen=True)
class DisparityConfig:
    rdd: RDDConfig = field(default_factory=RDDConfig)  # proposals, pooling grid, τ and λ, as RDD uses them
    batch_size: int = 4  # frames per batch; d̃ is normalised per batch, as in training
    widespread_share: float = 0.5  # verdict: the share of pairs with d̃ >= λ from which disparity is widespread
    ridge: float = 1e-3  # fitted ψ: ridge term as a share of the mean diagonal of the student map's centred SᵀS

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"DisparityConfig.batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.widespread_share <= 1:
            raise ValueError(f"DisparityConfig.widespread_share must be in (0, 1], got {self.widespread_share}")
        if self.ridge < 0:
            raise ValueError(f"DisparityConfig.ridge must be >= 0, got {self.ridge}")


class DisparityReport(NamedTuple):
    distances: np.ndarray  # (P,) d_i over every batch
    normalised: np.ndarray  # (P,) d̃_i = d_i / max d of the pair's batch
    from_teacher: np.ndarray  # (P,) bool: the pair comes from a teacher proposal
    frames: int
    lam: float  # λ of the selection the share above refers to
    mapping: str  # one of MAPPINGS

    def summary(self) -> dict[str, float | int | str | None]:
        """Counts and statistics of d; ``share_above_lambda`` is the share of pairs RDD would distil
        (d̃ >= λ). Statistics of an empty set are None."""
        distances = self.distances
        stats: dict[str, float | int | str | None] = {
            "frames": self.frames, "mapping": self.mapping, "lam": self.lam, "pairs": int(distances.size),
            "teacher_pairs": int(self.from_teacher.sum()), "student_pairs": int((~self.from_teacher).sum()),
        }
        empty = distances.size == 0
        stats.update({
            "mean": None if empty else float(distances.mean()),
            "median": None if empty else float(np.median(distances)),
            "p90": None if empty else float(np.percentile(distances, 90)),
            "max": None if empty else float(distances.max()),
            "share_above_lambda": None if empty else float((self.normalised >= self.lam).mean()),
            "mean_teacher_pairs": _mean(distances[self.from_teacher]),
            "mean_student_pairs": _mean(distances[~self.from_teacher]),
        })
        return stats


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


@torch.no_grad()
def measure_disparity(teacher: nn.Module, student: nn.Module, frames: Sequence[Frame],
                      config: DisparityConfig = DisparityConfig(), trained_psi: nn.Module | None = None,
                      fit_psi: bool = False) -> DisparityReport:
    """Region-pair disparities of ``student`` against ``teacher`` on ``frames`` (on the teacher's device).

    ``trained_psi`` is RDD's adapter trained with this student (see :func:`trained_adapter`). With
    ``fit_psi`` a first pass over ``frames`` fits ψ_fit (:func:`fit_linear_map`) and a second measures
    through it: the fit is in-sample, on the very frames measured (each teacher channel's regression
    has C_S + 1 parameters against every BEV cell of every frame). Without either the maps are
    compared as they are or with channel means (module docstring). The models are copied first: the
    distiller's taps are forward hooks, and the caller's models stay without them.
    """
    if not frames:
        raise ValueError("measure_disparity needs at least one frame")
    if fit_psi and trained_psi is not None:
        raise ValueError("measure_disparity: fit_psi fits its own ψ; pass either fit_psi or trained_psi, not both")
    device = next(teacher.parameters()).device
    # A measurement: the teacher in full precision, not the training step's cheaper one, and the student's
    # convolutions in the teacher's channels-last layout, so that equal models give equal maps to the bit.
    student = channels_last_convolutions(copy.deepcopy(student).to(device))
    distiller = Distiller(copy.deepcopy(teacher), student, [], teacher_precision="fp32").eval()

    def steps() -> Iterator[DistillStep]:
        for start in range(0, len(frames), config.batch_size):
            yield distiller.step_views(collate_frames(frames[start:start + config.batch_size]).to(device))

    psi, psi_mapping = trained_psi, "adapter"
    if fit_psi:
        psi, psi_mapping = fit_linear_map((_on_teacher_grid(step) for step in steps()), config.ridge), "fitted"
    loss, mapping, parts = None, "", []
    for step in steps():
        if loss is None:
            loss, mapping = _measuring_loss(step, config.rdd, psi, psi_mapping, device)
        if mapping == "channel-mean":
            step = _channel_means(step, loss.student_channels)
        pairs = loss.pair_disparities(step)
        parts.append((pairs.disparity, pairs.normalised, pairs.from_teacher))
    distances, normalised, from_teacher = (torch.cat(column).cpu().numpy() for column in zip(*parts))
    return DisparityReport(distances, normalised, from_teacher, len(frames), config.rdd.lam, mapping)


def _measuring_loss(step: DistillStep, rdd: RDDConfig, psi: nn.Module | None, psi_mapping: str,
                    device: torch.device) -> tuple[RDDLoss, str]:
    """An RDD loss in eval mode whose ψ is ``psi`` (reported as ``psi_mapping``), or none at all
    (identity on matched channels)."""
    student_channels = step.student.taps["bev"].shape[1]
    teacher_channels = step.teacher.taps["bev"].shape[1]
    if psi is not None:
        loss, mapping = RDDLoss(rdd, student_channels, teacher_channels), psi_mapping
        loss.adapter = psi
    else:
        channels = min(student_channels, teacher_channels)
        loss = RDDLoss(rdd, channels, channels)
        loss.adapter = nn.Identity()
        mapping = "identity" if student_channels == teacher_channels else "channel-mean"
    return loss.to(device).eval(), mapping


def _on_teacher_grid(step: DistillStep) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's BEV maps on the teacher's grid, for the fit: a student on another
    grid (e.g. a coarser pillar student) is read bilinearly at the teacher's cell centres."""
    teacher_map = step.teacher.taps["bev"]  # (B, C_T, H_T, W_T)
    student_map = resample_to(step.student.taps["bev"], step.student.geometry, step.teacher.geometry,
                              tuple(teacher_map.shape[-2:]))  # (B, C_S, H_T, W_T)
    return student_map, teacher_map


@torch.no_grad()
def fit_linear_map(pairs: Iterable[tuple[Tensor, Tensor]], ridge: float = 1e-3) -> nn.Conv2d:
    """ψ_fit: the 1×1 conv (weight ``W`` (C_T, C_S), bias ``b``) minimising ``Σ ||t − W s − b||²`` over
    every cell of every ``(student_map (B, C_S, H, W), teacher_map (B, C_T, H, W))`` pair, plus
    ``ridge · mean diag(SᵀS) · ||W||²`` with ``SᵀS`` the student cells' centred scatter (a scale-free
    ridge: it keeps dead or collinear student channels from making the system singular).

    Streams: only the float64 sums (SᵀS, SᵀT, ΣS, ΣT) are kept, never the cells. Returns the conv
    in eval mode, on the maps' device, in float32.
    """
    sums: list[Tensor] | None = None
    for student_map, teacher_map in pairs:
        if student_map.ndim != 4 or teacher_map.ndim != 4 or student_map.shape[0] != teacher_map.shape[0] \
                or student_map.shape[-2:] != teacher_map.shape[-2:]:
            raise ValueError(f"fit_linear_map: the student and teacher maps must be (B, C_S, H, W) and "
                             f"(B, C_T, H, W) on one grid, got {tuple(student_map.shape)} and "
                             f"{tuple(teacher_map.shape)}")
        s = student_map.detach().to(torch.float64).movedim(1, -1).reshape(-1, student_map.shape[1])  # (N, C_S)
        t = teacher_map.detach().to(torch.float64).movedim(1, -1).reshape(-1, teacher_map.shape[1])  # (N, C_T)
        batch = [s.T @ s, s.T @ t, s.sum(0), t.sum(0), s.new_tensor(s.shape[0])]
        sums = batch if sums is None else [total + part for total, part in zip(sums, batch)]
    if sums is None:
        raise ValueError("fit_linear_map needs at least one pair of maps")
    ss, st, s_sum, t_sum, cells = sums
    s_mean, t_mean = s_sum / cells, t_sum / cells
    scatter = ss - cells * torch.outer(s_mean, s_mean)  # (C_S, C_S)
    cross = st - cells * torch.outer(s_mean, t_mean)  # (C_S, C_T)
    scatter += ridge * scatter.diagonal().mean() * torch.eye(scatter.shape[0], dtype=scatter.dtype,
                                                            device=scatter.device)
    # pinv rather than solve: with ridge 0 a rank-deficient (or constant) student map still has a
    # least-squares answer (W = 0 and b = the teacher's mean for a constant one).
    weight = (torch.linalg.pinv(scatter, hermitian=True) @ cross).T  # (C_T, C_S)
    bias = t_mean - weight @ s_mean  # (C_T,)
    psi = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=1, bias=True).to(ss.device)
    psi.weight.copy_(weight.reshape(*weight.shape, 1, 1))
    psi.bias.copy_(bias)
    return psi.eval()


def _channel_means(step: DistillStep, channels: int) -> DistillStep:
    """The step with the wider BEV map's channels averaged in consecutive groups down to ``channels``."""
    def narrowed(view: ModelView) -> ModelView:
        bev = view.taps["bev"]  # (B, C, H, W)
        if bev.shape[1] == channels:
            return view
        pooled = F.adaptive_avg_pool3d(bev.unsqueeze(1), (channels, *bev.shape[-2:])).squeeze(1)  # (B, channels, H, W)
        return dataclasses.replace(view, taps={**view.taps, "bev": pooled})

    return DistillStep(step.batch, narrowed(step.teacher), narrowed(step.student))


def trained_adapter(path: str | Path) -> nn.Module:
    """RDD's ψ from a ``rdd3d distill --method rdd`` checkpoint, in eval mode."""
    state = load_checkpoint(path)
    weights = {key[len(ADAPTER_PREFIX):]: value for key, value in state.get("model", {}).items()
               if key.startswith(ADAPTER_PREFIX)}
    if not weights:
        raise CheckpointError(f"{path}: holds no RDD adapter (no '{ADAPTER_PREFIX}*' weights); "
                              f"is it a checkpoint of `rdd3d distill --method rdd`?")
    teacher_channels, student_channels = weights["0.weight"].shape[:2]  # the 1×1 conv: (C_T, C_S, 1, 1)
    psi = adapter(student_channels, teacher_channels)
    load_model_state(psi, weights, source=f"{path} (RDD adapter)")
    return psi.eval()


# ----------------------------------------------------------------------------- the report
