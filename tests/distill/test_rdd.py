import copy
import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_map

from rdd3d.data.collate import collate_frames
from rdd3d.data.synthetic import SyntheticDataset
from rdd3d.distill.base import BEVGeometry, DistillStep, ModelView
from rdd3d.distill.distiller import Distiller
from rdd3d.distill.rdd import RDDConfig, RDDLoss, normalise_disparity, selection_weights
from rdd3d.distill.regions import pool_boxes
from rdd3d.models.heads import Detections
from rdd3d.models.presets import build_detector

TEACHER = BEVGeometry((-8.0, -8.0, -3.0, 8.0, 8.0, 1.0), (0.25, 0.25, 4.0), 2.0)  # 0.5 m cells, 32 x 32
# 1 m cells, 16 rows x 18 columns, another origin; cell centres at x = -7.75 + k, y = -6.75 + k
STUDENT = BEVGeometry((-8.25, -7.25, -3.0, 9.75, 8.75, 1.0), (0.5, 0.5, 4.0), 2.0)
TEACHER_SIZE, STUDENT_SIZE = (32, 32), (16, 18)


class _Decoded(nn.Module):
    """Stands in for a detector whose output is already its decoded detections."""

    def decode(self, output):
        return output


def _detections(*centres, size=0.5):
    boxes = torch.tensor([[x, y, 0.0, size, size, 1.0, 0.0] for x, y in centres]).reshape(-1, 7)
    return [Detections(boxes, torch.full((len(centres),), 0.9), torch.zeros(len(centres), dtype=torch.long))]


def _view(bev, heatmap, detections, geometry):
    return ModelView(_Decoded(), detections, {"bev": bev, "head": (heatmap,)}, geometry)


def _identity_adapter(loss: RDDLoss) -> RDDLoss:
    conv, norm, _ = loss.adapter
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels)[:, :, None, None])
        norm.running_var.fill_(1 - norm.eps)  # so that eval-mode BatchNorm divides by exactly 1
    return loss.eval()


def _rdd(channels=4, **options) -> RDDLoss:
    return _identity_adapter(RDDLoss(RDDConfig(**options), channels, channels))


def _grid_cell(geometry, x, y):
    column, row = geometry.metric_to_cells(torch.tensor([x, y])).long().tolist()
    return row, column


# --- the inner selection -----------------------------------------------------------------------

def test_threshold_keeps_exactly_the_pairs_at_or_above_lambda_and_all_at_zero():
    normalised = normalise_disparity(torch.rand(200, generator=torch.Generator().manual_seed(0)) * 3)
    assert normalised.max() == 1.0
    for lam in (0.1, 0.5, 0.9):
        weights = selection_weights(normalised, RDDConfig(lam=lam))
        assert torch.equal(weights.bool(), normalised >= lam)
        assert 0 < weights.sum() < 200
    assert selection_weights(normalised, RDDConfig(lam=0.0)).eq(1).all()
    agreeing = normalise_disparity(torch.zeros(5))  # no disparity anywhere: d̃ = 0, nothing above λ
    assert selection_weights(agreeing, RDDConfig()).eq(0).all()
    assert selection_weights(agreeing, RDDConfig(lam=0.0)).eq(1).all()


def test_top_ratio_keeps_the_ceiling_of_rho_p_most_disparate_pairs():
    normalised = normalise_disparity(torch.rand(7, generator=torch.Generator().manual_seed(1)))
    weights = selection_weights(normalised, RDDConfig(selection="topk_ratio", topk_ratio=0.6))
    assert weights.sum() == math.ceil(0.6 * 7) == 5
    assert normalised[weights.bool()].min() > normalised[~weights.bool()].max()
    assert selection_weights(normalised[:0], RDDConfig(selection="topk_ratio")).numel() == 0


def test_soft_and_all_selections():
    normalised = torch.tensor([0.0, 0.05, 0.1, 0.55, 1.0])
    soft = selection_weights(normalised, RDDConfig(selection="soft", lam=0.1))
    torch.testing.assert_close(soft, torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0]))
    assert selection_weights(normalised, RDDConfig(selection="all", lam=0.5)).eq(1).all()


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="RDDConfig.selection must be one of"):
        RDDConfig(selection="best")
    with pytest.raises(ValueError, match="RDDConfig.lam must be in"):
        RDDConfig(lam=1.0)
    with pytest.raises(ValueError, match="RDDConfig.use_feature"):
        RDDConfig(use_feature=False, use_logit=False)
    with pytest.raises(ValueError, match="RDDConfig.anchor_box_weight must be >= 0, got -1"):
        RDDConfig(anchor_box_weight=-1.0)
    with pytest.raises(ValueError, match="RDDConfig.adapter_precision must be one of"):
        RDDConfig(adapter_precision="fp16")


