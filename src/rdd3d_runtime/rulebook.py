"""Sparse-convolution rulebooks in NumPy, for the exported sparse 3D backbone (rdd3d's
``rdd3d.models.sparse.rulebook`` semantics).

Output site ``o`` reads input site ``o * stride - padding + k`` through kernel tap ``k`` (cross-correlation,
taps in (z, y, x) order). A submanifold convolution has stride 1, padding ``kernel // 2`` and outputs
exactly at its input sites; a strided one outputs at every site some input reaches, in ascending
(z, y, x) order. The exported file reads a rulebook as a neighbour table: the input row each output site
reads through each tap (the row past the last, a zero row, for none), so that a convolution is one gather
and one matrix product.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rdd3d_runtime.manifest import RulebookSpec


class Rulebook(NamedTuple):
    neighbours: np.ndarray  # (V_out, taps) int64: input row read through each tap, V_in for none
    out_sites: np.ndarray  # (V_out, 3) int32 (z, y, x)


def _linear_key(zyx: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    _, height, width = shape
    return (zyx[..., 0] * height + zyx[..., 1]) * width + zyx[..., 2]


def output_shape(spec: RulebookSpec) -> tuple[int, int, int]:
    if spec.subm:
        return tuple(spec.spatial_shape)
    return tuple((size + 2 * pad - kernel) // step + 1 for size, kernel, step, pad
                 in zip(spec.spatial_shape, spec.kernel_size, spec.stride, spec.padding))


def build_rulebook(sites: np.ndarray, spec: RulebookSpec) -> Rulebook:
    """The rulebook of ``spec`` over ``(N, 3)`` int (z, y, x) input ``sites``."""
    kernel = np.asarray(spec.kernel_size)
    stride = np.ones(3, dtype=np.int64) if spec.subm else np.asarray(spec.stride)
    padding = kernel // 2 if spec.subm else np.asarray(spec.padding)
    out_shape = output_shape(spec)
    taps = np.stack(np.meshgrid(*(np.arange(k) for k in kernel), indexing="ij"), axis=-1).reshape(-1, 3)
    sites = sites.astype(np.int64)
    # Input i reaches output o through tap k when o * stride = i + padding - k.
    shifted = sites[None, :, :] + padding - taps[:, None, :]  # (K, N, 3)
    target = np.floor_divide(shifted, stride)
    valid = np.all((shifted % stride == 0) & (target >= 0) & (target < np.asarray(out_shape)), axis=-1)  # (K, N)
    keys = _linear_key(target, out_shape)
    if spec.subm:
        site_keys = _linear_key(sites, out_shape)
        order = np.argsort(site_keys, kind="stable")
        position = np.searchsorted(site_keys[order], keys).clip(max=max(len(sites) - 1, 0))
        valid &= site_keys[order][position] == keys
        out_rows_table, out_sites = order[position], sites
    else:
        unique_keys, inverse = np.unique(keys[valid], return_inverse=True)
        out_rows_table = np.zeros(keys.shape, dtype=np.int64)
        out_rows_table[valid] = inverse.reshape(-1)
        _, height, width = out_shape
        out_sites = np.stack([unique_keys // (height * width), unique_keys // width % height,
                              unique_keys % width], axis=1)
    tap, in_row = np.nonzero(valid)
    neighbours = np.full((len(out_sites), len(taps)), len(sites), dtype=np.int64)
    neighbours[out_rows_table[tap, in_row], tap] = in_row
    return Rulebook(neighbours, out_sites.astype(np.int32))
