"""Detector building blocks: encoders, sparse 3D backbones, BEV backbones and heads.

Submodules are imported where they are used; this package imports nothing heavy itself.
Entry points: ``presets.build_detector`` (the named CenterPoint presets), ``detector.CenterPoint``,
``complexity`` (parameters, MACs, ``flops_report``) and ``init_from_teacher``.
"""
