"""What the synthetic LiDAR sees in hand-made scenes: occlusion, sparsity, motion, noise, intensity."""

import numpy as np
import pytest

from rdd3d.data.synthetic import CLASS_NAMES, GROUND, Actor, Ground, LidarConfig, Scene, build_object, scan
from rdd3d.data.synthetic.shapes import box
from rdd3d.core.types import Boxes3D

CLEAN = LidarConfig(range_noise_std=0.0, dropout=0.0, num_sweeps=1)
CAR = CLASS_NAMES.index("car")


def _car_parts(seed=0):
    return build_object("car", np.random.default_rng(seed), size=(4.5, 1.9, 1.6))


def _scan(actors, config=CLEAN, ground=None, ego_velocity=(0.0, 0.0), seed=0):
    scene = Scene.compose(ground or Ground.flat(-config.mount_height), actors, ego_velocity)
    return scene, scan(scene, config, np.random.default_rng(seed))


def _wall(x, length=10.0, height=4.0):
    return Actor([box((0, 0, height / 2), (length, 0.3, height), 0.3)], x=x, y=0.0, yaw=np.pi / 2)


def test_object_behind_a_wall_receives_no_points():
    car = Actor(_car_parts(), x=20.0, y=0.0, yaw=0.3, label=CAR)
    _, open_view = _scan([car])
    assert (open_view.owner == 0).sum() > 50
    _, blocked = _scan([car, _wall(10.0)])
    assert (blocked.owner == 0).sum() == 0
    assert (blocked.owner == 1).sum() > 100  # the wall took the rays


def test_points_per_object_fall_with_distance():
    parts = _car_parts()
    counts = [(_scan([Actor(parts, x=d, y=0.0, yaw=0.0, label=CAR)])[1].owner == 0).sum() for d in (8, 16, 32)]
    assert counts[0] > counts[1] > counts[2] > 0
    assert counts[2] < counts[0] / 4  # angular density of returns falls roughly with distance squared


def test_labelled_box_is_tight_and_holds_every_point_of_its_object():
    config = LidarConfig(beams=64, azimuth_resolution_deg=0.1, range_noise_std=0.0, dropout=0.0, num_sweeps=1)
    rng = np.random.default_rng(1)
    actors = [Actor(build_object(name, rng), x=10 * np.cos(a), y=10 * np.sin(a), yaw=a + 0.4, label=label)
              for label, (name, a) in enumerate(zip(CLASS_NAMES, np.linspace(0, 2 * np.pi, 8)))]
    scene, sweep = _scan(actors, config, ground=Ground.sample(rng, -1.84, 0.3, 30.0))
    boxes = Boxes3D(scene.boxes)
    for row, actor_index in enumerate(scene.box_owner):
        own = sweep.points[sweep.owner == actor_index, :3]
        assert len(own) > 20, CLASS_NAMES[row]
        assert boxes.select([row]).contains_points(own, margin=1e-4).all(), CLASS_NAMES[row]
        # tight: seen densely from one side, the points reach within a few cm of the box's top face
        local = boxes.select([row]).points_to_local(own)[:, 0]
        assert local[:, 2].max() > scene.boxes[row, 5] / 2 - 0.1, CLASS_NAMES[row]
    bottoms = scene.boxes[:, 2] - scene.boxes[:, 5] / 2
    np.testing.assert_allclose(bottoms, scene.ground.height(scene.boxes[:, :2]), atol=1e-6)


def test_earlier_sweeps_see_moving_objects_where_they_were():
    config = LidarConfig(range_noise_std=0.0, dropout=0.0, num_sweeps=3, sweep_interval=0.1)
    car = Actor(_car_parts(), x=12.0, y=6.0, yaw=0.0, velocity=(10.0, 0.0), label=CAR)
    scene, sweeps = _scan([car], config)
    on_car = sweeps.points[sweeps.owner == 0]
    lag = on_car[:, 4]
    np.testing.assert_allclose(np.unique(lag), [0.0, 0.1, 0.2], rtol=1e-6)
    key_box = Boxes3D(scene.boxes[:, :7])
    moved_back = on_car[:, :3] + np.stack([10.0 * lag, 0 * lag, 0 * lag], axis=1)
    assert key_box.contains_points(moved_back, margin=1e-4).all()
    earlier = lag > 0
    assert not key_box.contains_points(on_car[earlier, :3]).all()  # 1-2 m behind: visibly trailing


