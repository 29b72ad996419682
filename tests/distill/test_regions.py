import math

import pytest
import torch

from rdd3d.distill.base import BEVGeometry
from rdd3d.distill.regions import (
    area_mean, gather_area, gaussian_areas, pool_boxes, pool_boxes_channels_last, resample_to,
)
from rdd3d.models.heads import BEVGrid

FINE = BEVGeometry((-8.0, -8.0, -3.0, 8.0, 8.0, 1.0), (0.25, 0.25, 4.0), 2.0)  # 0.5 m cells, 32 x 32
COARSE = BEVGeometry((-9.0, -7.0, -3.0, 9.0, 9.0, 1.0), (0.5, 0.5, 4.0), 2.0)  # 1 m cells, 16 x 18, another origin


def _ramp(geometry: BEVGeometry, height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W) map of f0 = 1 + 2x - 3y and f1 = x at every cell centre (float64)."""
    cell_x, cell_y = geometry.cell_size
    x = geometry.point_cloud_range[0] + (torch.arange(width, dtype=torch.float64) + 0.5) * cell_x
    y = geometry.point_cloud_range[1] + (torch.arange(height, dtype=torch.float64) + 0.5) * cell_y
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([1 + 2 * xx - 3 * yy, xx])[None]


def test_rotated_box_on_a_linear_ramp_reads_the_ramp_at_the_analytic_sample_points():
    cx, cy, length, width, yaw = 1.0, -2.0, 4.0, 2.0, math.pi / 6
    box = torch.tensor([[cx, cy, 0.0, length, width, 1.0, yaw]], dtype=torch.float64)
    pooled = pool_boxes(_ramp(FINE, 32, 32), FINE, box, torch.tensor([0]), grid_size=3)  # (1, 2, 3, 3)
    assert pooled.shape == (1, 2, 3, 3)
    for row in range(3):
        for column in range(3):
            along, across = (column - 1) * length / 3, (row - 1) * width / 3  # sub-cell centres
            x = cx + along * math.cos(yaw) - across * math.sin(yaw)
            y = cy + along * math.sin(yaw) + across * math.cos(yaw)
            assert pooled[0, 0, row, column].item() == pytest.approx(1 + 2 * x - 3 * y, abs=1e-9)
            assert pooled[0, 1, row, column].item() == pytest.approx(x, abs=1e-9)


def test_the_same_metric_box_reads_the_same_values_through_two_geometries():
    boxes = torch.tensor([[1.0, -2.0, 0.0, 4.0, 2.0, 1.0, 0.7], [-3.0, 2.5, 0.0, 3.0, 1.0, 1.0, -2.0]],
                         dtype=torch.float64)
    index = torch.tensor([0, 0])
    fine = pool_boxes(_ramp(FINE, 32, 32), FINE, boxes, index)
    coarse = pool_boxes(_ramp(COARSE, 16, 18), COARSE, boxes, index)
    torch.testing.assert_close(fine, coarse)


def test_a_single_hot_cell_is_found_at_its_metric_place_in_both_geometries():
    place = (2.25, -1.75)  # a cell centre of the fine map; the coarse cell around it is centred at (2.5, -1.5)
    fine = torch.zeros(1, 1, 32, 32)
    fine[0, 0, int((place[1] + 8) / 0.5), int((place[0] + 8) / 0.5)] = 1.0
    coarse = torch.zeros(1, 1, 16, 18)
    coarse[0, 0, int(-1.5 + 7), int(2.5 + 9)] = 1.0
    box = torch.tensor([[place[0], place[1], 0.0, 4.0, 4.0, 1.0, 0.0]])
    hot_fine = pool_boxes(fine, FINE, box, torch.tensor([0]), grid_size=5)[0, 0]
    assert hot_fine[2, 2] == 1.0 and hot_fine.sum() == 1.0  # samples 0.8 m apart: only the centre sees the cell
    box_at_coarse_centre = torch.tensor([[2.5, -1.5, 0.0, 2.0, 2.0, 1.0, 0.0]])
    assert pool_boxes(coarse, COARSE, box_at_coarse_centre, torch.tensor([0]), grid_size=1).item() == 1.0
    # A quarter cell off the coarse centre along x and y: bilinear weight 0.75 * 0.75.
    assert pool_boxes(coarse, COARSE, box, torch.tensor([0]), grid_size=1).item() == pytest.approx(0.5625)


def test_samples_are_read_in_their_own_batch_element_and_off_map_reads_zero():
    feature_map = torch.stack([torch.full((3, 32, 32), 1.0), torch.full((3, 32, 32), 2.0)])
    boxes = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]] * 3 + [[50.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]])
    pooled = pool_boxes(feature_map, FINE, boxes, torch.tensor([1, 0, 1, 0]))
    assert pooled[0].eq(2).all() and pooled[1].eq(1).all() and pooled[2].eq(2).all()
    assert pooled[3].eq(0).all()
    with pytest.raises(ValueError, match="batch_index reaches 2"):
        pool_boxes(feature_map, FINE, boxes[:1], torch.tensor([2]))


def test_pooling_is_differentiable_and_connected_with_no_boxes():
    feature_map = torch.rand(2, 3, 32, 32, requires_grad=True)
    empty = pool_boxes(feature_map, FINE, torch.zeros(0, 7), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 3, 7, 7)
    empty.sum().backward()
    assert feature_map.grad is not None and feature_map.grad.eq(0).all()
    box = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.3]])
    pool_boxes(feature_map, FINE, box, torch.tensor([1])).sum().backward()
    assert feature_map.grad[1].sum() > 0 and feature_map.grad[0].eq(0).all()


def test_resample_to_another_grid_keeps_a_ramp_and_is_the_identity_on_the_same_grid():
    fine = _ramp(FINE, 32, 32)
    assert resample_to(fine, FINE, FINE, (32, 32)) is fine
    on_coarse = resample_to(fine, FINE, COARSE, (16, 18))
    expected = _ramp(COARSE, 16, 18)
    inside = (slice(None), slice(None), slice(1, 15), slice(2, 16))  # coarse cells whose centres the fine map covers
    torch.testing.assert_close(on_coarse[inside], expected[inside])
    assert on_coarse[..., 0].eq(0).all()  # x = -8.5 m lies off the fine map


def test_gaussian_area_is_the_radius_disc_about_the_centre_cell_cut_to_the_map():
    grid = BEVGrid(x_min=-8.0, y_min=-8.0, cell_x=0.5, cell_y=0.5, height=32, width=32)
    small = [0.2, 0.3, 0.0, 0.5, 0.5, 1.0, 0.0]  # radius min_radius = 2: a 13-cell disc about cell (16, 16)
    corner = [-7.9, -7.9, 0.0, 0.5, 0.5, 1.0, 0.0]  # centre cell (0, 0): a quarter disc of 6 cells
    huge = [0.2, 0.3, 0.0, 1e4, 1e4, 1.0, 0.0]  # an untrained model's box: its area is the whole map
    off_map = [30.0, 0.0, 0.0, 0.5, 0.5, 1.0, 0.0]  # centre clamped onto the last column: half a disc, 9 cells
    area = gaussian_areas(torch.tensor([small, corner, huge, off_map]), grid, gaussian_overlap=0.1, min_radius=2)
    assert area.count.tolist() == [13, 6, 32 * 32, 9]
    assert area.on_map.tolist() == [True, True, True, False]
    first = area.flat_index[area.owner == 0]
    rows, columns = first // 32, first % 32
    assert ((rows - 16) ** 2 + (columns - 16) ** 2).le(4).all() and len(set(first.tolist())) == 13

    feature_map = torch.arange(2 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    values = gather_area(feature_map, area, torch.tensor([1, 0, 1, 0]))  # (A, 1)
    in_second_sample = (area.owner == 0) | (area.owner == 2)
    expected = area.flat_index.float() + 32 * 32 * in_second_sample
    assert torch.equal(values[:, 0], expected)
    means = area_mean(values, area)
    assert means[0] == expected[area.owner == 0].mean() and means[1] == expected[area.owner == 1].mean()


def test_a_scaled_pooling_reads_a_channels_last_map_in_place_and_scales_values_and_gradients():
    contiguous = torch.rand(2, 5, 32, 32, dtype=torch.float64, requires_grad=True)
    channels_last = contiguous.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    boxes = torch.tensor([[1.0, -2.0, 0.0, 4.0, 2.0, 1.0, 0.7], [-3.0, 2.5, 0.0, 3.0, 1.0, 1.0, -2.0]],
                         dtype=torch.float64)
    index = torch.tensor([1, 0])
    plain = pool_boxes_channels_last(contiguous, FINE, boxes, index)  # (2, 49, 5)
    scaled = pool_boxes_channels_last(channels_last, FINE, boxes, index, scale=0.25)
    torch.testing.assert_close(scaled, plain * 0.25)
    plain.sum().backward()
    scaled.sum().backward()
    torch.testing.assert_close(channels_last.grad, contiguous.grad * 0.25)
