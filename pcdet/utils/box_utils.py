"""Box conventions, in one place.

LiDAR boxes: ``(x, y, z, dx, dy, dz, heading)`` — centre (z is the box centre), ``dx`` along the heading, heading in
radians counter-clockwise from +x. KITTI camera boxes: ``(x, y, z, l, h, w, ry)`` — bottom centre in the rectified
camera frame (y down), ``ry`` about camera y. Conversion: ``heading = -(pi / 2 + ry)`` and
``z_lidar = z_bottom + h / 2`` after the camera → LiDAR transform.
"""

from __future__ import annotations

import numpy as np
import torch

from . import common_utils

# Corner order shared by every corner routine: bottom face 0-3 then top face 4-7, each face going
# (+dx/2, +dy/2), (+dx/2, -dy/2), (-dx/2, -dy/2), (-dx/2, +dy/2) in the box frame.
_UNIT_CORNERS = (
    np.array(
        [[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1], [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]],
        dtype=np.float32,
    )
    / 2.0
)


def boxes_to_corners_3d(boxes3d):
    """LiDAR boxes ``(N, 7+)`` → corners ``(N, 8, 3)``; numpy in, numpy out."""
    boxes3d, is_numpy = common_utils.check_numpy_to_torch(boxes3d)
    template = boxes3d.new_tensor(_UNIT_CORNERS)
    corners = boxes3d[:, None, 3:6] * template[None, :, :]
    corners = common_utils.rotate_points_along_z(corners.view(-1, 8, 3), boxes3d[:, 6]).view(-1, 8, 3)
    corners = corners + boxes3d[:, None, 0:3]
    return corners.numpy() if is_numpy else corners


def mask_boxes_outside_range_numpy(
    boxes: np.ndarray, limit_range, min_num_corners: int = 1, use_center_to_filter: bool = True
) -> np.ndarray:
    """Keep boxes whose centre is inside the 3D range (OpenPCDet's default), or, with ``use_center_to_filter=False``,
    boxes with at least ``min_num_corners`` BEV corners inside the x/y range."""
    if boxes.shape[1] > 7:
        boxes = boxes[:, 0:7]
    limit = np.asarray(limit_range, dtype=np.float32)
    if use_center_to_filter:
        return ((boxes[:, 0:3] >= limit[0:3]) & (boxes[:, 0:3] <= limit[3:6])).all(axis=1)
    corners = boxes_to_corners_3d(boxes)[:, :, 0:2]
    inside = ((corners >= limit[0:2]) & (corners <= limit[3:5])).all(axis=2)
    return inside.sum(axis=1) >= min_num_corners


def remove_points_in_boxes3d(points: np.ndarray, boxes3d: np.ndarray) -> np.ndarray:
    from ..ops.roiaware_pool3d import roiaware_pool3d_utils

    if len(boxes3d) == 0:
        return points
    in_any = roiaware_pool3d_utils.points_in_boxes_cpu(points[:, 0:3], boxes3d).any(axis=0)
    return points[~in_any]


def boxes3d_kitti_camera_to_lidar(boxes3d_camera: np.ndarray, calib) -> np.ndarray:
    """Camera ``(x, y, z, l, h, w, ry)`` (bottom centre) → LiDAR ``(x, y, z, dx, dy, dz, heading)`` (centre)."""
    boxes = np.asarray(boxes3d_camera, dtype=np.float32).reshape(-1, 7)
    xyz_camera, r = boxes[:, 0:3], boxes[:, 6:7]
    l, h, w = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6]
    xyz_lidar = calib.rect_to_lidar(xyz_camera)
    xyz_lidar[:, 2] += h[:, 0] / 2
    return np.concatenate([xyz_lidar, l, w, h, -(r + np.pi / 2)], axis=-1).astype(np.float32)


def boxes3d_lidar_to_kitti_camera(boxes3d_lidar: np.ndarray, calib) -> np.ndarray:
    """Inverse of :func:`boxes3d_kitti_camera_to_lidar`."""
    boxes = np.array(boxes3d_lidar, dtype=np.float32).reshape(-1, 7)
    xyz_lidar = boxes[:, 0:3].copy()
    l, w, h, r = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6], boxes[:, 6:7]
    xyz_lidar[:, 2] -= h[:, 0] / 2
    xyz_camera = calib.lidar_to_rect(xyz_lidar)
    return np.concatenate([xyz_camera, l, h, w, -r - np.pi / 2], axis=-1).astype(np.float32)


