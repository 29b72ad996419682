"""rdd3d.export: ONNX files that onnxruntime runs to PyTorch's outputs, a manifest that says how to feed
and decode them, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from exported_models import PILLAR_PRESET

import rdd3d.export.exporter as exporter
from rdd3d.cli import main
from rdd3d.core.checkpoint import CheckpointError, save_checkpoint
from rdd3d.engine.config import RunConfig
from rdd3d.engine.runs import build_model, plain_config
from rdd3d.export import ExportError, export_checkpoint, export_detector
from rdd3d.export.graphs import flat_head_outputs, head_output_names
from rdd3d.models.presets import build_detector
from rdd3d_runtime import ExportedModel, read_manifest


def _largest_difference(exported) -> float:
    """|onnxruntime - PyTorch| over every head output, on a frame the export did not check itself."""
    onnx_outputs = ExportedModel(exported.folder).run_network(exported.points.numpy())
    with torch.no_grad():
        predictions = exported.detector([exported.points]).predictions
    reference = dict(zip(head_output_names(exported.detector), flat_head_outputs(predictions)))
    return max(float(np.abs(onnx_outputs[name] - value.numpy()).max()) for name, value in reference.items())


@pytest.mark.parametrize("family", ["pillar", "voxel"])
def test_onnxruntime_gives_pytorchs_head_maps_on_another_frame(family, pillar_export, voxel_export):
    exported = pillar_export if family == "pillar" else voxel_export
    manifest = read_manifest(exported.folder)
    assert max(manifest.verification.values()) <= exporter.TOLERANCE
    assert _largest_difference(exported) <= exporter.TOLERANCE


def test_the_pillar_family_is_one_file_with_a_dynamic_voxel_count(pillar_export):
    manifest = read_manifest(pillar_export.folder)
    assert (manifest.family, manifest.head, manifest.preset) == ("pillar", "center", PILLAR_PRESET)
    assert [graph.file for graph in manifest.graphs] == ["network.onnx"]
    inputs = {spec.name: spec for spec in manifest.graphs[0].inputs}
    assert inputs["voxel_features"].shape == ("voxels", manifest.voxelization.max_points_per_voxel, 5)
    assert inputs["voxel_coords"].dtype == "int32"
    heatmap = next(spec for spec in manifest.graphs[0].outputs if spec.name == "task0_heatmap")
    assert all(isinstance(size, int) for size in heatmap.shape)  # a fixed grid
    model = onnx.load(pillar_export.folder / "network.onnx")
    assert {entry.domain for entry in model.opset_import} == {""}  # standard operators only
    assert model.opset_import[0].version == exporter.DEFAULT_OPSET
    assert "ScatterND" in {node.op_type for node in model.graph.node}  # the pillar scatter


def test_the_voxel_family_ships_the_sparse_backbone_with_its_rulebooks_as_inputs(voxel_export):
    manifest = read_manifest(voxel_export.folder)
    assert [graph.file for graph in manifest.graphs] == ["sparse_backbone.onnx", "bev_network.onnx"]
    rulebooks = manifest.sparse.rulebooks
    # CenterPoint's backbone: a submanifold rulebook per resolution, a strided one between them, conv_out's
    assert [spec.subm for spec in rulebooks] == [True, False, True, False, True, False, True, False]
    sparse_inputs = {spec.name for spec in manifest.graphs[0].inputs}
    assert {f"{spec.name}_neighbours" for spec in rulebooks} <= sparse_inputs
    operators = {node.op_type for node in onnx.load(voxel_export.folder / "sparse_backbone.onnx").graph.node}
    assert {"Gather", "MatMul"} <= operators and not operators & {"Loop", "If"}


def test_the_plain_sparse_backbone_and_the_anchor_head_export_too(tmp_path):
    """SECOND: the plain sparse backbone, an anchor head (raw maps; the runtime does not decode it yet)."""
    torch.manual_seed(0)
    manifest = export_detector(build_detector("second-xs", "synthetic"), tmp_path, "second-xs", "synthetic")
    assert manifest.head == "anchor" and manifest.decode is None
    assert max(manifest.verification.values()) <= exporter.TOLERANCE
    with pytest.raises(NotImplementedError, match="decodes CenterPoint heads only"):
        ExportedModel(tmp_path).predict(np.zeros((10, 5), dtype=np.float32))


def test_the_manifest_carries_what_decoding_needs(pillar_export):
    manifest = read_manifest(pillar_export.folder)
    head = pillar_export.detector.head
    decode = manifest.decode
    assert decode.score_threshold == head.config.decode.score_threshold
    assert [task.labels for task in decode.tasks] == [tuple(labels) for labels in head.task_labels]
    assert decode.nms.kind == "rotated" and decode.nms.post_max_size == 83
    assert manifest.classes == pillar_export.detector.classes.names
    assert manifest.point_columns == ("x", "y", "z", "intensity", "time_lag")
    stored = json.loads((pillar_export.folder / "manifest.json").read_text())
    assert stored["format"] == "rdd3d-onnx" and stored["format_version"] == 1


def test_a_disagreement_with_pytorch_leaves_no_manifest(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "TOLERANCE", -1.0)  # any difference, even 0, is too much
    with pytest.raises(ExportError, match="differ by .* without a manifest"):
        export_detector(build_detector(PILLAR_PRESET, "synthetic"), tmp_path, PILLAR_PRESET, "synthetic")
    assert (tmp_path / "network.onnx").is_file() and not (tmp_path / "manifest.json").exists()


def _checkpoint(path, preset: str = PILLAR_PRESET) -> None:
    config = RunConfig()
    config.model.preset = preset
    weights = {f"detector.{name}": value for name, value in build_model(config).state_dict().items()}
    save_checkpoint(path, {"config": plain_config(config), "model": weights})


def test_rdd3d_export_writes_a_checkpoints_detector_and_refuses_to_overwrite(tmp_path, capsys):
    _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(out)]) == 0
    assert "network.onnx and manifest.json" in capsys.readouterr().out
    assert read_manifest(out).preset == PILLAR_PRESET
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(out), "--opset", "11"]) == 2


def test_a_checkpoint_without_a_detector_is_refused_by_name(tmp_path, capsys):
    save_checkpoint(tmp_path / "weights.pt", {"weights": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match=r"weights\.pt: not a training checkpoint of rdd3d"):
        export_checkpoint(tmp_path / "weights.pt", tmp_path / "out")
    assert main(["export", "--checkpoint", str(tmp_path / "weights.pt"), "--out", str(tmp_path / "out")]) == 1
    assert "weights.pt" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["cp-voxel-s", "cp-pillar", "second", "pointpillars-xs"])
def test_larger_presets_export_within_tolerance(preset, tmp_path):
    torch.manual_seed(0)
    manifest = export_detector(build_detector(preset, "synthetic"), tmp_path, preset, "synthetic")
    assert max(manifest.verification.values()) <= exporter.TOLERANCE
