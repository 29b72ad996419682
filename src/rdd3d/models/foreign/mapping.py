"""A foreign state dict onto an rdd3d detector: per-model key rules, tensor conversions and the checks.

A :class:`ForeignModel` is one framework's model written as rules: each foreign key matching a rule's
pattern goes to one rdd3d key, converted as the rule says. Every foreign tensor must meet a rule (or be
named as holding no weight), and every rdd3d tensor must receive one (or be a bias the foreign model
leaves out, which is exactly zero); anything else is an error listing all of it.

Sparse convolution weights are converted to the layout of :mod:`rdd3d.models.sparse`, spconv 2.x's
``(out, kz, ky, kx, in)``; the layout a file uses is decided once for the whole file, from the weights
whose shape tells the layouts apart (the first convolution's 5 input and 16 output channels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from rdd3d.models.foreign.reading import ForeignCheckpointError
from rdd3d.models.sparse import SparseConvolution

Target = Callable[[re.Match], "str | None"]


@dataclass(frozen=True)
class KeyRule:
    """Foreign keys matching ``pattern`` (the whole key) go to ``target``: a ``str.format`` template over the
    match's groups (``{0}`` is the first group), or a function of the match that returns ``None`` where the
    foreign part has no rdd3d counterpart. ``shown`` is the target as the docs table shows it."""

    pattern: str
    target: str | Target
    convert: str = "copy"  # a key of CONVERSIONS
    shown: str = ""

    def __post_init__(self) -> None:
        if self.convert not in CONVERSIONS:
            raise ValueError(f"KeyRule.convert must be one of {list(CONVERSIONS)}, got {self.convert!r}")

    def target_of(self, match: re.Match) -> str | None:
        if isinstance(self.target, str):
            return self.target.format(*match.groups())
        return self.target(match)


@dataclass(frozen=True)
class ForeignModel:
    """One framework's model, as rules onto an rdd3d preset."""

    framework: str  # "openpcdet" | "mmdet3d"
    preset: str
    datasets: tuple[str, ...]
    configs: tuple[str, ...]  # the framework's configs whose checkpoints these rules fit
    rules: tuple[KeyRule, ...]
    # rdd3d keys the foreign model has no tensor for: convolution biases it leaves out before a BatchNorm,
    # which are exactly zero there
    zero_filled: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # foreign keys that hold no weight (patterns)
    # DetectorConfig fields this model sets otherwise than the preset (stored with the imported checkpoint)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.framework}:{self.preset}"


def head_branch(branches: Mapping[str, str], offset: int) -> Target:
    """The target of a head-branch key whose groups are (task, branch, group ``k``, rest), in a framework whose
    branch is a sequence of (convolution, BatchNorm, ReLU) groups and the output convolution: rdd3d's branch is
    one flat sequence, so group ``k``'s convolution (and output convolution ``k``) is at ``3k``, its BatchNorm
    at ``3k + 1`` (``offset``). ``branches`` names the framework's branches in rdd3d's words; another is None."""
    def target(match: re.Match) -> str | None:
        branch = branches.get(match[2])
        return None if branch is None else f"head.tasks.{match[1]}.{branch}.{3 * int(match[3]) + offset}.{match[4]}"
    return target


def _flip_output_channels(tensor: Tensor, module: nn.Module) -> Tensor:
    """(sin, cos) output channels -> (cos, sin): the rotation branch's last convolution."""
    return tensor.flip(0)


def _conv_to_transposed(tensor: Tensor, module: nn.Module) -> Tensor:
    """A 1x1 stride-1 ``Conv2d`` ``(out, in, 1, 1)`` as the ``ConvTranspose2d`` ``(in, out, 1, 1)`` computing the
    same; a foreign deblock that is a transposed or strided convolution already has our module's layout."""
    if isinstance(module, nn.ConvTranspose2d) and module.kernel_size == (1, 1) and module.stride == (1, 1):
        return tensor.transpose(0, 1)
    return tensor


#: Tensor conversions a rule can name; sparse convolution weights are converted apart (a layout per file).
CONVERSIONS: dict[str, Callable[[Tensor, nn.Module], Tensor]] = {
    "copy": lambda tensor, module: tensor,
    "sin-cos to cos-sin": _flip_output_channels,
    "1x1 conv to transposed conv": _conv_to_transposed,
}

#: Sparse convolution weight layouts: name -> the permutation taking it to (out, kz, ky, kx, in).
SPARSE_LAYOUTS: dict[str, tuple[int, ...]] = {
    "spconv 2.x (out, kz, ky, kx, in)": (0, 1, 2, 3, 4),
    "spconv 1.x / mmcv (kz, ky, kx, in, out)": (4, 0, 1, 2, 3),
    "spconv 2.x native (kz, ky, kx, out, in)": (3, 0, 1, 2, 4),
}

MAX_LINES = 8  # per kind of problem
PROBLEM_KINDS = {
    "unmatched": "foreign tensor(s) without an rdd3d counterpart",
    "missing": "rdd3d tensor(s) that no foreign tensor maps to",
    "shape": "tensor(s) of another shape",
    "layout": "sparse weight layout problem",
}


