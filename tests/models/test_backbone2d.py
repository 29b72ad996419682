import pytest
import torch

from rdd3d.models.backbones2d import BEVBackbone, BEVBackboneConfig

SMALL = dict(layer_nums=(1, 1), layer_strides=(1, 2), num_filters=(32, 64), upsample_strides=(1, 2),
             num_upsample_filters=(64, 64))


@pytest.mark.parametrize("width, channels", [(1.0, 128), (0.5, 64), (0.25, 32)])
def test_output_shape_and_channels_scale_with_width(width, channels):
    backbone = BEVBackbone(8, BEVBackboneConfig(**SMALL, width=width))
    out = backbone(torch.randn(2, 8, 16, 24))
    assert backbone.out_channels == channels
    assert out.features.shape == (2, channels, 16, 24)
    assert out.stride == 1.0
    assert backbone.blocks[1][0].out_channels == int(64 * width)


def test_centerpoint_nuscenes_config_at_half_width():
    backbone = BEVBackbone(256, BEVBackboneConfig(width=0.5))  # CP-Voxel-S's BEV part
    out = backbone(torch.randn(1, 256, 8, 8))
    assert out.features.shape == (1, 256, 8, 8)
    level_depths = [sum(isinstance(m, torch.nn.Conv2d) for m in block) for block in backbone.blocks]
    assert level_depths == [6, 6]  # strided conv + 5 convs per level


def test_downsampling_deblock_gives_coarser_output_stride():
    config = BEVBackboneConfig(layer_nums=(1, 1, 1), layer_strides=(2, 2, 2), num_filters=(8, 16, 32),
                               upsample_strides=(0.5, 1, 2), num_upsample_filters=(8, 8, 8))
    out = BEVBackbone(4, config)(torch.randn(1, 4, 32, 32))
    assert out.stride == 4.0
    assert out.features.shape == (1, 24, 8, 8)


def test_backward_reaches_input():
    bev = torch.randn(1, 8, 8, 8, requires_grad=True)
    BEVBackbone(8, BEVBackboneConfig(**SMALL, width=0.25))(bev).features.sum().backward()
    assert bev.grad is not None and bev.grad.abs().sum() > 0


def test_bad_configs_and_inputs_are_named():
    with pytest.raises(ValueError, match="same non-zero length"):
        BEVBackboneConfig(layer_nums=(5,), layer_strides=(1, 2))
    with pytest.raises(ValueError, match="different strides"):
        BEVBackboneConfig(upsample_strides=(1, 1))
    with pytest.raises(ValueError, match="divisible"):
        BEVBackbone(8, BEVBackboneConfig(**SMALL))(torch.randn(1, 8, 15, 16))