def boxes3d_to_corners3d_kitti_camera(boxes3d: np.ndarray, bottom_center: bool = True) -> np.ndarray:
    """Camera boxes ``(N, 7)`` → corners ``(N, 8, 3)`` in the rectified camera frame (y down)."""
    boxes3d = np.asarray(boxes3d, dtype=np.float32).reshape(-1, 7)
    l, h, w, ry = boxes3d[:, 3], boxes3d[:, 4], boxes3d[:, 5], boxes3d[:, 6]
    x_c = np.stack([l / 2, l / 2, -l / 2, -l / 2, l / 2, l / 2, -l / 2, -l / 2], axis=1)
    z_c = np.stack([w / 2, -w / 2, -w / 2, w / 2, w / 2, -w / 2, -w / 2, w / 2], axis=1)
    if bottom_center:
        y_c = np.concatenate([np.zeros((len(h), 4), np.float32), np.repeat(-h[:, None], 4, axis=1)], axis=1)
    else:
        y_c = np.concatenate([np.repeat(h[:, None] / 2, 4, axis=1), np.repeat(-h[:, None] / 2, 4, axis=1)], axis=1)
    cos_r, sin_r = np.cos(ry)[:, None], np.sin(ry)[:, None]
    # Rotation about camera y: x' = cos x + sin z, z' = -sin x + cos z.
    x_r = cos_r * x_c + sin_r * z_c
    z_r = -sin_r * x_c + cos_r * z_c
    corners = np.stack([x_r, y_c, z_r], axis=2)
    return corners + boxes3d[:, None, 0:3]


def boxes3d_kitti_camera_to_imageboxes(boxes3d: np.ndarray, calib, image_shape=None) -> np.ndarray:
    """Camera boxes → 2D boxes ``(N, 4) x1, y1, x2, y2`` of their projected corners, clipped to ``image_shape``."""
    corners = boxes3d_to_corners3d_kitti_camera(boxes3d)
    pts_img, _ = calib.rect_to_img(corners.reshape(-1, 3))
    pts_img = pts_img.reshape(-1, 8, 2)
    boxes2d = np.concatenate([pts_img.min(axis=1), pts_img.max(axis=1)], axis=1)
    if image_shape is not None:
        boxes2d[:, [0, 2]] = np.clip(boxes2d[:, [0, 2]], 0, image_shape[1] - 1)
        boxes2d[:, [1, 3]] = np.clip(boxes2d[:, [1, 3]], 0, image_shape[0] - 1)
    return boxes2d


def enlarge_box3d(boxes3d: np.ndarray, extra_width=(0, 0, 0)) -> np.ndarray:
    boxes3d, is_numpy = common_utils.check_numpy_to_torch(boxes3d)
    large = boxes3d.clone()
    large[:, 3:6] += boxes3d.new_tensor(extra_width)[None, :]
    return large.numpy() if is_numpy else large


def boxes3d_lidar_to_aligned_bev_boxes(boxes3d: torch.Tensor) -> torch.Tensor:
    """Axis-aligned BEV boxes ``(x1, y1, x2, y2)`` of the rotated boxes, snapped to the nearer of 0 / 90 degrees."""
    rot = common_utils.limit_period(boxes3d[:, 6], offset=0.5, period=np.pi).abs()
    choose_dims = torch.where(rot[:, None] < np.pi / 4, boxes3d[:, [3, 4]], boxes3d[:, [4, 3]])
    return torch.cat((boxes3d[:, 0:2] - choose_dims / 2, boxes3d[:, 0:2] + choose_dims / 2), dim=1)


def boxes_iou_normal(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of axis-aligned boxes ``(N, 4)`` × ``(M, 4)`` given as ``x1, y1, x2, y2``."""
    x_min = torch.max(boxes_a[:, None, 0], boxes_b[None, :, 0])
    x_max = torch.min(boxes_a[:, None, 2], boxes_b[None, :, 2])
    y_min = torch.max(boxes_a[:, None, 1], boxes_b[None, :, 1])
    y_max = torch.min(boxes_a[:, None, 3], boxes_b[None, :, 3])
    inter = (x_max - x_min).clamp(min=0) * (y_max - y_min).clamp(min=0)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return inter / torch.clamp(area_a[:, None] + area_b[None, :] - inter, min=1e-6)


def boxes3d_nearest_bev_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """BEV IoU of the axis-aligned approximations (cheap; used by target assignment as OpenPCDet does)."""
    return boxes_iou_normal(boxes3d_lidar_to_aligned_bev_boxes(boxes_a), boxes3d_lidar_to_aligned_bev_boxes(boxes_b))
