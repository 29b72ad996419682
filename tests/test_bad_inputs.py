"""The bad-input corpus (tests/bad_inputs/cases.yaml): every broken file, config and command line a user has
met gets a clear error, the documented exit code, and leaves what it did not name as output untouched.

``python tests/test_bad_inputs.py`` writes the table of cases into docs/bad-input.md.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rdd3d.cli import main
from rdd3d.core.checkpoint import save_checkpoint
from rdd3d.core.types import PointCloud
from rdd3d.data.io import write_points
from rdd3d.data.synthetic import SyntheticDataset, write_dataset
from rdd3d.data.synthetic.lidar import POINT_COLUMNS
from rdd3d.engine.config import load_run_config
from rdd3d.engine.runs import build_model, plain_config

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
DOCS = Path(__file__).parents[1] / "docs" / "bad-input.md"
CASE_FIELDS = {"id", "argv", "exit", "error", "setup", "replace", "unchanged", "absent"}
# A tiny data budget on every command that trains: a check that stopped working fails in seconds, not hours.
TINY_DATA = ["--set", "data.train_size=2", "--set", "data.val_size=1", "--set", "trainer.num_workers=0"]


# ----------------------------------------------------------------------------- what cases build first
def _checkpoint_state(*overrides: str, epoch: int = 3) -> dict:
    """A checkpoint as `rdd3d train` writes it, of a cp-voxel-xxs run stopped after ``epoch`` epochs."""
    config = load_run_config(overrides=["model.preset=cp-voxel-xxs", *TINY_DATA[1::2], *overrides])
    weights = {f"detector.{key}": value for key, value in build_model(config).state_dict().items()}
    return {"config": plain_config(config), "model": weights, "epoch": epoch, "step": 3 * epoch,
            "evaluation_pending": False}


def _checkpoint(work: Path) -> None:
    save_checkpoint(work / "model.pt", _checkpoint_state())


def _nan_checkpoint(work: Path) -> None:
    state = _checkpoint_state()
    first_weight = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][first_weight][0] = float("nan")
    save_checkpoint(work / "nan.pt", state)


def _kitti_checkpoint(work: Path) -> None:
    save_checkpoint(work / "kitti.pt", _checkpoint_state("data.dataset=kitti"))


class _MakesAFolder:
    """Unpickling it would create the folder ``ran``: the case checks that it never appears."""

    def __reduce__(self):
        return os.mkdir, ("ran",)


def _malicious_checkpoint(work: Path) -> None:
    torch.save({"model": _MakesAFolder()}, work / "malicious.pt")


def _tensors_checkpoint(work: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, work / "tensors.pt")


def _foreign_checkpoint_of_another_architecture(work: Path) -> None:
    """second.pth: an OpenPCDet checkpoint of SECOND (an anchor head), not of a CenterPoint."""
    torch.save({"model_state": {"backbone_3d.conv_input.0.weight": torch.zeros(16, 3, 3, 3, 5),
                                "dense_head.conv_cls.weight": torch.zeros(18, 512, 1, 1),
                                "dense_head.conv_box.weight": torch.zeros(42, 512, 1, 1)},
                "epoch": 80, "version": "pcdet+0.6.0"}, work / "second.pth")


def _truncated_foreign_checkpoint(work: Path) -> None:
    """cut.pth: the first half of an OpenPCDet checkpoint (a download cut short)."""
    buffer = io.BytesIO()
    torch.save({"model_state": {"backbone_3d.conv_input.0.weight": torch.zeros(16, 3, 3, 3, 5)}, "epoch": 1}, buffer)
    (work / "cut.pth").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _dataset(work: Path) -> None:
    write_dataset(work / "sim", {split: SyntheticDataset(split, 1, seed=0) for split in ("train", "val")},
                  progress=False)


def _dataset_far_point(work: Path) -> None:
    _dataset(work)
    points = np.zeros((4, 5), dtype=np.float32)
    points[2, 0] = 1e30
    write_points(work / "sim" / "points" / "train_000000.bin", PointCloud(points, POINT_COLUMNS))


def _dataset_folder_for_points(work: Path) -> None:
    _dataset(work)
    path = work / "sim" / "points" / "train_000000.bin"
    path.unlink()
    path.mkdir()


def _dataset_of_4_column_points(work: Path) -> None:
    """A frame's 5-column point file replaced by 20 points of 4 columns: 80 values, 16 rows of 5 as well."""
    _dataset(work)
    rows = np.random.default_rng(0).normal(scale=10.0, size=(20, 4)).astype(np.float32)
    rows[:, 3] = np.abs(rows[:, 3])  # an intensity
    (work / "sim" / "points" / "train_000000.bin").write_bytes(rows.tobytes())


def _kitti_info_file(work: Path) -> None:
    """infos.pkl: mmdetection3d's KITTI info file of frame 000008, where nuscenes_infos.yaml expects nuScenes'."""
    from data.test_mmdet3d_info_files import KITTI_CATEGORIES, kitti_record

    info = {"metainfo": {"categories": KITTI_CATEGORIES, "dataset": "kitti", "info_version": "1.1"},
            "data_list": [kitti_record()]}
    (work / "infos.pkl").write_bytes(pickle.dumps(info, protocol=2))


