"""Every code example in the user docs works.

The ```python blocks of README.md and every document of docs/ run, each in a fresh module namespace, in
a temporary directory, on one thread; a block fenced ```python no-run is only shown, and few may be. An
example that names ``data/kitti`` finds there the real KITTI frames of ``RDD3D_REAL_DATA`` in KITTI's
layout (ImageSets with both frames for train and val, and a testing/ copy without labels); one that
names ``data/nuscenes`` finds a two-scene nuScenes dataroot in the devkit's table format
(``data/nuscenes_support.py``: one scene of the train split, one of val) under ``v1.0-trainval``.
The ```bash blocks of each document run in bash with every program stubbed: the ``rdd3d`` command
lines (also through ``torchrun -m rdd3d``) parse and the configs and plans they name load, the
``python`` programs compile, ``python -m rdd3d_runtime`` parses and ``make`` names a target of the
Makefile; any other program is an error. The method specification's sections cited by the code exist,
and the API listed in the guide can be imported.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from rdd3d.cli import build_parser
from rdd3d.engine.config import load_run_config

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "distillation.md"
SPEC = REPO / "docs" / "rdd-method.md"
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
NOT_RUN = "no-run"
# Blocks fenced ```python no-run, over all documents. None is today: a block that truly cannot run here
# (a full dataset, a GPU, hours) raises this number, with a line here saying which block and why.
MOST_NOT_RUN = 0
FENCE = re.compile(r"^```(\S*)\s*(.*)$")
KITTI_FRAMES = ("000008", "000000")
SUBMISSION = "results_nusc.json"  # an example naming it finds a submission for data/nuscenes's val split


def code_blocks(path: Path) -> list[tuple[int, str, str, str]]:
    """``(line of the opening fence, language, rest of the info string, code)`` for every fenced block."""
    blocks, opened, language, info, code = [], None, "", "", []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.match(line)
        if opened is None and fence:
            opened, language, info, code = number, fence.group(1), fence.group(2), []
        elif opened is not None and line.rstrip() == "```":
            blocks.append((opened, language, info, "\n".join(code)))
            opened = None
        elif opened is not None:
            code.append(line)
    assert opened is None, f"{path.name}: the block opened at line {opened} is never closed"
    return blocks


PYTHON_BLOCKS = [(path, line, info, code) for path in DOCUMENTS
                 for line, language, info, code in code_blocks(path) if language == "python"]
RUNNABLE = [pytest.param(path, line, code, id=f"{path.name}:{line}")
            for path, line, info, code in PYTHON_BLOCKS if info != NOT_RUN]


def lay_out_kitti(root: Path, real_data: Path) -> None:
    """The real KITTI frames in KITTI's layout, each file linked (what an example writes stays in ``root``)."""
    real = real_data / "kitti" / "training"
    for split, kinds in (("training", ("velodyne", "calib", "label_2", "image_2")),
                         ("testing", ("velodyne", "calib", "image_2"))):
        for kind in kinds:
            (root / split / kind).mkdir(parents=True)
            for source in sorted((real / kind).iterdir()):
                (root / split / kind / source.name).symlink_to(source)
    (root / "ImageSets").mkdir()
    for split in ("train", "val", "test"):
        (root / "ImageSets" / f"{split}.txt").write_text("\n".join(KITTI_FRAMES) + "\n")


def lay_out_nuscenes(root: Path) -> None:
    """The tests' fake devkit dataroot, its tables under v1.0-trainval: scene-0061 is of the train split,
    scene-0103 of val."""
    pytest.importorskip("nuscenes")
    from data.nuscenes_support import VERSION, write_fake_dataroot

    write_fake_dataroot(root)
    (root / VERSION).rename(root / "v1.0-trainval")


def write_perfect_submission(dataroot: Path, path: Path, scratch: Path) -> None:
    """A submission for the val split of ``dataroot``: its ground truth boxes, each with score 1."""
    from rdd3d.core.types import Detections
    from rdd3d.data.nuscenes import NuScenesDataset, build_infos
    from rdd3d.evaluation.nuscenes_export import write_submission

    report = build_infos(dataroot, "v1.0-trainval", out_dir=scratch, max_sweeps=0)
    val = NuScenesDataset(report.files["val"], dataroot, drop_empty_boxes=False)
    frames = [val[index] for index in range(len(val))]
    write_submission(path, frames, [Detections(torch.from_numpy(frame.boxes.tensor), torch.ones(len(frame.boxes)),
                                               torch.from_numpy(frame.labels)) for frame in frames])


