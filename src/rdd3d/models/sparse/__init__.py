"""Sparse 3D convolution: a typed sparse tensor, spconv-layout conv modules, two backends."""

from rdd3d.models.sparse.backends import BackendName, resolve_backend, spconv_available
from rdd3d.models.sparse.conv import SparseConv3d, SparseConvolution, SubMConv3d, set_sparse_backend
from rdd3d.models.sparse.modules import SparseModule, SparseSequential
from rdd3d.models.sparse.tensor import SparseTensor

__all__ = [
    "BackendName", "SparseConv3d", "SparseConvolution", "SparseModule", "SparseSequential", "SparseTensor",
    "SubMConv3d", "resolve_backend", "set_sparse_backend", "spconv_available",
]
