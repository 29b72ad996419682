"""Evaluation: box geometry (:mod:`.geometry`), KITTI AP (:mod:`.kitti`, :mod:`.kitti_format`) and
nuScenes-style metrics. Import the submodules directly; this package imports nothing heavy."""
