"""mmdetection3d's nuScenes CenterPoints as rules onto rdd3d presets.

Key names and shapes from mmdetection3d's sources and configs (``configs/_base_/models/centerpoint_*``):
the detector's modules are ``pts_voxel_encoder``, ``pts_middle_encoder``, ``pts_backbone``, ``pts_neck``
and ``pts_bbox_head``. What differs from rdd3d:

* ``SparseEncoder`` with basic blocks runs the same layers as OpenPCDet's residual backbone, grouped
  otherwise: ``encoder_layer<L>`` holds two residual blocks and then the next stage's strided convolution.
  Its residual blocks' convolutions have no bias (rdd3d's are zero there).
* ``SECONDFPN`` builds a stride-1 deblock as a 1x1 ``Conv2d`` (``use_conv_for_no_stride``); rdd3d's is
  a 1x1 ``ConvTranspose2d``, whose weight is the transposed one.
* ``CenterHead``'s convolutions before a BatchNorm have no bias (``ConvModule``'s ``bias='auto'``); they are
  named ``conv`` / ``bn`` inside each ``ConvModule``. Branches ``reg``, ``height``, ``dim``, ``rot``, ``vel``,
  ``heatmap`` -> ``center``, ``center_z``, ``dim``, ``rot``, ``velocity``, ``heatmap``. The rotation branch
  predicts (sin, cos) of the yaw where rdd3d's predicts (cos, sin): its output channels are swapped.
* The box code is otherwise the same: cell offset, gravity-centre z, log sizes (``norm_bbox=True``), velocity.
  mmdetection3d before v1.0 stored boxes as (w, l, h) with another yaw: such checkpoints are refused
  (``check_metadata``).
"""

from __future__ import annotations

import re

from rdd3d.models.foreign.mapping import ForeignModel, KeyRule, head_branch

#: mmdetection3d's SeparateHead branch names -> rdd3d's TaskHead's.
BRANCHES = {"heatmap": "heatmap", "reg": "center", "height": "center_z", "dim": "dim", "rot": "rot",
            "vel": "velocity"}



def _encoder_layer(match: re.Match) -> str:
    """``encoder_layer<L>.<j>``: blocks 0 and 1 are stage L's residual blocks (after its strided convolution
    in rdd3d's stages 2-4), block 2 is stage L+1's strided convolution."""
    stage, block = int(match[1]), int(match[2])
    if block == 2:
        return f"backbone_3d.conv{stage + 1}.0.{match[3]}"
    return f"backbone_3d.conv{stage}.{block if stage == 1 else block + 1}.{match[3]}"


_SPARSE_ENCODER = (
    KeyRule(r"pts_middle_encoder\.conv_input\.(.+)", "backbone_3d.conv_input.{0}"),
    KeyRule(r"pts_middle_encoder\.encoder_layers\.encoder_layer(\d)\.(\d+)\.(.+)", _encoder_layer,
            shown="blocks 0, 1: backbone_3d.conv{0}.({1}, + 1 after stage 1).{2}; block 2: backbone_3d.conv({0} + 1).0.{2}"),
    KeyRule(r"pts_middle_encoder\.conv_out\.(.+)", "backbone_3d.conv_out.{0}"),
)
_PILLAR_ENCODER = (KeyRule(r"pts_voxel_encoder\.pfn_layers\.(\d+)\.(.+)", "encoder.layers.{0}.{1}"),)
_BEV_AND_HEAD = (
    KeyRule(r"pts_backbone\.blocks\.(.+)", "backbone_2d.blocks.{0}"),
    KeyRule(r"pts_neck\.deblocks\.(\d+)\.0\.weight", "backbone_2d.deblocks.{0}.0.weight",
            convert="1x1 conv to transposed conv"),
    KeyRule(r"pts_neck\.deblocks\.(\d+)\.1\.(.+)", "backbone_2d.deblocks.{0}.1.{1}"),
    KeyRule(r"pts_bbox_head\.shared_conv\.conv\.weight", "head.shared_conv.0.weight"),
    KeyRule(r"pts_bbox_head\.shared_conv\.bn\.(.+)", "head.shared_conv.1.{0}"),
    KeyRule(r"pts_bbox_head\.task_heads\.(\d+)\.(\w+)\.(\d+)\.conv\.(weight)", head_branch(BRANCHES, 0),
            shown="head.tasks.{0}.<branch>.(3 * {2}).weight"),
    KeyRule(r"pts_bbox_head\.task_heads\.(\d+)\.(\w+)\.(\d+)\.bn\.(.+)", head_branch(BRANCHES, 1),
            shown="head.tasks.{0}.<branch>.(3 * {2} + 1).{3}"),
    # The first matching rule wins: the rotation branch's output convolution before the others'.
    KeyRule(r"pts_bbox_head\.task_heads\.(\d+)\.(rot)\.(\d+)\.(weight|bias)", head_branch(BRANCHES, 0),
            convert="sin-cos to cos-sin", shown="head.tasks.{0}.rot.(3 * {2}).{3}"),
    KeyRule(r"pts_bbox_head\.task_heads\.(\d+)\.(\w+)\.(\d+)\.(weight|bias)", head_branch(BRANCHES, 0),
            shown="head.tasks.{0}.<branch>.(3 * {2}).{3}"),
)
#: Biases mmdetection3d leaves out before a BatchNorm: the head's hidden convolutions (one per branch here).
_HEAD_ZERO_BIASES = (r"head\.shared_conv\.0\.bias", r"head\.tasks\.\d+\.\w+\.0\.bias")

#: What mmdetection3d's 0.1 m and 0.075 m voxel models share (their voxel caps: 90000 / 120000).
_VOXEL = dict(
    rules=(*_SPARSE_ENCODER, *_BEV_AND_HEAD),
    zero_filled=(r"backbone_3d\.conv\d\.\d+\.conv[12]\.bias", *_HEAD_ZERO_BIASES),
    overrides={"max_voxels_train": 90000, "max_voxels_test": 120000},
)

VOXEL = ForeignModel(
    framework="mmdet3d", preset="cp-voxel", datasets=("nuscenes",),
    configs=("centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d.py",), **_VOXEL,
)

VOXEL_FINE = ForeignModel(
    framework="mmdet3d", preset="cp-voxel-v0.075", datasets=("nuscenes",),
    configs=("centerpoint_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d.py",), **_VOXEL,
)

PILLAR = ForeignModel(
    framework="mmdet3d", preset="cp-pillar-s4", datasets=("nuscenes",),
    configs=("centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d.py",),
    rules=(*_PILLAR_ENCODER, *_BEV_AND_HEAD),
    zero_filled=_HEAD_ZERO_BIASES,
    # One PFN layer of 64 (rdd3d's preset: OpenPCDet's two); 20 points per pillar, 30000 / 40000 pillars.
    # (PillarFeatureNet lets a pillar's zero-padded slots into its BatchNorm and maximum, rdd3d's pillar net
    # reads the real points only: docs/import-checkpoints.md.)
    overrides={"pillar_filters": (64,), "max_voxels_train": 30000, "max_voxels_test": 40000},
)

MODELS = (VOXEL, VOXEL_FINE, PILLAR)
