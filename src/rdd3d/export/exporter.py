"""``rdd3d export``: a trained detector to ONNX files and a ``manifest.json`` that
:mod:`rdd3d_runtime` runs without PyTorch (docs/deployment.md).

The files are written, then run with onnxruntime on one synthetic frame and compared with the detector's
own forward pass; the manifest is written only when every output agrees within the tolerance, so a folder
without a manifest is an export that failed.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

import rdd3d
from rdd3d.core.fileio import write_bytes, write_json
from rdd3d.data.voxelize import VoxelBatch
from rdd3d.engine.runs import detector_from_checkpoint
from rdd3d.export.graphs import (
    BEV_MAP, BEVNetwork, PillarNetwork, SparseBackboneNetwork, distinct_rulebooks, flat_head_outputs,
    head_output_names, sparse_input_names, sparse_rulebook_plan, task_output_names,
)
from rdd3d.models.detector import Detector
from rdd3d.models.heads import AnchorHead, CenterHead, NMSConfig
from rdd3d.models.heads.targets import LOG_SIZE_RANGE
from rdd3d.models.sparse.rulebook import ConvGeometry, build_rulebook
from rdd3d_runtime.manifest import (
    DEFAULT_OPSET, FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, MIN_OPSET, VOXEL_INPUTS, AnchorDecodeSpec,
    CenterDecodeSpec, GraphSpec, Manifest, NMSSpec, RulebookSpec, SparseSpec, TaskSpec, TensorSpec, VoxelizationSpec,
)

#: Largest |onnxruntime - PyTorch| accepted on any output (fp32).
TOLERANCE = 1e-4
VERIFICATION_POINTS = 20000

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64"}

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """An export that cannot be made or whose ONNX files disagree with PyTorch."""


@dataclass(frozen=True)
class _Graph:
    """One ONNX file to write: a traceable module and how its inputs and outputs are named."""

    file: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]]


def export_checkpoint(checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET,
                      overwrite: bool = False) -> Manifest:
    """Export the detector of a ``rdd3d train`` / ``rdd3d distill`` checkpoint into the folder ``out``."""
    detector, config = detector_from_checkpoint(checkpoint)
    return export_detector(detector, out, preset=config.model.preset, dataset=config.data.dataset, opset=opset,
                           overwrite=overwrite)


def export_detector(detector: Detector, out: str | Path, preset: str, dataset: str, opset: int = DEFAULT_OPSET,
                    overwrite: bool = False) -> Manifest:
    """Write ``detector``'s ONNX files into ``out``, check them against PyTorch, then write the manifest."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset}: rdd3d exports need opset >= {MIN_OPSET}")
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"rdd3d export needs {' and '.join(missing)}: pip install 'rdd3d[export]'")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"{out} exists and is not empty; pass overwrite (--overwrite) to replace the export")
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # a failed re-export must not leave the old manifest
    detector = detector.cpu().eval()
    plan = None if detector.config.encoder == "pillar" else sparse_rulebook_plan(detector)
    points = verification_points(detector)
    voxels = detector.voxelizer([points])
    feeds = _preprocessing(voxels, plan)
    with torch.no_grad():
        reference = dict(zip(head_output_names(detector), flat_head_outputs(detector([points]).predictions)))
        examples = {**feeds, BEV_MAP: _bev_map(detector, voxels)} if plan else feeds
    graphs = _graphs(detector, plan)
    sessions = [_write_graph(graph, examples, out / graph.file, opset) for graph in graphs]
    values = _run_in_order(sessions, {name: value.numpy() for name, value in feeds.items()})
    differences = {name: float(np.abs(values[name] - expected.numpy()).max()) for name, expected in reference.items()}
    worst = max(differences, key=differences.get)
    if differences[worst] > TOLERANCE:
        raise ExportError(f"{out}: onnxruntime and PyTorch differ by {differences[worst]:.3g} on output {worst!r} "
                          f"(tolerance {TOLERANCE}); the ONNX files are left there without a manifest")
    manifest = Manifest(
        format=FORMAT_NAME, format_version=FORMAT_VERSION, rdd3d_version=rdd3d.__version__, opset=opset,
        preset=preset, dataset=dataset, family="pillar" if plan is None else "voxel",
        head="center" if isinstance(detector.head, CenterHead) else "anchor",
        point_columns=detector.config.point_columns, classes=detector.classes.names,
        voxelization=_voxelization(detector), sparse=None if plan is None else SparseSpec(distinct_rulebooks(plan)),
        decode=_center_decode(detector),
        graphs=tuple(_graph_spec(graph, session) for graph, session in zip(graphs, sessions)),
        verification=differences,
        anchor_decode=_anchor_decode(detector),
    )
    write_json(out / MANIFEST_NAME, manifest.to_json())
    log.info("exported %s to %s (largest difference to PyTorch %.2g on %s)", preset, out, differences[worst], worst)
    return manifest