def map_state_dict(foreign: Mapping[str, Tensor], model: ForeignModel, detector: nn.Module,
                   source: str) -> dict[str, Tensor]:
    """The state dict for ``detector`` that ``foreign`` (a state dict of ``model``) maps to."""
    expected = detector.state_dict()
    routed: dict[str, tuple[str, Tensor, str]] = {}  # rdd3d key -> (foreign key, tensor, conversion)
    problems: dict[str, list[str]] = {kind: [] for kind in PROBLEM_KINDS}
    for key, tensor in foreign.items():
        if any(re.fullmatch(pattern, key) for pattern in model.ignored):
            continue
        rule, match = next(((rule, m) for rule in model.rules if (m := re.fullmatch(rule.pattern, key))), (None, None))
        target = None if rule is None else rule.target_of(match)
        if rule is None:
            problems["unmatched"].append(f"{key} {tuple(tensor.shape)}: no rule of {model.name} maps it")
        elif target is None or target not in expected:
            problems["unmatched"].append(f"{key} {tuple(tensor.shape)} -> {target or '?'}: the rdd3d model has no "
                                         "such tensor")
        elif target in routed:
            problems["unmatched"].append(f"{key} and {routed[target][0]} both map to {target}")
        else:
            routed[target] = (key, tensor, rule.convert)
    layout = _sparse_layout(routed, expected, detector, problems["layout"])
    state = {}
    for target, (key, tensor, conversion) in routed.items():
        module = detector.get_submodule(target.rsplit(".", 1)[0])
        if layout is not None and _is_sparse_weight(detector, target):
            tensor = tensor.permute(*SPARSE_LAYOUTS[layout])
        tensor = CONVERSIONS[conversion](tensor, module)
        if tuple(tensor.shape) != tuple(expected[target].shape):
            problems["shape"].append(f"{key} {tuple(foreign[key].shape)} -> {target}: expected "
                                     f"{tuple(expected[target].shape)}")
            continue
        state[target] = tensor.to(expected[target].dtype).contiguous()
    for target, tensor in expected.items():
        if target in routed:
            continue
        if any(re.fullmatch(pattern, target) for pattern in model.zero_filled):
            state[target] = torch.zeros_like(tensor)
        else:
            problems["missing"].append(f"{target} {tuple(tensor.shape)}: no tensor of the checkpoint maps to it")
    if any(problems.values()):
        sections = [f"{len(lines)} {PROBLEM_KINDS[kind]}:\n    " + "\n    ".join(lines[:MAX_LINES])
                    + (f"\n    ... and {len(lines) - MAX_LINES} more" if len(lines) > MAX_LINES else "")
                    for kind, lines in problems.items() if lines]
        raise ForeignCheckpointError(
            f"{source}: not a {model.framework} checkpoint of the model the preset {model.preset!r} maps "
            f"({'; '.join(model.configs)}); a checkpoint of another architecture or width?\n  "
            + "\n  ".join(sections))
    return state


def _is_sparse_weight(detector: nn.Module, key: str) -> bool:
    module_name, _, name = key.rpartition(".")
    return name == "weight" and isinstance(detector.get_submodule(module_name), SparseConvolution)


def _sparse_layout(routed: Mapping[str, tuple[str, Tensor, str]], expected: Mapping[str, Tensor],
                   detector: nn.Module, problems: list[str]) -> str | None:
    """The one layout every sparse convolution weight of the file fits; None (and a problem) if none is."""
    # A weight of another size fits no layout: it is reported as a shape error, and decides nothing here.
    sparse = {target: routed[target][1] for target in routed if _is_sparse_weight(detector, target)
              and routed[target][1].numel() == expected[target].numel()}
    if not sparse:
        return None
    candidates = set(SPARSE_LAYOUTS)
    for target, tensor in sparse.items():
        fitting = {name for name, order in SPARSE_LAYOUTS.items()
                   if tensor.ndim == 5 and tuple(tensor.permute(*order).shape) == tuple(expected[target].shape)}
        candidates &= fitting
    if len(candidates) == 1:
        return candidates.pop()
    shapes = ", ".join(f"{routed[t][0]} {tuple(v.shape)} for {tuple(expected[t].shape)}" for t, v in list(sparse.items())[:3])
    reason = "no single layout fits them all" if not candidates else f"the shapes fit several layouts {sorted(candidates)}"
    problems.append(f"sparse convolution weights: {reason} (known: {list(SPARSE_LAYOUTS)}); e.g. {shapes}")
    return None


def describe_rules(model: ForeignModel) -> str:
    """The docs table of ``model``: foreign key patterns and where each goes."""
    lines = [f"| {model.framework} key | rdd3d key | conversion |", "|---|---|---|"]
    lines += [f"| {_cell(rule.pattern)} | {_cell(rule.shown or rule.target)} | {rule.convert} |" for rule in model.rules]
    lines += [f"| {_cell(pattern)} | (holds no weight) | dropped |" for pattern in model.ignored]
    lines += [f"| (none) | {_cell(pattern)} | zero (bias absent before BatchNorm) |" for pattern in model.zero_filled]
    return "\n".join(lines)


def _cell(pattern: str) -> str:
    """A key pattern as a table cell: escaped dots shown plain, and "|" escaped, which would end the cell."""
    return "`" + pattern.replace("\\.", ".").replace("|", "\\|") + "`"
