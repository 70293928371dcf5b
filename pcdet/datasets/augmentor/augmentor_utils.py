"""Whole-scene augmentations on LiDAR points and boxes (numpy, in place where noted).

Boxes are ``(M, 7+)`` LiDAR boxes ``x, y, z, dx, dy, dz, heading[, vx, vy, ...]``; points ``(N, 3+)``. Every transform
is a rigid motion or a uniform scaling of the whole scene, so which points lie in which box never changes.
"""

from __future__ import annotations

import numpy as np

from ...utils import common_utils


def _coin() -> bool:
    return bool(np.random.rand() < 0.5)


def random_flip_along_x(gt_boxes: np.ndarray, points: np.ndarray, enable: bool | None = None):
    """Mirror across the x axis (y → -y) with probability 0.5; returns ``(gt_boxes, points, enabled)``."""
    enable = _coin() if enable is None else enable
    if enable:
        gt_boxes[:, 1] = -gt_boxes[:, 1]
        gt_boxes[:, 6] = -gt_boxes[:, 6]
        points[:, 1] = -points[:, 1]
        if gt_boxes.shape[1] > 7:  # velocity (vx, vy)
            gt_boxes[:, 8] = -gt_boxes[:, 8]
    return gt_boxes, points, enable


def random_flip_along_y(gt_boxes: np.ndarray, points: np.ndarray, enable: bool | None = None):
    """Mirror across the y axis (x → -x) with probability 0.5; returns ``(gt_boxes, points, enabled)``."""
    enable = _coin() if enable is None else enable
    if enable:
        gt_boxes[:, 0] = -gt_boxes[:, 0]
        gt_boxes[:, 6] = -(gt_boxes[:, 6] + np.pi)
        points[:, 0] = -points[:, 0]
        if gt_boxes.shape[1] > 7:
            gt_boxes[:, 7] = -gt_boxes[:, 7]
    return gt_boxes, points, enable


def global_rotation(gt_boxes: np.ndarray, points: np.ndarray, rot_range, angle: float | None = None):
    """Rotate the scene about the z axis by an angle drawn from ``rot_range``; returns ``(gt_boxes, points, angle)``."""
    if angle is None:
        angle = float(np.random.uniform(rot_range[0], rot_range[1]))
    rot = np.array([angle], dtype=np.float32)
    points = common_utils.rotate_points_along_z(points[np.newaxis, :, :], rot)[0]
    gt_boxes[:, 0:3] = common_utils.rotate_points_along_z(gt_boxes[np.newaxis, :, 0:3], rot)[0]
    gt_boxes[:, 6] += angle
    if gt_boxes.shape[1] > 7:
        velocity = np.hstack((gt_boxes[:, 7:9], np.zeros((gt_boxes.shape[0], 1), dtype=gt_boxes.dtype)))
        gt_boxes[:, 7:9] = common_utils.rotate_points_along_z(velocity[np.newaxis], rot)[0][:, 0:2]
    return gt_boxes, points, angle


def global_scaling(gt_boxes: np.ndarray, points: np.ndarray, scale_range, scale: float | None = None):
    """Scale the scene about the origin by a factor drawn from ``scale_range``; returns ``(gt_boxes, points, s)``."""
    if scale is None:
        if scale_range[1] - scale_range[0] < 1e-3:
            return gt_boxes, points, 1.0
        scale = float(np.random.uniform(scale_range[0], scale_range[1]))
    points[:, 0:3] *= scale
    gt_boxes[:, 0:6] *= scale
    if gt_boxes.shape[1] > 7:
        gt_boxes[:, 7:9] *= scale
    return gt_boxes, points, scale


def global_translation(gt_boxes: np.ndarray, points: np.ndarray, noise_std, offset: np.ndarray | None = None):
    """Shift the scene by ``N(0, std)`` per axis (``noise_std`` scalar or 3 values); returns ``(.., offset)``."""
    if offset is None:
        std = np.broadcast_to(np.asarray(noise_std, dtype=np.float64), (3,))
        offset = np.random.normal(0.0, std).astype(np.float32)
    points[:, 0:3] += offset
    gt_boxes[:, 0:3] += offset
    return gt_boxes, points, offset
