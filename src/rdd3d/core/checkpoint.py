"""Checkpoints: atomic writes, ``weights_only`` loading, and readable architecture mismatches."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from rdd3d.core.fileio import atomic_open


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or made for another model."""


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to a temp file and rename it over ``path``.

    A failure while writing (e.g. a full disk) leaves the previous checkpoint intact and is an OSError
    naming the file. ``torch.save`` serialises into memory first, with Ctrl-C and SIGTERM held back until it
    is done: a signal inside its C++ writer would surface as an unrelated RuntimeError, and a full disk
    there loses its errno; the file is then written with plain Python I/O, where both come out as they are.
    """
    buffer = io.BytesIO()
    with _signals_held(signal.SIGINT, signal.SIGTERM):
        torch.save(dict(state), buffer)
    try:
        with atomic_open(path, "wb") as handle:
            handle.write(buffer.getbuffer())
    except OSError as error:
        raise OSError(error.errno, f"writing checkpoint {path}: {error.strerror or error}") from None


@contextlib.contextmanager
def _signals_held(*numbers: int) -> Iterator[None]:
    """Signals arriving inside the block are recorded and raised again, in order, when it ends. Python runs
    signal handlers in the main thread whichever thread the OS hands a signal to, so a recording handler holds a
    Ctrl-C back however it arrives (a thread's signal mask holds it back from that thread alone, and the OS then
    gives it to another thread, from where it interrupts the main one all the same). Handlers can be replaced
    from the main thread only; elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {number: signal.signal(number, lambda number, frame: arrived.append(number)) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        for number in arrived:
            signal.raise_signal(number)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or disallowed content
        raise CheckpointError(_unreadable(path, error)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    return state


def _unreadable(path: Path, error: Exception) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip archive, or a pickle
        return f"{path}: not a PyTorch checkpoint (neither a torch.save archive nor a pickle; it starts with {head!r})"
    text = str(error)
    if text.startswith("Weights only load failed"):
        # torch's message is paragraphs on its defaults and its docs around the one line that gives the reason
        reason = " ".join(line.strip() for line in text.splitlines()[1:]
                          if line.strip() and not line.startswith(("Check the documentation", "Please file an issue")))
        return (f"{path}: refused: it holds more than tensors and plain containers ({reason}); rdd3d loads "
                "checkpoints with weights_only=True, which never runs code from a file")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line})"


def describe_state_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """One line per tensor that is missing, unexpected, or of another shape."""
    expected = model.state_dict()
    problems = [f"missing from checkpoint: {key} {tuple(expected[key].shape)}"
                for key in expected if key not in state_dict]
    problems += [f"not in model: {key} {tuple(state_dict[key].shape)}"
                 for key in state_dict if key not in expected]
    problems += [
        f"shape differs: {key} checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    return problems


def non_finite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, tensor in state_dict.items()
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def load_model_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                     max_lines: int = 20) -> None:
    """``load_state_dict`` that fails with a list of mismatched tensors instead of a deep stack trace, and
    refuses weights holding NaN or Inf (what a diverged run leaves) instead of computing with them."""
    problems = describe_state_mismatch(model, state_dict)
    if problems:
        shown = "\n  ".join(problems[:max_lines])
        more = f"\n  ... and {len(problems) - max_lines} more" if len(problems) > max_lines else ""
        raise CheckpointError(
            f"{source}: weights do not fit this model ({len(problems)} mismatched tensors; "
            f"was it saved for another preset?)\n  {shown}{more}"
        )
    broken = non_finite_tensors(state_dict)
    if broken:
        raise CheckpointError(f"{source}: {len(broken)} of {len(state_dict)} weight tensors hold NaN or Inf "
                              f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): the run diverged "
                              f"before it was saved")
    model.load_state_dict(state_dict)
