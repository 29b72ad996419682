"""Shared fixtures. The real-data fixtures live outside the repository (non-commercial licences):
they are found through one setting, ``RDD3D_REAL_DATA`` (default ``../shared/data/real`` beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests run tiny ops where thread start-up costs more than it saves, and a second busy process on
# a 2-core machine makes multi-threaded ops crawl; tests that need more threads set them explicitly.
torch.set_num_threads(int(os.environ.get("RDD3D_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


def real_data_root() -> Path:
    """The real-data folder; missing is a failure under CI and a visible skip elsewhere."""
    root = Path(os.environ.get("RDD3D_REAL_DATA", DEFAULT_REAL_DATA))
    if not root.is_dir():
        message = f"real data fixtures not found at {root} (set RDD3D_REAL_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture
def real_data() -> Path:
    return real_data_root()