def test_ego_motion_is_compensated():
    config = LidarConfig(range_noise_std=0.0, dropout=0.0, num_sweeps=3, sweep_interval=0.1)
    parked = Actor(_car_parts(), x=10.0, y=-5.0, yaw=1.0, label=CAR)
    scene, sweeps = _scan([parked], config, ego_velocity=(8.0, 0.0))
    on_car = sweeps.points[sweeps.owner == 0]
    assert len(np.unique(on_car[:, 4])) == 3
    assert Boxes3D(scene.boxes[:, :7]).contains_points(on_car[:, :3], margin=1e-4).all()
    ground = sweeps.points[sweeps.owner == GROUND]
    np.testing.assert_allclose(ground[:, 2], -config.mount_height, atol=1e-6)
    np.testing.assert_allclose(scene.sensor_origin(0.2, config.mount_height), [-1.6, 0.0, 0.0])


def test_range_noise_is_bounded_and_dropout_thins_returns():
    noisy = LidarConfig(range_noise_std=0.05, dropout=0.0, num_sweeps=1, azimuth_resolution_deg=1.0)
    _, sweep = _scan([], noisy)
    # flat ground at -h: a point at distance r along a ray of elevation e has z = r sin(e)
    distance = np.linalg.norm(sweep.points[:, :3], axis=1)
    true_distance = noisy.mount_height / (-sweep.points[:, 2] / distance)
    error = distance - true_distance
    assert np.abs(error).max() <= 3 * 0.05 + 1e-4
    assert error.std() == pytest.approx(0.05, rel=0.15)

    full = len(_scan([], LidarConfig(dropout=0.0, num_sweeps=1, azimuth_resolution_deg=1.0))[1].points)
    thinned = len(_scan([], LidarConfig(dropout=0.5, num_sweeps=1, azimuth_resolution_deg=1.0))[1].points)
    assert 0.45 < thinned / full < 0.55


def test_intensity_follows_reflectivity_and_falls_with_range():
    def mean_intensity(reflectivity, distance):
        target = Actor([box((0, 0, 1), (0.5, 4, 2), reflectivity)], x=distance, y=0.0, yaw=0.0)
        _, sweep = _scan([target])
        values = sweep.points[sweep.owner == 0, 3]
        assert ((values >= 0) & (values <= 255)).all()
        return values.mean()

    assert mean_intensity(0.9, 10) > 2 * mean_intensity(0.2, 10)
    assert mean_intensity(0.5, 10) > mean_intensity(0.5, 40)


@pytest.mark.parametrize("name, size", [("car", (4.6, 1.95, 1.73)), ("bus", (11.0, 2.94, 3.47))])
def test_a_vehicle_seen_side_on_is_taller_at_one_end(name, size):
    # What tells a heading from its opposite: seen from the side, the top of the returns over the front quarter
    # and over the back quarter differ (a car's low hood, a bus's raised front roof). The box stays tight.
    actor = Actor(build_object(name, np.random.default_rng(3), size=size), x=0.0, y=12.0, yaw=0.0, label=0)
    scene, sweep = _scan([actor])
    np.testing.assert_allclose(scene.boxes[0, 3:6], size, atol=1e-9)
    local = Boxes3D(scene.boxes).points_to_local(sweep.points[sweep.owner == 0, :3])[:, 0]
    front, back = local[local[:, 0] > size[0] / 4, 2].max(), local[local[:, 0] < -size[0] / 4, 2].max()
    assert abs(back - front) > 0.3, (front, back)
