"""Reading OpenPCDet and mmdetection3d checkpoint files without running code from them.

Both frameworks save with ``torch.save``. OpenPCDet's files hold plain containers and tensors
(``model_state``, ``optimizer_state``, ``epoch``, ``it``, ``version``) and load with ``weights_only=True``
as they are. mmdetection3d's hold ``state_dict`` and ``meta``, and beside them training state that may
name classes of numpy and mmengine (a numpy array in a log, mmengine's ``HistoryBuffer``). Those names are
read through an allow-list: each listed name unpickles as an inert :class:`DroppedMetadata` that keeps
nothing, so no code of numpy or mmengine runs and none needs to be installed. Any other name is refused
before anything is unpickled, with the list of the names found. A file that is refused all the same can
be reduced, inside the framework that wrote it, to its weights alone (``torch.save(checkpoint["state_dict"],
"weights.pth")``), which this reader accepts too.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor


class ForeignCheckpointError(ValueError):
    """A foreign checkpoint that cannot be read safely, or does not fit the model it is imported into."""


class DroppedMetadata:
    """Stands in for an allow-listed metadata object of another library; keeps none of its state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "DroppedMetadata":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass  # the state is what would be dropped anyway: only the weights are imported

    def __repr__(self) -> str:
        return "<dropped metadata>"


#: Globals that training-state metadata of mmdetection3d / mmengine checkpoints names: numpy arrays, scalars
#: and dtypes (numpy 1.x and 2.x module paths) and mmengine's logging buffer. They hold no weights.
METADATA_GLOBALS = (
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.ndarray", "numpy.dtype",
    *(f"numpy.dtypes.{kind}DType" for kind in (
        "Float64", "Float32", "Float16", "Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32", "UInt16",
        "UInt8", "Bool", "Str", "Bytes", "Object")),
    "mmengine.logging.history_buffer.HistoryBuffer",
)


class ForeignCheckpoint(NamedTuple):
    """What a foreign checkpoint file holds that an import uses."""

    state_dict: dict[str, Tensor]
    layout: str  # "model_state" (OpenPCDet), "state_dict" (mmdetection3d), or "weights" (a bare state dict)
    metadata: dict[str, Any]  # the plain entries beside the weights (epoch, version, meta ...)


def read_foreign_checkpoint(path: str | os.PathLike) -> ForeignCheckpoint:
    """Read ``path`` as an OpenPCDet or mmdetection3d checkpoint, or a bare state dict of either."""
    path = Path(path)
    if not path.is_file():
        raise ForeignCheckpointError(f"{path}: checkpoint not found")
    _refuse_unlisted_globals(path)
    allowed = [(DroppedMetadata, name) for name in METADATA_GLOBALS]
    try:
        with torch.serialization.safe_globals(allowed):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged archive or pickle
        raise ForeignCheckpointError(f"{path}: not a readable checkpoint ({_first_line(error)}); "
                                     "is the file complete (a download cut short)?") from None
    return _split(path, content)


def _refuse_unlisted_globals(path: Path) -> None:
    """List the globals the file's pickle names (read as opcodes, nothing executed); refuse unlisted ones."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (zipfile.BadZipFile, RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as error:
        raise ForeignCheckpointError(f"{path}: not a readable checkpoint ({_first_line(error)}); "
                                     "is the file complete (a download cut short)?") from None
    refused = sorted(set(names) - set(METADATA_GLOBALS))
    if refused:
        raise ForeignCheckpointError(
            f"{path}: refused, nothing was unpickled: the file names {', '.join(refused)}, which is neither a tensor "
            "nor on the allow-list of metadata types (docs/import-checkpoints.md); save the weights alone from "
            "the framework that wrote it (torch.save(checkpoint['state_dict'], 'weights.pth')) and import that")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _split(path: Path, content: Any) -> ForeignCheckpoint:
    if not isinstance(content, Mapping):
        raise ForeignCheckpointError(f"{path}: expected a dict checkpoint, got {type(content).__name__}")
    for layout in ("model_state", "state_dict"):
        if layout in content:
            weights = content[layout]
            metadata = {key: value for key, value in content.items() if key != layout}
            break
    else:
        layout, weights, metadata = "weights", content, {}
    if not isinstance(weights, Mapping) or not weights:
        raise ForeignCheckpointError(f"{path}: entry {layout!r} holds no weights")
    not_tensors = [key for key, value in weights.items() if not torch.is_tensor(value)]
    if not_tensors:
        where = f"entry {layout!r}" if layout != "weights" else "the file (no 'model_state' or 'state_dict' entry)"
        raise ForeignCheckpointError(
            f"{path}: {where} holds values that are not tensors ({', '.join(map(str, not_tensors[:5]))}); "
            "expected OpenPCDet's 'model_state', mmdetection3d's 'state_dict', or a dict of tensors")
    return ForeignCheckpoint(dict(weights), layout, metadata)
