"""mmdetection3d v1.x info .pkl files: converted to our records by a restricted unpickler that refuses
anything but plain containers and NumPy arrays/scalars."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from rdd3d.data.nuscenes import (
    InfoFileError, NuScenesDataset, UnsafePickleError, load_infos, read_mmdet3d_infos, restricted_load,
)

KEY_NAME = "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
SWEEP_NAME = "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927597802.pcd.bin"
MMDET3D_CATEGORIES = {name: label for label, name in enumerate(
    ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle", "pedestrian", "traffic_cone",
     "barrier"))} | {"animal": -1}


def rotation_z(angle: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1.0]])


def pose(angle: float, translation) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation_z(angle), translation
    return matrix


LIDAR2EGO = pose(-math.pi / 2, [0.94, 0.0, 1.84])
KEY_EGO2GLOBAL = pose(0.4, [411.3, 1180.9, 0.0])
SWEEP_EGO2GLOBAL = pose(0.39, [410.9, 1180.7, 0.0])


def mmdet3d_info() -> dict:
    """One sample as mmdetection3d's update_infos_to_v2 writes it: plain dicts, lists and NumPy values."""
    sweep_to_key = np.linalg.inv(KEY_EGO2GLOBAL @ LIDAR2EGO) @ SWEEP_EGO2GLOBAL @ LIDAR2EGO
    rotation, translation = sweep_to_key[:3, :3], sweep_to_key[:3, 3]
    lidar2sensor = np.eye(4)  # mmdetection3d: [R^T, -R^T t] of the sweep->key ("sensor2lidar") transform
    lidar2sensor[:3, :3], lidar2sensor[:3, 3] = rotation.T, -rotation.T @ translation
    return {
        "metainfo": {"categories": MMDET3D_CATEGORIES, "dataset": "nuscenes", "version": "v1.0-mini",
                     "info_version": "1.1"},
        "data_list": [{
            "sample_idx": 0, "token": "ca9a282c9e77460f8360f564131a8af5", "timestamp": 1532402927.647951,
            "ego2global": KEY_EGO2GLOBAL.tolist(),
            "lidar_points": {"num_pts_feats": 5, "lidar_path": KEY_NAME, "lidar2ego": LIDAR2EGO.tolist()},
            "lidar_sweeps": [{
                "lidar_points": {"lidar_path": f"./data/nuscenes/sweeps/LIDAR_TOP/{SWEEP_NAME}",
                                 "lidar2ego": LIDAR2EGO.tolist(), "lidar2sensor": lidar2sensor.astype(np.float32).tolist()},
                "ego2global": SWEEP_EGO2GLOBAL.tolist(), "timestamp": 1532402927.597802, "sample_data_token": "sd"}],
            "instances": [
                {"bbox_3d": [10.0, 2.0, -0.8, 4.5, 1.9, 1.6, 0.3], "bbox_label": 0, "bbox_label_3d": 0,
                 "velocity": [1.5, -0.5], "num_lidar_pts": np.int64(30), "num_radar_pts": np.int64(2),
                 "bbox_3d_isvalid": np.bool_(True)},
                {"bbox_3d": [5.0, -3.0, -1.2, 0.9, 0.6, 0.7, 0.0], "bbox_label": -1, "bbox_label_3d": -1,
                 "velocity": [0.0, 0.0], "num_lidar_pts": np.int64(4), "num_radar_pts": np.int64(0),
                 "bbox_3d_isvalid": np.bool_(True)},
                {"bbox_3d": [-6.0, 8.0, -1.0, 0.7, 0.6, 1.8, 2.0], "bbox_label": 7, "bbox_label_3d": 7,
                 "velocity": np.array([np.nan, np.nan]), "num_lidar_pts": np.int64(0), "num_radar_pts": np.int64(1),
                 "bbox_3d_isvalid": np.bool_(True)},
            ],
        }],
    }


