"""Knowledge distillation: taps into any detector, region proposals and pooling, RDD and its baselines.

The public API for distilling a detector of one's own (docs/distillation.md): a :class:`Distiller` pairs
a frozen teacher with a student (both :class:`~rdd3d.core.protocols.DistillableDetector`), records their
maps through :class:`TapSpec` taps and adds the losses of :func:`build_method` (or any
:class:`DistillLoss`) to the student's detection loss; it is a trainee for :class:`rdd3d.engine.Trainer`.
"""

from rdd3d.core.protocols import DistillableDetector
from rdd3d.distill.base import METHODS, BEVGeometry, DistillLoss, DistillStep, Method, ModelView
from rdd3d.distill.distiller import Distiller, points_of
from rdd3d.distill.heads import task_dicts
from rdd3d.distill.methods import METHOD_NAMES, DistillConfig, build_method
from rdd3d.distill.proposals import Proposals, select_proposals
from rdd3d.distill.rdd import RDDConfig, RDDLoss, RegionPairs
from rdd3d.distill.regions import pool_boxes
from rdd3d.distill.taps import DETECTOR_TAPS, TapRecorder, TapSpec

__all__ = [
    "BEVGeometry", "DETECTOR_TAPS", "DistillConfig", "DistillLoss", "DistillStep", "DistillableDetector",
    "Distiller", "METHODS", "METHOD_NAMES", "Method", "ModelView", "Proposals", "RDDConfig", "RDDLoss",
    "RegionPairs", "TapRecorder", "TapSpec", "build_method", "points_of", "pool_boxes", "select_proposals",
    "task_dicts",
]
