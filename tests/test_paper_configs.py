"""The paper's experiment configs (configs/nuscenes, configs/kitti): every file loads through the real
loader in the combinations docs/reproduce.md runs, builds its preset and distillation method, and a
row runs end to end (train, distil, evaluate) on the real fixture frames through the command line."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from rdd3d.cli import main
from rdd3d.data.gt_sampling import build_gt_database
from rdd3d.distill.baselines import PPLogitConfig
from rdd3d.distill.methods import METHODS, build_method
from rdd3d.engine.config import RunConfig, load_run_config
from rdd3d.engine.config_loading import ConfigError
from rdd3d.engine.run_logging import read_log
from rdd3d.engine.runs import build_model
from rdd3d.models.presets import DATASETS, TEACHERS, list_presets

from data.test_nuscenes_real import TOKEN, fixture_info

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_DATASETS = ("nuscenes", "kitti")
#: The rows these folders hold: the CenterPoint teachers and students of Table 3 (SECOND and PointPillars,
#: Table 4, come with their own configs).
CENTERPOINT_PRESETS = ("cp-voxel", "cp-voxel-s", "cp-voxel-xs", "cp-voxel-xxs",
                       "cp-pillar", "cp-pillar-v0.4", "cp-pillar-v0.48", "cp-pillar-v0.64")
STUDENTS = tuple(name for name in CENTERPOINT_PRESETS if TEACHERS[name] != name)
DISTILL_METHODS = tuple(method for method in METHODS if method != "none")


def base(dataset: str) -> Path:
    return CONFIGS / dataset / "_base.yaml"


def row(dataset: str, preset: str) -> Path:
    return CONFIGS / dataset / f"{preset}.yaml"


def method_file(dataset: str, method: str) -> Path:
    return CONFIGS / dataset / "methods" / f"{method}.yaml"


def distill_config(dataset: str, student: str, method: str) -> RunConfig:
    """What `rdd3d distill --config base --config student --config method --student S --method M` loads."""
    return load_run_config([base(dataset), row(dataset, student), method_file(dataset, method)],
                           [f"model.preset={student}", f"distill.method={method}", "distill.teacher_checkpoint=t.pt"])


@lru_cache(maxsize=None)
def neck_channels(preset: str, dataset: str) -> int:
    config = load_run_config([base(dataset), row(dataset, preset)])
    return build_model(config).backbone_2d.out_channels


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_the_folder_holds_exactly_the_documented_rows(dataset):
    found = {path.relative_to(CONFIGS / dataset).as_posix() for path in (CONFIGS / dataset).rglob("*.yaml")}
    assert set(CENTERPOINT_PRESETS) <= set(list_presets())
    rows = (f"{preset}.yaml" for preset in CENTERPOINT_PRESETS)
    assert found == {"_base.yaml", *rows, *(f"methods/{method}.yaml" for method in DISTILL_METHODS)}


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
@pytest.mark.parametrize("preset", CENTERPOINT_PRESETS)
def test_teacher_and_student_rows_load_and_build(dataset, preset):
    config = load_run_config([base(dataset), row(dataset, preset)])
    assert (config.model.preset, config.data.dataset, config.distill.method) == (preset, dataset, "none")
    assert neck_channels(preset, dataset) > 0  # the detector of this row builds on this dataset


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_method_files_load_after_a_student_and_build_for_every_pair(dataset, method):
    file_options = yaml.safe_load(method_file(dataset, method).read_text())["distill"]
    block = method.replace("-", "_")
    # Only this method's options (--method chooses the method), so a student's file and a method's file
    # never set the same key and every student-method pair merges alike.
    assert list(file_options) == [block]
    config = distill_config(dataset, "cp-voxel-s", method)
    options = config.distill.method_options()
    for name, value in file_options[block].items():
        assert getattr(options, name) == value, name
    for student in STUDENTS:  # every pair's channels (and for the pillar students, its two map resolutions)
        teacher = TEACHERS[student]
        losses = build_method(config.distill, neck_channels(student, dataset), neck_channels(teacher, dataset))
        assert len(losses) == 1


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
@pytest.mark.parametrize("student", STUDENTS)
def test_student_rows_carry_sparsekds_pp_logit_setting(dataset, student):
    config = distill_config(dataset, student, "pp-logit")
    assert config.model.preset == student and config.distill.pp_logit == PPLogitConfig.for_student(student)


@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_method_files_agree_across_datasets(method):
    nuscenes, kitti = (yaml.safe_load(method_file(dataset, method).read_text()) for dataset in PAPER_DATASETS)
    assert nuscenes == kitti


@pytest.mark.parametrize("dataset, epochs, peak_lr", [("nuscenes", 20, 1e-3), ("kitti", 80, 3e-3)])
def test_schedule_and_ground_truth_sampling(dataset, epochs, peak_lr):
    config = load_run_config([base(dataset), row(dataset, "cp-voxel")])
    optim = config.optim
    assert (config.trainer.epochs, optim.lr, optim.weight_decay) == (epochs, peak_lr, 0.01)
    if dataset == "nuscenes":  # [paper] one-cycle 1e-4 -> 1e-3 -> 1e-8
        assert optim.lr / optim.div_factor == pytest.approx(1e-4)
        assert optim.lr / optim.div_factor / optim.final_div_factor == pytest.approx(1e-8)
    sampling = config.data.augmentation.gt_sampling
    classes = set(DATASETS[dataset].classes)
    assert sampling.enabled and set(sampling.sample_counts) == set(sampling.min_points) == classes
    assert set(sampling.min_points.values()) == {5}


@pytest.mark.parametrize("file, old, new", [
    ("nuscenes/_base.yaml", "max_sweeps:", "max_sweep:"),
    ("kitti/cp-voxel-xs.yaml", "regression_weight:", "regresion_weight:"),
    ("nuscenes/methods/rdd.yaml", "alpha_logit:", "alpha_logits:"),
])
def test_a_misspelt_key_is_an_error_naming_it(tmp_path, file, old, new):
    copy = tmp_path / Path(file).name
    text = (CONFIGS / file).read_text()
    assert old in text
    copy.write_text(text.replace(old, new))
    dataset = file.split("/")[0]
    files = [base(dataset), copy] if copy.name != "_base.yaml" else [copy]
    with pytest.raises(ConfigError, match=rf"{re.escape(str(copy))}: .*'{new[:-1]}'"):
        load_run_config(files)


def _kitti_files(real_data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A KITTI root holding the fixture frame 000008 as both splits, and the overrides pointing at it."""
    root = tmp_path / "kitti"
    (root / "ImageSets").mkdir(parents=True)
    (root / "training").symlink_to(real_data / "kitti" / "training")
    for split in ("train", "val"):
        (root / "ImageSets" / f"{split}.txt").write_text("000008\n")
    from rdd3d.data.kitti import KittiDataset

    database = build_gt_database(KittiDataset(root, "train"), root / "gt_database", progress=False)
    # 000008 holds cars only: a database without pedestrians or cyclists cannot top frames up with them.
    return database, [f"data.root={root}", "data.augmentation.gt_sampling.sample_counts.Pedestrian=0",
                      "data.augmentation.gt_sampling.sample_counts.Cyclist=0"]