@pytest.mark.parametrize("path, line, code", RUNNABLE)
def test_python_example_runs(path, line, code, tmp_path, tmp_path_factory, monkeypatch, request):
    if "data/kitti" in code:
        lay_out_kitti(tmp_path / "data" / "kitti", request.getfixturevalue("real_data"))
    if "data/nuscenes" in code:
        lay_out_nuscenes(tmp_path / "data" / "nuscenes")
    if SUBMISSION in code:
        write_perfect_submission(tmp_path / "data" / "nuscenes", tmp_path / SUBMISSION,
                                 tmp_path_factory.mktemp("infos"))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # A module of its own, so that what the example defines can be pickled (torch.save of a whole model).
    name = f"docs_example_{path.stem.replace('-', '_')}_{line}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        # Blank lines in front: a traceback names the document's own line numbers.
        exec(compile("\n" * line + code, str(path), "exec"), module.__dict__)
    finally:
        del sys.modules[name]
        torch.set_num_threads(threads)


def test_the_docs_have_runnable_examples_and_few_are_not_run():
    not_run = [f"{path.name}:{line}" for path, line, info, code in PYTHON_BLOCKS if info == NOT_RUN]
    assert len(not_run) <= MOST_NOT_RUN, f"blocks not run: {not_run}"
    assert sum(path == GUIDE and info != NOT_RUN for path, line, info, code in PYTHON_BLOCKS) >= 4
    assert len(RUNNABLE) >= 18
    unknown = [f"{path.name}:{line} ({info})" for path, line, info, code in PYTHON_BLOCKS if info not in ("", NOT_RUN)]
    assert not unknown, f"python fences with an unknown marker: {unknown}"


# Every program a ```bash block may run, as a bash function that records its words (NUL-terminated, a
# record ending in the word RS); `python` also records the script it reads from stdin (`python -`).
SHELL_STUBS = r"""
_record() { printf '%s\0' "$@" >> "$CALLS"; printf '\036\0' >> "$CALLS"; }
rdd3d() { _record rdd3d "$@"; }
torchrun() { _record torchrun "$@"; }
make() { _record make "$@"; }
python() {
    local word script=
    for word in "$@"; do [[ $word == - ]] && IFS= read -r -d '' script; done
    _record python "$@" "$script"
}
.venv/bin/python() { python "$@"; }
command_not_found_handle() { _record "" "$@"; return 127; }  # a program without a stub
"""


