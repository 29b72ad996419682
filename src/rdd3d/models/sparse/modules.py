"""Containers for networks that mix sparse convolutions with ordinary per-voxel layers."""

from __future__ import annotations

from torch import nn

from rdd3d.models.sparse.tensor import SparseTensor


class SparseModule(nn.Module):
    """A module whose forward takes and returns a :class:`SparseTensor`."""


class SparseSequential(nn.Sequential, SparseModule):
    """``nn.Sequential`` over a sparse tensor: sparse modules get the tensor, every other module
    (BatchNorm1d, ReLU, ...) gets its ``(V, C)`` features. Parameter names stay those of a plain
    ``nn.Sequential`` (``0.weight``, ``1.running_mean``), as in spconv and OpenPCDet checkpoints."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        for module in self:
            x = module(x) if isinstance(module, SparseModule) else x.replace_features(module(x.features))
        return x
