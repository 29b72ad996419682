"""An exported model folder run with onnxruntime: pre-processing, the ONNX files, decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rdd3d_runtime.decode import Detections, decode_center_head
from rdd3d_runtime.manifest import VOXEL_INPUTS, Manifest, ManifestError, read_manifest
from rdd3d_runtime.rulebook import build_rulebook
from rdd3d_runtime.voxelize import voxelize


class ExportedModel:
    """``predict(points)``: ``(N, len(manifest.point_columns))`` float32 points -> :class:`Detections`."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime  # only here: reading a manifest needs no onnxruntime

        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.sessions = []
        for index, graph in enumerate(self.manifest.graphs):
            path = self.folder / graph.file
            if not path.is_file():
                raise ManifestError(f"{self.folder / 'manifest.json'}: field 'graphs[{index}].file' names "
                                    f"{graph.file}, which is not in {self.folder}")
            self.sessions.append(onnxruntime.InferenceSession(str(path), options,
                                                              providers=["CPUExecutionProvider"]))

    def check_points(self, points: np.ndarray, source: str = "points") -> None:
        columns = self.manifest.point_columns
        if points.ndim != 2 or points.shape[1] != len(columns):
            raise ValueError(f"{source}: points of shape {points.shape}; the model in {self.folder} reads "
                             f"(N, {len(columns)}) points with columns {columns}")

    def inputs(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Pre-processing: the voxels and, for the voxel family, every rulebook and site set."""
        self.check_points(points)
        voxels = voxelize(points, self.manifest.voxelization)
        feeds = dict(zip(VOXEL_INPUTS, voxels))
        if self.manifest.sparse is not None:
            sites = {0: voxels.coords}
            for spec in self.manifest.sparse.rulebooks:
                rulebook = build_rulebook(sites[spec.input_sites], spec)
                sites.setdefault(spec.output_sites, rulebook.out_sites)
                feeds[f"{spec.name}_neighbours"] = rulebook.neighbours
            feeds.update({f"sites{index}": coords for index, coords in sites.items() if index > 0})
        return feeds

    def run_network(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of every ONNX file, by name (the head's raw maps among them)."""
        values = self.inputs(points)
        for session in self.sessions:
            names = [output.name for output in session.get_outputs()]
            feeds = {node.name: values[node.name] for node in session.get_inputs()}
            values.update(zip(names, session.run(names, feeds)))
        return values

    def predict(self, points: np.ndarray) -> Detections:
        if self.manifest.decode is None:
            raise NotImplementedError(
                f"{self.folder}: a {self.manifest.head} head ({self.manifest.preset}); rdd3d_runtime decodes "
                "CenterPoint heads only so far: run_network() gives its raw output maps")
        return decode_center_head(self.run_network(points), self.manifest.decode)


def detections_json(detections: Detections, manifest: Manifest) -> list[dict]:
    """One JSON object per detection: box (x y z dx dy dz yaw [vx vy]), score, label and class name."""
    return [{"box": [round(float(v), 6) for v in box], "score": round(float(score), 6), "label": int(label),
             "name": manifest.classes[int(label)]}
            for box, score, label in zip(detections.boxes, detections.scores, detections.labels)]
