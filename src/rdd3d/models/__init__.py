"""Detector building blocks: encoders, sparse 3D backbones, BEV backbones and heads.

Submodules are imported where they are used; this package imports nothing heavy itself.
"""
