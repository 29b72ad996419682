"""Sparse convolution backends against dense ``conv3d`` on a real nuScenes sweep.

spconv 2.3.8 has two CPU defects (docs/sparse-convolution.md): its backward raises on CPU-only torch,
and with more than one torch thread its forward is wrong on a few voxels per call. The tests marked
"upstream defect" document them; the plain-PyTorch backend is the CPU default because of them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdd3d.data.voxelize import Voxelizer
from rdd3d.models.sparse import (
    SparseConv3d, SparseSequential, SparseTensor, SubMConv3d, resolve_backend, set_sparse_backend,
    spconv_available,
)

needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv is not installed")
CPU_ONLY_TORCH = not torch.backends.cuda.is_built()


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run with ``count`` torch threads (None: the suite's own setting), restoring it afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def nuscenes_points(real_data: Path) -> torch.Tensor:
    files = sorted((real_data / "nuscenes" / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    assert files, f"no nuScenes sweep under {real_data}/nuscenes/samples/LIDAR_TOP"
    points = np.fromfile(files[0], dtype=np.float32).reshape(-1, 5)
    return torch.from_numpy(points[:, :4].copy())


@pytest.fixture
def sweep(real_data) -> torch.Tensor:
    return nuscenes_points(real_data)


@pytest.fixture
def crops(sweep) -> SparseTensor:
    """Two 20 m x 20 m crops of the sweep at 0.2 m as a batch of 2: a (20, 100, 100) grid."""
    front = Voxelizer((0.2, 0.2, 0.2), (0.0, -10.0, -3.0, 20.0, 10.0, 1.0), 5, 100_000)
    back = Voxelizer((0.2, 0.2, 0.2), (-20.0, -10.0, -3.0, 0.0, 10.0, 1.0), 5, 100_000)
    batch = [front(sweep), back(sweep)]
    indices = torch.cat([F.pad(v.coords, (1, 0), value=b) for b, v in enumerate(batch)])
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(len(indices), 4, generator=generator)
    nx, ny, nz = front.grid_size
    return SparseTensor(features, indices, (nz, ny, nx), batch_size=2)


def dense_conv(conv, x: SparseTensor, features: torch.Tensor) -> torch.Tensor:
    """The same convolution computed densely: ``(B, C_out, D', H', W')``."""
    dense_input = x.replace_features(features).dense()
    weight = conv.weight.permute(0, 4, 1, 2, 3)  # [C_out, kz, ky, kx, C_in] -> [C_out, C_in, kz, ky, kx]
    geometry = conv.geometry
    return F.conv3d(dense_input, weight, conv.bias, stride=geometry.stride, padding=geometry.padding)


def at_sites(dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``(V, C)`` values of a dense ``(B, C, D, H, W)`` grid at ``(V, 4)`` sites."""
    b, z, y, x = indices.long().unbind(1)
    return dense[b, :, z, y, x]


CONVS = {
    "subm3": lambda backend: SubMConv3d(4, 6, 3, bias=True, indice_key="k", backend=backend),
    "subm-131": lambda backend: SubMConv3d(4, 6, (1, 3, 1), backend=backend),
    "strided3": lambda backend: SparseConv3d(4, 6, 3, stride=2, padding=1, backend=backend),
    "conv_out-311": lambda backend: SparseConv3d(4, 6, (3, 1, 1), stride=(2, 1, 1), padding=0, backend=backend),
    "regular3-pad1": lambda backend: SparseConv3d(4, 6, 3, stride=1, padding=1, backend=backend),
}
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [None, 2], ids=["suite-threads", "2-threads"])
@pytest.mark.parametrize("name", list(CONVS))
def test_torch_backend_matches_dense_forward_and_gradients(crops, name, threads):
    torch.manual_seed(1)
    conv = CONVS[name]("torch").double()  # float64: gradients sum thousands of pairs, compare them tightly
    features = crops.features.double().requires_grad_(True)
    with torch_threads(threads):
        out = conv(crops.replace_features(features))
        upstream = torch.randn_like(out.features)
        (out.features * upstream).sum().backward()
        sparse_grads = (features.grad.clone(), conv.weight.grad.clone())

        features.grad = None
        conv.weight.grad = None
        dense = dense_conv(conv, crops, features)
    assert tuple(dense.shape[2:]) == out.spatial_shape

    # Forward: equal at the active outputs; the active set is where any active input reaches.
    torch.testing.assert_close(out.features, at_sites(dense, out.indices), rtol=1e-9, atol=1e-9)
    occupancy = crops.replace_features(torch.ones(len(crops.indices), 1, dtype=torch.float64)).dense()
    reach = F.conv3d(occupancy, torch.ones_like(conv.weight[:1, ..., 0])[None], stride=conv.geometry.stride,
                     padding=conv.geometry.padding)
    if conv.geometry.subm:
        assert torch.equal(out.indices, crops.indices)
    else:
        expected_sites = torch.nonzero(reach[:, 0] > 0).int()  # (V, 4) b z y x, sorted like ours
        assert torch.equal(out.indices, expected_sites)
        assert (dense.abs().sum(1) > 0).sum() <= len(out.indices)  # nothing outside the active set
    assert conv.last_active_pairs == int(at_sites(reach, out.indices).sum())

    # Backward: the same upstream gradient, placed at the active outputs of the dense map.
    dense_upstream = torch.zeros_like(dense)
    b, z, y, x = out.indices.long().unbind(1)
    dense_upstream[b, :, z, y, x] = upstream
    with torch_threads(threads):
        (dense * dense_upstream).sum().backward()
    torch.testing.assert_close(sparse_grads[0], features.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sparse_grads[1], conv.weight.grad, rtol=1e-9, atol=1e-9)


@needs_spconv
@pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])
@pytest.mark.parametrize("name", list(CONVS))
def test_spconv_backend_forward_matches_dense_on_cpu(crops, name, threads):
    """Correct on CPU at any thread count because the backend pins spconv to one thread."""
    torch.manual_seed(1)
    conv = CONVS[name]("spconv")
    with torch_threads(threads), torch.no_grad():
        out = conv(crops)
        dense = dense_conv(conv, crops, crops.features)
        assert torch.get_num_threads() == threads  # restored after the spconv call
    torch.testing.assert_close(out.features, at_sites(dense, out.indices), **TOLERANCE)
    pairs = conv.last_active_pairs
    set_sparse_backend(conv, "torch")
    with torch.no_grad():
        assert len(conv(crops).indices) == len(out.indices)
    assert pairs == conv.last_active_pairs


@needs_spconv
@pytest.mark.skipif(not CPU_ONLY_TORCH, reason="the defect is specific to CPU-only torch builds")
def test_upstream_defect_spconv_backward_raises_on_cpu_only_torch(crops):
    import spconv.pytorch as spconv

    conv = spconv.SubMConv3d(4, 6, 3, bias=False)
    features = crops.features.clone().requires_grad_(True)
    out = conv(spconv.SparseConvTensor(features, crops.indices, list(crops.spatial_shape), crops.batch_size))
    with pytest.raises((RuntimeError, AssertionError), match="CUDA"):
        out.features.sum().backward()
    # Our spconv backend refuses such a graph up front, with a message that says what to do.
    ours = SubMConv3d(4, 6, 3, backend="spconv")
    with pytest.raises(RuntimeError, match="backend='torch'"):
        ours(crops.replace_features(features))


@needs_spconv
def test_upstream_defect_spconv_is_wrong_with_two_threads(sweep):
    """Documents spconv 2.3.8's race: with 2 torch threads a few output voxels differ per call.

    The race is not deterministic, so the test looks for it over up to 10 calls on a whole sweep
    (15k voxels, where it shows on a dozen voxels per call) and skips, saying so, if it never shows.
    """
    import spconv.pytorch as spconv

    voxels = Voxelizer((0.1, 0.1, 0.2), (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), 10, 60_000)(sweep)
    indices = F.pad(voxels.coords, (1, 0))
    features = torch.randn(len(indices), 4, generator=torch.Generator().manual_seed(0))
    nx, ny, nz = voxels.grid_size
    torch.manual_seed(0)
    conv = spconv.SparseConv3d(4, 16, 3, stride=2, padding=1, bias=False)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return conv(spconv.SparseConvTensor(features, indices, [nz, ny, nx], 1)).features

    with torch_threads(1):
        reference = run()
    wrong_voxels = []
    with torch_threads(2):
        for _ in range(10):
            wrong_voxels.append(int(((run() - reference).abs().amax(dim=1) > 1e-4).sum()))
            if wrong_voxels[-1]:
                break
    if not any(wrong_voxels):
        pytest.skip("spconv's 2-thread race did not show in 10 calls on this machine; see docs/sparse-convolution.md")
    assert 0 < wrong_voxels[-1] < len(reference)


def small_network(backend: str) -> nn.Module:
    return SparseSequential(
        SubMConv3d(4, 8, 3, indice_key="subm1", backend=backend),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        SubMConv3d(8, 8, 3, bias=True, indice_key="subm1", backend=backend),
        SparseConv3d(8, 16, 3, stride=2, padding=1, indice_key="down", backend=backend),
    )


@needs_spconv
def test_state_dicts_are_interchangeable_between_backends_and_with_spconv(crops):
    import spconv.pytorch as spconv

    torch.manual_seed(2)
    source = small_network("torch").eval()
    target = small_network("spconv").eval()
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        expected = source(crops)
        got = target(crops)
    # Backends may order the sites of a strided output differently; the dense maps are the same.
    torch.testing.assert_close(got.dense(), expected.dense(), **TOLERANCE)

    # The same tensors load into spconv's own module: checkpoints of spconv models are ours too.
    reference = spconv.SubMConv3d(4, 8, 3, bias=False)
    reference.load_state_dict(source[0].state_dict())
    with torch.no_grad(), torch_threads(1):  # raw spconv is only right with one thread
        theirs = reference(spconv.SparseConvTensor(crops.features, crops.indices, list(crops.spatial_shape), 2))
        ours = source[0](crops)
    torch.testing.assert_close(theirs.features, ours.features, **TOLERANCE)


def test_submanifold_layers_sharing_a_key_reuse_one_rulebook(crops):
    first = SubMConv3d(4, 4, 3, indice_key="shared", backend="torch")
    second = SubMConv3d(4, 4, 3, indice_key="shared", backend="torch")
    fresh = SubMConv3d(4, 4, 3, backend="torch")
    fresh.load_state_dict(second.state_dict())
    hidden = first(crops)
    out = second(hidden)
    assert out.rulebooks["shared"] is hidden.rulebooks["shared"]
    torch.testing.assert_close(out.features, fresh(hidden).features)
    assert "shared" not in crops.rulebooks  # the input is untouched: the cache lives in this forward


def test_misused_indice_keys_are_errors(crops):
    hidden = SubMConv3d(4, 4, 3, indice_key="a", backend="torch")(crops)
    with pytest.raises(ValueError, match="only submanifold"):
        SparseConv3d(4, 4, 3, stride=2, indice_key="a", backend="torch")(hidden)
    with pytest.raises(ValueError, match="kernel"):
        SubMConv3d(4, 4, 5, indice_key="a", backend="torch")(hidden)
    down = SparseConv3d(4, 4, 3, stride=2, padding=1, backend="torch")(hidden)
    with pytest.raises(ValueError, match="sites"):
        SubMConv3d(4, 4, 3, indice_key="a", backend="torch")(down)


def test_active_pairs_hand_count():
    """Two face-adjacent voxels: a 3x3x3 submanifold conv pairs each with itself and with the other."""
    indices = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2]], dtype=torch.int32)
    x = SparseTensor(torch.ones(2, 3), indices, (3, 3, 4), batch_size=1)
    conv = SubMConv3d(3, 5, 3, backend="torch")
    with pytest.raises(RuntimeError, match="no forward"):
        conv.last_active_pairs
    conv(x)
    assert conv.last_active_pairs == 4
    down = SparseConv3d(3, 5, 2, stride=2, backend="torch")
    out = down(x)  # x = 1 and x = 2 fall in different 2-wide windows: two outputs, one pair each
    assert down.last_active_pairs == 2 and out.indices.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1]]


def test_backend_selection():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu).name == "torch"
    assert resolve_backend("torch", cpu).name == "torch"
    with pytest.raises(ValueError, match="choose one of"):
        resolve_backend("cuda-magic", cpu)
    with pytest.raises(ValueError, match="choose one of"):
        SubMConv3d(2, 2, backend="tensorrt")


def test_empty_input_gives_empty_output():
    x = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.int32), (4, 4, 4), batch_size=1)
    assert SubMConv3d(3, 5, 3, backend="torch")(x).features.shape == (0, 5)
    assert SparseConv3d(3, 5, 3, stride=2, backend="torch")(x).features.shape == (0, 5)


@pytest.mark.parametrize(
    "features, indices, message",
    [
        (torch.zeros(3), torch.zeros(3, 4, dtype=torch.int32), r"\(V, C\)"),
        (torch.zeros(3, 2), torch.zeros(3, 4, dtype=torch.int64), "int32"),
        (torch.zeros(3, 2), torch.zeros(2, 4, dtype=torch.int32), "3 feature rows but 2 indices"),
    ],
)
def test_sparse_tensor_rejects_inconsistent_fields(features, indices, message):
    with pytest.raises(ValueError, match=message):
        SparseTensor(features, indices, (4, 4, 4), batch_size=1)


def test_channel_mismatch_is_named(crops):
    with pytest.raises(ValueError, match="expects 8 input channels, got 4"):
        SubMConv3d(8, 4, backend="torch")(crops)
