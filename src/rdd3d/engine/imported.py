"""A foreign teacher as an rdd3d checkpoint (``rdd3d import-checkpoint``).

The file is what ``rdd3d train`` writes for a finished run as far as every reader of a trained detector
looks (``config`` and ``model``: :func:`rdd3d.engine.runs.detector_from_checkpoint`), so ``rdd3d eval
--checkpoint``, ``rdd3d distill --teacher`` and a benchmark plan's ``teacher_checkpoint`` take it as they
take a teacher trained here. ``imported_from`` records the source file (name, SHA-256, framework, what its
metadata says). It holds no optimiser state: it is a teacher to evaluate and distil from, not a run to resume.
"""

from __future__ import annotations

import os
from typing import Sequence

from rdd3d.core.checkpoint import save_checkpoint
from rdd3d.core.config_loading import config_from_dict
from rdd3d.engine.config import RunConfig, load_run_config
from rdd3d.engine.runs import plain_config
from rdd3d.models.foreign import ImportedDetector, foreign_model, import_detector


def import_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, framework: str, preset: str,
                      dataset: str, config_files: Sequence[str | os.PathLike] = (),
                      overrides: Sequence[str] = ()) -> ImportedDetector:
    """Map the ``framework`` checkpoint ``source`` onto ``preset`` on ``dataset`` and write it to ``destination``.

    ``config_files`` and ``overrides`` (``key=value``) give the run config stored with it, which
    ``rdd3d eval --checkpoint`` reads its data paths from; ``model.preset`` and ``data.dataset`` come from the
    import, and ``model.overrides`` may change what the weights do not fix (e.g. the head's decoding).
    """
    foreign_model(framework, preset, dataset)  # an unsupported choice is said as such, before the config's checks
    config = load_run_config(config_files, [*overrides, f"data.dataset={dataset}", f"model.preset={preset}"])
    imported = import_detector(source, framework, preset, dataset, config.model.overrides)
    config.model.overrides = {**config.model.overrides, **imported.model.overrides}
    # Read back through the schema: the stored config must rebuild this very detector wherever it is loaded.
    stored = plain_config(config_from_dict(RunConfig, plain_config(config), source=f"import of {source}"))
    weights = {f"detector.{key}": value for key, value in imported.detector.state_dict().items()}
    save_checkpoint(destination, {"config": stored, "model": weights, "imported_from": imported.provenance})
    return imported
