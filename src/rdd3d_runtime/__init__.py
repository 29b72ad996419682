"""Run a detector exported by ``rdd3d export`` with NumPy and onnxruntime only: no torch, no rdd3d.

    model = ExportedModel("exported/")
    detections = model.predict(read_points("frame.bin", model.manifest.point_columns))
"""

from rdd3d_runtime.decode import Detections
from rdd3d_runtime.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, Manifest, ManifestError, read_manifest
from rdd3d_runtime.model import ExportedModel, detections_json
from rdd3d_runtime.points import PointFileError, read_points

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Detections", "ExportedModel", "Manifest", "ManifestError",
    "PointFileError", "detections_json", "read_manifest", "read_points",
]