def shell_calls(path: Path, tmp_path: Path) -> list[list[str]]:
    """The programs the ```bash blocks of ``path`` run (in one shell, in order), each as its words."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    script = "\n".join(code for line, language, info, code in code_blocks(path) if language == "bash")
    calls = tmp_path / "calls"
    calls.touch()
    empty = tmp_path / "empty"
    empty.mkdir()
    shell = subprocess.run([bash, "--noprofile", "--norc", "-c", SHELL_STUBS + script], cwd=tmp_path,
                           env={"PATH": str(empty), "CALLS": str(calls)}, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
    assert not shell.stderr, f"{path.name}: its bash blocks, run in bash: {shell.stderr}"
    words = calls.read_bytes().decode("utf-8").split("\0")[:-1]
    records, record = [], []
    for word in words:
        if word == "\036":
            records.append(record)
            record = []
        else:
            record.append(word)
    return records


def parsed(parser, argv: list[str]):
    """``parser``'s arguments for ``argv``; a ValueError with argparse's message where they do not parse."""
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            return parser.parse_args(argv)
    except SystemExit:
        raise ValueError(f"does not parse: {message.getvalue().strip().splitlines()[-1]}") from None


def check_rdd3d_command(argv: list[str]) -> None:
    """``rdd3d argv`` parses, and the configs, plans and world settings it names load."""
    args = parsed(build_parser(), argv)
    if args.command in ("train", "gt-database"):
        load_run_config(args.config, args.set)
    elif args.command == "distill":
        load_run_config(args.config, [f"model.preset={args.student}", f"distill.method={args.method}",
                                      f"distill.teacher_checkpoint={args.teacher}", *args.set])
    elif args.command == "calibrate" and Path(args.student).suffix != ".pt":
        load_run_config(args.config, [*args.set, f"model.preset={args.student}"])
    elif args.command == "import-checkpoint":
        from rdd3d.models.foreign import foreign_model

        foreign_model(args.framework, args.preset, args.dataset)
        load_run_config(args.config, [*args.set, f"data.dataset={args.dataset}", f"model.preset={args.preset}"])
    elif args.command == "benchmark":
        from rdd3d.benchmark import load_plan

        load_plan(args.plan, args.set)
    elif args.command == "show" and args.config:  # a frame of the dataset a run config names
        load_run_config(args.config, args.set)
    elif args.command in ("simulate", "show"):
        from rdd3d.core.config_loading import build_config
        from rdd3d.data.synthetic import WorldConfig

        build_config(WorldConfig, overrides=args.set)


def check_python_command(argv: list[str]) -> None:
    """``python argv`` (its last word the script read from stdin) runs a module whose command line parses,
    a script of the repository, or a script that compiles."""
    *argv, stdin = argv
    if "-m" in argv:
        module, rest = argv[argv.index("-m") + 1], argv[argv.index("-m") + 2:]
        if module == "rdd3d":
            check_rdd3d_command(rest)
        else:
            assert module == "rdd3d_runtime", "a module this test does not check"
            from rdd3d_runtime.cli import build_parser as runtime_parser

            parsed(runtime_parser(), rest)
    elif "-c" in argv:
        compile(argv[argv.index("-c") + 1], "<python -c>", "exec")
    elif argv and argv[0].endswith(".py"):  # a script of the repository (benchmarks/...): it must exist and compile
        script = REPO / argv[0]
        assert script.is_file(), f"{argv[0]} is not a script of the repository"
        compile(script.read_text(encoding="utf-8"), str(script), "exec")
    else:
        assert "-" in argv, "neither -m, -c, a script of the repository nor a script on stdin"
        compile(stdin, "<python ->", "exec")


@pytest.mark.parametrize("path", [path for path in DOCUMENTS if any(language == "bash" for _, language, _, _
                                                                     in code_blocks(path))],
                         ids=lambda path: path.name)
def test_shell_commands_parse_and_their_configs_load(path, tmp_path, monkeypatch):
    calls = shell_calls(path, tmp_path)
    assert calls, f"{path.name}: its bash blocks run nothing this test checks"
    monkeypatch.chdir(REPO)  # --config paths are the repository's
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(encoding="utf-8"), flags=re.MULTILINE))
    for program, *argv in calls:
        try:
            if program == "rdd3d":
                check_rdd3d_command(argv)
            elif program == "torchrun":
                assert argv[argv.index("-m") + 1] == "rdd3d", "runs no rdd3d"
                check_rdd3d_command(argv[argv.index("-m") + 2:])
            elif program == "python":
                check_python_command(argv)
            elif program == "make":
                assert set(argv) <= targets, "the Makefile has no such target"
            else:
                raise AssertionError("a program this test does not check: rdd3d, torchrun, python or make")
        except Exception as error:
            shown = " ".join([program, *(argv[:-1] if program == "python" else argv)]).strip()
            pytest.fail(f"{path.name}: `{shown}`: {type(error).__name__}: {error}")


def test_the_code_cites_sections_the_method_specification_has():
    sections = set(re.findall(r"^## (\d+)\. ", SPEC.read_text(encoding="utf-8"), flags=re.MULTILINE))
    assert sections == {str(number) for number in range(1, len(sections) + 1)}, "sections numbered 1, 2, ..."
    cited = [(source.relative_to(REPO), number) for source in sorted((REPO / "src").rglob("*.py"))
             for number in re.findall(r"rdd-method(?:\.md)?`*\s*\(?§(\d+)", source.read_text(encoding="utf-8"))]
    assert cited, "the code cites docs/rdd-method.md by section"
    missing = [f"{source}: §{number}" for source, number in cited if number not in sections]
    assert not missing, f"citations of sections docs/rdd-method.md does not have: {missing}"


def test_the_api_the_guide_lists_can_be_imported():
    text = GUIDE.read_text(encoding="utf-8")
    listing = text.split("## The API at a glance", 1)[1]
    entries = re.findall(r"^- `([\w.]+)`: (.+)$", listing, flags=re.MULTILINE)
    assert entries, "the guide lists its API"
    absent = [f"{module}.{name}" for module, names in entries for name in re.findall(r"`(\w+)`", names)
              if not hasattr(importlib.import_module(module), name)]
    assert not absent, f"listed in docs/distillation.md but not importable: {absent}"
