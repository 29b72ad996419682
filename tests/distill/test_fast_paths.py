"""The distillation step's cheap paths give what the plain ones give: pooling against ``grid_sample``,
shared voxels and rulebooks against separate ones, and the reduced-precision teacher."""

import copy

import pytest
import torch
import torch.nn.functional as F

from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.base import BEVGeometry
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.precision import teacher_dtype
from rdd3d.distill.rdd import RDDConfig, RDDLoss
from rdd3d.distill.regions import box_grid_points, pool_boxes
from rdd3d.models.detector import shared_voxel_structure
from rdd3d.models.presets import build_detector
from rdd3d.models.sparse import rulebook as rulebooks

GEOMETRY = BEVGeometry((-8.0, -6.0, -3.0, 8.0, 10.0, 1.0), (0.25, 0.25, 4.0), 2.0)  # 0.5 m cells, 32 x 32
SMALL = {"point_cloud_range": (-12.8, -12.8, -5.0, 12.8, 12.8, 3.0)}


@pytest.fixture(scope="module")
def batch():
    frames = SyntheticDataset("train", size=2, seed=3)
    return collate_frames([frames[0], frames[1]])


def test_pooling_reads_and_differentiates_as_grid_sample_does():
    generator = torch.Generator().manual_seed(0)
    feature_map = torch.randn(2, 5, 32, 32, generator=generator, dtype=torch.float64, requires_grad=True)
    # Boxes inside, across the edge and wholly off the map, rotated, in both samples.
    boxes = torch.tensor([[0.3, 2.1, 0.0, 3.0, 1.5, 1.0, 0.4], [7.6, -5.8, 0.0, 2.0, 4.0, 1.0, -1.2],
                          [-9.5, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], [-3.3, 8.8, 0.0, 6.0, 2.5, 1.0, 2.9]],
                         dtype=torch.float64)
    index = torch.tensor([0, 1, 1, 0])
    pooled = pool_boxes(feature_map, GEOMETRY, boxes, index, grid_size=5)  # (4, 5, 5, 5)
    cells = GEOMETRY.metric_to_cells(box_grid_points(boxes, 5))  # (4, 25, 2) column, row
    grid = cells / torch.tensor([32.0, 32.0], dtype=torch.float64) * 2 - 1
    reference = torch.stack([F.grid_sample(feature_map[b:b + 1], grid[k][None, None], align_corners=False)[0, :, 0]
                             for k, b in enumerate(index.tolist())]).unflatten(2, (5, 5))
    torch.testing.assert_close(pooled, reference)
    assert pooled[2].abs().max() == 0  # off the map: zeros
    weights = torch.randn_like(pooled)
    gradient, = torch.autograd.grad((pooled * weights).sum(), feature_map)
    expected, = torch.autograd.grad((reference * weights).sum(), feature_map)
    torch.testing.assert_close(gradient, expected)


def test_shared_structure_builds_each_rulebook_once_and_changes_no_output(batch, monkeypatch):
    torch.manual_seed(0)
    teacher = build_detector("cp-voxel", "synthetic", **SMALL).eval()
    student = build_detector("cp-voxel-xxs", "synthetic", **SMALL).eval()
    with torch.no_grad():
        alone = [model(batch.points).bev_features for model in (student, teacher)]
    built = []
    original = rulebooks._submanifold_rulebook
    monkeypatch.setattr(rulebooks, "_submanifold_rulebook", lambda *a: built.append(1) or original(*a))
    with torch.no_grad(), shared_voxel_structure():
        student_map = student(batch.points).bev_features
        after_student = len(built)
        teacher_map = teacher(batch.points).bev_features
    assert after_student > 0 and len(built) == after_student  # the teacher built none of its own
    torch.testing.assert_close(student_map, alone[0], rtol=0, atol=0)
    torch.testing.assert_close(teacher_map, alone[1], rtol=0, atol=0)
    with torch.no_grad():  # outside the block nothing is shared
        teacher(batch.points)
    assert len(built) > after_student


