import pytest
import torch

from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.models.detector import CenterPoint, DetectorOutput
from rdd3d.models.presets import build_detector, list_presets, preset_config


@pytest.fixture(scope="module")
def frame():
    return SyntheticDataset("val", size=1)[0]


def _inputs(frame):
    return ([torch.from_numpy(frame.points.points)], [torch.from_numpy(frame.boxes.tensor)],
            [torch.from_numpy(frame.labels)])


@pytest.mark.parametrize("name", list_presets())
def test_synthetic_preset_trains_and_decodes(name, frame):
    torch.manual_seed(0)
    detector = build_detector(name, "synthetic")
    points, boxes, labels = _inputs(frame)
    output = detector(points + points)  # a batch of two
    assert isinstance(output, DetectorOutput)
    nx, ny, _ = detector.voxelizer.grid_size
    assert output.bev_features.shape == (
        2, detector.backbone_2d.out_channels, ny / detector.feature_stride, nx / detector.feature_stride)
    assert len(output.predictions) == len(detector.config.head.class_groups)
    for prediction in output.predictions:
        assert prediction.heatmap.shape[-2:] == output.bev_features.shape[-2:]
        assert prediction.velocity is not None
    loss = detector.loss(output, boxes + boxes, labels + labels)
    assert torch.isfinite(loss.total)
    loss.total.backward()
    first_layer = next(detector.parameters())  # the pillar encoder's or the sparse backbone's first weight
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0

    detector.eval()
    detections = detector.decode(detector(points))
    assert len(detections) == 1
    found = detections[0]
    assert found.boxes.shape == (len(found.scores), 9) and found.labels.shape == found.scores.shape
    if len(found.labels):
        assert 0 <= found.labels.min() and found.labels.max() < len(detector.classes)


def test_submodules_are_named_for_distillation_hooks():
    voxel = build_detector("cp-voxel-xxs", "synthetic")
    pillar = build_detector("cp-pillar-v0.64", "synthetic")
    assert [name for name, _ in voxel.named_children()] == ["voxelizer", "encoder", "backbone_3d", "backbone_2d", "head"]
    assert [name for name, _ in pillar.named_children()] == ["voxelizer", "encoder", "scatter", "backbone_2d", "head"]
    assert not list(voxel.voxelizer.parameters())
    assert voxel.feature_stride == 8 and pillar.feature_stride == 1
    assert voxel.voxel_size == (0.2, 0.2, 0.2) and voxel.point_cloud_range == (-41.6, -41.6, -5.0, 41.6, 41.6, 3.0)
    assert pillar.voxel_size == (1.28, 1.28, 8.0) and pillar.point_cloud_range[:2] == (-40.96, -40.96)


def test_teacher_and_student_of_different_pillar_sizes_read_the_same_points(frame):
    points, _, _ = _inputs(frame)
    captured = {}
    maps = {}
    for name in ("cp-pillar", "cp-pillar-v0.64"):
        detector = build_detector(name, "synthetic").eval()
        detector.backbone_2d.register_forward_hook(lambda m, args, out, name=name: captured.__setitem__(name, out))
        with torch.no_grad():
            maps[name] = detector(points).bev_features
        assert torch.equal(captured[name].features, maps[name])  # the hook sees the distillation map
    # Same metric extent, cells twice as large: half the cells along each axis.
    assert maps["cp-pillar"].shape[-1] == 2 * maps["cp-pillar-v0.64"].shape[-1]


def test_max_voxels_follow_train_and_eval_mode(frame):
    points, _, _ = _inputs(frame)
    detector = CenterPoint(preset_config("cp-voxel-xxs", "synthetic", max_voxels_train=100, max_voxels_test=300))
    assert detector.voxelizer(points).coords.shape[0] == 100
    detector.eval()
    assert detector.voxelizer(points).coords.shape[0] == 300


def test_points_with_the_wrong_columns_are_refused():
    detector = build_detector("cp-pillar-v0.64", "synthetic")
    with pytest.raises(ValueError, match=r"sample 1 has points of shape \(10, 4\).*'time_lag'"):
        detector([torch.zeros(10, 5), torch.zeros(10, 4)])


def test_assembled_detector_fits_one_frame(frame):
    """A few optimiser steps on one frame must bring the loss well down: every stage is wired."""
    torch.manual_seed(0)
    detector = build_detector("cp-pillar-v0.64", "synthetic")
    points, boxes, labels = _inputs(frame)
    optimiser = torch.optim.Adam(detector.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = detector.loss(detector(points), boxes, labels).total
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
