"""Datasets, the synthetic LiDAR world, transforms and voxelisation."""

from rdd3d.data.types import Boxes3D, ClassTable, Frame, PointCloud

__all__ = ["Boxes3D", "ClassTable", "Frame", "PointCloud"]
