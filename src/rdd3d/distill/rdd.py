"""Representation Disparity-aware Distillation (RDD; Li et al., ICCV 2023), as ``docs/rdd-method.md`` fixes it.

One step, for a teacher T and a student S (``[paper]`` the paper states it, ``[ours]`` our choice)::

    proposals   teacher's M and student's N decoded detections (score > 0.1, NMS 0.2, <= K)   [paper + ours]
                (or each score map's 3x3 peaks, ``proposals="peaks"``)                        [ours]
    pairs       every proposal's box pooled on both BEV maps (7 x 7 rotated grid, each map through
                its own geometry), the student's after the adapter ψ                          [paper + ours]
    normalise   channel softmax with temperature τ at every grid position                     [paper]
    disparity   d_i = mean over the grid of ||R̂_i^S - R̂_i^T||² (no gradient), d̃_i = d_i / max_j d_j [ours]
    selection   m*_i = 1 if d̃_i >= λ else 0 (options: top-ρ, soft, all; no gradient)           [paper + ours]
    L_feat      1/(M+N) Σ_i m*_i · dist_i(ψ-pooled student, pooled teacher)                    [paper]
                (pooled with gradient, and backpropagated, for the kept pairs alone)          [ours]
    L_logit     1/(M+N) Σ_i m*_i · L1 of the heads' outputs inside proposal i                    [paper + ours]
                centre heads: sigmoid heatmaps in the box's Gaussian area (class term only);
                anchor heads: sigmoid class scores + raw box deltas of the anchors centred in the box

and the student's loss is ``L_det + α1·L_feat + α2·L_logit``. Details and the reasons for each
``[ours]`` choice are in ``docs/rdd-method.md`` (§3-§10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from rdd3d.distill.base import BEVGeometry, DistillLoss, DistillStep, METHODS, Method, adapter
from rdd3d.distill.precision import ADAPTER_PRECISIONS, adapter_dtype
from rdd3d.distill.heads import ANCHOR, HEAD_TAP, anchor_pair, class_logit_maps, step_head_kind
from rdd3d.distill.proposals import PROPOSAL_SOURCES, Proposals, peak_proposals, select_proposals
from rdd3d.distill.regions import (
    anchor_areas, area_mean, area_sum, gather_area, gaussian_areas, pool_boxes_channels_last, resample_to,
)

SELECTIONS = ("threshold", "topk_ratio", "soft", "all")
FEATURE_DISTANCES = ("mse", "l2", "kl")
LOGIT_NORMS = ("mean", "l1")
TERM_NORMALISERS = ("pairs", "weight")


@dataclass(frozen=True)
class RDDConfig:
    tau: float = 4.0  # [paper] softmax temperature over channels
    lam: float = 0.1  # [paper] λ of the inner selection problem
    alpha_feature: float = 0.2  # [paper] α1
    alpha_logit: float = 0.2  # [paper] α2
    selection: str = "threshold"  # [ours] threshold | topk_ratio | soft | all
    topk_ratio: float = 0.6  # [ours] ρ: share of pairs kept by topk_ratio (IDa-Det)
    # [ours] where proposals come from: "nms", each model's decoded detections through class-agnostic rotated
    # NMS at nms_iou; "peaks", the 3x3 local maxima of its class-agnostic score map, only those boxes decoded
    proposals: str = "nms"
    score_threshold: float = 0.1  # [ours] proposals: detections scoring strictly above
    nms_iou: float = 0.2  # [ours] proposals "nms": class-agnostic rotated BEV NMS per model
    max_proposals: int = 100  # [ours] proposals per model and sample (K)
    grid_size: int = 7  # [ours] pooled samples per box side
    # [ours] mse: squared difference summed over channels, mean over the grid; l2: the patch's norm;
    # kl: τ²·KL(R̂^T || R̂^S) summed over channels, mean over the grid (gradient scale free of τ and C)
    feature_distance: str = "mse"
    # [ours] mean: mean L1 over the area's cells and classes (centre heads: then the mean over heads; anchor
    # heads: class and box terms each the mean over the anchors and their classes / codes, then added);
    # l1: the paper's literal L1 norm (the sums)
    logit_norm: str = "mean"
    # [ours] anchor heads: weight of Eq. 9's box term against its class term (the paper adds them, 1.0); the
    # raw box deltas of a short-trained student pull 30x harder than the class scores (rdd-method.md §8)
    anchor_box_weight: float = 1.0
    # what both terms divide by: "pairs", every pair M + N [paper]; "weight", the selected weight Σ m*_i [ours]:
    # without it, a λ that keeps fewer pairs also distils less, and the λ sweep mixes selection with weight
    term_normaliser: str = "pairs"
    # [ours] ψ's 1×1 convolution in bf16 on a CPU with native bf16 ("auto"): a matrix product over the whole
    # student map, bound by arithmetic, which bf16 roughly halves; the rest of the loss stays fp32
    adapter_precision: str = "auto"
    use_feature: bool = True  # distil the student's BEV map (ablation: logit only)
    use_logit: bool = True  # distil the student's heatmaps (ablation: feature only)
    gaussian_overlap: float = 0.1  # [ours] centre heads: Gaussian area radius as CenterPoint's targets (min overlap)
    min_radius: int = 2  # [ours] ... and smallest radius, in teacher map cells

    def __post_init__(self) -> None:
        checks = {
            "tau": (self.tau > 0, "> 0"),
            "lam": (0 <= self.lam < 1, "in [0, 1)"),
            "alpha_feature": (self.alpha_feature >= 0, ">= 0"),
            "alpha_logit": (self.alpha_logit >= 0, ">= 0"),
            "selection": (self.selection in SELECTIONS, f"one of {SELECTIONS}"),
            "proposals": (self.proposals in PROPOSAL_SOURCES, f"one of {PROPOSAL_SOURCES}"),
            "topk_ratio": (0 < self.topk_ratio <= 1, "in (0, 1]"),
            "nms_iou": (0 <= self.nms_iou <= 1, "in [0, 1]"),
            "max_proposals": (self.max_proposals >= 0, ">= 0"),
            "grid_size": (self.grid_size >= 1, ">= 1"),
            "feature_distance": (self.feature_distance in FEATURE_DISTANCES, f"one of {FEATURE_DISTANCES}"),
            "logit_norm": (self.logit_norm in LOGIT_NORMS, f"one of {LOGIT_NORMS}"),
            "anchor_box_weight": (self.anchor_box_weight >= 0, ">= 0"),
            "term_normaliser": (self.term_normaliser in TERM_NORMALISERS, f"one of {TERM_NORMALISERS}"),
            "adapter_precision": (self.adapter_precision in ADAPTER_PRECISIONS, f"one of {ADAPTER_PRECISIONS}"),
            "use_feature": (self.use_feature or self.use_logit, "true when use_logit is false"),
            "gaussian_overlap": (0 < self.gaussian_overlap < 1, "in (0, 1)"),
            "min_radius": (self.min_radius >= 0, ">= 0"),
        }
        for name, (valid, expected) in checks.items():
            if not valid:
                raise ValueError(f"RDDConfig.{name} must be {expected}, got {getattr(self, name)!r}")


class RegionPairs(NamedTuple):
    """The region pairs of one step and how the inner problem weighed them (all without gradient)."""

    proposals: Proposals  # M teacher proposals, then N student proposals
    num_teacher: int  # M
    disparity: Tensor  # (M+N,) d_i: mean over the grid of the squared channel-softmax difference
    normalised: Tensor  # (M+N,) d̃_i = d_i / max_j d_j
    weights: Tensor  # (M+N,) m*_i in [0, 1]

    @property
    def from_teacher(self) -> Tensor:  # (M+N,) bool: the pair comes from a teacher proposal
        return torch.arange(self.disparity.shape[0], device=self.disparity.device) < self.num_teacher


def normalise_disparity(disparity: Tensor) -> Tensor:
    """d̃ = d / max d over the step's pairs (all zeros when every pair agrees exactly)."""
    if disparity.numel() == 0:
        return disparity
    return disparity / disparity.max().clamp_min(torch.finfo(disparity.dtype).tiny)


