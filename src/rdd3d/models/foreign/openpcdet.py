"""OpenPCDet's nuScenes CenterPoints (and SparseKD's, which is OpenPCDet) as rules onto rdd3d presets.

Key names and shapes from OpenPCDet's sources (``pcdet/models``): the detector's modules are ``vfe``,
``backbone_3d``, ``map_to_bev_module``, ``backbone_2d`` and ``dense_head``. What differs from rdd3d's names:

* ``backbone_2d.blocks.<i>`` starts with a parameter-free ``ZeroPad2d(1)`` before a padding-0 convolution,
  where rdd3d's level starts with the padding-1 convolution: same output, every index one lower here.
* ``dense_head.heads_list.<task>.<branch>`` is a sequence of ``Sequential(conv, BatchNorm, ReLU)`` then the
  output convolution (``<k>.0`` / ``<k>.1`` / ``<last>``); rdd3d's branch is one flat sequence
  (``3k`` / ``3k + 1`` / ``3 * last``). Branches: ``hm``, ``center``, ``center_z``, ``dim``, ``rot``, ``vel``
  -> ``heatmap``, ``center``, ``center_z``, ``dim``, ``rot``, ``velocity``; the box code is the same
  (cell offset, z, log sizes, cos / sin of the yaw, velocity).
* ``vfe.pfn_layers`` (PillarVFE, DynamicPillarVFE) -> ``encoder.layers``; ``global_step`` is a training
  counter, not a weight.

The sparse backbone, the BatchNorm settings (1e-3 / 0.01 in the 3D and BEV backbones and the pillar net,
PyTorch's defaults in the head) and the class grouping into six tasks are rdd3d's already.
"""

from __future__ import annotations

import re

from rdd3d.models.foreign.mapping import ForeignModel, KeyRule, head_branch

#: OpenPCDet's CenterHead branch names -> rdd3d's TaskHead's.
BRANCHES = {"hm": "heatmap", "center": "center", "center_z": "center_z", "dim": "dim", "rot": "rot", "vel": "velocity"}



def _bev_layer(match: re.Match) -> str | None:
    layer = int(match[2]) - 1  # the ZeroPad2d at 0 holds nothing
    return None if layer < 0 else f"backbone_2d.blocks.{match[1]}.{layer}.{match[3]}"


#: The rules every CenterPoint of OpenPCDet shares (BEV backbone and head).
_BEV_AND_HEAD = (
    KeyRule(r"backbone_2d\.blocks\.(\d+)\.(\d+)\.(.+)", _bev_layer, shown="backbone_2d.blocks.{0}.({1} - 1).{2}"),
    KeyRule(r"backbone_2d\.deblocks\.(.+)", "backbone_2d.deblocks.{0}"),
    KeyRule(r"dense_head\.shared_conv\.(.+)", "head.shared_conv.{0}"),
    KeyRule(r"dense_head\.heads_list\.(\d+)\.(\w+)\.(\d+)\.0\.(.+)", head_branch(BRANCHES, 0),
            shown="head.tasks.{0}.<branch>.(3 * {2}).{3}"),
    KeyRule(r"dense_head\.heads_list\.(\d+)\.(\w+)\.(\d+)\.1\.(.+)", head_branch(BRANCHES, 1),
            shown="head.tasks.{0}.<branch>.(3 * {2} + 1).{3}"),
    KeyRule(r"dense_head\.heads_list\.(\d+)\.(\w+)\.(\d+)\.(weight|bias)", head_branch(BRANCHES, 0),
            shown="head.tasks.{0}.<branch>.(3 * {2}).{3}"),
)
_IGNORED = (r"global_step",)

_VOXEL_RULES = (KeyRule(r"backbone_3d\.(.+)", "backbone_3d.{0}"), *_BEV_AND_HEAD)
_PILLAR_RULES = (KeyRule(r"vfe\.pfn_layers\.(\d+)\.(.+)", "encoder.layers.{0}.{1}"), *_BEV_AND_HEAD)
#: SparseKD's CP-Voxel / CP-Pillar families are OpenPCDet models with widths (``WIDTH``) and pillar sizes
#: set per config, as rdd3d's presets set them: the same rules, the shapes checked against each preset.
_SPARSEKD = "SparseKD cfgs/waymo_models/{0}/{1}.yaml trained on the dataset"

MODELS = (
    ForeignModel(
        framework="openpcdet", preset="cp-voxel", datasets=("nuscenes", "kitti"),
        configs=("nuscenes_models/cbgs_voxel01_res3d_centerpoint.yaml", _SPARSEKD.format("cp-voxel", "cp-voxel")),
        rules=_VOXEL_RULES, ignored=_IGNORED,
    ),
    *(ForeignModel(framework="openpcdet", preset=preset, datasets=("nuscenes", "kitti"),
                   configs=(_SPARSEKD.format("cp-voxel", preset),), rules=_VOXEL_RULES, ignored=_IGNORED)
      for preset in ("cp-voxel-s", "cp-voxel-xs", "cp-voxel-xxs")),
    ForeignModel(
        framework="openpcdet", preset="cp-voxel-v0.075", datasets=("nuscenes",),
        configs=("nuscenes_models/cbgs_voxel0075_res3d_centerpoint.yaml",), rules=_VOXEL_RULES, ignored=_IGNORED,
    ),
    *(ForeignModel(framework="openpcdet", preset=preset, datasets=("nuscenes", "kitti"),
                   configs=(_SPARSEKD.format("cp-pillar", preset),), rules=_PILLAR_RULES, ignored=_IGNORED)
      for preset in ("cp-pillar", "cp-pillar-v0.4", "cp-pillar-v0.48", "cp-pillar-v0.64")),
    ForeignModel(
        framework="openpcdet", preset="cp-pillar-s4", datasets=("nuscenes",),
        configs=("nuscenes_models/cbgs_dyn_pp_centerpoint.yaml",), rules=_PILLAR_RULES, ignored=_IGNORED,
        # DynamicPillarVFE takes every point of every pillar; rdd3d's voxeliser caps both. 60000 pillars is above
        # what a nuScenes frame fills; beyond 100 points a pillar holds the vehicle's own returns around the
        # sensor (measured on the real keyframe: docs/import-checkpoints.md).
        overrides={"max_points_per_voxel": 100, "max_voxels_train": 60000, "max_voxels_test": 60000},
    ),
)
