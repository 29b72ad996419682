"""rdd3d_runtime: NumPy pre-processing and decoding that match rdd3d's, run without torch, clear errors."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from exported_models import ANCHOR_PILLAR_PRESET, PILLAR_PRESET, export_peaked

import rdd3d_runtime
from rdd3d.cli import main
from rdd3d.core.geometry import bev_iou
from rdd3d.data.voxelize import Voxelizer
from rdd3d.models.heads import NMSConfig
from rdd3d.models.sparse.rulebook import ConvGeometry, build_rulebook
from rdd3d_runtime import ExportedModel, ManifestError, PointFileError, read_manifest, read_points
from rdd3d_runtime.manifest import RulebookSpec, VoxelizationSpec
from rdd3d_runtime.rulebook import build_rulebook as build_numpy_rulebook
from rdd3d_runtime.voxelize import voxelize

RUNTIME = Path(rdd3d_runtime.__file__).parent


def _cloud(count: int, seed: int) -> np.ndarray:
    """Points in and around a 16 x 16 x 4 m box, several to a voxel, with two extra columns."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-9, -9, -3], [9, 9, 2], size=(count, 3)).astype(np.float32)
    return np.concatenate([xyz, rng.random((count, 2), dtype=np.float32)], axis=1)


@pytest.mark.parametrize("max_points, max_voxels", [(5, 100000), (2, 300)])
def test_voxelisation_equals_rdd3ds_voxelizer(max_points, max_voxels):
    voxelizer = Voxelizer((0.8, 0.8, 1.0), (-8, -8, -2, 8, 8, 2), max_points, max_voxels)
    spec = VoxelizationSpec(voxelizer.point_cloud_range, voxelizer.voxel_size, voxelizer.grid_size, max_points,
                            max_voxels)
    points = _cloud(20000, seed=1)
    expected = voxelizer(torch.from_numpy(points))
    found = voxelize(points, spec)
    assert len(found.num_points) == len(expected.num_points) <= max_voxels
    for mine, theirs in zip(found, expected[:3]):
        np.testing.assert_array_equal(mine, theirs.numpy())


@pytest.mark.parametrize("kernel, stride, padding, subm", [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), True),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), False),
    ((3, 3, 3), (2, 2, 2), (0, 1, 1), False),
    ((3, 1, 1), (2, 1, 1), (0, 0, 0), False),
])
def test_rulebooks_equal_rdd3ds(kernel, stride, padding, subm):
    shape = (11, 40, 40)
    rng = np.random.default_rng(0)
    sites = np.unique(rng.integers(0, shape, size=(3000, 3)), axis=0).astype(np.int32)
    rng.shuffle(sites)
    spec = RulebookSpec("rulebook0", 0, 0 if subm else 1, shape, kernel, stride, padding, subm)
    found = build_numpy_rulebook(sites, spec)
    indices = torch.from_numpy(np.pad(sites, ((0, 0), (1, 0))))
    expected = build_rulebook(indices, shape, ConvGeometry(kernel, stride, padding, subm))
    np.testing.assert_array_equal(found.out_sites, expected.out_indices[:, 1:].numpy())
    taps = np.repeat(np.arange(len(expected.pairs_per_offset)), expected.pairs_per_offset)
    table = np.full_like(found.neighbours, len(sites))
    table[expected.out_rows.numpy(), taps] = expected.in_rows.numpy()
    np.testing.assert_array_equal(found.neighbours, table)


