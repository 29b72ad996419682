"""The bottom layer every other part of rdd3d builds on: the typed records passed between parts
(:mod:`.types`: point clouds, boxes, class tables, frames, detections) and box geometry (:mod:`.geometry`).
It imports nothing else of rdd3d."""

from rdd3d.core.types import Boxes3D, ClassTable, Detections, Frame, PointCloud

__all__ = ["Boxes3D", "ClassTable", "Detections", "Frame", "PointCloud"]
