"""Distillation methods by their command-line name: RDD and the paper's baselines."""

from __future__ import annotations

from dataclasses import dataclass, field

from rdd3d.distill.base import METHODS, DistillLoss
# Importing the modules that define the losses registers their methods in METHODS.
from rdd3d.distill.baselines.fg import FGConfig
from rdd3d.distill.baselines.gid import GIDFeatureConfig, GIDLogitConfig
from rdd3d.distill.baselines.hint import HintConfig
from rdd3d.distill.baselines.lad import LADConfig
from rdd3d.distill.baselines.logit_kd import LogitKDConfig
from rdd3d.distill.baselines.pp_logit import PPLogitConfig
from rdd3d.distill.precision import TEACHER_PRECISIONS
from rdd3d.distill.rdd import RDDConfig

#: What ``distill.method`` may name: "none" trains the student alone (the no-KD row of the paper's tables).
METHOD_NAMES: tuple[str, ...] = ("none", "rdd", *(name for name in METHODS if name != "rdd"))


@dataclass
class DistillConfig:
    """Which method distils the student, from which teacher, and each method's options.

    Only the block of the chosen ``method`` is read (``gid-l`` reads ``gid_l``, ...). Each registered method
    has its block here, typed by its options dataclass (a test checks the two agree).
    """

    method: str = "none"
    teacher_checkpoint: str = ""  # a checkpoint written by `rdd3d train`
    init_from_teacher: bool = False  # [ours, off] SparseKD's teacher-guided initialisation
    # [ours] the frozen teacher's forward: auto (bf16 where the device has it natively), fp32, bf16, fp16
    teacher_precision: str = "auto"
    rdd: RDDConfig = field(default_factory=RDDConfig)
    hint: HintConfig = field(default_factory=HintConfig)
    fg: FGConfig = field(default_factory=FGConfig)
    gid_l: GIDLogitConfig = field(default_factory=GIDLogitConfig)
    gid_f: GIDFeatureConfig = field(default_factory=GIDFeatureConfig)
    lad: LADConfig = field(default_factory=LADConfig)
    pp_logit: PPLogitConfig = field(default_factory=PPLogitConfig)
    kd: LogitKDConfig = field(default_factory=LogitKDConfig)

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ValueError(f"distill.method={self.method!r}: expected one of {list(METHOD_NAMES)}")
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise ValueError(f"distill.teacher_precision={self.teacher_precision!r}: expected one of "
                             f"{list(TEACHER_PRECISIONS)}")

    def method_options(self):
        return getattr(self, METHODS[self.method].block)

    def unused_blocks(self) -> list[str]:
        """The option blocks the chosen method does not read: a run's stored config leaves them out, so
        that a default changed in a method a run never used does not make the finished run look different."""
        return [method.block for name, method in METHODS.items() if name != self.method]


def build_method(config: DistillConfig, student_channels: int, teacher_channels: int) -> list[DistillLoss]:
    """The loss modules of ``config.method`` (empty for ``none``)."""
    if config.method == "none":
        return []
    method = METHODS[config.method]
    return [method.loss.from_config(config.method_options(), student_channels, teacher_channels)]
