"""Session-wide exports of the two families (exported_models.py makes them)."""

from __future__ import annotations

import pytest
from exported_models import PILLAR_PRESET, VOXEL_PRESET, Exported, export_peaked


@pytest.fixture(scope="session")
def pillar_export(tmp_path_factory) -> Exported:
    return export_peaked(PILLAR_PRESET, tmp_path_factory.mktemp("pillar"))


@pytest.fixture(scope="session")
def voxel_export(tmp_path_factory) -> Exported:
    return export_peaked(VOXEL_PRESET, tmp_path_factory.mktemp("voxel"))
