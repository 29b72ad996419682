"""Sparse convolution backends behind one interface.

* ``torch``: the rulebook of :mod:`rdd3d.models.sparse.rulebook` and gather -> GEMM -> scatter in plain
  PyTorch; autograd gives the backward. Runs on any device; the default on CPU.
* ``spconv``: spconv 2.x's operators, called with our weight tensor (same ``[C_out, kz, ky, kx, C_in]``
  layout), the field's standard on CUDA and the default there when spconv is installed.

spconv 2.3.8 on CPU is defective (``docs/sparse-convolution.md``): its backward raises on CPU-only torch
and its forward returns wrong values on a few voxels when torch uses more than one thread. The spconv
backend therefore runs CPU convolutions with one thread and refuses to build a CPU graph that would
need its backward.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any, Iterator, Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from rdd3d.models.sparse.rulebook import ConvGeometry, Rulebook, apply_rulebook, build_rulebook
from rdd3d.models.sparse.tensor import SparseTensor

BackendName = Literal["auto", "torch", "spconv"]
BACKEND_NAMES = ("auto", "torch", "spconv")


class ConvResult(NamedTuple):
    output: SparseTensor
    active_pairs: Tensor | int  # input-output pairs used (a tensor where counting it would sync a GPU)


class SparseConvBackend(Protocol):
    name: str

    def owns(self, rulebook: Any) -> bool:
        """Whether ``rulebook`` (an entry of ``SparseTensor.rulebooks``) was built by this backend."""

    def convolve(self, x: SparseTensor, weight: Tensor, geometry: ConvGeometry, indice_key: str | None) -> ConvResult:
        """One convolution without bias; ``indice_key`` names the rulebook to reuse or to record."""


def _reusable(x: SparseTensor, indice_key: str | None, backend: SparseConvBackend) -> Any | None:
    """The rulebook recorded under ``indice_key`` earlier in this forward, if any."""
    if indice_key is None or indice_key not in x.rulebooks:
        return None
    rulebook = x.rulebooks[indice_key]
    if not backend.owns(rulebook):
        raise ValueError(
            f"indice_key {indice_key!r} was recorded by another sparse convolution backend than "
            f"{backend.name!r}; all layers sharing a key must use the same backend"
        )
    return rulebook


class TorchBackend:
    name = "torch"

    def owns(self, rulebook: Any) -> bool:
        return isinstance(rulebook, Rulebook)

    def convolve(self, x, weight, geometry, indice_key) -> ConvResult:
        rulebook = _reusable(x, indice_key, self)
        rulebooks = x.rulebooks
        if rulebook is None:
            rulebook = build_rulebook(x.indices, x.spatial_shape, geometry)
            if indice_key is not None:
                rulebooks = {**x.rulebooks, indice_key: rulebook}
        else:
            _check_reuse(indice_key, rulebook, x, geometry)
        features = apply_rulebook(x.features, weight, rulebook)  # (V_out, C_out)
        output = SparseTensor(features, rulebook.out_indices, rulebook.out_spatial_shape, x.batch_size, rulebooks)
        return ConvResult(output, rulebook.num_pairs)


def _check_reuse(indice_key: str, rulebook: Rulebook, x: SparseTensor, geometry: ConvGeometry) -> None:
    if not (geometry.subm and rulebook.geometry.subm):
        raise ValueError(
            f"indice_key {indice_key!r} is already used in this forward; only submanifold convolutions "
            "may share a key"
        )
    if rulebook.geometry.kernel_size != geometry.kernel_size:
        raise ValueError(
            f"indice_key {indice_key!r} was built for kernel {rulebook.geometry.kernel_size}, "
            f"reused with kernel {geometry.kernel_size}"
        )
    if rulebook.num_inputs != len(x.indices) or rulebook.out_spatial_shape != x.spatial_shape:
        raise ValueError(
            f"indice_key {indice_key!r} was built for {rulebook.num_inputs} sites in a grid "
            f"{rulebook.out_spatial_shape}, reused on {len(x.indices)} sites in {x.spatial_shape}"
        )


# Where the spconv backend records a rulebook for a layer without an indice_key, to count its pairs.
_UNSHARED_KEY = "__rdd3d_unshared__"


class SpconvBackend:
    name = "spconv"

    def owns(self, rulebook: Any) -> bool:
        return not isinstance(rulebook, Rulebook)

    def convolve(self, x, weight, geometry, indice_key) -> ConvResult:
        import spconv.pytorch as spconv

        on_cpu = x.features.device.type == "cpu"
        needs_backward = torch.is_grad_enabled() and (weight.requires_grad or x.features.requires_grad)
        if on_cpu and needs_backward and not torch.backends.cuda.is_built():
            raise RuntimeError(
                "spconv 2.3.8 cannot run backward on CPU-only torch (its backward asks for a CUDA stream); "
                "use backend='torch' on CPU, or run this forward under torch.no_grad()"
            )
        _reusable(x, indice_key, self)  # only checks that no torch rulebook hides under the key
        key = indice_key if indice_key is not None else _UNSHARED_KEY
        layer = _spconv_layer(weight.shape[-1], weight.shape[0], geometry, key, on_cpu)
        sparse_in = spconv.SparseConvTensor(x.features, x.indices, list(x.spatial_shape), x.batch_size)
        sparse_in.indice_dict = dict(x.rulebooks)
        with _one_thread() if on_cpu else contextlib.nullcontext():
            # spconv's "training" means "keep what backward needs"; its CPU path takes no bias.
            sparse_out = layer._conv_forward(needs_backward, sparse_in, weight, None)
        rulebooks = dict(sparse_out.indice_dict)
        rulebook = rulebooks.pop(_UNSHARED_KEY, None) if indice_key is None else rulebooks.get(key)
        output = SparseTensor(
            sparse_out.features, sparse_out.indices, tuple(sparse_out.spatial_shape), x.batch_size, rulebooks
        )
        # spconv computes 1x1x1 stride-1 convolutions as a plain matmul and records no rulebook.
        pairs = len(x.indices) if rulebook is None else _spconv_pair_count(rulebook)
        return ConvResult(output, pairs)


@functools.lru_cache(maxsize=None)
def _spconv_layer(in_channels: int, out_channels: int, geometry: ConvGeometry, key: str, on_cpu: bool):
    """A parameter-free spconv convolution description; we pass it our own weight on every call."""
    from spconv.pytorch.conv import SparseConvolutionBase
    from spconv.pytorch.core import ConvAlgo

    return SparseConvolutionBase(
        ndim=3, in_channels=in_channels, out_channels=out_channels, kernel_size=list(geometry.kernel_size),
        stride=list(geometry.stride), padding=list(geometry.padding), subm=geometry.subm, indice_key=key,
        algo=ConvAlgo.Native if on_cpu else None,  # spconv's implicit GEMM kernels are CUDA-only
    )


def _spconv_pair_count(rulebook: Any) -> Tensor:
    """All active pairs, the centre tap included, as SparseKD counts them."""
    if hasattr(rulebook, "indice_pair_num"):  # native algorithm: pairs per kernel offset
        if rulebook.is_subm:
            # Native submanifold rulebooks store only the taps before the centre: the taps after it
            # mirror them and the centre tap pairs every site with itself.
            return 2 * rulebook.indice_pair_num.sum() + len(rulebook.out_indices)
        return rulebook.indice_pair_num.sum()
    return (rulebook.pair_fwd >= 0).sum()  # implicit GEMM: (K, V_out) table of input rows or -1


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def spconv_available() -> bool:
    return importlib.util.find_spec("spconv") is not None


_BACKENDS: dict[str, SparseConvBackend] = {"torch": TorchBackend(), "spconv": SpconvBackend()}


def check_backend_name(name: str) -> BackendName:
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown sparse convolution backend {name!r}; choose one of {BACKEND_NAMES}")
    return name


def resolve_backend(name: BackendName, device: torch.device) -> SparseConvBackend:
    """``auto`` is spconv on CUDA when it is installed, the plain-PyTorch backend otherwise."""
    if check_backend_name(name) == "auto":
        name = "spconv" if device.type == "cuda" and spconv_available() else "torch"
    if name == "spconv" and not spconv_available():
        raise ImportError("backend='spconv' needs spconv: pip install the spconv build matching your CUDA")
    return _BACKENDS[name]