def selection_weights(normalised: Tensor, config: RDDConfig) -> Tensor:
    """m* from d̃ (P,) -> (P,) in [0, 1].

    ``threshold``: 1 where d̃ >= λ, the minimiser of Σ m_i (λ - d̃_i) on [0, 1] (a tie may take
    either value; we distil it, so λ = 0 keeps every pair). ``topk_ratio``: 1 on the ceil(ρ·P) most
    disparate pairs. ``soft``: clip((d̃ - λ) / (1 - λ), 0, 1). ``all``: 1 everywhere.
    """
    if config.selection == "threshold":
        return (normalised >= config.lam).to(normalised.dtype)
    if config.selection == "topk_ratio":
        weights = torch.zeros_like(normalised)
        keep = math.ceil(config.topk_ratio * normalised.numel())
        return weights.index_fill_(0, normalised.topk(keep).indices, 1.0)
    if config.selection == "soft":
        return ((normalised - config.lam) / (1 - config.lam)).clamp(0, 1)
    return torch.ones_like(normalised)


class RDDLoss(DistillLoss):
    """RDD's loss terms on the taps ``"bev"`` (neck map, (B, C, H, W)) and ``"head"`` (a centre head's
    heatmaps or an anchor head's :class:`~rdd3d.models.heads.AnchorPrediction`, see :mod:`rdd3d.distill.heads`).

    ψ (1×1 conv + BN + ReLU, ``student_channels -> teacher_channels``) is always built, as the paper's
    Eq. 8 has it, also when the widths agree. ``forward`` returns ``{"rdd/feature": α1·L_feat,
    "rdd/logit": α2·L_logit}``; with ``use_feature`` off the student's map is not distilled and
    ``"rdd/adapter"`` trains ψ alone (on the detached map), so the disparities it measures stay
    meaningful. ``last_pairs`` holds the latest step's :class:`RegionPairs`.
    """

    @classmethod
    def from_config(cls, config: RDDConfig, student_channels: int, teacher_channels: int) -> "RDDLoss":
        return cls(config, student_channels, teacher_channels)

    def __init__(self, config: RDDConfig, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.config = config
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.adapter = adapter(student_channels, teacher_channels)
        self.last_pairs: RegionPairs | None = None

    def forward(self, step: DistillStep) -> dict[str, Tensor]:
        proposals, num_teacher = self._proposals(step)
        teacher_map, student_map = self._maps(step)
        adapted = self._adapt(student_map if self.config.use_feature else student_map.detach(),
                              self.config.adapter_precision)  # (B, C_T, H_S, W_S)
        teacher = self._pool(teacher_map, step.teacher.geometry, proposals)  # (P, g², C_T) logits over τ
        teacher_probs = teacher.softmax(dim=-1)
        if self._selection_reads_disparity():
            # The inner problem needs every pair's disparity, the loss only the kept pairs: measure all without
            # gradient, then pool (and later backpropagate through) the kept ones alone.
            with torch.no_grad():
                every_student = self._pool(adapted, step.student.geometry, proposals).softmax(dim=-1)
                pairs = self._pairs(proposals, num_teacher, teacher_probs, every_student)
            kept = torch.nonzero(pairs.weights, as_tuple=True)[0]
            student = self._pool(adapted, step.student.geometry, proposals.subset(kept))
            student_probs = student.softmax(dim=-1)
            teacher, teacher_probs = teacher[kept], teacher_probs[kept]
        else:  # every pair weighs 1 whatever its disparity
            student = self._pool(adapted, step.student.geometry, proposals)
            student_probs = student.softmax(dim=-1)
            pairs = self._pairs(proposals, num_teacher, teacher_probs, student_probs.detach())
            kept = torch.arange(proposals.num_boxes, device=teacher.device)
        self.last_pairs = pairs
        weights = pairs.weights[kept]
        # M + N, or Σ m*_i; with no pair (or no weight) every term is an empty sum, 0
        if self.config.term_normaliser == "weight":
            count = weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
        else:
            count = max(proposals.num_boxes, 1)
        feature = (weights * self._distance(student, student_probs, teacher, teacher_probs)).sum() / count
        terms = {"rdd/feature" if self.config.use_feature else "rdd/adapter": self.config.alpha_feature * feature}
        if self.config.use_logit:
            logit = (weights * self._logit_disagreement(step, proposals.subset(kept))).sum() / count
            terms["rdd/logit"] = self.config.alpha_logit * logit
        return terms

    @torch.no_grad()
    def pair_disparities(self, step: DistillStep) -> RegionPairs:
        """The region pairs of ``step`` and their disparities, without a loss (for reports; put the
        loss in eval mode first so that ψ's BatchNorm uses and keeps its running statistics)."""
        proposals, num_teacher = self._proposals(step)
        teacher_map, student_map = self._maps(step)
        teacher = self._pool(teacher_map, step.teacher.geometry, proposals).softmax(dim=-1)
        student = self._pool(self._adapt(student_map), step.student.geometry, proposals).softmax(dim=-1)
        return self._pairs(proposals, num_teacher, teacher, student)

    def _selection_reads_disparity(self) -> bool:
        """Whether m* depends on the disparities (``threshold`` at λ = 0 and ``all`` keep every pair)."""
        config = self.config
        return not (config.selection == "all" or (config.selection == "threshold" and config.lam == 0))

    def _proposals(self, step: DistillStep) -> tuple[Proposals, int]:
        """Bilateral proposals: the teacher's M, then the student's N (from its detached output)."""
        config = self.config
        if config.proposals == "peaks":
            per_model = [peak_proposals(view, config.score_threshold, config.max_proposals)
                         for view in (step.teacher, step.student)]
        else:
            per_model = [select_proposals(view.detections(), config.score_threshold, config.nms_iou,
                                          config.max_proposals) for view in (step.teacher, step.student)]
        return Proposals.cat(*per_model), per_model[0].num_boxes

    def _maps(self, step: DistillStep) -> tuple[Tensor, Tensor]:
        """The teacher's and the student's 'bev' taps, checked against the widths this loss was built for."""
        teacher_map = step.teacher.tap("bev", "RDD")  # (B, C_T, H_T, W_T)
        student_map = step.student.tap("bev", "RDD")  # (B, C_S, H_S, W_S)
        for role, feature_map, channels in (("teacher", teacher_map, self.teacher_channels),
                                            ("student", student_map, self.student_channels)):
            if feature_map.ndim != 4 or feature_map.shape[1] != channels:
                raise ValueError(f"RDD: the {role}'s 'bev' tap must be (B, {channels}, H, W) as RDDLoss was built, "
                                 f"got {tuple(feature_map.shape)}")
        return teacher_map, student_map

    def _adapt(self, student_map: Tensor, precision: str = "fp32") -> Tensor:
        """ψ(student map), laid out channels-last: the pooling then reads its cells in place, without the copy
        a contiguous map costs at every pooling (the convolution costs the same in either layout). ψ's
        convolution runs at ``precision`` (reports measure in fp32); BatchNorm, ReLU and all that follows in fp32."""
        student_map = student_map.contiguous(memory_format=torch.channels_last)
        dtype = adapter_dtype(precision, student_map.device)
        if dtype is None:
            return self.adapter(student_map)
        convolution, norm, activation = self.adapter
        with torch.autocast(student_map.device.type, dtype=dtype):
            mapped = convolution(student_map)
        return activation(norm(mapped.float()))

    def _pool(self, feature_map: Tensor, geometry: BEVGeometry, proposals: Proposals) -> Tensor:
        """``feature_map`` pooled at every proposal, over τ: ``(P, g², C)`` logits of the channel softmax R̂,
        channels last (1/τ rides on the interpolation weights)."""
        return pool_boxes_channels_last(feature_map, geometry, proposals.boxes, proposals.batch_index,
                                        self.config.grid_size, scale=1.0 / self.config.tau)

    def _pairs(self, proposals: Proposals, num_teacher: int, teacher: Tensor, student: Tensor) -> RegionPairs:
        """``teacher``, ``student``: detached normalised patches R̂ (channel softmax) of every pair."""
        disparity = _mean_squared_distance(student, teacher)
        normalised = normalise_disparity(disparity)
        return RegionPairs(proposals, num_teacher, disparity, normalised, selection_weights(normalised, self.config))

    def _distance(self, student: Tensor, student_probs: Tensor, teacher: Tensor, teacher_probs: Tensor) -> Tensor:
        """Per-pair distance of (P, g², C) patches, given as logits over τ and as their channel softmax -> (P,)."""
        if self.config.feature_distance == "kl":
            log_ratio = teacher.log_softmax(dim=-1) - student.log_softmax(dim=-1)
            return self.config.tau ** 2 * (teacher_probs * log_ratio).sum(dim=-1).mean(dim=1)
        if self.config.feature_distance == "mse":
            return _mean_squared_distance(student_probs, teacher_probs)
        return (student_probs - teacher_probs).flatten(1).norm(dim=1)

    def _logit_disagreement(self, step: DistillStep, proposals: Proposals) -> Tensor:
        """Per-pair L1 disagreement of the two heads inside each proposal (mean or sum, ``logit_norm``) -> (P,)."""
        if step_head_kind(step, "RDD") == ANCHOR:
            return self._anchor_disagreement(step, proposals)
        return self._heatmap_disagreement(step, proposals)

    def _heatmap_disagreement(self, step: DistillStep, proposals: Proposals) -> Tensor:
        """Centre heads: the sigmoid heatmaps inside each proposal's Gaussian area on the teacher's grid;
        0 for a proposal centred off the teacher's map."""
        teacher_maps = class_logit_maps(step.teacher.tap(HEAD_TAP, "RDD"))
        student_maps = class_logit_maps(step.student.tap(HEAD_TAP, "RDD"))
        if [m.shape[1] for m in teacher_maps] != [m.shape[1] for m in student_maps]:
            raise ValueError(f"RDD: teacher and student heads must predict the same classes per head, got "
                             f"{[m.shape[1] for m in teacher_maps]} and {[m.shape[1] for m in student_maps]} channels")
        map_size = tuple(teacher_maps[0].shape[-2:])
        geometry = step.teacher.geometry
        area = gaussian_areas(proposals.boxes, geometry.grid(map_size), self.config.gaussian_overlap,
                              self.config.min_radius)
        per_head = []
        for teacher_map, student_map in zip(teacher_maps, student_maps):
            student_probs = resample_to(student_map.sigmoid(), step.student.geometry, geometry, map_size)
            difference = gather_area(student_probs, area, proposals.batch_index) - gather_area(
                teacher_map.sigmoid(), area, proposals.batch_index)  # (A, C)
            reduce = area_sum if self.config.logit_norm == "l1" else area_mean
            per_head.append(reduce(difference.abs(), area))
        per_head = torch.stack(per_head)
        combined = per_head.sum(dim=0) if self.config.logit_norm == "l1" else per_head.mean(dim=0)
        return combined * area.on_map

    def _anchor_disagreement(self, step: DistillStep, proposals: Proposals) -> Tensor:
        """Anchor heads (Eq. 9, both terms): over the anchors whose centres lie in each proposal's box,
        the L1 of the sigmoid class probabilities (every anchor type, every class) plus the L1 of the raw
        box deltas (every anchor type, 7 codes), each the mean or the sum (``logit_norm``), the box term
        weighted by ``anchor_box_weight``; 0 for a box holding no anchor location. Teacher and student
        must share their anchors (same grid)."""
        pair = anchor_pair(step, "RDD")
        area = anchor_areas(proposals.boxes, pair.anchors)
        reduce = area_sum if self.config.logit_norm == "l1" else area_mean

        def disagreement(student_map: Tensor, teacher_map: Tensor, to_compare) -> Tensor:  # (P,)
            student = to_compare(gather_area(student_map, area, proposals.batch_index))  # (A_cells, A * D)
            teacher = to_compare(gather_area(teacher_map, area, proposals.batch_index))
            return reduce((student - teacher).abs(), area)

        classes = disagreement(pair.student.cls_logits, pair.teacher.cls_logits, torch.sigmoid)
        boxes = disagreement(pair.student.box_deltas, pair.teacher.box_deltas, lambda deltas: deltas)
        return classes + self.config.anchor_box_weight * boxes


def _mean_squared_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """(P, g², C) patches -> (P,): the squared difference summed over channels, averaged over the grid (the
    norm reads the difference once, where squaring and summing it would read it twice)."""
    return torch.linalg.vector_norm(student - teacher, dim=-1).square().mean(dim=1)


METHODS.register(Method("rdd", RDDConfig, RDDLoss,
                        {"alpha_feature": ("rdd/feature",), "alpha_logit": ("rdd/logit",)}))
