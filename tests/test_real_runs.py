"""Whole runs on real data layouts through the command line: KITTI (the real 000008/000000 fixtures, copied
into tmp_path with ImageSets) and nuScenes (the fake devkit dataroot of data/nuscenes_support.py):
train a step, evaluate with the dataset's metric, export what its official tools read."""

import json
import shutil

import numpy as np
import pytest

from rdd3d.cli import main
from rdd3d.data.gt_sampling import read_gt_database
from rdd3d.engine.run_logging import read_log
from rdd3d.data.kitti.format import read_label_file

FIXTURE_IDS = ("000008", "000000")
# Score threshold 0: a detector trained for one step still writes boxes to check (20 per head: fast to score).
ONE_STEP = ["--set", "model.preset=cp-voxel-xxs", "--set", "trainer.epochs=1", "--set", "trainer.num_workers=0",
            "--set", "data.cache_in_memory=false", "--set", "device=cpu",
            "--set", "model.overrides={head.decode.score_threshold: 0.0, head.decode.max_per_task: 20}"]


@pytest.fixture
def kitti_run(real_data, tmp_path):
    """A KITTI root in tmp_path (the fixtures' training/ and ImageSets with both frames) and the options of a
    one-step run on it: both training frames in one batch, no flip of x (KITTI's range is x >= 0)."""
    root = tmp_path / "kitti"
    shutil.copytree(real_data / "kitti" / "training", root / "training")
    (root / "ImageSets").mkdir()
    for split in ("train", "val"):
        (root / "ImageSets" / f"{split}.txt").write_text("\n".join(FIXTURE_IDS) + "\n")
    return ["--set", "data.dataset=kitti", "--set", f"data.root={root}", "--set", "trainer.batch_size=2",
            "--set", "data.augmentation.flip_y=false", *ONE_STEP]


def test_kitti_train_then_eval_writes_result_files(kitti_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *kitti_run, "--set", f"output_dir={out}"]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl", "train")] == [1]
    evaluation = read_log(out / "log.jsonl", "eval")[-1]
    assert {"mAP", "AP/Car", "AP/Pedestrian", "AP/Cyclist", "AP_bev/Car"} <= set(evaluation)
    assert "NDS" not in evaluation
    assert f"finished at step 1: mAP {evaluation['mAP']:.4f}\n" in capsys.readouterr().out
    results = tmp_path / "results"
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--write-results", str(results),
                 "--out", str(tmp_path / "metrics.json")]) == 0
    printed = capsys.readouterr().out
    assert "Car AP_R40@0.70, 0.70, 0.70:" in printed and "3d   AP:" in printed
    assert sorted(path.name for path in results.iterdir()) == ["000000.txt", "000008.txt"]
    lines = (results / "000008.txt").read_text().splitlines()
    assert lines and all(len(line.split()) == 16 for line in lines)  # 15 label fields and the score
    detections = read_label_file(results / "000008.txt")
    assert set(detections.names) <= {"Car", "Pedestrian", "Cyclist"} and (detections.score >= 0).all()
    assert "Car_3d_moderate_R40" in json.loads((tmp_path / "metrics.json").read_text())


def test_kitti_gt_database_then_training_with_gt_sampling(kitti_run, tmp_path, capsys):
    database = tmp_path / "gt_database"
    assert main(["gt-database", *kitti_run, "--out", str(database)]) == 0
    printed = capsys.readouterr().out
    objects = read_gt_database(database)
    # 000008's six cars; 000000's pedestrian has no point in the fixture's 800-point subset.
    assert [(o.class_name, o.frame_id) for o in objects] == [("Car", "000008")] * 6
    assert sorted(o.num_points for o in objects)[-1] > 1000
    assert "wrote 6 objects from 2 training frames" in printed and "  Car: 6\n" in printed
    assert f"gt_sampling.database={database / 'gt_database.json'}" in printed
    out = tmp_path / "run"
    assert main(["train", *kitti_run, "--set", f"output_dir={out}",
                 "--set", "data.augmentation.gt_sampling.enabled=true",
                 "--set", f"data.augmentation.gt_sampling.database={database}",
                 "--set", "data.augmentation.gt_sampling.sample_counts={Car: 8}"]) == 0
    step = read_log(out / "log.jsonl", "train")[-1]
    assert step["step"] == 1 and step["loss/det/location"] > 0
    assert (out / "last.pt").is_file()


def test_kitti_training_refuses_a_flip_that_empties_the_frames(kitti_run, tmp_path, capsys):
    assert main(["train", *kitti_run, "--set", "data.augmentation.flip_y=true",
                 "--set", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "set data.augmentation.flip_y=false" in capsys.readouterr().err


def test_nuscenes_infos_train_eval_and_submission(tmp_path, capsys):
    pytest.importorskip("nuscenes")
    from rdd3d.data.nuscenes import read_infos
    from rdd3d.data.nuscenes.poses import transform_points

    from data.nuscenes_support import VERSION, write_fake_dataroot

    dataroot, infos = tmp_path / "nuscenes", tmp_path / "infos"
    write_fake_dataroot(dataroot)
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", VERSION, "--out", str(infos),
                 "--max-sweeps", "2"]) == 0
    out = tmp_path / "run"
    assert main(["train", "--set", "data.dataset=nuscenes", "--set", f"data.root={dataroot}",
                 "--set", f"data.nuscenes.train_info={infos / 'nuscenes_infos_mini_train.json'}",
                 "--set", f"data.nuscenes.val_info={infos / 'nuscenes_infos_mini_val.json'}",
                 "--set", "data.nuscenes.max_sweeps=3", "--set", "trainer.batch_size=4", *ONE_STEP,
                 "--set", f"output_dir={out}"]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl", "train")] == [1]
    assert {"mAP", "NDS", "AP/car", "err/trans_err"} <= set(read_log(out / "log.jsonl", "eval")[-1])
    capsys.readouterr()

    submission = tmp_path / "sub.json"
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--write-results", str(submission),
                 "--out", str(tmp_path / "frame_metrics.json")]) == 0
    assert "NDS" in capsys.readouterr().out
    results = json.loads(submission.read_text())["results"]
    val = read_infos(infos / "nuscenes_infos_mini_val.json").samples
    assert sorted(results) == sorted(sample.token for sample in val)
    for sample in val:
        boxes = results[sample.token]
        assert boxes
        centres = np.array([box["translation"] for box in boxes])  # (K, 3) global frame
        in_lidar = transform_points(np.linalg.inv(sample.lidar2global), centres)
        # Back in the LiDAR frame the centres lie in the head's range; in the global frame they sit around
        # the ego, which drives near x = 300 m.
        assert (np.abs(in_lidar[:, :2]) <= 61.2 + 1e-3).all()
        assert (np.abs(centres[:, 0] - sample.lidar2global[0, 3]) <= 61.2 * 2 ** 0.5 + 1e-3).all()
        assert (centres[:, 0] > 200).all()

    # The devkit's own ground truth of mini_val scores the submission in the global frame.
    assert main(["eval", "--results", str(submission), "--gt", str(dataroot), "--version", VERSION,
                 "--eval-set", "mini_val", "--out", str(tmp_path / "devkit_metrics.json")]) == 0
    devkit = json.loads((tmp_path / "devkit_metrics.json").read_text())
    frame = json.loads((tmp_path / "frame_metrics.json").read_text())
    assert devkit["mean_ap"] == pytest.approx(frame["mean_ap"]) and devkit["nd_score"] == pytest.approx(frame["nd_score"])
