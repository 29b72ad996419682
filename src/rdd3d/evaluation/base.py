"""The metrics datasets are scored by, one registry entry each (a dataset's ``evaluation`` names its entry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from rdd3d.core.protocols import DetectionDataset
from rdd3d.core.registry import Registry
from rdd3d.core.types import Frame


class MetricResult(Protocol):
    """The full result of a metric (``NuScenesMetrics``, ``KittiResult``)."""

    def format_table(self) -> str: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class Evaluation:
    """A metric: how detections on a dataset's frames are scored and which scalars are logged of the result."""

    name: str  # what DetectionDataset.evaluation names, e.g. "kitti"
    #: (dataset, frames, detections: one per frame with boxes, scores, labels) -> the full result
    evaluate: Callable[[DetectionDataset, Sequence[Frame], Sequence[Any]], MetricResult]
    #: (result, the dataset's class names) -> the scalars logged and tabulated; "mAP" is always one of them
    summary: Callable[[Any, Sequence[str]], dict[str, float]]
    #: class names -> the keys ``summary`` gives, known before any result (what ``trainer.best_metric`` may name)
    summary_names: Callable[[Sequence[str]], tuple[str, ...]]


#: Every metric a dataset may name, each registered at the end of the module that defines it
#: (``rdd3d.evaluation.detection_metrics``: "nuscenes"; ``rdd3d.evaluation.kitti_predictions``: "kitti").
EVALUATIONS: Registry[Evaluation] = Registry("evaluation")
