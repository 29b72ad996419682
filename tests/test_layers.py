"""The package's layers: no module imports from a layer above its own (DEVELOPERS.md, "Layers")."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rdd3d"

#: Bottom to top. Parts of one layer may use each other; a layer may use every layer below it.
LAYERS = (
    {"core"},  # records, geometry, file and config I/O
    {"data"},  # datasets: their files, frames, classes; the synthetic world; voxelisation
    {"models"},  # detectors and presets
    {"evaluation"},  # metrics, and predictions written as each benchmark reads them
    {"distill"},  # distillation methods and the distiller
    {"engine", "export"},  # training, runs, measurements; ONNX export of trained detectors
    {"cli", "demo", "doctor", "viz", "benchmark", "disparity_report", "__main__"},  # applications
)


def _layer(part: str) -> int:
    for level, parts in enumerate(LAYERS):
        if part in parts:
            return level
    raise AssertionError(f"rdd3d.{part} belongs to no layer: add it to LAYERS in {__file__}")


def _imported_parts(path: Path) -> set[str]:
    """The top-level parts of rdd3d (``core``, ``data``, ...) the module imports, lazily or not."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        parts |= {name.split(".")[1] for name in names if name.startswith("rdd3d.")}
    return parts


MODULES = sorted(path for path in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(path.relative_to(PACKAGE)) for path in MODULES])
def test_no_module_imports_from_a_layer_above_its_own(path):
    relative = path.relative_to(PACKAGE)
    own = relative.parts[0].removesuffix(".py")
    if own == "__init__":
        return
    upward = sorted(part for part in _imported_parts(path) if _layer(part) > _layer(own))
    assert not upward, f"rdd3d/{relative} (layer {_layer(own)}) imports rdd3d.{', rdd3d.'.join(upward)} from above"


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "fake.py"
    module.write_text("def late():\n    from rdd3d.engine.trainer import Trainer\n")
    assert _imported_parts(module) == {"engine"} and _layer("engine") > _layer("distill")