def _nuscenes_files(real_data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Info files holding the fixture keyframe as both splits, and the overrides pointing at them."""
    from rdd3d.data.nuscenes import NuScenesDataset, NuScenesInfos, write_infos

    info = write_infos(tmp_path / "infos.json", NuScenesInfos((fixture_info(real_data),), "v1.0-mini", "fixture"))
    database = build_gt_database(NuScenesDataset(info, real_data / "nuscenes"), tmp_path / "gt_database",
                                 progress=False)
    # No trailer or motorcycle in the keyframe; its bus, bicycle and construction vehicle have < 5 points.
    absent = ("trailer", "motorcycle", "bus", "bicycle", "construction_vehicle")
    return database, [f"data.root={real_data / 'nuscenes'}", f"data.nuscenes.train_info={info}",
                      f"data.nuscenes.val_info={info}", "data.nuscenes.use_cbgs=false",  # CBGS repeats the frame
                      *(f"data.augmentation.gt_sampling.sample_counts.{name}=0" for name in absent)]


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_a_row_trains_distils_and_evaluates_on_real_frames(dataset, real_data, tmp_path):
    """The documented commands, at one step on one real frame: a no-KD run (the teacher's stand-in),
    an RDD run distilled from its checkpoint, and the evaluation writing the dataset's result files."""
    database, data = (_nuscenes_files if dataset == "nuscenes" else _kitti_files)(real_data, tmp_path)
    # 20 candidates per head: an untrained model's NMS over 500 would cost most of the run.
    tiny = ["device=cpu", "trainer.amp=false", "trainer.epochs=1", "trainer.batch_size=1", "trainer.num_workers=0",
            "model.overrides={head.decode.max_per_task: 20}", f"data.augmentation.gt_sampling.database={database}",
            *data]
    sets = [argument for value in tiny for argument in ("--set", value)]
    student = "cp-voxel-xxs"
    configs = ["--config", str(base(dataset)), "--config", str(row(dataset, student))]
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "rdd"
    assert main(["train", *configs, *sets, "--set", f"output_dir={teacher_dir}"]) == 0
    assert main(["distill", *configs, "--config", str(method_file(dataset, "rdd")), "--method", "rdd",
                 "--student", student, "--teacher", str(teacher_dir / "best.pt"), *sets,
                 "--set", f"output_dir={student_dir}"]) == 0
    terms = {name for record in read_log(student_dir / "log.jsonl") for name in record}
    assert {"loss/rdd/feature", "loss/rdd/logit", "mAP"} <= terms
    results = tmp_path / ("results.json" if dataset == "nuscenes" else "results")
    assert main(["eval", "--checkpoint", str(student_dir / "best.pt"), "--device", "cpu",
                 "--write-results", str(results)]) == 0
    if dataset == "nuscenes":
        assert TOKEN in results.read_text()
    else:
        assert (results / "000008.txt").is_file()
