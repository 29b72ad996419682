"""rdd3d.export: ONNX files that onnxruntime runs to PyTorch's outputs, a manifest that says how to feed
and decode them, and clear refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from exported_models import PILLAR_PRESET, write_checkpoint

import rdd3d.export.exporter as exporter
from rdd3d.cli import main
from rdd3d.core.checkpoint import CheckpointError, save_checkpoint
from rdd3d.export import ExportError, export_checkpoint, export_detector
from rdd3d.export.graphs import flat_head_outputs, head_output_names
from rdd3d.models.complexity import reference_points
from rdd3d.models.presets import build_detector
from rdd3d_runtime import ExportedModel, ManifestError, read_manifest
from rdd3d_runtime.anchor_decode import anchors_at


def _largest_difference(exported, points: torch.Tensor) -> float:
    """|onnxruntime - PyTorch| over every head output on ``points``."""
    onnx_outputs = ExportedModel(exported.folder).run_network(points.numpy())
    with torch.no_grad():
        predictions = exported.detector([points]).predictions
    reference = dict(zip(head_output_names(exported.detector), flat_head_outputs(predictions)))
    return max(float(np.abs(onnx_outputs[name] - value.numpy()).max()) for name, value in reference.items())


@pytest.mark.parametrize("export", ["pillar", "voxel", "anchor_pillar", "anchor_voxel"])
def test_onnxruntime_gives_pytorchs_head_maps_on_another_frame(export, export_of):
    exported = export_of(export)
    manifest = read_manifest(exported.folder)
    assert max(manifest.verification.values()) <= exporter.TOLERANCE
    assert _largest_difference(exported, exported.points) <= exporter.TOLERANCE


@pytest.mark.parametrize("export", ["pillar", "voxel", "anchor_pillar", "anchor_voxel"])
def test_onnxruntime_gives_pytorchs_head_maps_on_real_frames(export, export_of, real_data):
    """The nuScenes keyframe and KITTI scan 000008, in the synthetic presets' columns (time lag 0)."""
    exported = export_of(export)
    kitti = reference_points("kitti")
    for points in (reference_points("nuscenes"), torch.cat([kitti, torch.zeros_like(kitti[:, :1])], dim=1)):
        assert _largest_difference(exported, points) <= exporter.TOLERANCE


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


def test_the_anchor_head_exports_with_its_anchors_and_decode_settings(anchor_voxel_export):
    """SECOND: the plain sparse backbone and an anchor head, whose anchors the manifest describes."""
    manifest = read_manifest(anchor_voxel_export.folder)
    assert manifest.head == "anchor" and manifest.decode is None
    assert max(manifest.verification.values()) <= exporter.TOLERANCE
    head = anchor_voxel_export.detector.head
    decode = manifest.anchor_decode
    assert (decode.cls_logits, decode.box_deltas, decode.dir_logits) == ("cls_logits", "box_deltas", "dir_logits")
    assert len(decode.anchor_types) == head.num_anchor_types == 2 * len(manifest.classes)
    height, width = anchor_voxel_export.detector([anchor_voxel_export.points]).predictions.cls_logits.shape[-2:]
    rows = np.arange(height * width * head.num_anchor_types)
    np.testing.assert_array_equal(anchors_at(rows, (height, width), decode),
                                  head.anchors((height, width)).view(-1, 7).numpy())
    assert decode.score_threshold == head.config.decode.score_threshold and decode.nms.kind == "nearest_bev"


def test_a_manifest_without_anchor_decoding_is_refused_when_decoding(anchor_pillar_export, tmp_path):
    """An anchor-head export of the first manifest version (no 'anchor_decode'): its maps, not its boxes."""
    folder = tmp_path / "old"
    folder.mkdir()
    for path in anchor_pillar_export.folder.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    stored = json.loads((folder / "manifest.json").read_text())
    del stored["anchor_decode"]
    (folder / "manifest.json").write_text(json.dumps(stored))
    model = ExportedModel(folder)
    points = anchor_pillar_export.points.numpy()
    assert "cls_logits" in model.run_network(points)
    with pytest.raises(ManifestError, match=r"old/manifest\.json: no field 'anchor_decode', which says how to decode the anchor head"):
        model.predict(points)


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


def test_rdd3d_export_writes_a_checkpoints_detector_and_refuses_to_overwrite(tmp_path, capsys):
    write_checkpoint(tmp_path / "model.pt")
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
