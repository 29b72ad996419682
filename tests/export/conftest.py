"""Session-wide exports of the two families, with a CenterPoint head and with an anchor head
(exported_models.py makes them), each made once, when a test first asks for it."""

from __future__ import annotations

from typing import Callable

import pytest
from exported_models import (
    ANCHOR_PILLAR_PRESET, ANCHOR_VOXEL_PRESET, PILLAR_PRESET, VOXEL_PRESET, Exported, export_peaked,
)

EXPORTS = {"pillar": PILLAR_PRESET, "voxel": VOXEL_PRESET, "anchor_pillar": ANCHOR_PILLAR_PRESET,
           "anchor_voxel": ANCHOR_VOXEL_PRESET}


@pytest.fixture(scope="session")
def export_of(tmp_path_factory) -> Callable[[str], Exported]:
    """``export_of(name)``: the session's export of ``EXPORTS[name]``, for tests parametrized over them."""
    made: dict[str, Exported] = {}

    def export(name: str) -> Exported:
        if name not in made:
            made[name] = export_peaked(EXPORTS[name], tmp_path_factory.mktemp(name))
        return made[name]

    return export


@pytest.fixture(scope="session")
def pillar_export(export_of) -> Exported:
    return export_of("pillar")


@pytest.fixture(scope="session")
def voxel_export(export_of) -> Exported:
    return export_of("voxel")


@pytest.fixture(scope="session")
def anchor_pillar_export(export_of) -> Exported:
    return export_of("anchor_pillar")


@pytest.fixture(scope="session")
def anchor_voxel_export(export_of) -> Exported:
    return export_of("anchor_voxel")
