"""The nuScenes detection classes and how far out each is labelled for detection (what the dataset defines;
the metric's settings built from it are :func:`rdd3d.evaluation.nuscenes_metrics.detection_cvpr_2019`)."""

#: Metres from the ego vehicle (x, y) within which objects of each detection class count: the devkit's
#: ``detection_cvpr_2019`` class ranges, in its ``DETECTION_NAMES`` order.
DETECTION_RANGES = {"car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50,
                    "pedestrian": 40, "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30}
#: The devkit's detection classes (``nuscenes.eval.detection.constants.DETECTION_NAMES``).
NUSCENES_CLASSES = tuple(DETECTION_RANGES)
