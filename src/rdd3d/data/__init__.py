"""Datasets, the synthetic LiDAR world, transforms and voxelisation (the records they pass are in
:mod:`rdd3d.core.types`)."""
