"""Rigid transforms between nuScenes' frames (sensor, ego, global) as 4x4 float64 matrices.

A pose ``A2B`` maps homogeneous coordinates in frame A to frame B: ``p_B = A2B @ p_A``; chains
compose right to left (``lidar2global = ego2global @ lidar2ego``). Boxes move with the same
matrices: their centre as a point, their heading and velocity as directions.
"""

from __future__ import annotations

import numpy as np


def quaternion_matrix(quaternion: np.ndarray) -> np.ndarray:
    """``(..., 4)`` quaternions (w, x, y, z), nuScenes' order, -> ``(..., 3, 3)`` rotation matrices.
    Quaternions are normalised first; a zero quaternion is an error."""
    q = np.asarray(quaternion, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have 4 components (w, x, y, z), got shape {q.shape}")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not (np.isfinite(q).all() and (norm > 1e-12).all()):
        raise ValueError(f"quaternions must be finite and non-zero, got {q.tolist()}")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def pose_matrix(translation, rotation) -> np.ndarray:
    """A nuScenes pose record's ``translation`` (x, y, z) and ``rotation`` (w, x, y, z) -> (4, 4)."""
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_matrix(rotation)
    matrix[:3, 3] = np.asarray(translation, dtype=np.float64)
    return matrix


def invert_pose(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a rigid (4, 4) transform, exact up to rounding: ``[R^T, -R^T t]``."""
    rotation, translation = matrix[:3, :3], matrix[:3, 3]
    inverse = np.eye(4)
    inverse[:3, :3] = rotation.T
    inverse[:3, 3] = -rotation.T @ translation
    return inverse


def check_pose(matrix, what: str) -> np.ndarray:
    """``matrix`` as a (4, 4) float64 rigid transform; ``what`` names it in the error."""
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (4, 4) or not np.isfinite(array).all():
        raise ValueError(f"{what}: expected a finite 4x4 matrix, got {np.shape(matrix)}")
    rotation = array[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or not np.allclose(array[3], [0, 0, 0, 1]):
        raise ValueError(f"{what}: not a rigid transform (rotation block not orthonormal or last row not 0 0 0 1)")
    return array


def transform_points(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """``(N, 3)`` points through a (4, 4) transform -> ``(N, 3)`` in the input's dtype."""
    return (xyz @ matrix[:3, :3].T.astype(xyz.dtype) + matrix[:3, 3].astype(xyz.dtype)).astype(xyz.dtype, copy=False)


def transform_boxes(matrix: np.ndarray, centres: np.ndarray, headings: np.ndarray,
                    velocities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move boxes through a (4, 4) transform.

    ``centres`` (M, 3); ``headings`` (M, 3) the direction of each box's length axis; ``velocities``
    (M, 2) in the ground plane (vz taken as 0, as the devkit's and mmdetection3d's converters do).
    Returns the new centres (M, 3), yaws (M,) of the headings about +z, and velocities (M, 2), all
    float64. Under a tilted transform the yaw is the heading of the rotated axis seen from above,
    the devkit's ``quaternion_yaw``.
    """
    rotation = matrix[:3, :3]
    centres = np.asarray(centres, dtype=np.float64) @ rotation.T + matrix[:3, 3]
    headings = np.asarray(headings, dtype=np.float64) @ rotation.T
    velocity3 = np.concatenate([np.asarray(velocities, dtype=np.float64).reshape(-1, 2),
                                np.zeros((len(centres), 1))], axis=1)
    return centres, np.arctan2(headings[:, 1], headings[:, 0]), (velocity3 @ rotation.T)[:, :2]


def yaw_headings(yaw: np.ndarray) -> np.ndarray:
    """``(M,)`` yaws about +z -> ``(M, 3)`` unit heading vectors in the ground plane."""
    yaw = np.asarray(yaw, dtype=np.float64)
    return np.stack([np.cos(yaw), np.sin(yaw), np.zeros_like(yaw)], axis=1)
