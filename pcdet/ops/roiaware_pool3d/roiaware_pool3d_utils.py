"""Points-in-boxes, in PyTorch/numpy (no compiled extension): the same function on CPU and CUDA."""

from __future__ import annotations

import numpy as np
import torch

from ...utils import common_utils


def _points_in_boxes_mask(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``points (..., N, 3)``, ``boxes (..., M, 7)`` → bool ``(..., M, N)``; a point on the surface counts as inside."""
    local = points[..., None, :, 0:3] - boxes[..., :, None, 0:3]
    cos_h = torch.cos(boxes[..., :, None, 6])
    sin_h = torch.sin(boxes[..., :, None, 6])
    # Rotate into each box's frame (by -heading).
    local_x = local[..., 0] * cos_h + local[..., 1] * sin_h
    local_y = -local[..., 0] * sin_h + local[..., 1] * cos_h
    half = boxes[..., :, None, 3:6] / 2
    return (local_x.abs() <= half[..., 0]) & (local_y.abs() <= half[..., 1]) & (local[..., 2].abs() <= half[..., 2])


def points_in_boxes_cpu(points, boxes):
    """``points (N, 3)``, ``boxes (M, 7)`` → ``(M, N)`` 0/1 membership (int, numpy in → numpy out)."""
    points_t, is_numpy = common_utils.check_numpy_to_torch(points)
    boxes_t, _ = common_utils.check_numpy_to_torch(boxes)
    out = torch.zeros((boxes_t.shape[0], points_t.shape[0]), dtype=torch.int32)
    chunk = max(1, 4_000_000 // max(boxes_t.shape[0], 1))
    for start in range(0, points_t.shape[0], chunk):
        pts = points_t[start : start + chunk, 0:3].double()
        out[:, start : start + chunk] = _points_in_boxes_mask(pts, boxes_t[:, 0:7].double()).int()
    return out.numpy() if is_numpy else out


def points_in_boxes_gpu(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``points (B, N, 3)``, ``boxes (B, M, 7)`` → ``(B, N)`` index of the box holding each point, -1 for none.

    Works on any device; where boxes overlap, the lowest box index wins.
    """
    batch, num_points = points.shape[0], points.shape[1]
    out = points.new_full((batch, num_points), -1, dtype=torch.long)
    if boxes.shape[1] == 0:
        return out.int()
    chunk = max(1, 4_000_000 // max(boxes.shape[1], 1))
    for start in range(0, num_points, chunk):
        mask = _points_in_boxes_mask(points[:, start : start + chunk, 0:3], boxes[..., 0:7])  # (B, M, n)
        any_box = mask.any(dim=1)
        first = mask.int().argmax(dim=1)
        out[:, start : start + chunk] = torch.where(any_box, first, torch.full_like(first, -1))
    return out.int()


def points_in_boxes_numpy(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Boolean ``(M, N)`` variant for data-pipeline code that stays in numpy."""
    return points_in_boxes_cpu(np.asarray(points, np.float32), np.asarray(boxes, np.float32)).astype(bool)
