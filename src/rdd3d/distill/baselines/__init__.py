"""The RDD paper's baseline distillation methods, each a :class:`~rdd3d.distill.base.DistillLoss` on the
same taps as RDD (``bev``: the neck map; ``head``: the CenterPoint head's per-task predictions or the
anchor head's :class:`~rdd3d.models.heads.AnchorPrediction`, see :mod:`rdd3d.distill.heads`)::

    loss = build_baseline("fg", None, student_channels=96, teacher_channels=192)
    loss = build_baseline("pp-logit", PPLogitConfig.for_student("cp-voxel-xs"), 96, 192)
    loss = build_baseline("gid-f", {"max_instances": 20}, 96, 192)

``config`` is the method's config dataclass, a mapping of its fields (unknown fields are an error), or
``None`` for the defaults. docs/distillation.md lists what each method does and where its defaults
come from.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

from rdd3d.distill.base import DistillLoss
from rdd3d.distill.baselines.fg import FGConfig, FGLoss
from rdd3d.distill.baselines.gid import GIDFeatureConfig, GIDFeatureLoss, GIDLogitConfig, GIDLogitLoss
from rdd3d.distill.baselines.hint import HintConfig, HintLoss
from rdd3d.distill.baselines.lad import LADConfig, LADLoss
from rdd3d.distill.baselines.logit_kd import LogitKDConfig, LogitKDLoss
from rdd3d.distill.baselines.pp_logit import SPARSEKD_HEATMAP_WEIGHTS, PPLogitConfig, PPLogitLoss
from rdd3d.core.config_loading import config_from_dict


class Baseline(NamedTuple):
    config: type  # the method's config dataclass
    build: Callable[[Any, int, int], DistillLoss]  # (config, student_channels, teacher_channels) -> loss


#: Every baseline by its command-line name.
BASELINES: dict[str, Baseline] = {
    "hint": Baseline(HintConfig, HintLoss),
    "fg": Baseline(FGConfig, FGLoss),
    "gid-l": Baseline(GIDLogitConfig, lambda config, student, teacher: GIDLogitLoss(config)),
    "gid-f": Baseline(GIDFeatureConfig, GIDFeatureLoss),
    "lad": Baseline(LADConfig, lambda config, student, teacher: LADLoss(config)),
    "pp-logit": Baseline(PPLogitConfig, lambda config, student, teacher: PPLogitLoss(config)),
    "kd": Baseline(LogitKDConfig, lambda config, student, teacher: LogitKDLoss(config)),
}


def build_baseline(name: str, config: Any, student_channels: int, teacher_channels: int) -> DistillLoss:
    """The baseline ``name`` with ``config`` (its config dataclass, a mapping of fields, or ``None``);
    the channel counts are those of the student's and teacher's neck maps (for the adapter ψ)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known baselines: {list(BASELINES)}")
    schema, build = BASELINES[name]
    if config is None:
        config = schema()
    elif isinstance(config, Mapping):
        config = config_from_dict(schema, dict(config), source=f"baseline {name!r}")
    elif not isinstance(config, schema):
        raise TypeError(f"baseline {name!r} takes a {schema.__name__}, a mapping of its fields or None, "
                        f"got {type(config).__name__}")
    return build(config, student_channels, teacher_channels)


__all__ = [
    "BASELINES", "Baseline", "FGConfig", "FGLoss", "GIDFeatureConfig", "GIDFeatureLoss", "GIDLogitConfig",
    "GIDLogitLoss", "HintConfig", "HintLoss", "LADConfig", "LADLoss", "LogitKDConfig", "LogitKDLoss",
    "PPLogitConfig", "PPLogitLoss", "SPARSEKD_HEATMAP_WEIGHTS", "build_baseline",
]
