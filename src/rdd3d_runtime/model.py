"""An exported model folder run with onnxruntime: pre-processing, the ONNX files, decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rdd3d_runtime.anchor_decode import decode_anchor_head
from rdd3d_runtime.decode import Detections, decode_center_head
from rdd3d_runtime.manifest import MANIFEST_NAME, VOXEL_INPUTS, Manifest, ManifestError, read_manifest
from rdd3d_runtime.rulebook import build_rulebook
from rdd3d_runtime.voxelize import voxelize

PRECISIONS = ("fp32", "int8")


class ExportedModel:
    """``predict(points)``: ``(N, len(manifest.point_columns))`` float32 points -> :class:`Detections`.

    ``precision="int8"`` runs the INT8 copies of the dense part that ``rdd3d export --int8`` wrote in place
    of their fp32 files (``manifest.int8.files``)."""

    def __init__(self, folder: str | Path, threads: int | None = None, precision: str = "fp32") -> None:
        import onnxruntime  # only here: reading a manifest needs no onnxruntime

        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        self.precision = precision
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.sessions = [onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                         for path in self.files()]

    def files(self) -> list[Path]:
        """The ONNX files this precision runs, in order; each checked to exist."""
        manifest_path = self.folder / MANIFEST_NAME
        replacements = {}
        if self.precision == "int8":
            if self.manifest.int8 is None:
                raise ManifestError(f"{manifest_path}: no field 'int8': this export has no INT8 files; export "
                                    "it with `rdd3d export --int8`")
            replacements = self.manifest.int8.files
        paths = []
        for index, graph in enumerate(self.manifest.graphs):
            file = replacements.get(graph.file, graph.file)
            field = f"int8.files[{graph.file!r}]" if graph.file in replacements else f"graphs[{index}].file"
            if not (self.folder / file).is_file():
                raise ManifestError(f"{manifest_path}: field '{field}' names {file}, which is not in {self.folder}")
            paths.append(self.folder / file)
        return paths

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

    def run_graphs(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ONNX files in order, each reading pre-processing's ``values`` and the earlier files' outputs
        by name; returns ``values`` with every output added."""
        for session in self.sessions:
            names = [output.name for output in session.get_outputs()]
            feeds = {node.name: values[node.name] for node in session.get_inputs()}
            values.update(zip(names, session.run(names, feeds)))
        return values

    def run_network(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of every ONNX file, by name (the head's raw maps among them)."""
        return self.run_graphs(self.inputs(points))

    def decode(self, outputs: dict[str, np.ndarray]) -> Detections:
        """The detections in the head's raw maps (``run_network``'s result)."""
        manifest = self.manifest
        if manifest.head == "center" and manifest.decode is not None:
            return decode_center_head(outputs, manifest.decode)
        if manifest.head == "anchor" and manifest.anchor_decode is not None:
            return decode_anchor_head(outputs, manifest.anchor_decode)
        field = "decode" if manifest.head == "center" else "anchor_decode"
        raise ManifestError(f"{self.folder / MANIFEST_NAME}: no field {field!r}, which says how to decode the "
                            f"{manifest.head} head of {manifest.preset} (an export of an older rdd3d): export it "
                            "again; run_network() gives its raw output maps")

    def predict(self, points: np.ndarray) -> Detections:
        return self.decode(self.run_network(points))


def detections_json(detections: Detections, manifest: Manifest) -> list[dict]:
    """One JSON object per detection: box (x y z dx dy dz yaw [vx vy]), score, label and class name."""
    return [{"box": [round(float(v), 6) for v in box], "score": round(float(score), 6), "label": int(label),
             "name": manifest.classes[int(label)]}
            for box, score, label in zip(detections.boxes, detections.scores, detections.labels)]
