"""`rdd3d show` draws a frame of every dataset a run config can name (the real nuScenes keyframe through an
mmdetection3d info file, the real KITTI frames, the synthetic world) with its boxes and the detections of a
results file, read back from the files `rdd3d eval --write-results` writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from rdd3d.cli import EXIT_FAILURE, EXIT_USAGE, main
from rdd3d.core.types import Detections
from rdd3d.engine.config import load_run_config
from rdd3d.engine.datasets import DATASETS, build_datasets
from rdd3d.evaluation.kitti_predictions import write_kitti_results
from rdd3d.evaluation.nuscenes_export import write_submission

from data.test_mmdet3d_info_files import real_keyframe_file, to_pre_v1
from data.test_nuscenes_real import TOKEN

PNG = b"\x89PNG\r\n\x1a\n"


def config_file(path, data: dict):
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def as_detections(frame, score: float = 0.9) -> Detections:
    """The frame's ground truth as detections, every box scored ``score``."""
    return Detections(torch.from_numpy(frame.boxes.tensor), torch.full((len(frame.boxes),), score),
                      torch.from_numpy(frame.labels))


@pytest.fixture
def nuscenes_config(real_data, tmp_path):
    """A run config reading the real keyframe through an mmdetection3d info file in the pre-1.0 box convention."""
    info_file, _ = real_keyframe_file(real_data, tmp_path, to_pre_v1, "nuscenes_infos_val.pkl")
    return config_file(tmp_path / "nuscenes.yaml", {
        "dataset": "nuscenes", "root": str(real_data / "nuscenes"),
        "nuscenes": {"train_info": str(info_file), "val_info": str(info_file), "max_sweeps": 1}})


@pytest.fixture
def kitti_config(real_data, tmp_path):
    """A run config reading the real KITTI frames: 000000 as the train split, 000008 as val."""
    root = tmp_path / "kitti"
    (root / "ImageSets").mkdir(parents=True)
    (root / "training").symlink_to(real_data / "kitti" / "training")
    (root / "ImageSets" / "train.txt").write_text("000000\n")
    (root / "ImageSets" / "val.txt").write_text("000008\n")
    return config_file(tmp_path / "kitti.yaml", {"dataset": "kitti", "root": str(root)})


def test_show_draws_the_real_nuscenes_keyframe_with_detections(nuscenes_config, tmp_path, capsys):
    _, val = build_datasets(load_run_config([nuscenes_config]).data)
    frame = val[0]
    results = tmp_path / "results_val.json"
    write_submission(results, [frame], [as_detections(frame)])
    out = tmp_path / "nuscenes.png"
    assert main(["show", "--config", str(nuscenes_config), "--results", str(results), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 30_000
    # The detections drawn are the boxes written, through the global frame and back. The LIDAR_TOP frame is
    # tilted against the ground, and the way back keeps no tilt (docs/data-nuscenes.md): up to 7e-4 rad of
    # heading and 0.014 m/s of velocity (of 11 m/s) are lost here.
    (found,) = DATASETS["nuscenes"].read_predictions(results, val, [frame])
    np.testing.assert_allclose(found.boxes.numpy()[:, :6], frame.boxes.tensor[:, :6], atol=1e-5)
    np.testing.assert_allclose(found.boxes.numpy()[:, 6], frame.boxes.tensor[:, 6], atol=1e-3)
    np.testing.assert_allclose(found.boxes.numpy()[:, 7:], frame.boxes.tensor[:, 7:], atol=0.02)
    assert found.labels.tolist() == frame.labels.tolist() and found.scores.tolist() == [pytest.approx(0.9)] * 68


def test_show_draws_real_kitti_frames_with_detections(kitti_config, tmp_path):
    train, val = build_datasets(load_run_config([kitti_config]).data)
    frame = val[0]
    results = tmp_path / "kitti_results"
    write_kitti_results(results, [frame], [as_detections(frame, 0.75)])
    out = tmp_path / "kitti.png"
    assert main(["show", "--config", str(kitti_config), "--results", str(results), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 30_000
    (found,) = DATASETS["kitti"].read_predictions(results, val, [frame])
    np.testing.assert_allclose(found.boxes.numpy(), frame.boxes.tensor, atol=2e-3)  # 4 decimals in the files
    assert found.labels.tolist() == frame.labels.tolist() == [0] * 6  # six cars
    # one frame's result file works as well as the folder, and the train split is there too
    assert main(["show", "--config", str(kitti_config), "--results", str(results / "000008.txt"),
                 "--out", str(tmp_path / "one.png")]) == 0
    assert main(["show", "--config", str(kitti_config), "--split", "train", "--out", str(tmp_path / "t.png")]) == 0
    assert len(train) == 1


def test_show_draws_synthetic_detections(tmp_path):
    from rdd3d.data.synthetic import SyntheticDataset

    split = SyntheticDataset("val", 2, seed=0)
    frame = split[1]
    results = tmp_path / "results.json"
    DATASETS["synthetic"].write_predictions(results, split, [frame], [as_detections(frame)], None)
    out = tmp_path / "synthetic.png"
    assert main(["show", "--index", "1", "--results", str(results), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    (found,) = DATASETS["synthetic"].read_predictions(results, split, [frame])
    np.testing.assert_allclose(found.boxes.numpy()[:, :7], frame.boxes.tensor[:, :7], atol=1e-5)


def test_show_errors_name_what_is_wrong(nuscenes_config, kitti_config, real_data, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert main(["show", "--set", "data.dataset=kitti", "--out", out]) == EXIT_USAGE
    assert "--set data.dataset=kitti: a run-config key; name the run config with --config" in capsys.readouterr().err
    assert main(["show", "--config", str(kitti_config), "--root", str(tmp_path), "--out", out]) == EXIT_USAGE
    assert "with --config the config's data.root does" in capsys.readouterr().err
    assert main(["show", "--config", str(kitti_config), "--split", "test", "--out", out]) == EXIT_USAGE
    assert "--split 'test': with --config, the config's train or val split" in capsys.readouterr().err
    assert main(["show", "--config", str(kitti_config), "--index", "1", "--out", out]) == EXIT_USAGE
    assert "--index 1 out of range: split 'val' has 1 frames" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "000001.txt").write_text("")
    assert main(["show", "--config", str(kitti_config), "--results", str(other), "--out", out]) == EXIT_FAILURE
    assert f"{other / '000008.txt'}: label file not found" in capsys.readouterr().err
    labels = real_data / "kitti" / "training" / "label_2"
    assert main(["show", "--config", str(kitti_config), "--results", str(labels), "--out", out]) == EXIT_FAILURE
    assert "000008.txt: KITTI ground-truth lines (15 fields), not results" in capsys.readouterr().err
    results = tmp_path / "results.json"
    results.write_text('{"meta": {"use_lidar": true}, "results": {"another-sample": []}}')
    assert main(["show", "--config", str(nuscenes_config), "--results", str(results), "--out", out]) == EXIT_FAILURE
    assert f"the results list no sample '{TOKEN}' (they list 1 samples" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
