"""Foreign checkpoints (rdd3d.models.foreign): files laid out as OpenPCDet and mmdetection3d save them, with the
key names and shapes of their sources (the frameworks' module trees, written out here per framework), random
weights, and every sparse-convolution weight layout they use; imported, each tensor lands where it must, and
the foreign layouts compute what the imported modules compute."""

from __future__ import annotations

import os
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdd3d.models.foreign import (
    FOREIGN_MODELS, ForeignCheckpointError, describe_rules, foreign_model, import_detector, read_foreign_checkpoint,
)
from rdd3d.models.foreign.mapping import SPARSE_LAYOUTS
from rdd3d.models.presets import build_detector
from rdd3d.models.sparse import SparseConvolution, SparseTensor, SubMConv3d

DOCS = Path(__file__).resolve().parents[2] / "docs" / "import-checkpoints.md"
NUSCENES_CLASSES = ["car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                    "pedestrian", "traffic_cone"]
#: rdd3d's TaskHead branch -> OpenPCDet's SeparateHead branch, mmdetection3d's SeparateHead branch.
OPENPCDET_BRANCHES = {"heatmap": "hm", "center": "center", "center_z": "center_z", "dim": "dim", "rot": "rot",
                      "velocity": "vel"}
MMDET3D_BRANCHES = {"heatmap": "heatmap", "center": "reg", "center_z": "height", "dim": "dim", "rot": "rot",
                    "velocity": "vel"}
#: How each layout stores a weight of rdd3d's (out, kz, ky, kx, in).
FROM_RDD3D = {"spconv 2.x (out, kz, ky, kx, in)": (0, 1, 2, 3, 4),
              "spconv 1.x / mmcv (kz, ky, kx, in, out)": (1, 2, 3, 4, 0),
              "spconv 2.x native (kz, ky, kx, out, in)": (1, 2, 3, 0, 4)}


# ----------------------------------------------------------------------------- foreign files, built here
def reference_detector(preset: str, framework: str, seed: int = 0) -> nn.Module:
    """A detector with random weights and BatchNorm statistics, zero where ``framework``'s model has no bias."""
    torch.manual_seed(seed)
    model = FOREIGN_MODELS[(framework, preset)]
    detector = build_detector(preset, "nuscenes", **model.overrides)
    with torch.no_grad():
        for name, tensor in detector.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 1000, ())))
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif any(re.fullmatch(pattern, name) for pattern in model.zero_filled):
                tensor.zero_()
            else:
                tensor.copy_(torch.randn_like(tensor) * 0.1)
    return detector.eval()


def _is_sparse_weight(detector: nn.Module, key: str) -> bool:
    module, _, name = key.rpartition(".")
    return name == "weight" and isinstance(detector.get_submodule(module), SparseConvolution)


def openpcdet_state(detector: nn.Module, layout: str = "spconv 2.x (out, kz, ky, kx, in)") -> OrderedDict:
    """The state dict OpenPCDet's CenterPoint of the same architecture saves: vfe / backbone_3d / backbone_2d
    (ZeroPad2d first in each block) / dense_head (heads_list of Sequential(conv, BN, ReLU) + conv), global_step."""
    state = OrderedDict()
    for key, tensor in detector.state_dict().items():
        if _is_sparse_weight(detector, key):
            tensor = tensor.permute(*FROM_RDD3D[layout])
        parts = key.split(".")
        if parts[0] == "encoder":
            name = "vfe.pfn_layers." + ".".join(parts[2:])
        elif parts[:2] == ["backbone_2d", "blocks"]:
            name = f"backbone_2d.blocks.{parts[2]}.{int(parts[3]) + 1}." + ".".join(parts[4:])
        elif parts[:2] == ["head", "shared_conv"]:
            name = "dense_head." + ".".join(parts[1:])
        elif parts[:2] == ["head", "tasks"]:
            task, branch, layer, rest = parts[2], OPENPCDET_BRANCHES[parts[3]], int(parts[4]), ".".join(parts[5:])
            inner = {0: "0.0", 1: "0.1", 3: "1"}[layer]
            name = f"dense_head.heads_list.{task}.{branch}.{inner}.{rest}"
        else:
            name = key
        state[name] = tensor.clone()
    state["global_step"] = torch.tensor([12345])
    return state


