import pytest
import torch

from rdd3d.data.kitti import KittiDataset
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.data.transforms import crop_to_range
from rdd3d.models.detector import Detector, DetectorOutput
from rdd3d.models.heads import AnchorPrediction
from rdd3d.models.presets import ANCHOR_PRESETS, build_detector, list_presets, preset_config


@pytest.fixture(scope="module")
def frame():
    return SyntheticDataset("val", size=1)[0]


def _inputs(frame):
    return ([torch.from_numpy(frame.points.points)], [torch.from_numpy(frame.boxes.tensor)],
            [torch.from_numpy(frame.labels)])


CENTER_PRESETS = [name for name in list_presets("synthetic") if name not in ANCHOR_PRESETS]


@pytest.mark.parametrize("name", CENTER_PRESETS)
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


@pytest.mark.parametrize("name", ANCHOR_PRESETS)
def test_synthetic_anchor_preset_trains_and_decodes(name, frame):
    torch.manual_seed(0)
    detector = build_detector(name, "synthetic")
    points, boxes, labels = _inputs(frame)
    output = detector(points + points)
    assert isinstance(output.predictions, AnchorPrediction)
    anchor_types = detector.head.num_anchor_types  # 7 classes x 2 rotations
    assert anchor_types == 14
    assert output.predictions.cls_logits.shape == (2, anchor_types * 7, *output.bev_features.shape[-2:])
    loss = detector.loss(output, boxes + boxes, labels + labels)  # (M, 9) boxes: velocity is not regressed
    assert torch.isfinite(loss.total) and set(loss.terms()) == {"classification", "regression", "direction"}
    loss.total.backward()
    assert next(detector.parameters()).grad.abs().sum() > 0
    detector.eval()
    found = detector.decode(detector(points))[0]
    assert found.boxes.shape == (len(found.scores), 7)


@pytest.mark.parametrize("name", ANCHOR_PRESETS)
def test_kitti_anchor_preset_trains_on_the_real_frame(name, real_data):
    frame = KittiDataset(real_data / "kitti", frame_ids=["000008"])[0]
    torch.manual_seed(0)
    detector = build_detector(name, "kitti")
    frame = crop_to_range(frame, detector.point_cloud_range)
    assert len(frame.boxes) == 6  # the six cars
    output = detector([torch.from_numpy(frame.points.points)])
    targets = detector.head.targets(output.bev_features.shape[-2:], [torch.from_numpy(frame.boxes.tensor)],
                                    [torch.from_numpy(frame.labels)])
    assert (targets.positive & (targets.labels == 0)).sum() >= 6  # every car (label 0) gets at least its best anchor
    loss = detector.loss(output, [torch.from_numpy(frame.boxes.tensor)], [torch.from_numpy(frame.labels)])
    loss.total.backward()
    assert torch.isfinite(loss.total) and next(detector.parameters()).grad.abs().sum() > 0


def test_anchor_presets_are_offered_where_the_dataset_has_anchors():
    assert set(ANCHOR_PRESETS) <= set(list_presets("kitti")) and set(ANCHOR_PRESETS) <= set(list_presets("synthetic"))
    assert not set(ANCHOR_PRESETS) & set(list_presets("nuscenes"))
    with pytest.raises(ValueError, match="'second' \\(anchor head\\) is offered on the datasets"):
        build_detector("second", "nuscenes")
    second = preset_config("second-s", "kitti")
    assert second.backbone_3d == "voxel" and second.backbone_3d_width == 0.75 and second.backbone_2d.width == 0.5
    pillars = preset_config("pointpillars-xs", "kitti")
    assert pillars.voxel_size[:2] == (0.16, 0.16) and pillars.point_cloud_range[:2] == (0.0, -39.68)
    assert pillars.pillar_filters == (32,) and pillars.head.decode.nms.kind == "nearest_bev"


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
    detector = Detector(preset_config("cp-voxel-xxs", "synthetic", max_voxels_train=100, max_voxels_test=300))
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