# --- pairs and losses on hand-made maps ----------------------------------------------------------

def test_bilateral_pairs_read_teacher_and_student_at_the_same_metric_box_across_resolutions():
    hot = torch.tensor([8.0, 0.0, 0.0, 0.0])
    teacher_place, student_place = (2.25, -1.75), (-4.75, 3.25)  # cell centres in both geometries
    teacher_bev = torch.zeros(1, 4, *TEACHER_SIZE)
    student_bev = torch.zeros(1, 4, *STUDENT_SIZE)
    for x, y in (teacher_place, student_place):
        teacher_bev[(0, slice(None), *_grid_cell(TEACHER, x, y))] = hot
        student_bev[(0, slice(None), *_grid_cell(STUDENT, x, y))] = hot
    heat_t, heat_s = torch.zeros(1, 1, *TEACHER_SIZE), torch.zeros(1, 1, *STUDENT_SIZE)
    step = DistillStep(None, _view(teacher_bev, heat_t, _detections(teacher_place), TEACHER),
                       _view(student_bev, heat_s, _detections(student_place), STUDENT))
    loss = _rdd(grid_size=1)
    pairs = loss.pair_disparities(step)
    assert pairs.num_teacher == 1 and pairs.from_teacher.tolist() == [True, False]
    assert pairs.proposals.boxes[:, :2].tolist() == [list(teacher_place), list(student_place)]
    assert pairs.disparity.tolist() == [0.0, 0.0]

    # Reading the student's map through the teacher's geometry misses both hot cells.
    step.student = dataclasses.replace(step.student, geometry=TEACHER)
    assert (loss.pair_disparities(step).disparity > 0).all()


def _teacher_with_one_box():
    """A teacher with one detection, 0.5 m wide at (0.2, 0.3) m: centre cell (row 16, column 16), radius 2."""
    torch.manual_seed(0)
    return _view(torch.rand(1, 4, *TEACHER_SIZE), torch.randn(1, 2, *TEACHER_SIZE), _detections((0.2, 0.3)), TEACHER)


def test_logit_loss_sees_exactly_the_gaussian_area_of_each_proposal():
    teacher = _teacher_with_one_box()
    heatmap = teacher.taps["head"][0]
    loss = _rdd(selection="all")

    def logit_term(student_heatmap):
        student = _view(teacher.taps["bev"], student_heatmap, _detections(), TEACHER)
        return loss(DistillStep(None, teacher, student))["rdd/logit"].item()

    assert logit_term(heatmap.clone()) == 0.0
    # Box at (0.2, 0.3), 0.5 m: centre cell (row 16, column 16), radius min_radius = 2, a 13-cell disc.
    outside, inside = heatmap.clone(), heatmap.clone()
    outside[0, 0, 16, 19] += 5.0  # 3 cells off the centre
    outside[0, 1, 18, 18] += 5.0  # distance sqrt(8) > 2
    assert logit_term(outside) == 0.0
    inside[0, 1, 17, 17] = 10.0  # distance sqrt(2)
    change = (torch.sigmoid(torch.tensor(10.0)) - heatmap[0, 1, 17, 17].sigmoid()).abs()
    # α2 · |Δ| / (cells · classes), one pair
    assert logit_term(inside) == pytest.approx(0.2 * change.item() / (13 * 2), rel=1e-5)
    loss = _rdd(selection="all", logit_norm="l1")  # the literal L1 norm: the sum over cells and classes
    assert logit_term(outside) == 0.0
    assert logit_term(inside) == pytest.approx(0.2 * change.item(), rel=1e-5)


def test_logit_loss_resamples_a_student_heatmap_of_another_resolution_onto_the_teachers_grid():
    teacher = _teacher_with_one_box()
    base = torch.randn(1, 2, *STUDENT_SIZE)
    loss = _rdd(selection="all")

    def logit_term(student_heatmap):
        student = _view(torch.rand(1, 4, *STUDENT_SIZE), student_heatmap, _detections(), STUDENT)
        return loss(DistillStep(None, teacher, student))["rdd/logit"].item()

    reference = logit_term(base)
    far, near = base.clone(), base.clone()
    far[0, :, 2, 2] += 5.0
    assert logit_term(far) == reference
    near[(0, slice(None), *_grid_cell(STUDENT, 0.2, 0.3))] += 5.0
    assert logit_term(near) != reference


