import numpy as np
import pytest

from rdd3d.data import transforms
from rdd3d.core.types import Boxes3D, ClassTable, Frame, PointCloud


def _frame_with_points_in_boxes(seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    boxes = np.array(
        [[10.0, 4.0, 0.8, 4.5, 1.9, 1.6, 0.4, 3.0, -1.0],
         [-6.0, -12.0, 0.9, 0.7, 0.7, 1.8, -2.0, 0.5, 0.5],
         [20.0, -3.0, 1.5, 10.0, 2.8, 3.2, 2.9, 0.0, 0.0]],
        dtype=np.float32,
    )
    box_set = Boxes3D(boxes)
    # Points uniformly inside each box (shrunk a little so float error cannot push them out) plus clutter.
    local = rng.uniform(-0.49, 0.49, size=(3, 200, 3)) * boxes[:, None, 3:6]
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    world = np.stack(
        [local[..., 0] * cos - local[..., 1] * sin, local[..., 0] * sin + local[..., 1] * cos, local[..., 2]], -1
    ) + boxes[:, None, :3]
    clutter = rng.uniform(-40, 40, size=(500, 3))
    xyz = np.concatenate([world.reshape(-1, 3), clutter])
    points = np.concatenate([xyz, rng.uniform(0, 1, size=(len(xyz), 1))], axis=1)
    return Frame("t", PointCloud(points), box_set, np.array([0, 1, 0]), ClassTable(("car", "pedestrian")))


def _membership(frame: Frame) -> np.ndarray:
    return frame.boxes.contains_points(frame.points.xyz)


GEOMETRIC = [
    lambda f: transforms.flip(f, "x"),
    lambda f: transforms.flip(f, "y"),
    lambda f: transforms.rotate(f, 0.7),
    lambda f: transforms.rotate(f, -2.5),
    lambda f: transforms.scale(f, 1.04),
]


@pytest.mark.parametrize("transform", GEOMETRIC)
def test_points_stay_inside_their_boxes(transform):
    frame = _frame_with_points_in_boxes()
    before = _membership(frame)
    assert before[:600].any(axis=1).all()
    after = _membership(transform(frame))
    np.testing.assert_array_equal(before, after)


def test_flip_x_mirrors_heading_and_velocity():
    frame = _frame_with_points_in_boxes()
    flipped = transforms.flip(frame, "x").boxes.tensor[0]
    assert flipped[1] == pytest.approx(-4.0)
    assert flipped[6] == pytest.approx(-0.4)
    assert flipped[8] == pytest.approx(1.0)


def test_rotation_turns_velocity_with_the_scene():
    frame = _frame_with_points_in_boxes()
    rotated = transforms.rotate(frame, np.pi / 2).boxes.tensor[0]
    np.testing.assert_allclose(rotated[[0, 1]], [-4.0, 10.0], atol=1e-5)
    np.testing.assert_allclose(rotated[[7, 8]], [1.0, 3.0], atol=1e-5)


def test_random_augmentation_is_consistent_and_reproducible():
    frame = _frame_with_points_in_boxes()
    config = transforms.AugmentationConfig()
    first = transforms.augment(frame, config, np.random.default_rng(3))
    second = transforms.augment(frame, config, np.random.default_rng(3))
    np.testing.assert_array_equal(first.points.points, second.points.points)
    # Shuffling reorders points, so compare per-box point counts instead of row-wise membership.
    np.testing.assert_array_equal(_membership(frame).sum(0), _membership(first).sum(0))


def test_crop_drops_points_and_boxes_outside_range():
    frame = _frame_with_points_in_boxes()
    cropped = transforms.crop_to_range(frame, [-15, -15, -5, 15, 15, 5])
    assert (np.abs(cropped.points.xyz[:, :2]) < 15).all()
    assert len(cropped.boxes) == 2  # the box at x=20 is gone
    np.testing.assert_array_equal(cropped.labels, [0, 1])
