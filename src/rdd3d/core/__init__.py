"""The bottom layer every other part of rdd3d builds on: the typed records passed between parts
(:mod:`.types`: point clouds, boxes, class tables, frames, detections), box geometry (:mod:`.geometry`),
safe file writes (:mod:`.fileio`), checkpoint files read with ``weights_only`` (:mod:`.checkpoint`) and
typed configs from YAML and ``--set`` (:mod:`.config_loading`), the protocols a detector and a dataset of
one's own offer (:mod:`.protocols`) and the registry of named entries (:mod:`.registry`). It imports
nothing else of rdd3d."""

from rdd3d.core.protocols import DetectionDataset, DistillableDetector
from rdd3d.core.registry import Registry
from rdd3d.core.types import Boxes3D, ClassTable, Detections, Frame, PointCloud

__all__ = ["Boxes3D", "ClassTable", "DetectionDataset", "Detections", "DistillableDetector", "Frame", "PointCloud",
           "Registry"]
