"""Rotated-box IoU and NMS in plain PyTorch: the same code on CPU and CUDA, no compiled extension.

Boxes are LiDAR boxes ``(x, y, z, dx, dy, dz, heading)`` (see :mod:`pcdet.utils.box_utils`). The rotated BEV
intersection is exact: each rectangle is clipped against the four edges of the other (Sutherland–Hodgman) for all
pairs at once, in float64, with a fixed vertex budget (a rectangle clipped four times has at most 8 vertices).
Pairs whose axis-aligned extents cannot meet are never clipped, and NMS also skips pairs whose cheap IoU upper
bound fails its threshold: that is what keeps the dense ``N × M`` IoU and NMS cheap on CPU. The ``_gpu`` /
``_cpu`` suffixes are OpenPCDet's names; every function here runs on whatever device its inputs live on.
"""

from __future__ import annotations

import numpy as np
import torch

from ...utils import box_utils
from .rotated_nms_cpu import greedy_rotated_nms

# Pairs clipped per vectorised call: bounds the temporaries (~2 KB per pair in float64).
_PAIR_CHUNK = 32768
# Prefilter cells per chunk of rows when building a dense candidate mask.
_MASK_CHUNK = 4_000_000
# Sorted boxes resolved per greedy block in NMS.
_NMS_BLOCK = 256
# Unit-square corners in counter-clockwise order, scaled by (dx, dy) and rotated by heading.
_CCW_UNIT = ((0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5))