def test_feature_term_weighs_each_pair_by_its_selection():
    torch.manual_seed(0)
    centres = [(-5.0 + 2.5 * i, 1.0) for i in range(5)]
    teacher = _view(torch.rand(2, 4, *TEACHER_SIZE) * 4, torch.randn(2, 1, *TEACHER_SIZE),
                    _detections(*centres[:3]) + _detections(), TEACHER)
    student = _view(torch.rand(2, 4, *STUDENT_SIZE) * 4, torch.randn(2, 1, *STUDENT_SIZE),
                    _detections() + _detections(*centres[3:]), STUDENT)
    step = DistillStep(None, teacher, student)
    for lam, selected in ((0.0, range(5, 6)), (0.5, range(1, 5))):  # all pairs; some but not all
        loss = _rdd(lam=lam)
        terms = loss(step)
        pairs = loss.last_pairs
        assert pairs.proposals.batch_index.tolist() == [0, 0, 0, 1, 1]
        assert torch.equal(pairs.weights.bool(), pairs.normalised >= lam) and int(pairs.weights.sum()) in selected
        expected = 0.2 * (pairs.weights * pairs.disparity).sum() / 5
        torch.testing.assert_close(terms["rdd/feature"], expected)
        # Normalised by the selected weight instead of M + N: the mean over the selected pairs, whatever λ keeps.
        by_weight = _rdd(lam=lam, term_normaliser="weight")
        torch.testing.assert_close(by_weight(step)["rdd/feature"],
                                   0.2 * (pairs.weights * pairs.disparity).sum() / pairs.weights.sum())
        torch.testing.assert_close(by_weight(step)["rdd/feature"] * pairs.weights.sum() / 5, expected)
    # The literal norm over a whole 7 x 7 patch is sqrt(49 · d_i).
    l2 = _rdd(feature_distance="l2", selection="all")
    torch.testing.assert_close(l2(step)["rdd/feature"], 0.2 * (7 * l2.last_pairs.disparity.sqrt()).sum() / 5)
    # τ²·KL(R̂^T || R̂^S) per grid position, computed independently from the pooled maps' softmax.
    kl = _rdd(feature_distance="kl", selection="all")
    term = kl(step)["rdd/feature"]
    proposals = kl.last_pairs.proposals  # the identity adapter leaves the (positive) student map as it is
    teacher_patches, student_patches = (
        torch.softmax(pool_boxes(view.taps["bev"], view.geometry, proposals.boxes, proposals.batch_index) / 4, dim=1)
        for view in (teacher, student))
    per_pair = torch.stack([
        torch.nn.functional.kl_div(s.log().permute(1, 2, 0).reshape(-1, 4), t.permute(1, 2, 0).reshape(-1, 4),
                                   reduction="batchmean")
        for s, t in zip(student_patches, teacher_patches)])
    torch.testing.assert_close(term, 0.2 * 16 * per_pair.sum() / 5)
    assert term > 0


def test_no_proposals_give_zero_terms_still_connected_to_the_adapter_and_student():
    teacher = _view(torch.rand(1, 4, *TEACHER_SIZE), torch.randn(1, 2, *TEACHER_SIZE), _detections(), TEACHER)
    student_bev = torch.rand(1, 3, *STUDENT_SIZE, requires_grad=True)
    student_heat = torch.randn(1, 2, *STUDENT_SIZE, requires_grad=True)
    loss = RDDLoss(RDDConfig(), student_channels=3, teacher_channels=4)
    terms = loss(DistillStep(None, teacher, _view(student_bev, student_heat, _detections(), STUDENT)))
    assert set(terms) == {"rdd/feature", "rdd/logit"}
    assert all(term.item() == 0.0 for term in terms.values())
    sum(terms.values()).backward()
    assert all(parameter.grad is not None for parameter in loss.adapter.parameters())
    assert student_bev.grad is not None and student_heat.grad is not None


def test_ablation_switches():
    teacher = _teacher_with_one_box()
    student_bev = torch.rand(1, 4, *TEACHER_SIZE, requires_grad=True)
    student = _view(student_bev, torch.randn(1, 2, *TEACHER_SIZE), _detections(), TEACHER)
    logit_only = _rdd(use_feature=False)
    terms = logit_only(DistillStep(None, teacher, student))
    assert set(terms) == {"rdd/adapter", "rdd/logit"}
    terms["rdd/adapter"].backward()  # trains ψ, never the student's map
    assert student_bev.grad is None and logit_only.adapter[0].weight.grad is not None
    assert set(_rdd(use_logit=False)(DistillStep(None, teacher, student))) == {"rdd/feature"}