def _assert_same_detections(found, expected) -> None:
    """The same boxes (BEV IoU >= 0.99), labels and scores (within 1e-4), matched one to one among boxes of the
    same label: boxes of equal scores may come in another order, as top-K leaves it open, and class-wise
    anchor decoding gives one box under several labels."""
    assert len(found.scores) == len(expected.scores) > 0
    iou = bev_iou(torch.from_numpy(found.boxes), expected.boxes)  # (found, expected)
    iou[torch.from_numpy(found.labels)[:, None] != expected.labels[None, :]] = -1
    match = iou.argmax(dim=0).numpy()
    assert sorted(match) == list(range(len(match)))
    assert float(iou[match, np.arange(len(match))].min()) >= 0.99
    np.testing.assert_array_equal(found.labels[match], expected.labels.numpy())
    np.testing.assert_allclose(found.scores[match], expected.scores.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(found.boxes[match], expected.boxes.numpy(), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("export", ["pillar", "voxel", "anchor_pillar", "anchor_voxel"])
def test_the_runtime_finds_rdd3ds_detections(export, export_of):
    exported = export_of(export)
    found = ExportedModel(exported.folder).predict(exported.points.numpy())
    with torch.no_grad():
        expected = exported.detector.decode(exported.detector([exported.points]))[0]
    _assert_same_detections(found, expected)


@pytest.mark.parametrize("overrides", [
    {"head.decode.class_agnostic_nms": False,
     "head.decode.nms": NMSConfig(kind="circle", pre_max_size=1000, post_max_size=40,
                                  circle_distances=(4.0, 4.0, 4.0, 0.5, 0.5, 0.2, 0.2))},
    {"head.use_direction_classifier": False, "head.align_center": True,
     "head.decode.nms": NMSConfig(kind="rotated", iou_threshold=0.1, pre_max_size=100, post_max_size=30)},
], ids=["class-wise circle NMS", "no direction classifier, centred anchors"])
def test_anchor_decoding_matches_rdd3d_in_every_mode(overrides, tmp_path):
    exported = export_peaked(ANCHOR_PILLAR_PRESET, tmp_path, **overrides)
    found = ExportedModel(exported.folder).predict(exported.points.numpy())
    with torch.no_grad():
        expected = exported.detector.decode(exported.detector([exported.points]))[0]
    _assert_same_detections(found, expected)


@pytest.mark.parametrize("nms", [
    NMSConfig(kind="circle", pre_max_size=1000, post_max_size=83, circle_distances=(4.0, 0.5, 0.2)),
    NMSConfig(kind="nearest_bev", iou_threshold=0.1, pre_max_size=100, post_max_size=None),
    NMSConfig(kind="none", pre_max_size=None, post_max_size=None),
], ids=lambda nms: nms.kind)
def test_every_nms_kind_and_the_per_sample_cap_match_rdd3d(nms, tmp_path):
    exported = export_peaked(PILLAR_PRESET, tmp_path, **{"head.decode.nms": nms, "head.decode.max_per_sample": 20})
    found = ExportedModel(exported.folder).predict(exported.points.numpy())
    with torch.no_grad():
        output = exported.detector([exported.points])
        expected = exported.detector.decode(output)[0]
        uncapped = dataclasses.replace(exported.detector.head.config.decode, max_per_sample=None)
        exported.detector.head.config = dataclasses.replace(exported.detector.head.config, decode=uncapped)
        before_cap = exported.detector.decode(output)[0]
    assert len(before_cap.scores) > len(expected.scores) == 20  # the cap did something
    _assert_same_detections(found, expected)


def test_the_runtime_decodes_half_period_yaws_as_rdd3d(tmp_path):
    # The peaked untrained head finds trucks: their yaw is the one decoded modulo π here.
    exported = export_peaked(PILLAR_PRESET, tmp_path, **{"head.half_period_classes": ("truck", "barrier")})
    half_period = (1, 6)  # the synthetic world's truck and barrier
    assert read_manifest(exported.folder).decode.half_period_labels == half_period
    found = ExportedModel(exported.folder).predict(exported.points.numpy())
    with torch.no_grad():
        expected = exported.detector.decode(exported.detector([exported.points]))[0]
    _assert_same_detections(found, expected)
    assert np.isin(found.labels, half_period).any()


def test_the_runtime_runs_where_torch_cannot_be_imported(pillar_export, tmp_path):
    points_file = tmp_path / "frame.bin"
    pillar_export.points.numpy().tofile(points_file)
    blocked = ("import runpy, sys\n"
               "sys.modules['torch'] = None\n"
               "sys.modules['rdd3d'] = None\n"
               f"sys.argv = ['rdd3d_runtime', '--model', {str(pillar_export.folder)!r}, '--points', "
               f"{str(points_file)!r}, '--out', {str(tmp_path / 'detections.json')!r}]\n"
               "try:\n"
               "    runpy.run_module('rdd3d_runtime', run_name='__main__')\n"
               "finally:\n"
               "    assert sys.modules['torch'] is None, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "detections.json").read_text())
    expected = ExportedModel(pillar_export.folder).predict(pillar_export.points.numpy())
    assert written["preset"] == PILLAR_PRESET and len(written["detections"]) == len(expected.scores)
    assert [entry["label"] for entry in written["detections"]] == expected.labels.tolist()


def test_the_runtime_package_imports_neither_torch_nor_rdd3d():
    for path in RUNTIME.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [name for name in names if name.split(".")[0] in ("torch", "rdd3d")], path


def test_rdd3d_predict_writes_detections_and_a_bev_picture(pillar_export, tmp_path, capsys):
    points_file = tmp_path / "frame.npy"
    np.save(points_file, pillar_export.points.numpy())
    out, bev = tmp_path / "detections.json", tmp_path / "bev.png"
    argv = ["predict", "--model", str(pillar_export.folder), "--points", str(points_file), "--out", str(out),
            "--bev", str(bev)]
    assert main(argv) == 0
    detections = json.loads(out.read_text())["detections"]
    assert detections and set(detections[0]) == {"box", "score", "label", "name"}
    assert bev.read_bytes().startswith(b"\x89PNG")
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err


def _copy_export(exported, folder: Path) -> Path:
    folder.mkdir()
    for path in exported.folder.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_a_manifest_of_another_version_is_refused_by_file_and_field(pillar_export, tmp_path):
    folder = _copy_export(pillar_export, tmp_path / "model")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(ManifestError, match=r"model/manifest\.json: field 'format_version' is 2; this runtime "
                                            r"reads version 1"):
        read_manifest(folder)
    manifest["voxelization"]["voxel_size"] = [0.2, 0.2]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"field 'voxelization\.voxel_size' must be a list of 3 values"):
        read_manifest(folder)


def test_a_point_file_with_other_columns_is_refused_by_name(pillar_export, tmp_path):
    columns = read_manifest(pillar_export.folder).point_columns
    four_columns = tmp_path / "kitti.bin"
    np.zeros((7, 4), dtype=np.float32).tofile(four_columns)
    with pytest.raises(PointFileError, match=r"kitti\.bin: 112 bytes is not a whole number of rows of 5 float32"):
        read_points(four_columns, columns)
    np.save(tmp_path / "kitti.npy", np.zeros((7, 4), dtype=np.float32))
    with pytest.raises(PointFileError, match=r"kitti\.npy: holds an array of shape \(7, 4\)"):
        read_points(tmp_path / "kitti.npy", columns)
    assert main(["predict", "--model", str(pillar_export.folder), "--points", str(four_columns)]) == 1


def test_a_point_file_whose_name_tells_other_columns_is_refused_even_when_its_bytes_divide(pillar_export, tmp_path):
    columns = read_manifest(pillar_export.folder).point_columns  # five, as nuScenes
    velodyne = tmp_path / "velodyne"
    velodyne.mkdir()
    scan = velodyne / "000000.bin"
    np.zeros((20, 4), dtype=np.float32).tofile(scan)  # 320 bytes: 16 rows of 5 columns as well
    with pytest.raises(PointFileError, match=r"000000\.bin: a KITTI velodyne scan \(velodyne/\*\.bin\) holds 4 "
                                             r"float32 columns, but the model reads 5"):
        read_points(scan, columns)
    np.zeros((16, 5), dtype=np.float32).tofile(tmp_path / "sweep.pcd.bin")
    assert read_points(tmp_path / "sweep.pcd.bin", columns).shape == (16, 5)
