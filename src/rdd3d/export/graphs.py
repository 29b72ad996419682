"""The parts of a :class:`~rdd3d.models.detector.Detector` after voxelisation, as modules that trace into
ONNX graphs with a dynamic number of voxels and a fixed grid. They reuse the detector's own layers and
weights; only the steps whose PyTorch form does not trace (the pillar net's variable-length point lists,
the sparse convolutions' rulebook building) are written in a traceable form here.

* :class:`PillarNetwork` (pillar family): pillars -> pillar net -> scatter onto the BEV canvas -> BEV
  backbone -> head, one graph.
* :class:`SparseBackboneNetwork` (voxel family): voxels and precomputed rulebooks -> mean VFE -> sparse
  3D backbone -> BEV map.
* :class:`BEVNetwork` (voxel family): BEV map -> BEV backbone -> head.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from rdd3d.data.voxelize import voxel_centers
from rdd3d.models.detector import Detector
from rdd3d.models.encoders import PillarVFE, point_mask
from rdd3d.models.heads import AnchorPrediction, CenterHead, TaskPrediction
from rdd3d.models.sparse import SparseConvolution, SparseModule, SparseTensor
from rdd3d_runtime.manifest import RulebookSpec

#: The voxel family's boundary between its two files.
BEV_MAP = "bev_map"


def task_output_names(head: CenterHead) -> tuple[tuple[str, ...], ...]:
    """Per task, the names of its maps in :class:`TaskPrediction` order: the heatmap, then the box code's."""
    return tuple(tuple(f"task{index}_{name}" for name in TaskPrediction._fields
                       if name != "velocity" or task.velocity is not None)
                 for index, task in enumerate(head.tasks))


def head_output_names(detector: Detector) -> tuple[str, ...]:
    """One name per raw output map of the head, in :func:`flat_head_outputs` order."""
    if isinstance(detector.head, CenterHead):
        return tuple(name for task in task_output_names(detector.head) for name in task)
    return tuple(name for name in AnchorPrediction._fields
                 if name != "dir_logits" or detector.head.config.use_direction_classifier)


def flat_head_outputs(predictions: Sequence[TaskPrediction] | AnchorPrediction) -> tuple[Tensor, ...]:
    if isinstance(predictions, AnchorPrediction):
        return tuple(part for part in predictions if part is not None)
    return tuple(part for task in predictions for part in task if part is not None)


def pillar_features(encoder: PillarVFE, features: Tensor, num_points: Tensor, coords: Tensor) -> Tensor:
    """:class:`PillarVFE` on every point slot at once: ``(V, P, C)`` padded points -> ``(V, C_out)``.

    Eval-mode BatchNorm acts on each point alone, so computing padded slots too and leaving them out of the
    maximum gives the per-pillar result of ``PillarVFE.forward`` without its variable-length point list."""
    real = point_mask(num_points, features.shape[1])[:, :, None]  # (V, P, 1)
    xyz = features[:, :, :3]
    count = num_points.clamp(min=1).to(features.dtype)[:, None, None]
    pillar_mean = xyz.sum(dim=1, keepdim=True) / count  # padded slots hold zeros
    centre = voxel_centers(coords, encoder.voxel_size, encoder.point_cloud_range)[:, None, :]
    x = torch.cat([features, xyz - pillar_mean, xyz - centre], dim=2)  # (V, P, C + 6)
    for layer in encoder.layers:
        x = layer.norm(layer.linear(x).transpose(1, 2)).transpose(1, 2)  # BatchNorm1d over (V, W, P)
        # ReLU output is >= 0, so zeros in the padded slots leave each pillar's maximum to its real points.
        x = torch.where(real, torch.relu(x), torch.zeros_like(x))
        pooled = x.amax(dim=1, keepdim=True)  # (V, 1, W)
        x = pooled if layer.last else torch.cat([x, pooled.expand_as(x)], dim=2)
    return x[:, 0]


class PillarNetwork(nn.Module):
    """``voxel_features (V, P, C)``, ``voxel_num_points (V,)`` int32, ``voxel_coords (V, 3)`` int32 z y x of
    one frame -> the head's raw maps."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.encoder, self.backbone_2d, self.head = detector.encoder, detector.backbone_2d, detector.head
        self.nx, self.ny = detector.scatter.nx, detector.scatter.ny

    def forward(self, voxel_features: Tensor, voxel_num_points: Tensor, voxel_coords: Tensor) -> tuple[Tensor, ...]:
        pillars = pillar_features(self.encoder, voxel_features, voxel_num_points, voxel_coords)  # (V, C)
        cell = voxel_coords[:, 1].long() * self.nx + voxel_coords[:, 2].long()
        canvas = pillars.new_zeros(self.ny * self.nx, pillars.shape[1]).index_put((cell,), pillars)  # ScatterND
        bev = canvas.view(1, self.ny, self.nx, -1).permute(0, 3, 1, 2)
        return flat_head_outputs(self.head(self.backbone_2d(bev).features))


class BEVNetwork(nn.Module):
    """``bev_map (1, C, H, W)`` -> the head's raw maps."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.backbone_2d, self.head = detector.backbone_2d, detector.head

    def forward(self, bev_map: Tensor) -> tuple[Tensor, ...]:
        return flat_head_outputs(self.head(self.backbone_2d(bev_map).features))


