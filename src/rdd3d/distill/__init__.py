"""Knowledge distillation: taps into any detector, region proposals and pooling, RDD and its baselines."""

from rdd3d.distill.proposals import Proposals, select_proposals
from rdd3d.distill.rdd import RDDConfig, RDDLoss, RegionPairs
from rdd3d.distill.regions import pool_boxes

__all__ = ["Proposals", "RDDConfig", "RDDLoss", "RegionPairs", "pool_boxes", "select_proposals"]
