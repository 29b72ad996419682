"""Evaluation: KITTI AP (:mod:`.kitti_metrics`; result files and the ``"kitti"`` metric of a dataset:
:mod:`.kitti_predictions`) and nuScenes-style metrics (:mod:`.nuscenes_metrics`, :mod:`.detection_metrics`,
submissions: :mod:`.nuscenes_io`, :mod:`.nuscenes_export`); the registry of metrics a dataset names is
:data:`.base.EVALUATIONS`. KITTI's file formats are the dataset's (:mod:`rdd3d.data.kitti.format`); box
overlaps come from :mod:`rdd3d.core.geometry`. Import the submodules directly; this package imports nothing
heavy."""