def sparse_rulebook_plan(detector: Detector) -> dict[str, RulebookSpec]:
    """The rulebook each sparse convolution of ``detector.backbone_3d`` reads, by module name. Convolutions
    of one geometry over the same sites share one (as :func:`rdd3d.models.sparse.rulebook.shared_rulebooks`
    does); a strided one starts a new site set. Modules register in forward order."""
    plan: dict[str, RulebookSpec] = {}
    distinct: dict[tuple, RulebookSpec] = {}
    sites, shape, site_sets = 0, tuple(detector.backbone_3d.sparse_shape), 1
    for name, module in detector.backbone_3d.named_modules():
        if not isinstance(module, SparseConvolution):
            continue
        geometry = module.geometry
        key = (sites, shape, geometry)
        if key not in distinct:
            output_sites = sites if geometry.subm else site_sets
            site_sets += not geometry.subm
            distinct[key] = RulebookSpec(
                name=f"rulebook{len(distinct)}", input_sites=sites, output_sites=output_sites, spatial_shape=shape,
                kernel_size=geometry.kernel_size, stride=geometry.stride, padding=geometry.padding,
                subm=geometry.subm)
        plan[name] = distinct[key]
        sites, shape = distinct[key].output_sites, geometry.output_shape(shape)
    return plan


def distinct_rulebooks(plan: dict[str, RulebookSpec]) -> tuple[RulebookSpec, ...]:
    """Each rulebook of a plan once, in the order the convolutions first read them."""
    return tuple({spec.name: spec for spec in plan.values()}.values())


def sparse_input_names(plan: dict[str, RulebookSpec]) -> tuple[str, ...]:
    """The sparse graph's inputs after the voxels: each rulebook's neighbour table, then the coordinates
    of each site set a strided convolution makes."""
    rulebooks = distinct_rulebooks(plan)
    site_sets = sorted({spec.output_sites for spec in rulebooks if not spec.subm})
    return (*(f"{spec.name}_neighbours" for spec in rulebooks), *(f"sites{index}" for index in site_sets))


def _with_batch_column(zyx: Tensor) -> Tensor:
    """``(V, 3)`` int32 z y x -> ``(V, 4)`` int32 b z y x of a one-frame batch."""
    return torch.cat([torch.zeros_like(zyx[:, :1]), zyx], dim=1)


class RulebookConvolution(SparseModule):
    """A sparse convolution that reads its rulebook from a graph input, as a neighbour table: for every
    output site and tap the input row it reads, or the row past the last (a zero row) where there is none.
    The convolution is then one gather and one matrix product, with no scatter (spconv's implicit GEMM)."""

    def __init__(self, convolution: SparseConvolution, rulebook: RulebookSpec) -> None:
        super().__init__()
        # (C_out, kz, ky, kx, C_in) -> (taps * C_in, C_out): row tap * C_in + c, as the gathered rows lie
        self.register_buffer("weight", convolution.weight.detach().flatten(1, 4).t().contiguous())
        self.bias = None if convolution.bias is None else convolution.bias.detach()
        self.rulebook = rulebook
        self.out_shape = convolution.geometry.output_shape(rulebook.spatial_shape)

    def forward(self, x: SparseTensor) -> SparseTensor:
        neighbours = x.rulebooks[f"{self.rulebook.name}_neighbours"]  # (V_out, taps)
        out_indices = x.indices if self.rulebook.subm else x.rulebooks[f"sites{self.rulebook.output_sites}"]
        padded = torch.cat([x.features, torch.zeros_like(x.features[:1])])  # (V_in + 1, C_in)
        gathered = padded.index_select(0, neighbours.flatten()).reshape(-1, len(self.weight))  # (V_out, taps * C_in)
        features = gathered @ self.weight
        if self.bias is not None:
            features = features + self.bias
        return SparseTensor(features, out_indices, self.out_shape, x.batch_size, x.rulebooks)


class SparseBackboneNetwork(nn.Module):
    """``voxel_features (V, P, C)``, ``voxel_num_points (V,)``, ``voxel_coords (V, 3)`` and the rulebook
    inputs named by :func:`sparse_input_names` -> ``bev_map (1, C_bev, H, W)``."""

    def __init__(self, detector: Detector, plan: dict[str, RulebookSpec]) -> None:
        super().__init__()
        self.encoder = detector.encoder
        self.backbone = copy.deepcopy(detector.backbone_3d)
        for name, rulebook in plan.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.backbone.get_submodule(parent_name)
            setattr(parent, child, RulebookConvolution(parent.get_submodule(child), rulebook))
        self.extra_inputs = sparse_input_names(plan)

    def forward(self, voxel_features: Tensor, voxel_num_points: Tensor, voxel_coords: Tensor,
                *rulebook_inputs: Tensor) -> Tensor:
        named = dict(zip(self.extra_inputs, rulebook_inputs, strict=True))
        rulebooks = {name: _with_batch_column(value) if name.startswith("sites") else value
                     for name, value in named.items()}
        backbone = self.backbone
        x = SparseTensor(self.encoder(voxel_features, voxel_num_points), _with_batch_column(voxel_coords),
                         backbone.sparse_shape, 1, rulebooks)
        for stage in (backbone.conv_input, backbone.conv1, backbone.conv2, backbone.conv3, backbone.conv4,
                      backbone.conv_out):
            x = stage(x)
        return backbone.to_bev(x)
