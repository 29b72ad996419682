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

from typing import Any, Mapping

from rdd3d.core.config_loading import config_from_dict
from rdd3d.distill.base import METHODS, DistillLoss, Method
# Each module registers its methods in METHODS when imported; in the paper's order.
from rdd3d.distill.baselines.hint import HintConfig, HintLoss
from rdd3d.distill.baselines.fg import FGConfig, FGLoss
from rdd3d.distill.baselines.gid import GIDFeatureConfig, GIDFeatureLoss, GIDLogitConfig, GIDLogitLoss
from rdd3d.distill.baselines.lad import LADConfig, LADLoss
from rdd3d.distill.baselines.pp_logit import SPARSEKD_HEATMAP_WEIGHTS, PPLogitConfig, PPLogitLoss
from rdd3d.distill.baselines.logit_kd import LogitKDConfig, LogitKDLoss

#: The paper's baselines by command-line name (every method but RDD).
BASELINES: dict[str, Method] = {name: method for name, method in METHODS.items() if name != "rdd"}


def build_baseline(name: str, config: Any, student_channels: int, teacher_channels: int) -> DistillLoss:
    """The baseline ``name`` with ``config`` (its config dataclass, a mapping of fields, or ``None``);
    the channel counts are those of the student's and teacher's neck maps (for the adapter ψ)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known baselines: {list(BASELINES)}")
    method = BASELINES[name]
    if config is None:
        config = method.config()
    elif isinstance(config, Mapping):
        config = config_from_dict(method.config, dict(config), source=f"baseline {name!r}")
    elif not isinstance(config, method.config):
        raise TypeError(f"baseline {name!r} takes a {method.config.__name__}, a mapping of its fields or None, "
                        f"got {type(config).__name__}")
    return method.loss.from_config(config, student_channels, teacher_channels)


__all__ = [
    "BASELINES", "FGConfig", "FGLoss", "GIDFeatureConfig", "GIDFeatureLoss", "GIDLogitConfig",
    "GIDLogitLoss", "HintConfig", "HintLoss", "LADConfig", "LADLoss", "LogitKDConfig", "LogitKDLoss",
    "PPLogitConfig", "PPLogitLoss", "SPARSEKD_HEATMAP_WEIGHTS", "build_baseline",
]