# --- on real detectors through the distiller -----------------------------------------------------

# Half the synthetic range (maps of a quarter of the cells) and fewer decoded candidates keep these fast.
SMALL = {"head.decode.max_per_task": 40, "point_cloud_range": (-20.48, -20.48, -5.0, 20.48, 20.48, 3.0)}


@pytest.fixture(scope="module")
def batch():
    return collate_frames([SyntheticDataset("val", size=1)[0]])


def _distiller(teacher_preset, student_preset, seed=0, teacher_precision="auto"):
    torch.manual_seed(seed)
    teacher = build_detector(teacher_preset, "synthetic", **SMALL)
    student = (copy.deepcopy(teacher) if student_preset is None
               else build_detector(student_preset, "synthetic", **SMALL))
    loss = RDDLoss(RDDConfig(), student.backbone_2d.out_channels, teacher.backbone_2d.out_channels)
    return Distiller(teacher, student, [loss], teacher_precision=teacher_precision), loss


def test_student_equal_to_teacher_gives_zero_rdd_terms(batch):
    distiller, loss = _distiller("cp-pillar-v0.64", None, teacher_precision="fp32")
    _identity_adapter(loss)
    distiller.eval()  # the student's BatchNorm as the teacher's
    terms = distiller(batch)
    assert loss.last_pairs.proposals.num_boxes > 0
    # Zero up to rounding: the teacher's 2D convolutions run channels-last, the student's copy does not.
    assert abs(terms["rdd/feature"].item()) < 1e-8 and abs(terms["rdd/logit"].item()) < 1e-8
    loss.config = dataclasses.replace(loss.config, feature_distance="kl")
    assert distiller(batch)["rdd/feature"].abs().item() < 1e-6


def test_gradients_reach_student_and_adapter_never_teacher_across_resolutions(batch):
    distiller, loss = _distiller("cp-pillar", "cp-pillar-v0.64")  # 0.64 m teacher cells, 1.28 m student cells
    distiller.train()
    terms = distiller(batch)
    pairs = loss.last_pairs
    assert pairs.num_teacher > 0 and pairs.proposals.num_boxes > pairs.num_teacher and pairs.weights.sum() > 0
    (terms["rdd/feature"] + terms["rdd/logit"]).backward()
    student = distiller.student
    for module in (student.backbone_2d, student.head.tasks[0].heatmap, loss.adapter):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert student.head.tasks[0].center[0].weight.grad is None  # only the heatmaps are distilled


def test_a_bf16_adapter_gives_the_fp32_terms_and_gradients_to_bf16_rounding(batch):
    distiller, fp32_loss = _distiller("cp-pillar", "cp-pillar-v0.64")
    distiller.train()
    step = distiller.step_views(batch)
    results = {}
    for precision in ("fp32", "bf16"):
        loss = copy.deepcopy(fp32_loss)
        loss.config = dataclasses.replace(loss.config, adapter_precision=precision)
        student_map = step.student.taps["bev"].detach().requires_grad_(True)
        heads = tree_map(lambda value: value.detach() if isinstance(value, torch.Tensor) else value,
                         step.student.taps["head"])
        view = ModelView(step.student.model, step.student.output, {"bev": student_map, "head": heads},
                         step.student.geometry)
        terms = loss(DistillStep(batch, step.teacher, view))
        sum(terms.values()).backward()
        results[precision] = (terms, student_map.grad, loss.adapter[0].weight.grad, loss.last_pairs.weights)
    (terms32, map_grad32, psi_grad32, kept32), (terms16, map_grad16, psi_grad16, kept16) = results.values()
    assert torch.equal(kept32, kept16)  # the same pairs selected
    assert not torch.equal(map_grad16, map_grad32)  # and the setting does change the arithmetic
    for name in terms32:
        torch.testing.assert_close(terms16[name], terms32[name], rtol=2e-2, atol=0)
    for grad16, grad32 in ((map_grad16, map_grad32), (psi_grad16, psi_grad32)):
        assert grad32.abs().sum() > 0
        assert (grad16 - grad32).norm() <= 3e-2 * grad32.norm()
