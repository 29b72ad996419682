"""Sparse 3D convolution modules with spconv's weight layout, on a selectable backend.

The weight is ``[C_out, kz, ky, kx, C_in]`` (spconv 2.x's layout) whatever the backend, so a state dict
saved with one backend (or by spconv/OpenPCDet) loads into the other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rdd3d.models.sparse.backends import BackendName, check_backend_name, resolve_backend
from rdd3d.models.sparse.modules import SparseModule
from rdd3d.models.sparse.rulebook import ConvGeometry, Triple
from rdd3d.models.sparse.tensor import SparseTensor


def _triple(value: int | tuple[int, int, int], name: str) -> Triple:
    triple = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(triple) != 3:
        raise ValueError(f"{name} must be an int or (z, y, x), got {value}")
    return triple


class SparseConvolution(SparseModule):
    """Shared body of :class:`SubMConv3d` and :class:`SparseConv3d`."""

    def __init__(
        self, in_channels: int, out_channels: int, geometry: ConvGeometry, bias: bool,
        indice_key: str | None, backend: BackendName,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.geometry = geometry
        self.indice_key = indice_key
        self.backend = check_backend_name(backend)
        self.weight = nn.Parameter(torch.empty(out_channels, *geometry.kernel_size, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._active_pairs: Tensor | int | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv3d``'s (and spconv's) default: uniform in +-1/sqrt(fan_in)."""
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.geometry.kernel_size))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def last_active_pairs(self) -> int:
        """Active input-output pairs of the last forward; MACs = pairs x C_in x C_out (SparseKD's count)."""
        if self._active_pairs is None:
            raise RuntimeError(f"{type(self).__name__}: no forward has run yet, so no active pairs are known")
        return int(self._active_pairs)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.features.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channels, got {x.features.shape[1]}"
            )
        backend = resolve_backend(self.backend, x.features.device)
        result = backend.convolve(x, self.weight, self.geometry, self.indice_key)
        self._active_pairs = result.active_pairs
        if self.bias is None:
            return result.output
        return result.output.replace_features(result.output.features + self.bias)

    def extra_repr(self) -> str:
        g = self.geometry
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={g.kernel_size}"
        if not g.subm:
            text += f", stride={g.stride}, padding={g.padding}"
        return text + f", bias={self.bias is not None}, indice_key={self.indice_key!r}, backend={self.backend!r}"


class SubMConv3d(SparseConvolution):
    """Submanifold convolution: outputs only at the input's active sites, kernel centred on them."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | Triple = 3, bias: bool = False,
        indice_key: str | None = None, backend: BackendName = "auto",
    ) -> None:
        kernel = _triple(kernel_size, "kernel_size")
        geometry = ConvGeometry(kernel, (1, 1, 1), tuple(k // 2 for k in kernel), subm=True)
        super().__init__(in_channels, out_channels, geometry, bias, indice_key, backend)


class SparseConv3d(SparseConvolution):
    """Regular (typically strided) sparse convolution: an output is active where any input reaches it."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | Triple, stride: int | Triple = 1,
        padding: int | Triple = 0, bias: bool = False, indice_key: str | None = None,
        backend: BackendName = "auto",
    ) -> None:
        geometry = ConvGeometry(
            _triple(kernel_size, "kernel_size"), _triple(stride, "stride"), _triple(padding, "padding"), subm=False
        )
        super().__init__(in_channels, out_channels, geometry, bias, indice_key, backend)


def set_sparse_backend(model: nn.Module, backend: BackendName) -> nn.Module:
    """Switch every sparse convolution in ``model`` to ``backend`` (weights are shared as they are)."""
    check_backend_name(backend)
    for module in model.modules():
        if isinstance(module, SparseConvolution):
            module.backend = backend
    return model
