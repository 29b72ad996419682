"""Taps: record intermediate outputs of named submodules with forward hooks (MMRazor's recorders).

A distillation loss reads a model's neck map or head outputs through taps, so any ``nn.Module``
detector can be distilled without a distillation-specific subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn


@dataclass(frozen=True)
class TapSpec:
    module: str  # dotted submodule path, e.g. "backbone_2d" ("" is the model itself)
    field: str | None = None  # keep only this attribute of the module's output (e.g. "features")


#: Taps of rdd3d's detectors: the BEV neck map and the head's predictions.
DETECTOR_TAPS: dict[str, TapSpec] = {
    "bev": TapSpec("backbone_2d", "features"),  # (B, C, H, W)
    "head": TapSpec("head"),  # CenterHead: tuple of TaskPrediction, one per class group; AnchorHead: AnchorPrediction
}


class TapRecorder:
    """Holds forward hooks on ``model``'s tapped submodules; ``records`` maps tap name -> last output."""

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
            if spec.field is not None:
                if not hasattr(output, spec.field):
                    raise ValueError(f"tap '{name}': output of '{spec.module}' ({type(output).__name__}) "
                                     f"has no field '{spec.field}'")
                output = getattr(output, spec.field)
            self.records[name] = output

        return hook

    def take(self) -> dict[str, Any]:
        """The records of the last forward pass; the recorder starts empty again."""
        records, self.records = self.records, {}
        return records

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
