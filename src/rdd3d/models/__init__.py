"""Detectors: encoders, sparse 3D backbones, BEV backbones, heads, and the named presets.

Entry points: :func:`build_detector` and :func:`preset_config` (the presets of :func:`list_presets`),
:class:`Detector` built from a :class:`DetectorConfig`, :mod:`.complexity` (parameters, MACs,
``flops_report``) and :mod:`.init_from_teacher`.
"""

from rdd3d.models.detector import Detector, DetectorConfig
from rdd3d.models.presets import build_detector, list_datasets, list_presets, preset_config, teacher_of

__all__ = ["Detector", "DetectorConfig", "build_detector", "list_datasets", "list_presets", "preset_config",
           "teacher_of"]
