"""Taps: record intermediate outputs of named submodules with forward hooks (MMRazor's recorders).

A distillation loss reads a model's neck map or head outputs through taps, so any ``nn.Module``
detector can be distilled without a distillation-specific subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from torch import nn


@dataclass(frozen=True)
class TapSpec:
    """Which output a tap records: the output of submodule ``module`` (dotted path, ``""`` the model
    itself), narrowed by ``field``: a name (an attribute, or a key of a mapping output such as an
    OpenPCDet or mmdetection3d head's dict of maps), an index (of a tuple or list output) or a callable
    applied to the output."""

    module: str
    field: str | int | Callable[[Any], Any] | None = None

    def select(self, output: Any) -> Any:
        """The part of ``output`` this tap records; a missing one is an error naming the tap's module."""
        field = self.field
        if field is None:
            return output
        if callable(field):
            return field(output)
        if isinstance(field, int):
            if isinstance(output, Sequence) and -len(output) <= field < len(output):
                return output[field]
            raise ValueError(f"output of '{self.module}' ({_described(output)}) has no item {field}")
        if isinstance(output, Mapping):
            if field in output:
                return output[field]
            raise ValueError(f"output of '{self.module}' (a mapping) has no key '{field}'; "
                             f"keys: {sorted(map(str, output))}")
        if hasattr(output, field):
            return getattr(output, field)
        raise ValueError(f"output of '{self.module}' ({_described(output)}) has no field '{field}'")


def _described(output: Any) -> str:
    return f"{type(output).__name__} of {len(output)}" if isinstance(output, Sequence) else type(output).__name__


#: Taps of rdd3d's detectors: the BEV neck map and the head's predictions.
DETECTOR_TAPS: dict[str, TapSpec] = {
    "bev": TapSpec("backbone_2d", "features"),  # (B, C, H, W)
    "head": TapSpec("head"),  # CenterHead: tuple of TaskPrediction, one per class group; AnchorHead: AnchorPrediction
}


class TapRecorder:
    """Holds forward hooks on ``model``'s tapped submodules; ``records`` maps tap name -> last output.

    The hooks stay until :meth:`remove` (or the end of a ``with`` block): a model must not keep them
    after its distillation, or it would go on recording and could not be pickled."""

    def __init__(self, model: nn.Module, taps: Mapping[str, TapSpec]) -> None:
        self.records: dict[str, Any] = {}
        self._handles = []
        for name, spec in taps.items():
            try:
                module = model.get_submodule(spec.module)
            except AttributeError:
                children = [child for child, _ in model.named_children()]
                raise ValueError(
                    f"tap '{name}': {type(model).__name__} has no submodule '{spec.module}'; "
                    f"its top-level submodules are {children}"
                ) from None
            self._handles.append(module.register_forward_hook(self._recorder(name, spec)))

    def _recorder(self, name: str, spec: TapSpec):
        def hook(module, inputs, output):
            try:
                self.records[name] = spec.select(output)
            except ValueError as error:
                raise ValueError(f"tap '{name}': {error}") from None

        return hook

    def take(self) -> dict[str, Any]:
        """The records of the last forward pass; the recorder starts empty again."""
        records, self.records = self.records, {}
        return records

    def remove(self) -> None:
        """Take the hooks off the model (again is harmless)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.records = {}

    def __enter__(self) -> "TapRecorder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()