def _bev_corners_ccw(boxes: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """BEV corners ``(P, 4, 2)`` counter-clockwise, relative to ``origin (P, 2)`` (keeps float64 digits local)."""
    unit = boxes.new_tensor(_CCW_UNIT)
    local = unit[None] * boxes[:, None, 3:5]
    cos_h, sin_h = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    x = local[..., 0] * cos_h - local[..., 1] * sin_h + (boxes[:, 0:1] - origin[:, 0:1])
    y = local[..., 0] * sin_h + local[..., 1] * cos_h + (boxes[:, 1:2] - origin[:, 1:2])
    return torch.stack((x, y), dim=-1)


def _clip_by_half_plane(
    poly: torch.Tensor, count: torch.Tensor, start: torch.Tensor, edge: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the part of each convex polygon left of its directed line ``start + t * edge``.

    ``poly (P, K, 2)`` holds ``count`` real vertices; the unused slots repeat vertex 0 so that rolling by one gives
    every vertex its successor (including the closing edge) and padded edges have zero length. Returns the clipped
    polygons in a ``(P, K + 1, 2)`` buffer with the same padding convention, and their vertex counts.
    """
    num_pairs, k = poly.shape[0], poly.shape[1]
    k_out = k + 1
    succ = torch.roll(poly, shifts=-1, dims=1)
    rel = poly - start[:, None, :]
    side = edge[:, None, 0] * rel[..., 1] - edge[:, None, 1] * rel[..., 0]  # > 0: inside (left of a CCW edge)
    side_next = torch.roll(side, shifts=-1, dims=1)
    real = torch.arange(k, device=poly.device)[None, :] < count[:, None]
    keep_vertex = real & (side >= 0)
    crossing = real & (((side > 0) & (side_next < 0)) | ((side < 0) & (side_next > 0)))
    t = torch.where(crossing, side / torch.where(crossing, side - side_next, torch.ones_like(side)), 0.0)
    cut = poly + t[..., None] * (succ - poly)
    # Emit, per edge, its start vertex (if inside) then its crossing point (if any), in boundary order.
    candidates = torch.stack((poly, cut), dim=2).reshape(num_pairs, 2 * k, 2)
    emit = torch.stack((keep_vertex, crossing), dim=2).reshape(num_pairs, 2 * k)
    slot = torch.cumsum(emit.to(torch.int64), dim=1) - 1
    # A convex polygon gains at most one vertex per clip; the cap only guards near-collinear round-off.
    emit = emit & (slot < k_out)
    slot = torch.where(emit, slot, k_out)  # spare slot k_out collects what is not emitted
    out = poly.new_zeros((num_pairs, k_out + 1, 2))
    out.scatter_(1, slot[..., None].expand(-1, -1, 2), candidates)
    out = out[:, :k_out]
    new_count = emit.sum(dim=1)
    padded = torch.arange(k_out, device=poly.device)[None, :] >= new_count[:, None]
    out = torch.where(padded[..., None], out[:, 0:1, :], out)
    return out, new_count


def _paired_bev_intersection(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Exact rotated BEV intersection area of row-aligned pairs ``(P, 7)`` × ``(P, 7)`` (float64) → ``(P,)``."""
    origin = boxes_a[:, 0:2]
    poly = _bev_corners_ccw(boxes_a, origin)
    clip = _bev_corners_ccw(boxes_b, origin)
    count = torch.full((poly.shape[0],), 4, dtype=torch.int64, device=poly.device)
    for i in range(4):
        start = clip[:, i]
        poly, count = _clip_by_half_plane(poly, count, start, clip[:, (i + 1) % 4] - start)
    succ = torch.roll(poly, shifts=-1, dims=1)
    area = 0.5 * (poly[..., 0] * succ[..., 1] - poly[..., 1] * succ[..., 0]).sum(dim=1)
    # A zero-size box has no edge direction, so clipping against it would keep everything: force 0.
    nondegenerate = (boxes_a[:, 3] * boxes_a[:, 4] > 0) & (boxes_b[:, 3] * boxes_b[:, 4] > 0)
    return torch.where(nondegenerate & (count >= 3), area.clamp(min=0), 0.0)


def _half_extents(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half sizes along x and y of each rotated box's axis-aligned bounding box."""
    cos_h, sin_h = torch.cos(boxes[:, 6]).abs(), torch.sin(boxes[:, 6]).abs()
    return (
        0.5 * (boxes[:, 3] * cos_h + boxes[:, 4] * sin_h),
        0.5 * (boxes[:, 3] * sin_h + boxes[:, 4] * cos_h),
    )


def _may_overlap_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Cheap, conservative ``(N, M)`` mask: False only where the axis-aligned extents prove there is no overlap."""
    hx_a, hy_a = _half_extents(boxes_a)
    hx_b, hy_b = _half_extents(boxes_b)
    near_x = (boxes_a[:, None, 0] - boxes_b[None, :, 0]).abs_() < hx_a[:, None] + hx_b[None, :]
    near_y = (boxes_a[:, None, 1] - boxes_b[None, :, 1]).abs_() < hy_a[:, None] + hy_b[None, :]
    return near_x.logical_and_(near_y)


def _intersection_upper_bound(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Upper bound on the BEV intersection of row-aligned pairs, ~10× cheaper than clipping.

    A ∩ B lies inside A ∩ (B's bounding box in A's frame), an aligned-rectangle overlap; likewise with the roles
    swapped. The smaller of the two areas bounds the intersection from above.
    """

    def aligned_overlap(frame: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        cos_f, sin_f = torch.cos(frame[:, 6]), torch.sin(frame[:, 6])
        dx, dy = other[:, 0] - frame[:, 0], other[:, 1] - frame[:, 1]
        cx, cy = dx * cos_f + dy * sin_f, -dx * sin_f + dy * cos_f
        rel = other[:, 6] - frame[:, 6]
        cos_r, sin_r = torch.cos(rel).abs(), torch.sin(rel).abs()
        ex = 0.5 * (other[:, 3] * cos_r + other[:, 4] * sin_r)
        ey = 0.5 * (other[:, 3] * sin_r + other[:, 4] * cos_r)
        half_l, half_w = 0.5 * frame[:, 3], 0.5 * frame[:, 4]
        ox = (torch.min(half_l, cx + ex) - torch.max(-half_l, cx - ex)).clamp(min=0)
        oy = (torch.min(half_w, cy + ey) - torch.max(-half_w, cy - ey)).clamp(min=0)
        return ox * oy

    return torch.min(aligned_overlap(boxes_a, boxes_b), aligned_overlap(boxes_b, boxes_a))


def _candidate_pairs(boxes_a: torch.Tensor, boxes_b: torch.Tensor):
    """Yield ``(ia, ib)`` index chunks (at most ``_PAIR_CHUNK`` pairs) of the pairs that pass the prefilter."""
    if boxes_a.shape[0] == 0 or boxes_b.shape[0] == 0:
        return
    rows_per_chunk = max(1, _MASK_CHUNK // boxes_b.shape[0])
    for r0 in range(0, boxes_a.shape[0], rows_per_chunk):
        ia, ib = torch.nonzero(_may_overlap_bev(boxes_a[r0 : r0 + rows_per_chunk], boxes_b), as_tuple=True)
        for p0 in range(0, ia.shape[0], _PAIR_CHUNK):
            yield r0 + ia[p0 : p0 + _PAIR_CHUNK], ib[p0 : p0 + _PAIR_CHUNK]


def _iou_from_intersection(inter: torch.Tensor, area_a: torch.Tensor, area_b: torch.Tensor) -> torch.Tensor:
    return inter / torch.clamp(area_a + area_b - inter, min=1e-8)


def _overlap_bev_float64(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Dense rotated BEV intersection areas ``(N, M)`` in float64; only prefiltered pairs are clipped."""
    a, b = boxes_a[:, 0:7].double(), boxes_b[:, 0:7].double()
    out = a.new_zeros((a.shape[0], b.shape[0]))
    for ia, ib in _candidate_pairs(a, b):
        out[ia, ib] = _paired_bev_intersection(a[ia], b[ib])
    return out


def _bev_iou_float64(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    inter = _overlap_bev_float64(boxes_a, boxes_b)
    area_a = boxes_a[:, 3].double() * boxes_a[:, 4].double()
    area_b = boxes_b[:, 3].double() * boxes_b[:, 4].double()
    return _iou_from_intersection(inter, area_a[:, None], area_b[None, :])


def _rotated_suppression(boxes_a: torch.Tensor, boxes_b: torch.Tensor, thresh: float) -> torch.Tensor:
    """``(N, M)`` bool: rotated BEV IoU > ``thresh`` (same values as :func:`boxes_iou_bev`).

    Pairs whose cheap IoU upper bound already fails the threshold are never clipped; at high thresholds this skips
    most of the work in crowded scenes.
    """
    a, b = boxes_a[:, 0:7].double(), boxes_b[:, 0:7].double()
    out = torch.zeros((a.shape[0], b.shape[0]), dtype=torch.bool, device=a.device)
    for ia, ib in _candidate_pairs(a, b):
        pa, pb = a[ia], b[ib]
        area_a, area_b = pa[:, 3] * pa[:, 4], pb[:, 3] * pb[:, 4]
        # The margin keeps the bound conservative under round-off; the exact IoU decides every close call.
        plausible = _iou_from_intersection(_intersection_upper_bound(pa, pb), area_a, area_b) > thresh - 1e-9
        ia, ib, pa, pb = ia[plausible], ib[plausible], pa[plausible], pb[plausible]
        iou = _iou_from_intersection(_paired_bev_intersection(pa, pb), area_a[plausible], area_b[plausible])
        out[ia, ib] = iou > thresh
    return out


def _out_dtype(boxes: torch.Tensor) -> torch.dtype:
    return boxes.dtype if boxes.is_floating_point() else torch.float32


def boxes_overlap_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Rotated BEV intersection areas ``(N, M)`` of ``boxes_a (N, 7+)`` and ``boxes_b (M, 7+)``."""
    return _overlap_bev_float64(boxes_a, boxes_b).to(_out_dtype(boxes_a))


def boxes_iou_bev(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Rotated BEV IoU ``(N, M)`` of ``boxes_a (N, 7+)`` and ``boxes_b (M, 7+)``, on their device, in their dtype."""
    return _bev_iou_float64(boxes_a, boxes_b).to(_out_dtype(boxes_a))


def boxes_bev_iou_cpu(boxes_a, boxes_b):
    """Rotated BEV IoU ``(N, M)``; numpy in → numpy out, torch in → torch out (OpenPCDet's CPU entry point)."""
    is_numpy = isinstance(boxes_a, np.ndarray)
    a = torch.from_numpy(np.ascontiguousarray(boxes_a)) if is_numpy else boxes_a
    b = torch.from_numpy(np.ascontiguousarray(boxes_b)) if isinstance(boxes_b, np.ndarray) else boxes_b
    iou = boxes_iou_bev(a, b.to(a.device))
    return iou.numpy() if is_numpy else iou


def boxes_iou3d_gpu(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """3D IoU ``(N, M)``: rotated BEV intersection × z overlap over the union of volumes (z is the box centre)."""
    inter_bev = _overlap_bev_float64(boxes_a, boxes_b)
    a, b = boxes_a[:, 0:7].double(), boxes_b[:, 0:7].double()
    top = torch.min((a[:, 2] + a[:, 5] / 2)[:, None], (b[:, 2] + b[:, 5] / 2)[None, :])
    bottom = torch.max((a[:, 2] - a[:, 5] / 2)[:, None], (b[:, 2] - b[:, 5] / 2)[None, :])
    inter_3d = inter_bev * (top - bottom).clamp(min=0)
    vol_a = a[:, 3] * a[:, 4] * a[:, 5]
    vol_b = b[:, 3] * b[:, 4] * b[:, 5]
    iou = inter_3d / torch.clamp(vol_a[:, None] + vol_b[None, :] - inter_3d, min=1e-6)
    return iou.to(_out_dtype(boxes_a))


def _greedy_in_order(suppresses: np.ndarray) -> np.ndarray:
    """Greedy NMS on a small strictly-upper-triangular bool matrix: ``suppresses[i, j]`` = i removes j if kept."""
    removed = np.zeros(suppresses.shape[0], dtype=bool)
    kept = []
    for i in range(suppresses.shape[0]):
        if not removed[i]:
            kept.append(i)
            removed |= suppresses[i]
    return np.asarray(kept, dtype=np.int64)


def _blocked_greedy_nms(boxes: torch.Tensor, thresh: float, suppression_fn) -> torch.Tensor:
    """Greedy NMS over boxes already sorted by score; returns kept positions (ascending).

    Works block by block: the still-alive boxes of a block are resolved among themselves exactly, then the block's
    survivors remove every later box they overlap by more than ``thresh``. IoUs are only ever computed against kept
    boxes or within a block, so crowded scenes (most boxes suppressed early) cost little. ``suppression_fn(a, b,
    thresh)`` gives the ``(len(a), len(b))`` mask of IoU > ``thresh``.
    """
    n = boxes.shape[0]
    device = boxes.device
    removed = torch.zeros(n, dtype=torch.bool, device=device)
    positions = torch.arange(n, device=device)
    kept_blocks = []
    for start in range(0, n, _NMS_BLOCK):
        end = min(start + _NMS_BLOCK, n)
        alive = positions[start:end][~removed[start:end]]
        if alive.numel() == 0:
            continue
        block = boxes[alive]
        suppresses = torch.triu(suppression_fn(block, block, thresh), diagonal=1)
        kept_local = torch.from_numpy(_greedy_in_order(suppresses.cpu().numpy())).to(device)
        kept = alive[kept_local]
        kept_blocks.append(kept)
        later = positions[end:][~removed[end:]]
        if later.numel() > 0:
            hit = suppression_fn(boxes[kept], boxes[later], thresh).any(dim=0)
            removed[later[hit]] = True
    if not kept_blocks:
        return positions.new_zeros((0,))
    return torch.cat(kept_blocks)


def _sort_candidates(scores: torch.Tensor, pre_maxsize: int | None) -> torch.Tensor:
    order = torch.sort(scores, descending=True, stable=True)[1]
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    return order


def nms_gpu(
    boxes: torch.Tensor, scores: torch.Tensor, thresh: float, pre_maxsize: int | None = None, **kwargs
) -> tuple[torch.Tensor, None]:
    """Rotated-BEV greedy NMS: highest score first, a box is dropped when its IoU with a kept box exceeds ``thresh``.

    Only the ``pre_maxsize`` highest-scoring boxes are considered. Returns ``(keep, None)``, ``keep`` being indices
    into ``boxes`` in descending score order. ``kwargs`` absorbs the NMS config keys OpenPCDet passes along.
    """
    order = _sort_candidates(scores, pre_maxsize)
    if boxes.device.type == "cpu":
        # On a CPU the blocked formulation's cost is tensor-op overhead; one numba loop does the same tests.
        kept = torch.from_numpy(greedy_rotated_nms(boxes[order, 0:7].detach().double().numpy(), thresh))
    else:
        kept = _blocked_greedy_nms(boxes[order, 0:7], thresh, _rotated_suppression)
    return order[kept].contiguous(), None


def _aligned_suppression_ignoring_heading(boxes_a: torch.Tensor, boxes_b: torch.Tensor, thresh: float) -> torch.Tensor:
    def corners(boxes: torch.Tensor) -> torch.Tensor:
        half = boxes[:, 3:5] / 2
        return torch.cat((boxes[:, 0:2] - half, boxes[:, 0:2] + half), dim=1)

    return box_utils.boxes_iou_normal(corners(boxes_a.double()), corners(boxes_b.double())) > thresh


def nms_normal_gpu(boxes: torch.Tensor, scores: torch.Tensor, thresh: float, **kwargs) -> tuple[torch.Tensor, None]:
    """Greedy NMS on axis-aligned BEV boxes ``(x ± dx/2, y ± dy/2)`` — the heading is ignored, as OpenPCDet does."""
    order = _sort_candidates(scores, None)
    kept = _blocked_greedy_nms(boxes[order, 0:7], thresh, _aligned_suppression_ignoring_heading)
    return order[kept].contiguous(), None