def mmdet3d_state(detector: nn.Module, layout: str = "spconv 1.x / mmcv (kz, ky, kx, in, out)") -> OrderedDict:
    """The state dict mmdetection3d's CenterPoint saves: pts_voxel_encoder / pts_middle_encoder (SparseEncoder,
    basic blocks without conv biases) / pts_backbone / pts_neck (1x1 Conv2d for stride 1) / pts_bbox_head
    (ConvModules conv + bn without bias, rotation as sin, cos)."""
    state = OrderedDict()
    for key, tensor in detector.state_dict().items():
        if _is_sparse_weight(detector, key):
            tensor = tensor.permute(*FROM_RDD3D[layout])
        parts = key.split(".")
        name = None
        if parts[0] == "encoder":
            name = "pts_voxel_encoder.pfn_layers." + ".".join(parts[2:])
        elif parts[0] == "backbone_3d":
            stage, rest = parts[1], parts[2:]
            if re.fullmatch(r"conv\d\.\d+\.conv[12]\.bias", ".".join(parts[1:])):
                continue  # mmdet's BasicBlock convolutions have no bias
            if stage in ("conv_input", "conv_out"):
                name = f"pts_middle_encoder.{stage}." + ".".join(rest)
            else:
                level, block = int(stage[4:]), int(rest[0])
                if level == 1:
                    layer, index = 1, block
                elif block == 0:  # stage L's strided convolution closes mmdetection3d's layer L - 1
                    layer, index = level - 1, 2
                else:
                    layer, index = level, block - 1
                name = f"pts_middle_encoder.encoder_layers.encoder_layer{layer}.{index}." + ".".join(rest[1:])
        elif parts[:2] == ["backbone_2d", "blocks"]:
            name = "pts_backbone." + ".".join(parts[1:])
        elif parts[:2] == ["backbone_2d", "deblocks"]:
            module = detector.get_submodule(".".join(parts[:-1]))
            if isinstance(module, nn.ConvTranspose2d) and module.stride == (1, 1):
                tensor = tensor.transpose(0, 1)  # use_conv_for_no_stride: a Conv2d there
            name = "pts_neck." + ".".join(parts[1:])
        elif parts[:2] == ["head", "shared_conv"]:
            if parts[2] == "0" and parts[3] == "bias":
                continue
            name = "pts_bbox_head.shared_conv." + {"0": "conv", "1": "bn"}[parts[2]] + "." + parts[3]
        elif parts[:2] == ["head", "tasks"]:
            task, branch, layer, rest = parts[2], MMDET3D_BRANCHES[parts[3]], int(parts[4]), ".".join(parts[5:])
            if layer == 0 and rest == "bias":
                continue
            if layer == 3 and branch == "rot":
                tensor = tensor.flip(0)  # (cos, sin) -> (sin, cos)
            inner = {0: "0.conv", 1: "0.bn", 3: "1"}[layer]
            name = f"pts_bbox_head.task_heads.{task}.{branch}.{inner}.{rest}"
        state[name] = tensor.clone()
    return state


FOREIGN_STATES = {"openpcdet": openpcdet_state, "mmdet3d": mmdet3d_state}


def save_openpcdet(path: Path, state: dict) -> Path:
    """As OpenPCDet's train_utils.save_checkpoint writes it."""
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(2))])
    torch.save({"epoch": 20, "it": 123456, "model_state": state, "optimizer_state": optimizer.state_dict(),
                "version": "pcdet+0.6.0+8caccce"}, path)
    return path


def _fake_module(name: str, **members) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(members)
    return module


class HistoryBuffer:
    """Stands for mmengine.logging.history_buffer.HistoryBuffer when the test writes a file (mmengine is not
    installed): an object whose state holds numpy arrays, pickled under mmengine's name."""

    def __init__(self):
        self.max_length = 1000000
        self._log_history = np.array([0.5, 0.25])
        self._count_history = np.array([1, 1])


def save_mmdet3d(path: Path, state: dict, cfg: str = "voxel_size = [0.1, 0.1, 0.2]\nmodel = dict(type='CenterPoint')",
                 **meta) -> Path:
    """As mmengine's CheckpointHook writes it for mmdetection3d 1.x: meta (config text, dataset classes,
    numpy values), state_dict, message_hub with HistoryBuffers, optimizer."""
    packages = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    HistoryBuffer.__module__ = packages[-1]
    sys.modules.update({name: _fake_module(name, HistoryBuffer=HistoryBuffer) for name in packages})
    try:
        torch.save({
            "meta": {"epoch": 20, "iter": 123456, "cfg": cfg, "seed": np.int64(1234), "experiment_name": "cp",
                     "mmengine_version": "0.7.4", "dataset_meta": {"classes": NUSCENES_CLASSES}, **meta},
            "state_dict": state,
            "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"epoch": 20},
                            "resumed_keys": {"epoch": True}},
            "optimizer": torch.optim.AdamW([nn.Parameter(torch.zeros(2))]).state_dict(),
        }, path)
    finally:
        for name in packages:
            del sys.modules[name]
        HistoryBuffer.__module__ = __name__
    return path


