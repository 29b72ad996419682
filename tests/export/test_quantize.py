"""rdd3d.export.quantize: an INT8 copy of the dense part beside the fp32 files, named by the manifest, that
the runtime runs in place of the fp32 file and whose outputs and detections stay close to fp32's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from exported_models import write_checkpoint

from rdd3d.cli import main
from rdd3d.core.geometry import bev_iou
from rdd3d.export.quantize import QuantizationError, quantize_export, synthetic_points
from rdd3d_runtime import ExportedModel, ManifestError, read_manifest

CALIBRATION_FRAMES = 2


def _copy(exported, folder: Path) -> Path:
    """A copy of a session export, which quantisation must not change for the other tests."""
    shutil.copytree(exported.folder, folder)
    return folder


@pytest.fixture(scope="module")
def quantized_pillar(pillar_export, tmp_path_factory) -> Path:
    folder = _copy(pillar_export, tmp_path_factory.mktemp("int8") / "pillar")
    quantize_export(folder, CALIBRATION_FRAMES)
    return folder


def _int8_weights(graph: onnx.GraphProto, op_types: tuple[str, ...]) -> dict[str, bool]:
    """For each node of ``op_types``, whether its weight (second input) comes out of a DequantizeLinear."""
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {node.name: node.input[1] in dequantized for node in graph.node if node.op_type in op_types}


@pytest.mark.parametrize("family", ["pillar", "voxel"])
def test_the_dense_part_is_quantized_beside_the_fp32_files(family, pillar_export, voxel_export, tmp_path):
    exported = pillar_export if family == "pillar" else voxel_export
    folder = _copy(exported, tmp_path / "model")
    fp32_files = {path.name: path.read_bytes() for path in folder.glob("*.onnx")}
    manifest = quantize_export(folder, CALIBRATION_FRAMES)

    dense = manifest.graphs[-1].file
    assert manifest.int8.files == {dense: dense.replace(".onnx", ".int8.onnx")}
    assert read_manifest(folder).int8 == manifest.int8 and manifest.int8.calibration_frames == CALIBRATION_FRAMES
    assert {path.name: path.read_bytes() for path in folder.glob("*.onnx") if path.name in fp32_files} == fp32_files
    graph = onnx.load(folder / manifest.int8.files[dense]).graph
    outputs = {output.name for output in graph.output}
    writes_output = {node.name for node in graph.node if outputs.intersection(node.output)}
    # every convolution INT8 but the head's last ones, which write the maps the decoding reads
    assert {name for name, int8 in _int8_weights(graph, ("Conv", "ConvTranspose")).items() if not int8} \
        == writes_output
    assert not any(_int8_weights(graph, ("MatMul",)).values())  # the pillar net stays fp32 (voxel family: none)

    points = synthetic_points(manifest.point_columns, 1, "val")[0]
    fp32 = ExportedModel(folder).run_network(points)
    int8 = ExportedModel(folder, precision="int8").run_network(points)
    # The heatmaps, which peaked_detector made vary; an untrained head's regression maps are near-constant.
    for name in (name for name in manifest.verification if name.endswith("heatmap")):
        spread = float(fp32[name].max() - fp32[name].min())
        assert 0 < np.abs(int8[name] - fp32[name]).max() <= 0.05 * spread, name


def test_int8_detections_stay_close_to_fp32s(quantized_pillar, pillar_export):
    points = pillar_export.points.numpy()
    fp32 = ExportedModel(quantized_pillar).predict(points)
    int8 = ExportedModel(quantized_pillar, precision="int8").predict(points)
    iou = bev_iou(torch.from_numpy(int8.boxes), torch.from_numpy(fp32.boxes))  # (int8, fp32)
    iou[torch.from_numpy(int8.labels)[:, None] != torch.from_numpy(fp32.labels)[None, :]] = 0
    matched = iou.amax(dim=0) >= 0.5
    assert len(fp32.scores) > 20 and abs(len(int8.scores) - len(fp32.scores)) <= 0.2 * len(fp32.scores)
    assert float(matched.float().mean()) >= 0.75


def test_rdd3d_export_int8_writes_both_precisions(tmp_path, capsys):
    write_checkpoint(tmp_path / "model.pt")
    argv = ["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "exported"), "--int8"]
    assert main([*argv, "--calibration-frames", "0"]) == 2
    assert "--calibration-frames 0: needs at least 1 frame" in capsys.readouterr().err
    assert main([*argv, "--calibration-frames", str(CALIBRATION_FRAMES)]) == 0
    assert "wrote network.int8.onnx (INT8, calibrated on 2 synthetic frames" in capsys.readouterr().out
    assert read_manifest(tmp_path / "exported").int8.files == {"network.onnx": "network.int8.onnx"}


def test_rdd3d_predict_int8_and_an_export_without_int8(pillar_export, quantized_pillar, tmp_path, capsys):
    points_file = tmp_path / "frame.npy"
    np.save(points_file, pillar_export.points.numpy())
    argv = ["predict", "--model", str(quantized_pillar), "--points", str(points_file), "--int8"]
    assert main([*argv, "--out", str(tmp_path / "int8.json")]) == 0
    written = json.loads((tmp_path / "int8.json").read_text())
    assert written["precision"] == "int8" and written["detections"]

    # an export without INT8 files: refused, naming the manifest and the missing field
    assert main(["predict", "--model", str(pillar_export.folder), "--points", str(points_file), "--int8"]) == 1
    error = capsys.readouterr().err
    assert "manifest.json: no field 'int8'" in error and "rdd3d export --int8" in error
    with pytest.raises(ManifestError, match="no field 'int8'"):
        ExportedModel(pillar_export.folder, precision="int8")


def test_a_missing_int8_file_is_named(quantized_pillar, tmp_path):
    folder = shutil.copytree(quantized_pillar, tmp_path / "model")
    (folder / "network.int8.onnx").unlink()
    with pytest.raises(ManifestError, match=r"field 'int8\.files\['network\.onnx'\]' names network\.int8\.onnx, "
                                            r"which is not in"):
        ExportedModel(folder, precision="int8")
    ExportedModel(folder)  # fp32 runs without it


def test_calibration_frames_take_the_models_columns_by_name():
    kitti = synthetic_points(("x", "y", "z", "intensity"), 1)[0]
    world = synthetic_points(("x", "y", "z", "intensity", "time_lag"), 1)[0]
    np.testing.assert_array_equal(kitti, world[:, :4])
    with pytest.raises(QuantizationError, match=r"reads the point columns \('x', 'y', 'z', 'ring'\).* without \['ring'\]"):
        synthetic_points(("x", "y", "z", "ring"), 1)
