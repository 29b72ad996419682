"""`rdd3d import-checkpoint` (rdd3d.engine.imported): a foreign teacher becomes an rdd3d checkpoint that every
reader of a trained detector takes, runs on the real nuScenes keyframe, and teaches through `rdd3d distill`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rdd3d.cli import main
from rdd3d.core.checkpoint import load_checkpoint
from rdd3d.engine.run_logging import read_log
from rdd3d.engine.runs import detector_from_checkpoint

from data.test_nuscenes_real import TOKEN
from models.test_foreign_checkpoints import (
    mmdet3d_state, openpcdet_state, reference_detector, save_mmdet3d, save_openpcdet,
)
from test_paper_configs import _nuscenes_files, base, method_file, row


@pytest.fixture
def openpcdet_file(tmp_path) -> tuple[Path, torch.nn.Module]:
    reference = reference_detector("cp-voxel", "openpcdet")
    return save_openpcdet(tmp_path / "cbgs_voxel01_res3d_centerpoint.pth", openpcdet_state(reference)), reference


def test_the_cli_writes_a_checkpoint_every_reader_takes(openpcdet_file, tmp_path, capsys):
    source, reference = openpcdet_file
    out = tmp_path / "teacher.pt"
    assert main(["import-checkpoint", "--from", "openpcdet", "--preset", "cp-voxel", "--dataset", "nuscenes",
                 str(source), str(out), "--set", "eval.batch_size=2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    detector, config = detector_from_checkpoint(out)
    assert config.model.preset == "cp-voxel" and config.data.dataset == "nuscenes" and config.eval.batch_size == 2
    for key, value in reference.state_dict().items():
        assert torch.equal(detector.state_dict()[key], value), key
    provenance = load_checkpoint(out)["imported_from"]
    assert provenance["file"] == source.name and provenance["metadata"] == {
        "epoch": 20, "it": 123456, "version": "pcdet+0.6.0+8caccce"}
    # exists: refused without --overwrite
    assert main(["import-checkpoint", "--from", "openpcdet", "--preset", "cp-voxel", "--dataset", "nuscenes",
                 str(source), str(out)]) == 2


def test_a_benchmark_plan_takes_the_imported_teacher(openpcdet_file, tmp_path):
    from rdd3d.benchmark.plan import PairPlan
    from rdd3d.benchmark.runner import _given_teacher

    source, _ = openpcdet_file
    out = tmp_path / "teacher.pt"
    assert main(["import-checkpoint", "--from", "openpcdet", "--preset", "cp-voxel", "--dataset", "nuscenes",
                 str(source), str(out)]) == 0
    given = _given_teacher(PairPlan(teacher="cp-voxel", student="cp-voxel-xxs", teacher_checkpoint=str(out)))
    assert given.checkpoint == out and given.reused and given.steps is None


def test_stored_overrides_rebuild_the_imported_architecture(tmp_path):
    reference = reference_detector("cp-pillar-s4", "mmdet3d")
    source = save_mmdet3d(tmp_path / "pillar.pth", mmdet3d_state(reference), cfg="voxel_size = [0.2, 0.2, 8]")
    out = tmp_path / "teacher.pt"
    assert main(["import-checkpoint", "--from", "mmdet3d", "--preset", "cp-pillar-s4", "--dataset", "nuscenes",
                 str(source), str(out)]) == 0
    detector, config = detector_from_checkpoint(out)
    assert tuple(config.model.overrides["pillar_filters"]) == (64,) and len(detector.encoder.layers) == 1


def test_a_bad_file_exits_2_naming_it(openpcdet_file, tmp_path, capsys):
    source, _ = openpcdet_file
    out = tmp_path / "teacher.pt"
    assert main(["import-checkpoint", "--from", "openpcdet", "--preset", "cp-pillar", "--dataset", "nuscenes",
                 str(source), str(out)]) == 2
    assert f"{source}: not a openpcdet checkpoint of the model the preset 'cp-pillar' maps" in capsys.readouterr().err
    assert not out.exists()


def test_an_imported_teacher_detects_on_the_real_nuscenes_keyframe(openpcdet_file, real_data, tmp_path):
    """The real frame through the imported model (random weights: what is checked is that the imported
    teacher runs on real input and its output decodes, not what it finds)."""
    from rdd3d.data.nuscenes import NuScenesDataset, NuScenesInfos, write_infos
    from data.test_nuscenes_real import fixture_info

    source, _ = openpcdet_file
    out = tmp_path / "teacher.pt"
    assert main(["import-checkpoint", "--from", "openpcdet", "--preset", "cp-voxel", "--dataset", "nuscenes",
                 str(source), str(out)]) == 0
    detector, _ = detector_from_checkpoint(out)
    info = write_infos(tmp_path / "infos.json", NuScenesInfos((fixture_info(real_data),), "v1.0-mini", "demo"))
    frame = NuScenesDataset(info, real_data / "nuscenes")[0]
    with torch.no_grad():
        output = detector([torch.as_tensor(frame.points.points)])
    assert output.bev_features.shape == (1, 512, 128, 128) and torch.isfinite(output.bev_features).all()
    assert len(output.predictions) == 6 and all(torch.isfinite(p.heatmap).all() for p in output.predictions)
    (detections,) = detector.decode(output)
    assert detections.boxes.shape[1] == 9


def test_an_imported_teacher_teaches_through_distill_and_its_student_evaluates(openpcdet_file, real_data, tmp_path):
    """The documented path (docs/reproduce.md): import the model-zoo teacher, distil with RDD, evaluate; one step
    on the real keyframe."""
    source, _ = openpcdet_file
    database, data = _nuscenes_files(real_data, tmp_path)
    tiny = ["device=cpu", "trainer.amp=false", "trainer.epochs=1", "trainer.batch_size=1", "trainer.num_workers=0",
            "model.overrides={head.decode.max_per_task: 20}", f"data.augmentation.gt_sampling.database={database}",
            *data]
    sets = [argument for value in tiny for argument in ("--set", value)]
    teacher = tmp_path / "teacher.pt"
    assert main(["import-checkpoint", "--from", "openpcdet", "--preset", "cp-voxel", "--dataset", "nuscenes",
                 str(source), str(teacher), "--config", str(base("nuscenes")), *sets]) == 0
    student_dir = tmp_path / "rdd"
    configs = ["--config", str(base("nuscenes")), "--config", str(row("nuscenes", "cp-voxel-xxs"))]
    assert main(["distill", *configs, "--config", str(method_file("nuscenes", "rdd")), "--method", "rdd",
                 "--student", "cp-voxel-xxs", "--teacher", str(teacher), *sets,
                 "--set", f"output_dir={student_dir}"]) == 0
    terms = {name for record in read_log(student_dir / "log.jsonl") for name in record}
    assert {"loss/rdd/feature", "loss/rdd/logit", "mAP"} <= terms
    results = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(teacher), "--device", "cpu", "--write-results", str(results)]) == 0
    assert TOKEN in results.read_text()


def test_the_pillar_cap_drops_only_the_vehicles_own_returns_on_the_real_keyframe(real_data):
    """The numbers docs/import-checkpoints.md gives for OpenPCDet's dynamic pillars: on the fixture keyframe,
    the pillars of 0.2 m holding more than the 100 points rdd3d keeps, and the points dropped there."""
    path = next((real_data / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    inside = (np.abs(points[:, :2]) < 51.2).all(axis=1) & (points[:, 2] >= -5) & (points[:, 2] < 3)
    points = points[inside]
    cells = np.floor((points[:, :2] + 51.2) / 0.2).astype(np.int64)
    _, counts = np.unique(cells[:, 1] * 512 + cells[:, 0], return_counts=True)
    dropped = np.maximum(counts - 100, 0).sum() / counts.sum()
    near = int((np.hypot(points[:, 0], points[:, 1]) < 1.0).sum())
    assert (len(points), len(counts), int((counts > 100).sum()), near) == (32264, 7896, 19, 8220)
    assert round(100 * dropped, 1) == 16.6