SAVERS = {"openpcdet": save_openpcdet, "mmdet3d": save_mmdet3d}


# ----------------------------------------------------------------------------- every supported model
NUSCENES_MODELS = [key for key, model in FOREIGN_MODELS.items() if "nuscenes" in model.datasets]


@pytest.mark.parametrize("framework, preset", NUSCENES_MODELS, ids=[f"{f}-{p}" for f, p in NUSCENES_MODELS])
def test_every_supported_model_imports_tensor_for_tensor(framework, preset, tmp_path):
    reference = reference_detector(preset, framework)
    extra = {"cfg": f"voxel_size = {list(reference.config.voxel_size)}"} if framework == "mmdet3d" else {}
    path = SAVERS[framework](tmp_path / "model.pth", FOREIGN_STATES[framework](reference), **extra)
    imported = import_detector(path, framework, preset, "nuscenes")
    expected, got = reference.state_dict(), imported.detector.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert imported.provenance["framework"] == framework and imported.provenance["file"] == "model.pth"
    assert len(imported.provenance["sha256"]) == 64


@pytest.mark.parametrize("layout", list(SPARSE_LAYOUTS))
def test_each_sparse_weight_layout_lands_transposed_correctly(layout, tmp_path):
    reference = reference_detector("cp-voxel", "openpcdet")
    foreign = openpcdet_state(reference, layout)
    weight = foreign["backbone_3d.conv_input.0.weight"]  # 5 input channels, 16 output channels
    path = save_openpcdet(tmp_path / "model.pth", foreign)
    imported = import_detector(path, "openpcdet", "cp-voxel", "nuscenes").detector
    ours = imported.backbone_3d.conv_input[0].weight  # (out 16, kz, ky, kx, in 5)
    out, (kz, ky, kx), channel = 7, (0, 2, 1), 3
    where = {"spconv 2.x (out, kz, ky, kx, in)": (out, kz, ky, kx, channel),
             "spconv 1.x / mmcv (kz, ky, kx, in, out)": (kz, ky, kx, channel, out),
             "spconv 2.x native (kz, ky, kx, out, in)": (kz, ky, kx, out, channel)}[layout]
    assert ours[out, kz, ky, kx, channel] == weight[where]


def test_a_spconv1_weight_computes_the_dense_convolution_of_its_layout():
    """Submanifold convolution over a fully occupied grid is the dense convolution: the imported (out, kz, ky,
    kx, in) weight computes what spconv 1.x's (kz, ky, kx, in, out) weight means, out = sum_k W[k, in, out] x."""
    torch.manual_seed(0)
    foreign = torch.randn(3, 3, 3, 4, 6)  # spconv 1.x layout
    conv = SubMConv3d(4, 6, 3, backend="torch")
    with torch.no_grad():
        conv.weight.copy_(foreign.permute(*SPARSE_LAYOUTS["spconv 1.x / mmcv (kz, ky, kx, in, out)"]))
    grid = torch.randn(1, 4, 3, 4, 5)  # (B, C, D, H, W)
    zyx = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(5), indexing="ij"), -1).view(-1, 3)
    indices = torch.cat([torch.zeros(len(zyx), 1, dtype=torch.long), zyx], dim=1).int()
    features = grid[0].permute(1, 2, 3, 0).reshape(-1, 4)
    sparse = conv(SparseTensor(features, indices, (3, 4, 5), 1)).dense()
    dense = F.conv3d(grid, foreign.permute(4, 3, 0, 1, 2), padding=1)
    assert torch.allclose(sparse, dense, atol=1e-5)


