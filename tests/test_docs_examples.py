"""Every code example in the user docs works.

The ```python blocks of the documents below run, each in a fresh module namespace, in a temporary
directory, on one thread; a block fenced ```python no-run is only shown, and few may be. The ``rdd3d``
command lines of their ```bash blocks parse, and the configs they describe load. The method
specification's sections cited by the code exist, and the API listed in the guide can be imported.
"""

from __future__ import annotations

import importlib
import re
import shlex
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
DOCUMENTS = (GUIDE, SPEC)
NOT_RUN = "no-run"
MOST_NOT_RUN = 2  # blocks fenced ```python no-run, over all documents
FENCE = re.compile(r"^```(\S*)\s*(.*)$")


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


@pytest.mark.parametrize("path, line, code", RUNNABLE)
def test_python_example_runs(path, line, code, tmp_path, monkeypatch):
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


def test_the_guide_has_runnable_examples_and_few_are_not_run():
    not_run = [f"{path.name}:{line}" for path, line, info, code in PYTHON_BLOCKS if info == NOT_RUN]
    assert len(not_run) <= MOST_NOT_RUN, f"blocks not run: {not_run}"
    assert sum(path == GUIDE and info != NOT_RUN for path, line, info, code in PYTHON_BLOCKS) >= 4
    unknown = [f"{path.name}:{line} ({info})" for path, line, info, code in PYTHON_BLOCKS if info not in ("", NOT_RUN)]
    assert not unknown, f"python fences with an unknown marker: {unknown}"


def command_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Every ``rdd3d`` command of the ```bash blocks, continuation lines joined and comments dropped."""
    commands = []
    for line, language, info, code in code_blocks(path):
        if language != "bash":
            continue
        for command in re.sub(r"\\\n", " ", code).splitlines():
            words = shlex.split(command, comments=True)
            if words and words[0] == "rdd3d":
                commands.append((line, words[1:]))
    return commands


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_command_lines_parse_and_their_configs_load(path, monkeypatch):
    monkeypatch.chdir(REPO)  # --config paths are the repository's
    parser = build_parser()
    for line, argv in command_lines(path):
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}:{line}: `rdd3d {' '.join(argv)}` does not parse")
        if args.command == "train":
            load_run_config(args.config, args.set)
        elif args.command == "distill":
            load_run_config(args.config, [f"model.preset={args.student}", f"distill.method={args.method}",
                                          f"distill.teacher_checkpoint={args.teacher}", *args.set])


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