def _info_file_of_two_box_conventions(work: Path) -> None:
    """infos.pkl: a nuScenes frame whose first four boxes are in mmdetection3d's 1.x convention, the rest in
    its pre-1.0 one."""
    from data.test_mmdet3d_info_files import scene_file, to_pre_v1

    scene_file(work, lambda boxes: np.concatenate([boxes[:4], to_pre_v1(boxes[4:])]))


def _exported_model(work: Path) -> None:
    """A pillar detector exported as `rdd3d export` writes it, and a point file in its columns."""
    from rdd3d.export import export_detector
    from rdd3d.models import build_detector

    torch.manual_seed(0)
    export_detector(build_detector("cp-pillar-v0.64").eval(), work / "model", "cp-pillar-v0.64", "synthetic")
    write_points(work / "points.bin", PointCloud(np.zeros((8, 5), dtype=np.float32), POINT_COLUMNS))


def _exported_model_of_another_version(work: Path) -> None:
    _exported_model(work)
    manifest = json.loads((work / "model" / "manifest.json").read_text())
    (work / "model" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))


SETUPS = {"checkpoint": _checkpoint, "nan_checkpoint": _nan_checkpoint, "kitti_checkpoint": _kitti_checkpoint,
          "malicious_checkpoint": _malicious_checkpoint, "tensors_checkpoint": _tensors_checkpoint,
          "foreign_checkpoint_of_another_architecture": _foreign_checkpoint_of_another_architecture,
          "truncated_foreign_checkpoint": _truncated_foreign_checkpoint,
          "dataset": _dataset, "dataset_far_point": _dataset_far_point,
          "dataset_folder_for_points": _dataset_folder_for_points,
          "dataset_of_4_column_points": _dataset_of_4_column_points,
          "kitti_info_file": _kitti_info_file, "info_file_of_two_box_conventions": _info_file_of_two_box_conventions,
          "exported_model": _exported_model,
          "exported_model_of_another_version": _exported_model_of_another_version}


# ----------------------------------------------------------------------------- the corpus
def test_every_case_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for case in CASES:
        assert set(case) <= CASE_FIELDS, f"{case['id']}: unknown fields {set(case) - CASE_FIELDS}"
        assert {"id", "argv", "exit", "error"} <= set(case), case["id"]
        assert case["exit"] in (1, 2) and case["error"], case["id"]
        assert case.get("setup") is None or case["setup"] in SETUPS, case["id"]
        for path in [*case.get("unchanged", ()), *case.get("replace", {}).values()]:
            assert (CORPUS / path).exists() or case.get("setup"), f"{case['id']}: {path} is not in the corpus"


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input(case, tmp_path, monkeypatch, capsys):
    work = tmp_path / "corpus"
    shutil.copytree(CORPUS, work)
    monkeypatch.chdir(work)
    if case.get("setup"):
        SETUPS[case["setup"]](work)
    for target, source in case.get("replace", {}).items():
        shutil.copyfile(source, target)
    before = {path: Path(path).read_bytes() for path in case.get("unchanged", ())}
    argv = [str(argument) for argument in case["argv"]]
    if argv[0] in ("train", "distill"):
        argv += TINY_DATA
    capsys.readouterr()

    code = main(argv)

    error = capsys.readouterr().err
    assert code == case["exit"], f"exit {code}, expected {case['exit']}; stderr:\n{error}"
    for expected in case["error"]:
        assert expected in error, f"expected {expected!r} on stderr:\n{error}"
    assert "Traceback" not in error
    for path, content in before.items():
        assert Path(path).read_bytes() == content, f"{path} was changed"
    for path in [*case.get("absent", ()), "ran"]:
        assert not Path(path).exists(), f"{path} was created"


# ----------------------------------------------------------------------------- the docs' table
def render_table(cases) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    def argument(value) -> str:
        text = str(value) if len(str(value)) <= 60 else str(value)[:57] + "..."
        return repr(text) if " " in text else text

    def command(argv) -> str:
        return f"`rdd3d {cell(' '.join(map(argument, argv)))}`"

    rows = ["| case | command | exit | the error says |", "|---|---|---|---|"]
    for case in cases:
        prepared = f" (after: {case['setup'].replace('_', ' ')})" if case.get("setup") else ""
        said = " … ".join(f"`{cell(text)}`" for text in case["error"])
        rows.append(f"| {case['id']}{prepared} | {command(case['argv'])} | {case['exit']} | {said} |")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- cases: generated by `python tests/test_bad_inputs.py` -->\n", "<!-- end of cases -->\n"


def test_the_docs_list_every_case():
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    listed = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert listed == render_table(CASES), f"{DOCS} is out of date: run `python tests/test_bad_inputs.py`"


if __name__ == "__main__":
    text = DOCS.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    DOCS.write_text(head + BEGIN + render_table(CASES) + END + rest.split(END, 1)[1], encoding="utf-8")
    print(f"wrote {len(CASES)} cases to {DOCS}", file=sys.stderr)