def write_pickle(path: Path, payload, protocol: int) -> Path:
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 5])  # 2: mmengine's default; 5: NumPy's out-of-band path
def test_mmdet3d_info_becomes_our_records(tmp_path, protocol):
    infos = read_mmdet3d_infos(write_pickle(tmp_path / "nuscenes_infos_val.pkl", mmdet3d_info(), protocol))
    assert infos.version == "v1.0-mini" and len(infos.samples) == 1
    sample = infos.samples[0]
    assert sample.token == "ca9a282c9e77460f8360f564131a8af5"
    assert sample.lidar_path == f"samples/LIDAR_TOP/{KEY_NAME}"
    np.testing.assert_allclose(sample.lidar2global, KEY_EGO2GLOBAL @ LIDAR2EGO)
    (sweep,) = sample.sweeps
    assert sweep.lidar_path == f"sweeps/LIDAR_TOP/{SWEEP_NAME}"
    assert sweep.time_lag == pytest.approx(0.050149, abs=1e-6)
    lidar2sensor = np.array(mmdet3d_info()["data_list"][0]["lidar_sweeps"][0]["lidar_points"]["lidar2sensor"])
    np.testing.assert_allclose(sweep.sweep_to_key, np.linalg.inv(lidar2sensor), atol=1e-5)  # agrees with theirs
    gt = sample.gt
    assert gt.names == ("car", "pedestrian")  # label -1 (animal) left out
    np.testing.assert_allclose(gt.boxes[0], [10.0, 2.0, -0.8, 4.5, 1.9, 1.6, 0.3])
    assert gt.velocity.tolist() == [[1.5, -0.5], [0.0, 0.0]] and gt.velocity_valid.tolist() == [True, False]
    assert gt.num_lidar_pts.tolist() == [30, 0] and gt.num_radar_pts.tolist() == [2, 1]
    assert gt.attributes == ("", "")


def test_dataset_reads_an_mmdet3d_pkl(tmp_path):
    info_file = write_pickle(tmp_path / "infos.pkl", mmdet3d_info(), 2)
    key = np.array([[1, 2, 3, 10, 0], [4, 5, 6, 20, 1]], "<f4")
    sweep = np.array([[10, 0, 0, 30, 0], [0.2, 0.3, 0.0, 40, 1]], "<f4")  # the second: the ego's roof
    for folder, name, points in (("samples", KEY_NAME, key), ("sweeps", SWEEP_NAME, sweep)):
        (tmp_path / folder / "LIDAR_TOP").mkdir(parents=True)
        (tmp_path / folder / "LIDAR_TOP" / name).write_bytes(points.tobytes())
    frame = NuScenesDataset(info_file, tmp_path, max_sweeps=2, drop_empty_boxes=False)[0]
    assert frame.points.points.shape == (3, 5)
    assert frame.points.column("time_lag").tolist() == pytest.approx([0, 0, 0.050149], abs=1e-6)
    assert [frame.classes.name(label) for label in frame.labels] == ["car", "pedestrian"]
    assert frame.boxes.tensor[0, 7:].tolist() == [1.5, -0.5]


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = write_pickle(tmp_path / "evil.pkl", {"data_list": [Exploit()]}, 2)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused to load the global (posix|os|nt)\.system"):
        restricted_load(path)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        NuScenesDataset(path, tmp_path)
    assert not marker.exists()
    eval_path = tmp_path / "eval.pkl"
    eval_path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # builtins.eval("1+1") in protocol 0
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_infos(eval_path)


def test_old_and_broken_pickles_are_named(tmp_path):
    old = write_pickle(tmp_path / "old.pkl", {"infos": [], "metadata": {"version": "v1.0-trainval"}}, 2)
    with pytest.raises(InfoFileError, match="old.pkl: an mmdetection3d v0.x info file"):
        read_mmdet3d_infos(old)
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps(mmdet3d_info(), protocol=2)[:200])
    with pytest.raises(InfoFileError, match="cut.pkl: not a readable pickle"):
        read_mmdet3d_infos(truncated)
    info = mmdet3d_info()
    del info["data_list"][0]["instances"][0]["num_lidar_pts"]
    with pytest.raises(InfoFileError, match=r"data_list\[0\] \(token 'ca9a282c9e77460f8360f564131a8af5'\): "
                                            "missing field 'num_lidar_pts'"):
        read_mmdet3d_infos(write_pickle(tmp_path / "partial.pkl", info, 2))