def test_mmdet3d_stride_one_deblock_and_rotation_compute_as_in_mmdet3d(tmp_path):
    reference = reference_detector("cp-voxel", "mmdet3d")
    foreign = mmdet3d_state(reference)
    imported = import_detector(save_mmdet3d(tmp_path / "model.pth", foreign), "mmdet3d", "cp-voxel",
                               "nuscenes").detector
    torch.manual_seed(1)
    x = torch.randn(1, 128, 6, 6)
    weight = foreign["pts_neck.deblocks.0.0.weight"]  # a 1x1 Conv2d (256, 128, 1, 1)
    assert weight.shape == (256, 128, 1, 1)
    assert torch.allclose(imported.backbone_2d.deblocks[0][0](x), F.conv2d(x, weight), atol=1e-5)
    shared = torch.randn(1, 64, 5, 5)
    rot = imported.head.tasks[2].rot(shared)  # rdd3d: (cos, sin)
    hidden = F.relu(F.batch_norm(F.conv2d(shared, foreign["pts_bbox_head.task_heads.2.rot.0.conv.weight"], padding=1),
                                 foreign["pts_bbox_head.task_heads.2.rot.0.bn.running_mean"],
                                 foreign["pts_bbox_head.task_heads.2.rot.0.bn.running_var"],
                                 foreign["pts_bbox_head.task_heads.2.rot.0.bn.weight"],
                                 foreign["pts_bbox_head.task_heads.2.rot.0.bn.bias"]))
    sin_cos = F.conv2d(hidden, foreign["pts_bbox_head.task_heads.2.rot.1.weight"],
                       foreign["pts_bbox_head.task_heads.2.rot.1.bias"], padding=1)  # mmdetection3d: (sin, cos)
    assert torch.allclose(torch.atan2(rot[:, 1], rot[:, 0]), torch.atan2(sin_cos[:, 0], sin_cos[:, 1]), atol=1e-4)


def test_openpcdet_padded_block_computes_as_rdd3d_level(tmp_path):
    reference = reference_detector("cp-pillar-s4", "openpcdet")
    foreign = openpcdet_state(reference)
    imported = import_detector(save_openpcdet(tmp_path / "model.pth", foreign), "openpcdet", "cp-pillar-s4",
                               "nuscenes").detector
    torch.manual_seed(2)
    x = torch.randn(1, 64, 8, 8)
    # OpenPCDet: ZeroPad2d(1), then a padding-0 stride-2 convolution (index 1 of the block)
    theirs = F.conv2d(F.pad(x, (1, 1, 1, 1)), foreign["backbone_2d.blocks.0.1.weight"], stride=2)
    assert torch.allclose(imported.backbone_2d.blocks[0][0](x), theirs, atol=1e-5)


def test_mmengine_metadata_is_read_through_the_allow_list_without_mmengine(tmp_path):
    path = save_mmdet3d(tmp_path / "model.pth", mmdet3d_state(reference_detector("cp-pillar-s4", "mmdet3d")))
    assert "mmengine" not in sys.modules
    checkpoint = read_foreign_checkpoint(path)
    assert checkpoint.layout == "state_dict" and checkpoint.metadata["meta"]["epoch"] == 20
    assert repr(checkpoint.metadata["message_hub"]["log_scalars"]["train/loss"]) == "<dropped metadata>"


def test_the_docs_hold_each_models_key_table():
    text = DOCS.read_text(encoding="utf-8")
    for model in FOREIGN_MODELS.values():
        assert describe_rules(model) in text, model.name


# ----------------------------------------------------------------------------- refused, with reasons
class _MakesAFolder:
    """Unpickling it would create the folder ``ran``."""

    def __reduce__(self):
        return os.mkdir, ("ran",)


def test_a_pickle_naming_a_global_off_the_list_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"hook": _MakesAFolder()}}, tmp_path / "evil.pth")
    with pytest.raises(ForeignCheckpointError, match=r"evil.pth: refused, nothing was unpickled: the file names "
                                                     r"posix.mkdir"):
        import_detector(tmp_path / "evil.pth", "mmdet3d", "cp-voxel", "nuscenes")
    assert not (tmp_path / "ran").exists()


def test_a_truncated_file_is_a_clear_error(tmp_path):
    path = save_openpcdet(tmp_path / "model.pth", openpcdet_state(reference_detector("cp-voxel", "openpcdet")))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ForeignCheckpointError, match=r"model.pth: not a readable checkpoint .*download cut short"):
        import_detector(path, "openpcdet", "cp-voxel", "nuscenes")


def test_a_checkpoint_of_another_architecture_lists_what_does_not_fit(tmp_path):
    pillar = openpcdet_state(reference_detector("cp-pillar-s4", "openpcdet"))
    path = save_openpcdet(tmp_path / "pillar.pth", pillar)
    with pytest.raises(ForeignCheckpointError) as caught:
        import_detector(path, "openpcdet", "cp-voxel", "nuscenes")
    message = str(caught.value)
    assert "pillar.pth: not a openpcdet checkpoint of the model the preset 'cp-voxel' maps" in message
    assert "foreign tensor(s) without an rdd3d counterpart" in message
    assert "vfe.pfn_layers.0.linear.weight (32, 11): no rule of openpcdet:cp-voxel maps it" in message
    assert "backbone_3d.conv_input.0.weight (16, 3, 3, 3, 5): no tensor of the checkpoint maps to it" in message


