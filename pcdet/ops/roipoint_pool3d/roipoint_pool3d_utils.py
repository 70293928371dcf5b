"""RoIPointPool3d with OpenPCDet's interface: the points (and their features) inside each enlarged RoI, a fixed
number per RoI, plus a flag for RoIs that hold no point.

Semantics of OpenPCDet's kernel, written as tensor ops: a RoI keeps the first ``num_sampled_points`` points inside it
in point-index order (the data pipeline shuffles points, so this is a random subset in training); a RoI with
``0 < cnt < num_sampled_points`` points repeats them cyclically (slot ``k`` holds inside-point ``k % cnt``); an empty
RoI gets all-zero features and ``pooled_empty_flag = 1``. Membership is pcdet's one points-in-boxes test
(``roiaware_pool3d_utils.points_in_boxes_mask``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...utils import box_utils
from ..roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_mask

# (RoIs x points) membership entries handled at once: bounds the temporaries (a few float32 copies, ~100 MB).
_BLOCK_ELEMENTS = 1 << 22


def _first_inside_indices(inside: torch.Tensor, num_sampled_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``inside (B, m, N)`` bool -> (indices (B, m, K) of the first K inside points, cyclically repeated when fewer
    are inside; 0 for an empty RoI), counts (B, m))."""
    num_points = inside.shape[-1]
    rank = inside.cumsum(dim=-1, dtype=torch.int32)  # 1-based rank of each inside point, in index order
    count = rank[..., -1].long()
    # Inside points ranked 1..K go to slot rank - 1; every other point to a spare slot K that is dropped.
    slot = torch.where(inside & (rank <= num_sampled_points), rank - 1, num_sampled_points).long()
    found = torch.zeros(*slot.shape[:2], num_sampled_points + 1, dtype=torch.long, device=inside.device)
    point_ids = torch.arange(num_points, device=inside.device).expand_as(slot)
    found.scatter_(2, slot, point_ids)
    slots = torch.arange(num_sampled_points, device=inside.device)
    cyclic = slots % count.clamp(min=1).unsqueeze(-1)  # slot k -> inside point k % cnt (k itself while k < cnt)
    return found.gather(2, cyclic), count


def roipoint_pool3d(
    points: torch.Tensor,
    point_features: torch.Tensor,
    boxes3d: torch.Tensor,
    num_sampled_points: int = 512,
    pool_extra_width=(0.0, 0.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """points (B, N, 3), point_features (B, N, C), boxes3d (B, M, 7) -> pooled_features (B, M, K, 3 + C) (x, y, z
    then the features of the pooled points, in the LiDAR frame), pooled_empty_flag (B, M) int32.

    Each box is enlarged by ``pool_extra_width`` (added to dx, dy, dz) before the test. Not differentiable (as
    OpenPCDet's op, whose callers run it under ``no_grad``).
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    if point_features.shape[:2] != points.shape[:2]:
        raise ValueError(f"point_features {tuple(point_features.shape)} do not match points {tuple(points.shape)}")
    if boxes3d.dim() != 3 or boxes3d.shape[0] != points.shape[0] or boxes3d.shape[-1] < 7:
        raise ValueError(f"boxes3d must be (B, M, 7) with B = {points.shape[0]}, got {tuple(boxes3d.shape)}")
    if num_sampled_points < 1:
        raise ValueError(f"num_sampled_points must be >= 1, got {num_sampled_points}")
    batch, num_points, _ = points.shape
    num_boxes = boxes3d.shape[1]
    width = torch.as_tensor(pool_extra_width, dtype=boxes3d.dtype).tolist()
    boxes = box_utils.enlarge_box3d(boxes3d[..., 0:7].reshape(-1, 7), width).view(batch, num_boxes, 7)
    source = torch.cat([points, point_features.to(points.dtype)], dim=-1)  # (B, N, 3 + C)
    pooled = source.new_zeros(batch, num_boxes, num_sampled_points, source.shape[-1])
    empty = torch.ones(batch, num_boxes, dtype=torch.int32, device=points.device)
    if num_points == 0 or num_boxes == 0:
        return pooled, empty
    step = max(1, _BLOCK_ELEMENTS // max(1, batch * num_points))
    for start in range(0, num_boxes, step):
        block = boxes[:, start : start + step]
        idx, count = _first_inside_indices(points_in_boxes_mask(points, block), num_sampled_points)
        stop = start + block.shape[1]
        flat = idx.view(batch, -1, 1).expand(-1, -1, source.shape[-1])
        gathered = source.gather(1, flat).view(batch, block.shape[1], num_sampled_points, -1)
        pooled[:, start:stop] = gathered * (count > 0)[..., None, None].to(gathered.dtype)
        empty[:, start:stop] = (count == 0).int()
    return pooled, empty


class RoIPointPool3d(nn.Module):
    """Module form of :func:`roipoint_pool3d` (OpenPCDet's constructor arguments; no parameters)."""

    def __init__(self, num_sampled_points: int = 512, pool_extra_width=1.0):
        super().__init__()
        width = pool_extra_width if isinstance(pool_extra_width, (list, tuple)) else [pool_extra_width] * 3
        self.num_sampled_points = int(num_sampled_points)
        self.pool_extra_width = [float(w) for w in width]

    @torch.no_grad()
    def forward(
        self, points: torch.Tensor, point_features: torch.Tensor, boxes3d: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3), point_features (B, N, C), boxes3d (B, M, 7) -> (B, M, K, 3 + C), (B, M)."""
        return roipoint_pool3d(points, point_features, boxes3d, self.num_sampled_points, self.pool_extra_width)