def test_voxels_are_shared_only_where_neither_voxelizer_dropped_one(batch):
    student = build_detector("cp-voxel-xxs", "synthetic", **SMALL)
    voxelizer = student.voxelizer.train_voxelizer
    with shared_voxel_structure():
        first = voxelizer.voxelize_batch(batch.points)
        assert voxelizer.voxelize_batch(batch.points) is first
        assert voxelizer.voxelize_batch([p.clone() for p in batch.points]) is not first  # other tensors
        capped = type(voxelizer)(voxelizer.voxel_size, voxelizer.point_cloud_range, voxelizer.max_points_per_voxel,
                                 max_voxels=10)
        assert capped.voxelize_batch(batch.points) is not first and len(capped.voxelize_batch(batch.points).coords) == 20
    assert voxelizer.voxelize_batch(batch.points) is not first


def test_sparse_backend_runs_under_autocast_close_to_fp32(batch):
    torch.manual_seed(0)
    model = build_detector("cp-voxel", "synthetic", **SMALL).eval()
    with torch.inference_mode():
        full = model(batch.points).bev_features
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = model(batch.points).bev_features
    assert reduced.dtype == torch.bfloat16
    assert (reduced.float() - full).norm() / full.norm() < 0.03


def test_autocast_training_of_the_sparse_backend_has_gradients(batch):
    torch.manual_seed(0)
    model = build_detector("cp-voxel-xxs", "synthetic", **SMALL).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(batch.points)
    output.bev_features.float().square().mean().backward()
    first = model.backbone_3d.conv_input[0].weight
    assert first.grad is not None and first.grad.dtype == torch.float32 and first.grad.abs().sum() > 0


def test_teacher_precision_names_and_the_reduced_teacher_feeds_fp32_losses(batch):
    assert teacher_dtype("fp32", torch.device("cpu")) is None
    assert teacher_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="teacher_precision must be one of"):
        teacher_dtype("int8", torch.device("cpu"))
    torch.manual_seed(0)
    teacher = build_detector("cp-voxel", "synthetic", **SMALL)
    student = build_detector("cp-voxel-xxs", "synthetic", **SMALL)
    loss = RDDLoss(RDDConfig(), student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, student, [loss], teacher_precision="bf16").train()
    step = distiller.step_views(batch)
    assert step.teacher.taps["bev"].dtype == torch.float32 and not step.teacher.taps["bev"].is_inference()
    terms = distiller(batch)
    sum(terms.values()).backward()
    assert all(torch.isfinite(term) for term in terms.values())
    assert all(parameter.grad is not None for parameter in student.head.parameters())
    assert all(parameter.grad is None for parameter in teacher.parameters())


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_rdd_gradient_reaches_the_student_through_the_kept_pairs_alone(batch, lam):
    torch.manual_seed(0)
    teacher = build_detector("cp-voxel", "synthetic", **SMALL)
    student = build_detector("cp-voxel-xxs", "synthetic", **SMALL)
    loss = RDDLoss(RDDConfig(lam=lam, alpha_logit=0.0), student.backbone_2d.out_channels,
                   teacher.backbone_2d.out_channels)
    distiller = Distiller(teacher, copy.deepcopy(student), [loss], teacher_precision="fp32").train()
    step = distiller.step_views(batch)
    student_map = step.student.taps["bev"]
    feature = loss(step)["rdd/feature"]
    pairs = loss.last_pairs
    kept = pairs.weights > 0
    assert 0 < int(kept.sum()) <= pairs.proposals.num_boxes
    if lam > 0:
        assert int(kept.sum()) < pairs.proposals.num_boxes
    # The term equals the weighted mean over every pair of the disparity it measured (mse distance).
    torch.testing.assert_close(feature, 0.2 * (pairs.weights * pairs.disparity).sum() / pairs.proposals.num_boxes)
    gradient, = torch.autograd.grad(feature, student_map)
    assert gradient.abs().sum() > 0


def test_the_distiller_teacher_reuses_the_training_students_rulebooks(batch, monkeypatch):
    torch.manual_seed(0)
    teacher = build_detector("cp-voxel", "synthetic", **SMALL)
    student = build_detector("cp-voxel-xxs", "synthetic", **SMALL)
    distiller = Distiller(teacher, student, [], teacher_precision="bf16").train()  # student trains, teacher evals
    built = []
    original = rulebooks._submanifold_rulebook
    monkeypatch.setattr(rulebooks, "_submanifold_rulebook", lambda *a: built.append(1) or original(*a))
    with shared_voxel_structure():  # the student alone (its layers on one grid share rulebooks here too)
        student(batch.points)
    alone = len(built)
    built.clear()
    distiller.step_views(batch)
    assert alone > 0 and len(built) == alone  # the teacher built none