def test_another_width_is_a_shape_error_naming_both_shapes(tmp_path):
    small = openpcdet_state(reference_detector("cp-voxel-xxs", "openpcdet"))
    path = save_openpcdet(tmp_path / "xxs.pth", small)
    with pytest.raises(ForeignCheckpointError) as caught:
        import_detector(path, "openpcdet", "cp-voxel", "nuscenes")
    message = str(caught.value)
    assert "tensor(s) of another shape" in message and "layout" not in message
    assert ("backbone_3d.conv_input.0.weight (8, 3, 3, 3, 5) -> backbone_3d.conv_input.0.weight: expected "
            "(16, 3, 3, 3, 5)") in message


def test_leftover_keys_are_listed(tmp_path):
    state = openpcdet_state(reference_detector("cp-voxel", "openpcdet"))
    state["dense_head.heads_list.0.iou.1.weight"] = torch.zeros(1, 64, 3, 3)
    path = save_openpcdet(tmp_path / "iou.pth", state)
    with pytest.raises(ForeignCheckpointError, match=r"dense_head.heads_list.0.iou.1.weight \(1, 64, 3, 3\) -> \?: "
                                                     r"the rdd3d model has no such tensor"):
        import_detector(path, "openpcdet", "cp-voxel", "nuscenes")


def test_a_file_of_the_other_framework_names_it(tmp_path):
    path = save_mmdet3d(tmp_path / "mm.pth", mmdet3d_state(reference_detector("cp-voxel", "mmdet3d")))
    with pytest.raises(ForeignCheckpointError, match=r"holds 'state_dict', the layout of mmdet3d checkpoints; "
                                                     r"--from openpcdet expects 'model_state' \(pass --from mmdet3d\)"):
        import_detector(path, "openpcdet", "cp-voxel", "nuscenes")


def test_mmdet3d_metadata_refuses_old_boxes_other_classes_and_another_grid(tmp_path):
    state = mmdet3d_state(reference_detector("cp-voxel", "mmdet3d"))
    old = save_mmdet3d(tmp_path / "old.pth", state, mmdet3d_version="0.17.1")
    with pytest.raises(ForeignCheckpointError, match=r"mmdetection3d 0.17.1, before v1.0's coordinate refactor"):
        import_detector(old, "mmdet3d", "cp-voxel", "nuscenes")
    fine = save_mmdet3d(tmp_path / "fine.pth", state, cfg="voxel_size = [0.075, 0.075, 0.2]")
    with pytest.raises(ForeignCheckpointError, match=r"voxel_size \[0.075, 0.075, 0.2\]; the preset 'cp-voxel' uses "
                                                     r"\[0.1, 0.1, 0.2\]"):
        import_detector(fine, "mmdet3d", "cp-voxel", "nuscenes")
    kitti = save_mmdet3d(tmp_path / "kitti.pth", state, dataset_meta={"classes": ["Pedestrian", "Cyclist", "Car"]})
    with pytest.raises(ForeignCheckpointError, match=r"trained for the classes \['Pedestrian', 'Cyclist', 'Car'\]"):
        import_detector(kitti, "mmdet3d", "cp-voxel", "nuscenes")


def test_unsupported_choices_are_refused_with_what_is_supported():
    with pytest.raises(ForeignCheckpointError, match=r"dataset 'waymo': rdd3d has no Waymo reader"):
        foreign_model("openpcdet", "cp-voxel", "waymo")
    with pytest.raises(ForeignCheckpointError, match=r"no mmdet3d model maps onto the preset 'second'; supported "
                                                     r"presets: \['cp-pillar-s4', 'cp-voxel', 'cp-voxel-v0.075'\]"):
        foreign_model("mmdet3d", "second", "nuscenes")
    with pytest.raises(ForeignCheckpointError, match=r"supported on \['nuscenes'\], not on 'kitti'"):
        foreign_model("openpcdet", "cp-voxel-v0.075", "kitti")


def test_nan_weights_are_refused(tmp_path):
    state = openpcdet_state(reference_detector("cp-voxel", "openpcdet"))
    state["dense_head.shared_conv.0.weight"][0, 0, 0, 0] = float("nan")
    path = save_openpcdet(tmp_path / "nan.pth", state)
    with pytest.raises(ForeignCheckpointError, match=r"nan.pth: 1 of .* weight tensors hold NaN or Inf"):
        import_detector(path, "openpcdet", "cp-voxel", "nuscenes")
