"""Export of trained detectors to ONNX for :mod:`rdd3d_runtime` (docs/deployment.md)."""

from rdd3d.export.exporter import DEFAULT_OPSET, ExportError, export_checkpoint, export_detector

__all__ = ["DEFAULT_OPSET", "ExportError", "export_checkpoint", "export_detector"]
