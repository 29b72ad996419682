"""What the parts of rdd3d ask of each other, written as typed protocols.

A detector of one's own (OpenPCDet- or mmdetection3d-style) is distilled and trained by rdd3d when it
offers :class:`DistillableDetector`; a dataset of one's own trains and is scored when it offers
:class:`DetectionDataset`. Both are structural: nothing needs to inherit from them. The distillation
method's contract is :class:`rdd3d.distill.base.DistillLoss` (it needs the distiller's step record).
"""

from __future__ import annotations

from types import FunctionType
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from torch import Tensor

from rdd3d.core.types import ClassTable, Frame


@runtime_checkable
class DistillableDetector(Protocol):
    """A detector the :class:`~rdd3d.distill.distiller.Distiller` can pair with another.

    - ``model(points)``: one ``(N_i, C)`` float tensor per sample (the columns the dataset gives) -> an
      output of any structure; the distiller's taps record the intermediate maps a method reads. (A model
      called otherwise, e.g. with an OpenPCDet batch dict, gets its input from the distiller's
      ``model_input``.)
    - ``decode(output)``: one sample's detections per entry, each with ``boxes`` (K, 7+: x y z dx dy dz
      yaw [vx vy], metric LiDAR frame), ``scores`` (K,) and ``labels`` (K,) as attributes or keys.
    - where its BEV map lies: map cell ``(i, j)`` covers ``x0 + [j, j+1) * voxel_size[0] * feature_stride``
      in x (and likewise in y), with ``point_cloud_range = (x0, y0, z0, x1, y1, z1)``.
    """

    point_cloud_range: Sequence[float]
    voxel_size: Sequence[float]
    feature_stride: float

    def __call__(self, points: list[Tensor]) -> Any: ...

    def decode(self, output: Any) -> Sequence[Any]: ...


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` (its annotated attributes and the methods its body defines) that ``obj``
    lacks: empty when it conforms. For messages that say what a foreign class must add."""
    methods = [name for name, value in vars(protocol).items()
               if isinstance(value, FunctionType) and value.__qualname__.startswith(f"{protocol.__name__}.")]
    return [name for name in [*protocol.__annotations__, *methods] if not hasattr(obj, name)]


@runtime_checkable
class DetectionDataset(Protocol):
    """A split that rdd3d trains on and scores: indexable frames with their class table.

    ``evaluation`` names the metric that applies to it, an entry of ``rdd3d.evaluation.base.EVALUATIONS``
    (``"nuscenes"``: mAP/NDS with per-class ``class_ranges`` in metres; ``"kitti"``: KITTI AP).
    """

    classes: ClassTable
    class_ranges: Mapping[str, float]
    evaluation: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Frame: ...
