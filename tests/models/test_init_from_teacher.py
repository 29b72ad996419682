import pytest
import torch

from rdd3d.models.init_from_teacher import init_student_from_teacher
from rdd3d.models.presets import build_detector


def _trained_looking(detector):
    """Give every tensor (running statistics included) distinct values, so slices are recognisable."""
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in detector.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    return detector


def test_width_student_takes_the_leading_slices():
    teacher = _trained_looking(build_detector("cp-voxel", "synthetic")).state_dict()
    student = build_detector("cp-voxel-xxs", "synthetic")
    result = init_student_from_teacher(student, teacher)
    state = student.state_dict()
    assert set(result.copied) | set(result.sliced) == set(state) and not result.skipped

    conv = "backbone_3d.conv_input.0.weight"  # [C_out, kz, ky, kx, C_in]: 8 -> 4 outputs, 5 inputs kept
    assert state[conv].shape == (4, 3, 3, 3, 5) and teacher[conv].shape == (8, 3, 3, 3, 5)
    assert torch.equal(state[conv], teacher[conv][:4])
    bev = "backbone_2d.blocks.0.0.weight"  # [C_out, C_in, 3, 3]
    assert torch.equal(state[bev], teacher[bev][: state[bev].shape[0], : state[bev].shape[1]])
    mean = "backbone_2d.blocks.0.1.running_mean"
    assert torch.equal(state[mean], teacher[mean][: len(state[mean])])
    heatmap_bias = "head.tasks.0.heatmap.3.bias"  # one per class: same shape, copied whole
    assert heatmap_bias in result.copied and torch.equal(state[heatmap_bias], teacher[heatmap_bias])
    assert conv in result.sliced and bev in result.sliced


def test_resolution_student_inherits_every_tensor_whole():
    teacher = _trained_looking(build_detector("cp-pillar", "synthetic")).state_dict()
    student = build_detector("cp-pillar-v0.64", "synthetic")
    result = init_student_from_teacher(student, teacher)
    assert not result.sliced and len(result.copied) == len(teacher)
    assert all(torch.equal(student.state_dict()[name], teacher[name]) for name in teacher)


def test_unusable_teacher_tensors_are_refused_or_skipped():
    small = build_detector("cp-voxel-xxs", "synthetic").state_dict()
    big = build_detector("cp-voxel", "synthetic")
    before = {name: tensor.clone() for name, tensor in big.state_dict().items()}
    with pytest.raises(ValueError, match=r"backbone_3d.conv_input.0.weight: student shape \(8, 3, 3, 3, 5\) "
                                         r"is larger than the teacher's \(4, 3, 3, 3, 5\)"):
        init_student_from_teacher(big, small)
    assert all(torch.equal(big.state_dict()[name], before[name]) for name in before)  # nothing loaded

    pillar = build_detector("cp-pillar", "synthetic")
    with pytest.raises(ValueError, match="encoder.layers.0.linear.weight: not in the teacher's state dict"):
        init_student_from_teacher(pillar, small)
    ones = torch.ones_like(pillar.head.shared_conv[0].bias)
    result = init_student_from_teacher(pillar, {"head.shared_conv.0.bias": ones}, strict=False)
    assert result.copied == ("head.shared_conv.0.bias",)
    assert "encoder.layers.0.linear.weight" in result.skipped
    assert torch.equal(pillar.head.shared_conv[0].bias, ones)
