"""INT8 post-training quantisation of an export's dense part (``rdd3d export --int8``).

onnxruntime's static quantisation (``onnxruntime.quantization.quantize_static``) in QDQ form: weights
int8 (by default one scale per output channel), activations uint8 with ranges measured (min/max) on synthetic
frames that go through the runtime's own pre-processing and the fp32 files before the dense one. The
dense part is the BEV backbone, neck and head: all of ``bev_network.onnx`` (voxel family), the nodes after
the pillar scatter in ``network.onnx`` (pillar family). The pillar net (which reads metric coordinates)
and the sparse backbone stay fp32, and so, by default, do the head's last convolutions, which write the
file's outputs: quantised, every logit and box offset the decoding reads is rounded to 1/255 of its
map's range (docs/deployment.md measures what that costs). The INT8 copy is written beside the fp32 file,
and the manifest's ``int8`` field names it.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from rdd3d.core.fileio import write_bytes, write_json
from rdd3d_runtime import ExportedModel
from rdd3d_runtime.manifest import (
    DEFAULT_CALIBRATION_FRAMES, MANIFEST_NAME, GraphSpec, Int8Spec, Manifest, read_manifest,
)

#: At most this many calibration frames' intermediate outputs are held before onnxruntime folds them into
#: its ranges: a frame's feature maps are megabytes each, dozens of them.
_FRAMES_HELD = 4
_INT8_SUFFIX = ".int8.onnx"


class QuantizationError(RuntimeError):
    """An export that cannot be quantised."""


def synthetic_points(columns: Sequence[str], count: int, split: str = "train", seed: int = 0) -> list[np.ndarray]:
    """``count`` frames of a split of the synthetic world, in ``columns`` (chosen by name)."""
    from rdd3d.data.synthetic import SyntheticDataset

    frames = SyntheticDataset(split, size=count, seed=seed)
    points = []
    for index in range(count):
        cloud = frames[index].points
        missing = [name for name in columns if name not in cloud.columns]
        if missing:
            raise QuantizationError(f"the model reads the point columns {tuple(columns)}; the synthetic world "
                                    f"that calibrates INT8 has {cloud.columns}, without {missing}")
        points.append(np.ascontiguousarray(cloud.points[:, [cloud.columns.index(name) for name in columns]]))
    return points


def dense_nodes(graph, with_outputs: bool) -> list[str]:
    """Names of the nodes of an ``onnx.GraphProto`` that read, directly or through other nodes, the BEV
    canvas of a pillar scatter (``ScatterND``), or every node where there is no scatter; without the nodes
    that write the graph's outputs unless ``with_outputs``."""
    scatters = [node for node in graph.node if node.op_type == "ScatterND"]
    reached = set(scatters[0].output) if scatters else None
    outputs = {output.name for output in graph.output}
    names = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if reached is not None:
            if not reached.intersection(node.input):
                continue
            reached.update(node.output)
        if with_outputs or not outputs.intersection(node.output):
            names.append(node.name)
    return names


class _CalibrationFrames:
    """The inputs of the dense file, frame by frame: an onnxruntime ``CalibrationDataReader`` (which counts
    any class with ``get_next`` as one, so that this module imports onnxruntime only when it quantises).
    ``set_range`` lets onnxruntime measure the frames a few at a time (``CalibStridedMinMax``)."""

    def __init__(self, model: ExportedModel, graph: GraphSpec, frames: Sequence[np.ndarray]) -> None:
        self.model, self.names, self.frames = model, [spec.name for spec in graph.inputs], frames
        self.set_range(0, len(frames))

    def __len__(self) -> int:
        return len(self.frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iterator = self._feeds(self.frames[start_index:end_index])

    def _feeds(self, frames: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for points in frames:
            values = self.model.run_network(points)
            yield {name: values[name] for name in self.names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)


def quantize_export(folder: str | Path, calibration_frames: int = DEFAULT_CALIBRATION_FRAMES,
                    per_channel: bool = True, quantize_outputs: bool = False, seed: int = 0) -> Manifest:
    """Write an INT8 copy of the dense file of the export in ``folder``, calibrated on ``calibration_frames``
    frames of the synthetic world's training split, and record it in the manifest with its largest
    difference to fp32 on the first validation frame. ``per_channel``: one weight scale per output
    channel, or one per tensor; ``quantize_outputs``: the nodes that write the head's maps too."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx
    import onnxruntime

    if calibration_frames < 1:
        raise QuantizationError(f"calibration_frames must be >= 1, got {calibration_frames}")
    folder = Path(folder)
    manifest = read_manifest(folder)
    model = ExportedModel(folder)
    dense = manifest.graphs[-1]
    int8_file = dense.file.removesuffix(".onnx") + _INT8_SUFFIX
    frames = synthetic_points(manifest.point_columns, calibration_frames, "train", seed)
    reader = _CalibrationFrames(model, dense, frames)
    with tempfile.TemporaryDirectory() as scratch:
        prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / int8_file
        quant_pre_process(folder / dense.file, prepared)  # shape inference and constant folding first
        nodes = dense_nodes(onnx.load(prepared).graph, with_outputs=quantize_outputs)
        quantize_static(prepared, quantized, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        extra_options={"CalibStridedMinMax": math.gcd(calibration_frames, _FRAMES_HELD)})
        write_bytes(folder / int8_file, quantized.read_bytes())
    int8_session = onnxruntime.InferenceSession(str(folder / int8_file), providers=["CPUExecutionProvider"])
    values = model.run_network(synthetic_points(manifest.point_columns, 1, "val", seed)[0])
    names = [output.name for output in int8_session.get_outputs()]
    outputs = int8_session.run(names, {node.name: values[node.name] for node in int8_session.get_inputs()})
    difference = {name: float(np.abs(found - values[name]).max()) for name, found in zip(names, outputs)}
    manifest = dataclasses.replace(manifest, int8=Int8Spec(
        files={dense.file: int8_file}, calibration_frames=calibration_frames, quant_format="QDQ",
        activation_type="uint8", weight_type="int8", per_channel=per_channel, outputs_quantized=quantize_outputs,
        quantized_nodes=len(nodes),
        difference=difference))
    write_json(folder / MANIFEST_NAME, manifest.to_json())
    return manifest
