"""`rdd3d nuscenes-infos` and `rdd3d gt-database` as a script sees them: files, printed counts, exit codes."""

import pytest

pytest.importorskip("nuscenes")
from rdd3d.cli import EXIT_USAGE, main  # noqa: E402
from rdd3d.data.nuscenes import read_infos  # noqa: E402

from data.nuscenes_support import VERSION, file_name, write_fake_dataroot  # noqa: E402


@pytest.fixture
def dataroot(tmp_path):
    root = tmp_path / "nuscenes"
    write_fake_dataroot(root)
    return root


def test_nuscenes_infos_writes_each_split_and_prints_counts(dataroot, tmp_path, capsys):
    out = tmp_path / "infos"
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", VERSION, "--out", str(out),
                 "--max-sweeps", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"mini_train: 3 samples -> {out / 'nuscenes_infos_mini_train.json'}" in printed
    assert f"mini_val: 3 samples -> {out / 'nuscenes_infos_mini_val.json'}" in printed
    assert "dropped 1 annotations" in printed  # the animal
    val = read_infos(out / "nuscenes_infos_mini_val.json")
    assert val.split == "mini_val" and [len(s.sweeps) for s in val.samples] == [0, 3, 3]


def test_missing_files_skipped_and_counted_with_compressed_output(dataroot, tmp_path, capsys):
    (dataroot / file_name("scene-0103", 9)).unlink()  # a sweep of sample 2
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", VERSION, "--out", str(tmp_path),
                 "--max-sweeps", "2", "--on-missing", "skip", "--compress"]) == 0
    assert "skipped 0 keyframes and 1 sweeps" in capsys.readouterr().out
    val = read_infos(tmp_path / "nuscenes_infos_mini_val.json.gz")
    assert [s.lidar_path for s in val.samples[2].sweeps] == [file_name("scene-0103", 8), file_name("scene-0103", 7)]


def test_bad_dataroot_is_a_usage_error_naming_it(dataroot, tmp_path, capsys):
    missing = tmp_path / "no-such-root"
    assert main(["nuscenes-infos", "--dataroot", str(missing), "--version", VERSION, "--out", str(tmp_path)]) \
        == EXIT_USAGE
    assert f"--dataroot {missing}: not a folder" in capsys.readouterr().err
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", "v1.0-trainval",
                 "--out", str(tmp_path)]) == EXIT_USAGE
    assert f"{dataroot}: no nuScenes table folder 'v1.0-trainval'" in capsys.readouterr().err
    (dataroot / VERSION / "ego_pose.json").unlink()
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", VERSION, "--out", str(tmp_path)]) \
        == EXIT_USAGE
    assert "ego_pose.json is missing" in capsys.readouterr().err
    (dataroot / VERSION / "ego_pose.json").write_text("[]")  # sample_data now refers to missing poses
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", VERSION, "--out", str(tmp_path)]) \
        == EXIT_USAGE
    assert f"{dataroot} ({VERSION}): broken nuScenes tables: no record or field 'ego-scene-0061-0'" \
        in capsys.readouterr().err
    assert not list(tmp_path.glob("nuscenes_infos_*"))


def test_gt_database_refuses_classes_the_dataset_lacks(dataroot, tmp_path, capsys):
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", VERSION, "--out", str(tmp_path)]) == 0
    run = ["--set", "data.dataset=nuscenes", "--set", f"data.root={dataroot}",
           "--set", f"data.nuscenes.train_info={tmp_path / 'nuscenes_infos_mini_train.json'}",
           "--set", f"data.nuscenes.val_info={tmp_path / 'nuscenes_infos_mini_val.json'}"]
    assert main(["gt-database", *run, "--out", str(tmp_path / "db"), "--classes", "car", "Car"]) == EXIT_USAGE
    assert "--classes ['Car']: not classes of data.dataset='nuscenes'" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_gt_database_reads_each_nuscenes_training_sample_once(dataroot, tmp_path, capsys):
    assert main(["nuscenes-infos", "--dataroot", str(dataroot), "--version", VERSION, "--out", str(tmp_path)]) == 0
    run = ["--set", "data.dataset=nuscenes", "--set", f"data.root={dataroot}", "--set", "data.nuscenes.use_cbgs=true",
           "--set", f"data.nuscenes.train_info={tmp_path / 'nuscenes_infos_mini_train.json'}",
           "--set", f"data.nuscenes.val_info={tmp_path / 'nuscenes_infos_mini_val.json'}"]
    # CBGS draws 4 of the 3 mini_train samples here: a repeated frame would be refused (its files clash).
    assert main(["gt-database", *run, "--out", str(tmp_path / "db")]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 0 objects from 3 training frames to {tmp_path / 'db' / 'gt_database.json'}" in printed
    assert "gt_sampling.enabled" not in printed  # nothing to paste: no advice
