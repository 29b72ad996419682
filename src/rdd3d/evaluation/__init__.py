"""Evaluation: KITTI AP (:mod:`.kitti_metrics`, :mod:`.kitti_format`) and nuScenes-style metrics; box
overlaps come from :mod:`rdd3d.core.geometry`. Import the submodules directly; this package imports
nothing heavy."""
