"""Detections in the keyframe's LiDAR frame -> a nuScenes submission (global frame).

Per box: the centre goes through ``lidar2global = ego2global @ lidar2ego``; the heading and the
velocity (vx, vy, 0) are rotated by it; the rotation written is a quaternion about +z with the
global heading (the devkit's metrics read only that heading, ``quaternion_yaw``); the size becomes
nuScenes' (w, l, h). Attributes are not predicted: each box gets its class's default by speed, the
rule of mmdetection3d's and CenterPoint's nuScenes exporters (:func:`default_attributes`). The
submission is written by :mod:`rdd3d.evaluation.nuscenes_io`. See docs/data-nuscenes.md.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from rdd3d.core.types import Detections, Frame
from rdd3d.data.nuscenes.dataset import LidarPose
from rdd3d.data.nuscenes.poses import invert_pose, transform_boxes, transform_points, yaw_headings
from rdd3d.evaluation.detection_metrics import DetectionsLike, detections_from_table, detections_to_table
from rdd3d.evaluation.nuscenes_io import results_from_table, write_results
from rdd3d.evaluation.nuscenes_metrics import (
    NO_ATTRIBUTE, NUSCENES_ATTRIBUTES, BoxTable, MetricConfig, detection_cvpr_2019,
)

#: Speed (m/s, ground plane) above which a box counts as moving.
MOVING_SPEED = 0.2
#: Attribute by class when moving / when not: vehicles move or are parked (a bus is stopped),
#: cycles have a rider or not, pedestrians move or stand; barriers and cones have none.
MOVING_ATTRIBUTE = {
    "car": "vehicle.moving", "truck": "vehicle.moving", "bus": "vehicle.moving", "trailer": "vehicle.moving",
    "construction_vehicle": "vehicle.moving", "bicycle": "cycle.with_rider", "motorcycle": "cycle.with_rider",
    "pedestrian": "pedestrian.moving", "traffic_cone": "", "barrier": "",
}
STILL_ATTRIBUTE = {
    "car": "vehicle.parked", "truck": "vehicle.parked", "bus": "vehicle.stopped", "trailer": "vehicle.parked",
    "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "motorcycle": "cycle.without_rider",
    "pedestrian": "pedestrian.standing", "traffic_cone": "", "barrier": "",
}
#: The devkit's required submission meta for a LiDAR-only method.
LIDAR_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


def default_attributes(names: Sequence[str], velocity: np.ndarray) -> list[str]:
    """Each box's attribute from its class name and (vx, vy): moving above :data:`MOVING_SPEED`
    m/s; unknown (NaN) velocity counts as still."""
    speed = np.hypot(*np.asarray(velocity, dtype=np.float64).reshape(-1, 2).T)
    return [(MOVING_ATTRIBUTE if s > MOVING_SPEED else STILL_ATTRIBUTE)[name] for name, s in zip(names, speed)]


def frame_pose(frame: Frame) -> tuple[str, LidarPose]:
    """``(sample_token, pose)`` from a nuScenes frame's metadata; an error naming the frame otherwise."""
    token, pose = frame.metadata.get("sample_token"), frame.metadata.get("pose")
    if not isinstance(token, str) or not isinstance(pose, LidarPose):
        raise ValueError(f"frame {frame.frame_id}: metadata needs 'sample_token' and 'pose' (a LidarPose), as "
                         "NuScenesDataset frames carry, to be exported in the global frame")
    return token, pose


def detections_to_global(frames: Sequence[Frame], detections: Sequence[DetectionsLike],
                         config: MetricConfig | None = None) -> BoxTable:
    """Detections (one per frame, LiDAR frame, labels indexing the frames' classes) -> a
    :class:`BoxTable` in the global frame, labels indexing ``config``'s classes (default: the
    devkit's detection_cvpr_2019), every frame's sample listed, attributes by class default."""
    config = config or detection_cvpr_2019()
    lidar = detections_to_table(frames, detections)  # LiDAR frame; validates the detections
    names = frames[0].classes.names if frames else ()
    unknown = [name for name in names if name not in config.class_names]
    if unknown:
        raise ValueError(f"classes {unknown} are not nuScenes detection classes {list(config.class_names)}")
    poses = [frame_pose(frame) for frame in frames]
    translation, ego_translation = np.zeros_like(lidar.translation), np.zeros_like(lidar.translation)
    yaw, velocity = np.zeros_like(lidar.yaw), np.zeros_like(lidar.velocity)
    for sample, (_, pose) in enumerate(poses):
        rows = lidar.sample == sample
        translation[rows], yaw[rows], velocity[rows] = transform_boxes(
            pose.lidar2global, lidar.translation[rows], yaw_headings(lidar.yaw[rows]), lidar.velocity[rows])
        ego_translation[rows] = transform_points(pose.lidar2ego, lidar.translation[rows])
    box_names = [names[label] for label in lidar.label]
    attribute_index = {name: i for i, name in enumerate(NUSCENES_ATTRIBUTES)} | {"": NO_ATTRIBUTE}
    return replace(
        lidar, sample_tokens=tuple(token for token, _ in poses), translation=translation, yaw=yaw, velocity=velocity,
        ego_translation=ego_translation, label=np.array([config.class_names.index(n) for n in box_names], np.int64),
        attribute=np.array([attribute_index[a] for a in default_attributes(box_names, velocity)], np.int64),
    )


def detections_from_global(table: BoxTable, frames: Sequence[Frame],
                           config: MetricConfig | None = None) -> list[Detections]:
    """The inverse of :func:`detections_to_global`: a submission's boxes (global frame, labels indexing
    ``config``'s classes, e.g. read by :func:`rdd3d.evaluation.nuscenes_io.read_results`) as one
    :class:`Detections` per frame in the frame's LiDAR frame, through the inverse of its ``lidar2global``."""
    config = config or detection_cvpr_2019()
    translation, yaw, velocity = table.translation.copy(), table.yaw.copy(), table.velocity.copy()
    poses = dict(map(frame_pose, frames))
    for sample, token in enumerate(table.sample_tokens):
        if token not in poses:
            continue  # a sample of the submission that is not among the frames
        rows = table.sample == sample
        translation[rows], yaw[rows], velocity[rows] = transform_boxes(
            invert_pose(poses[token].lidar2global), table.translation[rows], yaw_headings(table.yaw[rows]),
            table.velocity[rows])
    lidar = replace(table, translation=translation, yaw=yaw, velocity=velocity)
    return detections_from_table(lidar, frames, config.class_names)


def submission_from_detections(frames: Sequence[Frame], detections: Sequence[DetectionsLike],
                               meta: Mapping | None = None, config: MetricConfig | None = None) -> dict:
    """The submission dict ``{"meta": ..., "results": {sample_token: [box, ...]}}``; ``meta``
    defaults to :data:`LIDAR_META`."""
    config = config or detection_cvpr_2019()
    table = detections_to_global(frames, detections, config)
    return {"meta": dict(LIDAR_META if meta is None else meta), "results": results_from_table(table, config)}


def write_submission(path: str | os.PathLike, frames: Sequence[Frame], detections: Sequence[DetectionsLike],
                     meta: Mapping | None = None, config: MetricConfig | None = None) -> None:
    """Write the submission JSON atomically (the file ``nuscenes_io.evaluate_results_file`` and the
    devkit's evaluation read)."""
    config = config or detection_cvpr_2019()
    write_results(path, detections_to_global(frames, detections, config), config,
                  LIDAR_META if meta is None else meta)
