"""Points-in-boxes, in PyTorch/numpy (no compiled extension): the same function on CPU and CUDA."""

from __future__ import annotations

import numpy as np
import torch

from ...utils import common_utils


def points_in_boxes_mask(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``points (..., N, 3)``, ``boxes (..., M, 7)`` → bool ``(..., M, N)``; a point on the surface counts as inside."""
    local = points[..., None, :, 0:3] - boxes[..., :, None, 0:3]
    cos_h = torch.cos(boxes[..., :, None, 6])
    sin_h = torch.sin(boxes[..., :, None, 6])
    # Rotate into each box's frame (by -heading).
    local_x = local[..., 0] * cos_h + local[..., 1] * sin_h
    local_y = -local[..., 0] * sin_h + local[..., 1] * cos_h
    half = boxes[..., :, None, 3:6] / 2
    return (local_x.abs() <= half[..., 0]) & (local_y.abs() <= half[..., 1]) & (local[..., 2].abs() <= half[..., 2])


def _strip_pairs(sorted_keys: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    """For each query ``q``, the positions ``p`` with ``lower[q] <= sorted_keys[p] <= upper[q]`` (a contiguous run of
    the sorted keys) as flat ``(query_idx, position)`` pairs."""
    lo = torch.searchsorted(sorted_keys, lower.contiguous(), side="left")
    hi = torch.searchsorted(sorted_keys, upper.contiguous(), side="right")
    counts = (hi - lo).clamp(min=0)
    query_idx = torch.repeat_interleave(torch.arange(lower.shape[0], device=lower.device), counts)
    run_start = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(query_idx.shape[0], device=lower.device) - run_start[query_idx] + lo[query_idx]
    return query_idx, position


def points_in_boxes_cpu(points, boxes):
    """``points (N, 3)``, ``boxes (M, 7)`` → ``(M, N)`` 0/1 membership (int, numpy in → numpy out).

    Only point/box pairs within the box's BEV circumradius of its centre (in x, then y) are tested: points sorted by
    x give each box a contiguous candidate run. The exact test is the dense formula's, pair by pair, so the result
    is identical; the work is ~(candidates) instead of M·N float64 temporaries.
    """
    points_t, is_numpy = common_utils.check_numpy_to_torch(points)
    boxes_t, _ = common_utils.check_numpy_to_torch(boxes)
    num_boxes, num_points = boxes_t.shape[0], points_t.shape[0]
    out = torch.zeros((num_boxes, num_points), dtype=torch.int32, device=points_t.device)
    if num_boxes > 0 and num_points > 0:
        pts = points_t[:, 0:3].double()
        box = boxes_t[:, 0:7].double()
        # Circumradius with slack far above float64 round-off: a superset of the points the exact test accepts.
        radius = torch.sqrt((box[:, 3] / 2) ** 2 + (box[:, 4] / 2) ** 2) * (1 + 1e-6) + 1e-4
        x_sorted, order = torch.sort(pts[:, 0])
        box_idx, position = _strip_pairs(x_sorted, box[:, 0] - radius, box[:, 0] + radius)
        point_idx = order[position]
        near_y = (pts[point_idx, 1] - box[box_idx, 1]).abs() <= radius[box_idx]
        box_idx, point_idx = box_idx[near_y], point_idx[near_y]
        # Per-box trigonometry exactly as the dense formula computes it, then gathered per pair.
        cos_h = torch.cos(box[:, None, 6])[:, 0]
        sin_h = torch.sin(box[:, None, 6])[:, 0]
        for start in range(0, box_idx.shape[0], 4_000_000):
            b, p = box_idx[start : start + 4_000_000], point_idx[start : start + 4_000_000]
            local = pts[p] - box[b, 0:3]
            local_x = local[:, 0] * cos_h[b] + local[:, 1] * sin_h[b]
            local_y = -local[:, 0] * sin_h[b] + local[:, 1] * cos_h[b]
            half = box[b, 3:6] / 2
            inside = (local_x.abs() <= half[:, 0]) & (local_y.abs() <= half[:, 1]) & (local[:, 2].abs() <= half[:, 2])
            out[b[inside], p[inside]] = 1
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
        mask = points_in_boxes_mask(points[:, start : start + chunk, 0:3], boxes[..., 0:7])  # (B, M, n)
        any_box = mask.any(dim=1)
        first = mask.int().argmax(dim=1)
        out[:, start : start + chunk] = torch.where(any_box, first, torch.full_like(first, -1))
    return out.int()


def points_in_boxes_numpy(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Boolean ``(M, N)`` variant for data-pipeline code that stays in numpy."""
    return points_in_boxes_cpu(np.asarray(points, np.float32), np.asarray(boxes, np.float32)).astype(bool)
