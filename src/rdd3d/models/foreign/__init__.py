"""Teachers from elsewhere: OpenPCDet's, SparseKD's and mmdetection3d's CenterPoint checkpoints as rdd3d detectors.

::

    imported = import_detector("cbgs_voxel01_res3d_centerpoint.pth", "openpcdet", "cp-voxel", "nuscenes")
    imported.detector  # an rdd3d Detector holding the checkpoint's weights

Each supported model is a :class:`~rdd3d.models.foreign.mapping.ForeignModel` (key rules onto one preset)
in :mod:`~rdd3d.models.foreign.openpcdet` or :mod:`~rdd3d.models.foreign.mmdet3d`; files are read by
:func:`~rdd3d.models.foreign.reading.read_foreign_checkpoint`, which never unpickles code.
``rdd3d import-checkpoint`` (:func:`rdd3d.engine.imported.import_checkpoint`) writes the result as an rdd3d
checkpoint. docs/import-checkpoints.md lists what is supported and what is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from rdd3d.core.checkpoint import CheckpointError, load_model_state
from rdd3d.models.detector import Detector
from rdd3d.models.foreign import mmdet3d, openpcdet
from rdd3d.models.foreign.mapping import ForeignModel, KeyRule, describe_rules, map_state_dict
from rdd3d.models.foreign.reading import ForeignCheckpoint, ForeignCheckpointError, read_foreign_checkpoint
from rdd3d.models.presets import build_detector

FRAMEWORKS = ("openpcdet", "mmdet3d")
#: Every supported model, by (framework, preset).
FOREIGN_MODELS: dict[tuple[str, str], ForeignModel] = {
    (model.framework, model.preset): model for model in (*openpcdet.MODELS, *mmdet3d.MODELS)
}
#: The checkpoint layout each framework writes (a bare state dict is accepted from both).
FRAMEWORK_LAYOUTS = {"openpcdet": "model_state", "mmdet3d": "state_dict"}

__all__ = ["FOREIGN_MODELS", "FRAMEWORKS", "ForeignCheckpointError", "ForeignModel", "ImportedDetector", "KeyRule",
           "check_metadata", "describe_rules", "foreign_model", "import_detector", "read_foreign_checkpoint"]


class ImportedDetector(NamedTuple):
    detector: Detector  # in eval mode
    model: ForeignModel
    provenance: dict[str, Any]  # plain values: where the weights came from


def foreign_model(framework: str, preset: str, dataset: str) -> ForeignModel:
    """The supported model of ``framework`` that maps onto ``preset`` on ``dataset``, or a clear refusal."""
    if framework not in FRAMEWORKS:
        raise ForeignCheckpointError(f"--from must be one of {FRAMEWORKS}, got {framework!r}")
    if dataset == "waymo":
        raise ForeignCheckpointError(
            "dataset 'waymo': rdd3d has no Waymo reader or metric, so a Waymo teacher (SparseKD's published "
            "CP-Voxel / CP-Pillar checkpoints) could be neither evaluated nor distilled from here; import a model "
            "trained on nuscenes or kitti (SparseKD's configs train on them unchanged)")
    model = FOREIGN_MODELS.get((framework, preset))
    if model is None:
        offered = sorted(name for source, name in FOREIGN_MODELS if source == framework)
        raise ForeignCheckpointError(f"no {framework} model maps onto the preset {preset!r}; supported presets: "
                                     f"{offered} (docs/import-checkpoints.md)")
    if dataset not in model.datasets:
        raise ForeignCheckpointError(f"{framework} models of the preset {preset!r} are supported on {list(model.datasets)}, "
                                     f"not on {dataset!r}")
    return model


def import_detector(path: str | os.PathLike, framework: str, preset: str, dataset: str,
                    overrides: Mapping[str, Any] | None = None) -> ImportedDetector:
    """The rdd3d detector ``preset`` on ``dataset`` holding the weights of the ``framework`` checkpoint ``path``.

    ``overrides`` change the preset as ``build_detector``'s do (e.g. ``{"head.decode.score_threshold": 0.2}``),
    except for the fields the foreign model fixes itself (:attr:`ForeignModel.overrides`).
    """
    model = foreign_model(framework, preset, dataset)
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(model.overrides))
    if clash:
        raise ForeignCheckpointError(f"model overrides {clash}: the {framework} model fixes them "
                                     f"({ {key: model.overrides[key] for key in clash} })")
    checkpoint = read_foreign_checkpoint(path)
    expected_layout = FRAMEWORK_LAYOUTS[framework]
    if checkpoint.layout not in (expected_layout, "weights"):
        other = next(name for name, layout in FRAMEWORK_LAYOUTS.items() if layout == checkpoint.layout)
        raise ForeignCheckpointError(f"{path}: holds {checkpoint.layout!r}, the layout of {other} checkpoints; "
                                     f"--from {framework} expects {expected_layout!r} (pass --from {other})")
    detector = build_detector(preset, dataset, **overrides, **model.overrides)
    check_metadata(path, checkpoint, model, detector)
    state = map_state_dict(checkpoint.state_dict, model, detector, source=str(path))
    try:
        load_model_state(detector, state, source=str(path))
    except CheckpointError as error:  # NaN or Inf weights
        raise ForeignCheckpointError(str(error)) from None
    return ImportedDetector(detector.eval(), model, _provenance(Path(path), checkpoint, model))


def check_metadata(path: str | os.PathLike, checkpoint: ForeignCheckpoint, model: ForeignModel,
                   detector: Detector) -> None:
    """What mmdetection3d's ``meta`` tells beyond the weights: its version, classes and voxel size (OpenPCDet's
    files record none of these, so there the preset's must be right: docs/import-checkpoints.md)."""
    meta = checkpoint.metadata.get("meta")
    if model.framework != "mmdet3d" or not isinstance(meta, Mapping):
        return
    version = meta.get("mmdet3d_version")
    if isinstance(version, str) and re.match(r"0\.", version):
        raise ForeignCheckpointError(
            f"{path}: written by mmdetection3d {version}, before v1.0's coordinate refactor (boxes stored as "
            "w, l, h with another yaw): its size and rotation outputs mean something else; use the model zoo's "
            "checkpoint for mmdetection3d >= 1.0")
    dataset_meta = meta.get("dataset_meta")
    classes = meta.get("CLASSES") or (dataset_meta.get("classes") if isinstance(dataset_meta, Mapping) else None)
    if isinstance(classes, (list, tuple)) and set(classes) != set(detector.classes.names):
        raise ForeignCheckpointError(f"{path}: trained for the classes {list(classes)}; the preset on this dataset "
                                     f"detects {list(detector.classes.names)}")
    config = meta.get("config") or meta.get("cfg")
    found = re.search(r"voxel_size\s*=\s*\[([^\]]+)\]", config) if isinstance(config, str) else None
    if found:
        voxel = tuple(float(value) for value in found.group(1).split(","))
        if any(abs(a - b) > 1e-6 for a, b in zip(voxel, detector.config.voxel_size)):
            raise ForeignCheckpointError(
                f"{path}: its config sets voxel_size {list(voxel)}; the preset {model.preset!r} uses "
                f"{list(detector.config.voxel_size)}: pick the preset of that grid (docs/import-checkpoints.md)")


def _provenance(path: Path, checkpoint: ForeignCheckpoint, model: ForeignModel) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    plain = {key: value for key, value in checkpoint.metadata.items()
             if key in ("epoch", "it", "version") and isinstance(value, (str, int))}
    meta = checkpoint.metadata.get("meta")
    if isinstance(meta, Mapping):
        plain.update({key: value for key, value in meta.items()
                      if key in ("mmdet3d_version", "mmengine_version", "epoch", "iter") and isinstance(value, (str, int))})
    return {"framework": model.framework, "file": path.name, "sha256": digest.hexdigest(), "layout": checkpoint.layout,
            "configs": list(model.configs), "tensors": len(checkpoint.state_dict), "metadata": plain}
