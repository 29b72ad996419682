"""What a distillation loss sees in one training step, and the interface every method implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from rdd3d.core.registry import Registry
from rdd3d.data.collate import DetectionBatch
from rdd3d.core.types import Detections
from rdd3d.models.heads.targets import BEVGrid


@dataclass(frozen=True)
class BEVGeometry:
    """Where a model's BEV map lies in metres: cell ``(row i, column j)`` covers
    ``x in x0 + [j, j+1) * cell_x`` and ``y in y0 + [i, i+1) * cell_y``."""

    point_cloud_range: tuple[float, ...]  # x0 y0 z0 x1 y1 z1
    voxel_size: tuple[float, ...]  # x y z
    feature_stride: float  # voxels (or pillars) per map cell

    @classmethod
    def of(cls, detector: nn.Module) -> "BEVGeometry":
        """Read from a detector exposing ``point_cloud_range``, ``voxel_size`` and ``feature_stride``."""
        missing = [name for name in ("point_cloud_range", "voxel_size", "feature_stride") if not hasattr(detector, name)]
        if missing:
            raise ValueError(f"{type(detector).__name__} lacks {missing}: a distilled detector must say where its "
                             f"BEV map lies (see docs/distillation.md)")
        return cls(tuple(detector.point_cloud_range), tuple(detector.voxel_size), float(detector.feature_stride))

    @property
    def cell_size(self) -> tuple[float, float]:
        return self.voxel_size[0] * self.feature_stride, self.voxel_size[1] * self.feature_stride

    def grid(self, map_size: tuple[int, int]) -> BEVGrid:
        """The head's view of an ``(H, W)`` map lying here (for Gaussian areas and box cells)."""
        return BEVGrid.from_voxels(self.point_cloud_range, self.voxel_size, self.feature_stride, map_size)

    def metric_to_cells(self, xy: Tensor) -> Tensor:
        """``(..., 2)`` metric x, y -> continuous map coordinates (column, row); cell centres at +0.5."""
        origin = xy.new_tensor(self.point_cloud_range[:2])
        return (xy - origin) / xy.new_tensor(self.cell_size)


@dataclass
class ModelView:
    """One model in one step: its output, its tapped intermediate tensors, its BEV geometry."""

    model: nn.Module
    output: Any
    taps: dict[str, Any]
    geometry: BEVGeometry
    _decoded: list | None = field(default=None, repr=False)

    def tap(self, name: str, reader: str) -> Any:
        """The recorded output of tap ``name``; ``reader`` (the method asking) is named in the error."""
        if name not in self.taps:
            raise ValueError(f"{reader}: needs the tap '{name}' of {type(self.model).__name__}, which records only "
                             f"{sorted(self.taps)}; declare it in the distiller's taps (see docs/distillation.md)")
        return self.taps[name]

    def detections(self) -> list[Detections]:
        """The model's decoded detections of this step, one :class:`Detections` per sample (computed once,
        without gradient; a ``decode`` giving dataclasses or dicts is read by field name)."""
        if self._decoded is None:
            with torch.no_grad():
                self._decoded = [Detections.of(found) for found in self.model.decode(self.output)]
        return self._decoded


@dataclass
class DistillStep:
    batch: DetectionBatch
    teacher: ModelView  # computed without gradient
    student: ModelView


class DistillLoss(nn.Module):
    """A distillation method. Its parameters (adapters) train with the student.

    ``forward(step)`` returns already-weighted loss terms named ``"<method>/<term>"``; the distiller
    adds them to the student's detection loss.
    """

    @classmethod
    def from_config(cls, config: Any, student_channels: int, teacher_channels: int) -> "DistillLoss":
        """The loss for its options ``config``; the channel counts are those of the student's and the teacher's
        BEV maps, which a method with an adapter ψ overrides this to use."""
        return cls(config)

    def forward(self, step: DistillStep) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def detection_targets(self, step: DistillStep) -> tuple[Sequence[Tensor], Sequence[Tensor]] | None:
        """Label-assignment methods (LAD) return the targets the student's detection loss should use
        instead of the ground truth; every other method returns ``None``."""
        return None


@dataclass(frozen=True)
class Method:
    """A distillation method as configs and the command line name it (``distill.method``)."""

    name: str  # e.g. "gid-l"
    config: type  # its options dataclass, read from the config block ``distill.<block>``
    loss: type[DistillLoss]
    # the options that scale its loss terms, each with the terms it multiplies (for scale calibration);
    # empty for a method without a loss term of its own (LAD changes the student's targets)
    weights: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def block(self) -> str:
        """The field of the run config's ``distill`` section holding this method's options."""
        return self.name.replace("-", "_")


#: Every distillation method, each registered at the end of the module that defines its loss.
METHODS: Registry[Method] = Registry("distillation method")


def adapter(in_channels: int, out_channels: int) -> nn.Module:
    """ψ: 1×1 conv + BatchNorm + ReLU mapping student channels to teacher channels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


DetectionLoss = Callable[[nn.Module, Any, DetectionBatch], dict[str, Tensor]]