def _run_in_order(sessions, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the files in order, each on what pre-processing and the files before it made, by name."""
    for session in sessions:
        names = [output.name for output in session.get_outputs()]
        values.update(zip(names, session.run(names, {node.name: values[node.name] for node in session.get_inputs()})))
    return values


def verification_points(detector: Detector, count: int = VERIFICATION_POINTS, seed: int = 0) -> Tensor:
    """A synthetic frame in the detector's columns: half the points spread over the range (a few beyond
    it, which voxelisation drops), half in blobs of a metre, so that pillars and voxels hold several."""
    generator = torch.Generator().manual_seed(seed)
    config = detector.config
    low, high = torch.tensor(config.point_cloud_range[:3]), torch.tensor(config.point_cloud_range[3:])
    spread = low - 1 + (high - low + 2) * torch.rand(count // 2, 3, generator=generator)
    centres = low + (high - low) * torch.rand(20, 3, generator=generator)
    blobs = centres[torch.randint(0, 20, (count - count // 2,), generator=generator)]
    blobs = blobs + torch.randn(len(blobs), 3, generator=generator)
    extra = torch.rand(count, len(config.point_columns) - 3, generator=generator)
    return torch.cat([torch.cat([spread, blobs]), extra], dim=1)


def _sparse_axes(plan: dict[str, RulebookSpec]) -> dict[str, dict[int, str]]:
    """Dynamic axes of the sparse inputs, named after their site sets, so that onnxruntime knows which
    counts are equal: a neighbour table has one row per output site."""
    def sites(index: int) -> str:
        return "voxels" if index == 0 else f"sites{index}"

    axes = {f"{spec.name}_neighbours": {0: sites(spec.output_sites)} for spec in distinct_rulebooks(plan)}
    axes.update({name: {0: name} for name in sparse_input_names(plan) if name.startswith("sites")})
    return axes


def _graphs(detector: Detector, plan: dict[str, RulebookSpec] | None) -> list[_Graph]:
    outputs = head_output_names(detector)
    voxel_axes = {name: {0: "voxels"} for name in VOXEL_INPUTS}
    if plan is None:
        return [_Graph("network.onnx", PillarNetwork(detector).eval(), VOXEL_INPUTS, outputs, voxel_axes)]
    sparse_inputs = sparse_input_names(plan)
    return [
        _Graph("sparse_backbone.onnx", SparseBackboneNetwork(detector, plan).eval(), (*VOXEL_INPUTS, *sparse_inputs),
               (BEV_MAP,), {**voxel_axes, **_sparse_axes(plan)}),
        _Graph("bev_network.onnx", BEVNetwork(detector).eval(), (BEV_MAP,), outputs, {}),
    ]


def _preprocessing(voxels: VoxelBatch, plan: dict[str, RulebookSpec] | None) -> dict[str, Tensor]:
    """What pre-processing gives the first file for one frame, computed by rdd3d's own code: the voxels,
    and for the voxel family every rulebook and site set."""
    feeds = dict(zip(VOXEL_INPUTS, (voxels.features, voxels.num_points, voxels.coords[:, 1:].contiguous())))
    if plan is None:
        return feeds
    sites = {0: voxels.coords}
    for spec in distinct_rulebooks(plan):
        geometry = ConvGeometry(spec.kernel_size, spec.stride, spec.padding, spec.subm)
        rulebook = build_rulebook(sites[spec.input_sites], spec.spatial_shape, geometry)
        sites.setdefault(spec.output_sites, rulebook.out_indices)
        taps = torch.repeat_interleave(torch.arange(len(rulebook.pairs_per_offset)),
                                       torch.tensor(rulebook.pairs_per_offset))
        neighbours = torch.full((len(rulebook.out_indices), len(rulebook.pairs_per_offset)), rulebook.num_inputs)
        neighbours[rulebook.out_rows, taps] = rulebook.in_rows
        feeds[f"{spec.name}_neighbours"] = neighbours
    feeds.update({f"sites{index}": coords[:, 1:].contiguous() for index, coords in sites.items() if index > 0})
    return feeds


def _bev_map(detector: Detector, voxels: VoxelBatch) -> Tensor:
    """The voxel family's BEV map, through the detector's own encoder and sparse backbone."""
    voxel_features = detector.encoder(voxels.features, voxels.num_points)
    return detector.backbone_3d(voxel_features, voxels.coords, voxels.batch_size).features


def _write_graph(graph: _Graph, feeds: Mapping[str, Tensor], path: Path, opset: int):
    import onnxruntime

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter: torch.export cannot yet trace the data-dependent voxel counts here
        # without rewriting the models; it warns that it is deprecated and that traced sizes are dynamic.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, tuple(feeds[name] for name in graph.inputs), buffer, dynamo=False,
                          opset_version=opset, input_names=list(graph.inputs), output_names=list(graph.outputs),
                          dynamic_axes={name: dict(axes) for name, axes in graph.dynamic_axes.items()})
    write_bytes(path, buffer.getvalue())
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _graph_spec(graph: _Graph, session) -> GraphSpec:
    def specs(nodes) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(node.name, tuple(node.shape), _ORT_DTYPES[node.type]) for node in nodes)

    return GraphSpec(graph.file, specs(session.get_inputs()), specs(session.get_outputs()))


def _voxelization(detector: Detector) -> VoxelizationSpec:
    voxelizer = detector.voxelizer.test_voxelizer
    return VoxelizationSpec(voxelizer.point_cloud_range, voxelizer.voxel_size, voxelizer.grid_size,
                            voxelizer.max_points_per_voxel, voxelizer.max_voxels)


def _center_decode(detector: Detector) -> CenterDecodeSpec | None:
    head = detector.head
    if not isinstance(head, CenterHead):
        return None
    tasks = tuple(TaskSpec(tuple(labels), heatmap, box_code)
                  for labels, (heatmap, *box_code) in zip(head.task_labels, task_output_names(head), strict=True))
    decode, nms = head.config.decode, head.config.decode.nms
    return CenterDecodeSpec(
        tasks=tasks,
        map_origin=head.point_cloud_range[:2],
        cell_size=tuple(size * head.feature_stride for size in head.voxel_size[:2]),
        log_size_range=LOG_SIZE_RANGE,
        max_per_task=decode.max_per_task,
        score_threshold=decode.score_threshold,
        post_center_range=decode.post_center_range,
        nms=_nms_spec(nms),
        max_per_sample=decode.max_per_sample,
        half_period_labels=head.half_period_labels,
    )


def _anchor_decode(detector: Detector) -> AnchorDecodeSpec | None:
    head = detector.head
    if not isinstance(head, AnchorHead):
        return None
    config = head.config
    cls_logits, box_deltas, *dir_logits = head_output_names(detector)
    x0, y0, _, x1, y1, _ = head.point_cloud_range
    return AnchorDecodeSpec(
        cls_logits=cls_logits,
        box_deltas=box_deltas,
        dir_logits=dir_logits[0] if dir_logits else None,
        anchor_types=tuple(kind for spec in config.anchors for kind in spec.anchor_types()),
        anchor_range=(x0, y0, x1, y1),
        align_center=config.align_center,
        log_size_range=LOG_SIZE_RANGE,
        dir_offset=config.dir_offset,
        dir_limit_offset=config.dir_limit_offset,
        num_dir_bins=config.num_dir_bins,
        score_threshold=config.decode.score_threshold,
        class_agnostic_nms=config.decode.class_agnostic_nms,
        nms=_nms_spec(config.decode.nms),
    )


def _nms_spec(nms: NMSConfig) -> NMSSpec:
    return NMSSpec(nms.kind, nms.iou_threshold, nms.pre_max_size, nms.post_max_size, nms.circle_distances)
