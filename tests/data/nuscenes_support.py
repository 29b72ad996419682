"""A tiny fake nuScenes dataroot in the devkit's table format, for tests that need one.

Two scenes (one of v1.0-mini's mini_train, one of its mini_val), each 11 LiDAR sweeps 0.05 s apart
with keyframes at sweeps 0, 5 and 10, a moving and turning ego and a tilted, rotated LiDAR. Every
point file holds three points: a static global marker, a point on the ego's roof and a far point;
their intensity column is the sweep index. The devkit needs only an empty map file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

VERSION = "v1.0-mini"
SWEEP_STEP_US = 50_000  # 20 Hz LiDAR
KEY_EVERY = 5  # a keyframe every 5 sweeps (0.25 s)
NUM_SWEEPS = 11  # per scene: keyframes at sweeps 0, 5, 10
LIDAR_TRANSLATION = [0.94, 0.0, 1.84]
LIDAR_ROTATION = Quaternion(axis=[0, 0, 1], angle=-math.pi / 2) * Quaternion(axis=[1, 0, 0], angle=0.02)
SCENES = {  # name (a mini split scene) -> start time (us), ego start (x, y), a static global marker point
    "scene-0061": dict(start=1_532_402_927_000_000, origin=(100.0, 50.0), marker=(110.0, 60.0, 1.0)),
    "scene-0103": dict(start=1_533_151_603_000_000, origin=(300.0, 50.0), marker=(310.0, 60.0, 1.0)),
}
# Annotated objects: scene, category, keyframe indices, global centre at t=0, velocity, yaw, size (w, l, h),
# attribute, LiDAR and radar points.
OBJECTS = [
    dict(scene="scene-0061", category="vehicle.car", keys=(0, 1, 2), at=(115, 52, 1.0), velocity=(5, 1), yaw=0.3,
         size=(1.9, 4.5, 1.6), attribute="vehicle.moving", lidar=30, radar=2),
    dict(scene="scene-0061", category="animal", keys=(1,), at=(120, 45, 0.4), velocity=(0, 0), yaw=0.0,
         size=(0.5, 1.0, 0.6), attribute="", lidar=5, radar=0),
    dict(scene="scene-0061", category="vehicle.bus.rigid", keys=(0, 1), at=(130, 40, 1.5), velocity=(0, 0),
         yaw=1.0, size=(2.9, 11.0, 3.5), attribute="vehicle.stopped", lidar=100, radar=4),
    dict(scene="scene-0103", category="vehicle.car", keys=(0, 1, 2), at=(315, 55, 0.9), velocity=(4, -2),
         yaw=-0.5, size=(1.8, 4.4, 1.5), attribute="vehicle.moving", lidar=40, radar=3),
    dict(scene="scene-0103", category="human.pedestrian.adult", keys=(0, 1, 2), at=(305, 58, 0.9),
         velocity=(0, 0), yaw=2.0, size=(0.7, 0.8, 1.8), attribute="pedestrian.standing", lidar=12, radar=0),
    dict(scene="scene-0103", category="movable_object.barrier", keys=(1,), at=(320, 62, 0.5), velocity=(0, 0),
         yaw=0.7, size=(2.5, 0.5, 1.0), attribute="", lidar=6, radar=0),
    dict(scene="scene-0103", category="movable_object.trafficcone", keys=(2,), at=(312, 47, 0.4), velocity=(0, 0),
         yaw=0.1, size=(0.4, 0.4, 0.8), attribute="", lidar=0, radar=0),
    dict(scene="scene-0103", category="vehicle.truck", keys=(0,), at=(325, 40, 1.6), velocity=(0, 0), yaw=-2.5,
         size=(2.5, 7.0, 3.0), attribute="vehicle.parked", lidar=0, radar=3),
]
CLOSE_POINT = (0.5, -0.4, 0.1)  # in every sweep's own LiDAR frame: on the ego's roof
FAR_POINT = (20.0, 5.0, 0.0)


def ego_pose(scene: str, step: int) -> tuple[list[float], Quaternion]:
    """The ego pose (translation, rotation) at sweep ``step``: driving at (8, 3) m/s, turning at 0.2 rad/s."""
    t = step * SWEEP_STEP_US / 1e6
    x0, y0 = SCENES[scene]["origin"]
    return [x0 + 8 * t, y0 + 3 * t, 0.2], Quaternion(axis=[0, 0, 1], angle=0.4 + 0.2 * t)


def global_to_lidar(scene: str, step: int) -> np.ndarray:
    translation, rotation = ego_pose(scene, step)
    ego2global = transform_matrix(translation, rotation)
    lidar2ego = transform_matrix(LIDAR_TRANSLATION, LIDAR_ROTATION)
    return np.linalg.inv(ego2global @ lidar2ego)


def file_name(scene: str, step: int) -> str:
    folder = "samples" if step % KEY_EVERY == 0 else "sweeps"
    return f"{folder}/LIDAR_TOP/{scene}__LIDAR_TOP__{SCENES[scene]['start'] + step * SWEEP_STEP_US}.pcd.bin"


def object_centre(obj: dict, key: int) -> list[float]:
    t = key * KEY_EVERY * SWEEP_STEP_US / 1e6
    return [obj["at"][0] + obj["velocity"][0] * t, obj["at"][1] + obj["velocity"][1] * t, obj["at"][2]]


def write_fake_dataroot(root: Path) -> None:
    tables: dict[str, list] = {name: [] for name in (
        "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log", "scene",
        "sample", "sample_data", "sample_annotation", "map")}
    categories = sorted({obj["category"] for obj in OBJECTS})
    tables["category"] = [{"token": f"cat-{c}", "name": c, "description": ""} for c in categories]
    attributes = ["vehicle.moving", "vehicle.stopped", "vehicle.parked", "pedestrian.standing"]
    tables["attribute"] = [{"token": f"attr-{a}", "name": a, "description": ""} for a in attributes]
    tables["visibility"] = [{"token": "4", "level": "v80-100", "description": ""}]
    tables["sensor"] = [{"token": "sensor-lidar", "channel": "LIDAR_TOP", "modality": "lidar"}]
    tables["calibrated_sensor"] = [{"token": "cs-lidar", "sensor_token": "sensor-lidar", "translation": LIDAR_TRANSLATION,
                                    "rotation": list(LIDAR_ROTATION.elements), "camera_intrinsic": []}]
    (root / "maps").mkdir(parents=True)
    (root / "maps" / "fake.png").write_bytes(b"")  # the devkit only checks that the map file exists
    tables["map"] = [{"token": "map", "log_tokens": [f"log-{s}" for s in SCENES], "category": "semantic_prior",
                      "filename": "maps/fake.png"}]
    for scene, spec in SCENES.items():
        tables["log"].append({"token": f"log-{scene}", "logfile": scene, "vehicle": "n015",
                              "date_captured": "2018-07-24", "location": "singapore-onenorth"})
        keys = [f"{scene}-sample-{k}" for k in range(NUM_SWEEPS // KEY_EVERY + 1)]
        tables["scene"].append({"token": f"scene-token-{scene}", "log_token": f"log-{scene}", "nbr_samples": len(keys),
                                "first_sample_token": keys[0], "last_sample_token": keys[-1], "name": scene,
                                "description": ""})
        for k, token in enumerate(keys):
            tables["sample"].append({"token": token, "timestamp": spec["start"] + k * KEY_EVERY * SWEEP_STEP_US,
                                     "prev": keys[k - 1] if k else "", "next": keys[k + 1] if k + 1 < len(keys) else "",
                                     "scene_token": f"scene-token-{scene}"})
        marker = np.array([*spec["marker"], 1.0])
        for step in range(NUM_SWEEPS):
            translation, rotation = ego_pose(scene, step)
            timestamp = spec["start"] + step * SWEEP_STEP_US
            tables["ego_pose"].append({"token": f"ego-{scene}-{step}", "timestamp": timestamp,
                                       "rotation": list(rotation.elements), "translation": translation})
            tables["sample_data"].append({
                "token": f"sd-{scene}-{step}", "sample_token": keys[-(-step // KEY_EVERY)],
                "ego_pose_token": f"ego-{scene}-{step}", "calibrated_sensor_token": "cs-lidar",
                "timestamp": timestamp, "fileformat": "pcd", "is_key_frame": step % KEY_EVERY == 0, "height": 0,
                "width": 0, "filename": file_name(scene, step), "prev": f"sd-{scene}-{step - 1}" if step else "",
                "next": f"sd-{scene}-{step + 1}" if step + 1 < NUM_SWEEPS else ""})
            marker_here = (global_to_lidar(scene, step) @ marker)[:3]
            points = np.array([[*marker_here, step, 0], [*CLOSE_POINT, step, 1], [*FAR_POINT, step, 2]], "<f4")
            path = root / file_name(scene, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(points.tobytes())
    for index, obj in enumerate(OBJECTS):
        tokens = [f"ann-{index}-{k}" for k in obj["keys"]]
        for position, (k, token) in enumerate(zip(obj["keys"], tokens)):
            tables["sample_annotation"].append({
                "token": token, "sample_token": f"{obj['scene']}-sample-{k}", "instance_token": f"instance-{index}",
                "visibility_token": "4", "attribute_tokens": [f"attr-{obj['attribute']}"] if obj["attribute"] else [],
                "translation": object_centre(obj, k), "size": list(obj["size"]),
                "rotation": list(Quaternion(axis=[0, 0, 1], angle=obj["yaw"]).elements),
                "prev": tokens[position - 1] if position else "",
                "next": tokens[position + 1] if position + 1 < len(tokens) else "",
                "num_lidar_pts": obj["lidar"], "num_radar_pts": obj["radar"]})
        tables["instance"].append({"token": f"instance-{index}", "category_token": f"cat-{obj['category']}",
                                   "nbr_annotations": len(tokens), "first_annotation_token": tokens[0],
                                   "last_annotation_token": tokens[-1]})
    (root / VERSION).mkdir()
    for name, rows in tables.items():
        (root / VERSION / f"{name}.json").write_text(json.dumps(rows))
