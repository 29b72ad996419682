"""The paper's experiment configs (configs/nuscenes, configs/kitti): every file loads through the real
loader in the combinations docs/reproduce.md runs, builds its preset and distillation method, and a
row runs end to end (train, distil, evaluate) on the real fixture frames through the command line
(a CenterPoint row on each dataset, an anchor-head row of Table 4 on KITTI)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from torch import nn

from rdd3d.cli import main
from rdd3d.data.gt_sampling import build_gt_database
from rdd3d.distill.baselines import PPLogitConfig
from rdd3d.distill.methods import METHOD_NAMES, build_method
from rdd3d.engine.config import RunConfig, load_run_config
from rdd3d.core.config_loading import ConfigError
from rdd3d.engine.run_logging import read_log
from rdd3d.engine.runs import build_model
from rdd3d.models.presets import DATASETS, TEACHERS, list_presets

from data.test_nuscenes_real import TOKEN, fixture_info

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_DATASETS = ("nuscenes", "kitti")
#: The CenterPoint teachers and students of Table 3: a row on both datasets.
CENTERPOINT_PRESETS = ("cp-voxel", "cp-voxel-s", "cp-voxel-xs", "cp-voxel-xxs",
                       "cp-pillar", "cp-pillar-v0.4", "cp-pillar-v0.48", "cp-pillar-v0.64")
#: SECOND and PointPillars with their students, Table 4 (anchor heads): rows on KITTI only.
TABLE4_PRESETS = ("second", "second-s", "second-xs", "pointpillars", "pointpillars-s", "pointpillars-xs")
ROWS: dict[str, tuple[str, ...]] = {"nuscenes": CENTERPOINT_PRESETS, "kitti": CENTERPOINT_PRESETS + TABLE4_PRESETS}
DATASET_ROWS = [(dataset, preset) for dataset, presets in ROWS.items() for preset in presets]
DISTILL_METHODS = tuple(method for method in METHOD_NAMES if method != "none")


def students(dataset: str) -> tuple[str, ...]:
    return tuple(preset for preset in ROWS[dataset] if TEACHERS[preset] != preset)


DATASET_STUDENTS = [(dataset, student) for dataset in PAPER_DATASETS for student in students(dataset)]


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
def row_detector(preset: str, dataset: str) -> nn.Module:
    """The detector a row's files build (cached: the method tests build every pair's)."""
    return build_model(load_run_config([base(dataset), row(dataset, preset)]))


def neck_channels(preset: str, dataset: str) -> int:
    return row_detector(preset, dataset).backbone_2d.out_channels


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_the_folder_holds_exactly_the_documented_rows(dataset):
    found = {path.relative_to(CONFIGS / dataset).as_posix() for path in (CONFIGS / dataset).rglob("*.yaml")}
    assert set(ROWS[dataset]) <= set(list_presets(dataset))  # each row's preset is offered on its dataset
    rows = (f"{preset}.yaml" for preset in ROWS[dataset])
    assert found == {"_base.yaml", *rows, *(f"methods/{method}.yaml" for method in DISTILL_METHODS)}


@pytest.mark.parametrize("dataset, preset", DATASET_ROWS)
def test_teacher_and_student_rows_load_and_build(dataset, preset):
    config = load_run_config([base(dataset), row(dataset, preset)])
    assert (config.model.preset, config.data.dataset, config.distill.method) == (preset, dataset, "none")
    assert neck_channels(preset, dataset) > 0  # the detector of this row builds on this dataset
    # A row names its detector and, for a student, PP-Logit's weights: the schedule, data and
    # augmentation stay the base's, as the paper trains every row of a table alike.
    options = yaml.safe_load(row(dataset, preset).read_text())
    assert options.pop("model") == {"preset": preset}
    if TEACHERS[preset] != preset:
        assert list(options.pop("distill")) == ["pp_logit"]
    assert options == {}


@pytest.mark.parametrize("preset, kind, iou", [
    *((preset, "nearest_bev", 0.5) for preset in TABLE4_PRESETS),  # [paper] axis-aligned NMS 0.5 on KITTI
    *((preset, "rotated", 0.01) for preset in CENTERPOINT_PRESETS),  # OpenPCDet's CenterPoint KITTI decoding
])
def test_kitti_rows_decode_with_their_nms(preset, kind, iou):
    nms = row_detector(preset, "kitti").head.config.decode.nms
    assert (nms.kind, nms.iou_threshold) == (kind, iou)


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
    # Every pair's channels (and for the CP-Pillar students, its two map resolutions; on KITTI also the
    # anchor-head pairs of Table 4).
    for student in students(dataset):
        teacher = TEACHERS[student]
        losses = build_method(config.distill, neck_channels(student, dataset), neck_channels(teacher, dataset))
        assert len(losses) == 1


@pytest.mark.parametrize("dataset, student", DATASET_STUDENTS)
def test_student_rows_carry_sparsekds_pp_logit_setting(dataset, student):
    config = distill_config(dataset, student, "pp-logit")
    assert config.model.preset == student and config.distill.pp_logit == PPLogitConfig.for_student(student)


@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_method_files_agree_across_datasets(method):
    nuscenes, kitti = (yaml.safe_load(method_file(dataset, method).read_text()) for dataset in PAPER_DATASETS)
    assert nuscenes == kitti


@pytest.mark.parametrize("dataset, preset, epochs, peak_lr", [
    ("nuscenes", "cp-voxel", 20, 1e-3), ("kitti", "cp-voxel", 80, 3e-3), ("kitti", "second", 80, 3e-3),
])
def test_schedule_and_ground_truth_sampling(dataset, preset, epochs, peak_lr):
    config = load_run_config([base(dataset), row(dataset, preset)])
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


@pytest.mark.parametrize("dataset, student", [("nuscenes", "cp-voxel-xxs"), ("kitti", "cp-voxel-xxs"),
                                              ("kitti", "second-xs")])
def test_a_row_trains_distils_and_evaluates_on_real_frames(dataset, student, real_data, tmp_path):
    """The documented commands, at one step on one real frame: a no-KD run (the teacher's stand-in),
    an RDD run distilled from its checkpoint, and the evaluation writing the dataset's result files."""
    database, data = (_nuscenes_files if dataset == "nuscenes" else _kitti_files)(real_data, tmp_path)
    # 20 candidates per head (the anchor head: before its NMS): an untrained model's NMS over 500 (4096)
    # would cost most of the run.
    few = "{head.decode.nms.pre_max_size: 20}" if student in TABLE4_PRESETS else "{head.decode.max_per_task: 20}"
    tiny = ["device=cpu", "trainer.amp=false", "trainer.epochs=1", "trainer.batch_size=1", "trainer.num_workers=0",
            f"model.overrides={few}", f"data.augmentation.gt_sampling.database={database}", *data]
    sets = [argument for value in tiny for argument in ("--set", value)]
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
