"""Rotated-BEV greedy NMS as one numba kernel: the CPU path of :func:`iou3d_nms_utils.nms_gpu`.

The PyTorch formulation in ``iou3d_nms_utils`` vectorises over pairs, which suits a GPU; on a CPU its cost for a
dense head's 4096 candidates is the overhead of a few hundred small tensor operations (~60 ms per frame), not
arithmetic. Here the greedy loop runs pair by pair: a kept box only looks at the later, still alive boxes within
reach in x (a window of the x-sorted order), compares axis-aligned extents first, then the cheap upper bound, and
only then clips the intersection. Which box removes which does not depend on the order the pairs are visited in.
The geometry is the PyTorch version's, step for step (same prefilter, same bound and margin, same
Sutherland–Hodgman clipping with the same vertex budget, float64), so the kept boxes are the same.
"""

from __future__ import annotations

import math

import numpy as np

from ...utils.numba_utils import njit_cached

# Unit-square corners, counter-clockwise (as iou3d_nms_utils._CCW_UNIT).
_UNIT_X = np.array([0.5, 0.5, -0.5, -0.5])
_UNIT_Y = np.array([-0.5, 0.5, 0.5, -0.5])


@njit_cached
def _corners(box: np.ndarray, ox: float, oy: float, unit_x: np.ndarray, unit_y: np.ndarray, out: np.ndarray) -> None:
    """BEV corners of ``box`` relative to ``(ox, oy)`` into ``out[:4]``."""
    cos_h, sin_h = math.cos(box[6]), math.sin(box[6])
    for k in range(4):
        lx, ly = unit_x[k] * box[3], unit_y[k] * box[4]
        out[k, 0] = lx * cos_h - ly * sin_h + (box[0] - ox)
        out[k, 1] = lx * sin_h + ly * cos_h + (box[1] - oy)


@njit_cached
def _clip(poly: np.ndarray, count: int, k: int, sx: float, sy: float, ex: float, ey: float, out: np.ndarray) -> int:
    """Keep the part of ``poly[:count]`` left of the line ``s + t * e``; at most ``k + 1`` vertices are emitted
    (``k``: the vertex budget so far), as the vectorised version caps them. Returns the new count."""
    n_out = 0
    for i in range(count):
        j = i + 1 if i + 1 < count else 0
        px, py = poly[i, 0], poly[i, 1]
        qx, qy = poly[j, 0], poly[j, 1]
        side = ex * (py - sy) - ey * (px - sx)
        side_next = ex * (qy - sy) - ey * (qx - sx)
        if side >= 0 and n_out < k + 1:
            out[n_out, 0], out[n_out, 1] = px, py
            n_out += 1
        if ((side > 0 and side_next < 0) or (side < 0 and side_next > 0)) and n_out < k + 1:
            t = side / (side - side_next)
            out[n_out, 0] = px + t * (qx - px)
            out[n_out, 1] = py + t * (qy - py)
            n_out += 1
    return n_out


@njit_cached
def _intersection(a: np.ndarray, b: np.ndarray, ux: np.ndarray, uy: np.ndarray, bufs: np.ndarray) -> float:
    """Exact BEV intersection area of boxes ``a`` and ``b`` (coordinates relative to ``a``'s centre)."""
    if not (a[3] * a[4] > 0 and b[3] * b[4] > 0):
        return 0.0
    poly, clip, nxt = bufs[0], bufs[1], bufs[2]
    _corners(a, a[0], a[1], ux, uy, poly)
    _corners(b, a[0], a[1], ux, uy, clip)
    count = 4
    for e in range(4):
        sx, sy = clip[e, 0], clip[e, 1]
        f = (e + 1) % 4
        count = _clip(poly, count, 4 + e, sx, sy, clip[f, 0] - sx, clip[f, 1] - sy, nxt)
        poly, nxt = nxt, poly
    if count < 3:
        return 0.0
    area = 0.0
    for i in range(count):
        j = i + 1 if i + 1 < count else 0
        area += poly[i, 0] * poly[j, 1] - poly[i, 1] * poly[j, 0]
    return max(0.5 * area, 0.0)


@njit_cached
def _aligned_overlap(frame: np.ndarray, other: np.ndarray) -> float:
    """Overlap of ``frame`` with ``other``'s bounding box in ``frame``'s own axes (bounds the intersection)."""
    cos_f, sin_f = math.cos(frame[6]), math.sin(frame[6])
    dx, dy = other[0] - frame[0], other[1] - frame[1]
    cx, cy = dx * cos_f + dy * sin_f, -dx * sin_f + dy * cos_f
    rel = other[6] - frame[6]
    cos_r, sin_r = abs(math.cos(rel)), abs(math.sin(rel))
    ex = 0.5 * (other[3] * cos_r + other[4] * sin_r)
    ey = 0.5 * (other[3] * sin_r + other[4] * cos_r)
    half_l, half_w = 0.5 * frame[3], 0.5 * frame[4]
    ox = max(min(half_l, cx + ex) - max(-half_l, cx - ex), 0.0)
    oy = max(min(half_w, cy + ey) - max(-half_w, cy - ey), 0.0)
    return ox * oy


@njit_cached
def _next_undecided(link: np.ndarray, k: int) -> int:
    """The first undecided x-sorted position at or after ``k``, compressing the links walked over."""
    root = k
    while link[root] != root:
        root = link[root]
    while link[k] != root:
        link[k], k = root, link[k]
    return root


@njit_cached
def _greedy_kernel(
    boxes: np.ndarray, thresh: float, by_x: np.ndarray, ux: np.ndarray, uy: np.ndarray, bufs: np.ndarray
) -> np.ndarray:
    n = boxes.shape[0]
    hx = np.empty(n)
    hy = np.empty(n)
    for i in range(n):
        c, s = abs(math.cos(boxes[i, 6])), abs(math.sin(boxes[i, 6]))
        hx[i] = 0.5 * (boxes[i, 3] * c + boxes[i, 4] * s)
        hy[i] = 0.5 * (boxes[i, 3] * s + boxes[i, 4] * c)
    max_hx = 0.0
    for i in range(n):
        if hx[i] > max_hx:  # NaN boxes (which overlap nothing) must not widen every window to nothing
            max_hx = hx[i]
    sorted_x = np.empty(n)
    for k in range(n):
        sorted_x[k] = boxes[by_x[k], 0]
    # Boxes already decided (earlier in score order, or removed) are skipped in the x-sorted order through "next
    # undecided position" links with path compression: late in a crowded frame most of a window is decided, and
    # stepping over it one by one was most of the cost. The set of pairs tested is the same as before.
    position = np.empty(n, dtype=np.int64)
    for k in range(n):
        position[by_x[k]] = k
    link = np.arange(n + 1)  # link[k] == k: undecided (n: the end sentinel)
    removed = np.zeros(n, dtype=np.bool_)
    kept = np.empty(n, dtype=np.int64)
    num_kept = 0
    for i in range(n):
        if removed[i]:
            continue
        kept[num_kept] = i
        num_kept += 1
        link[position[i]] = position[i] + 1
        a = boxes[i]
        area_a = a[3] * a[4]
        # Only boxes whose x lies within hx_i + max_hx can pass the x-extent test: scan that window of the
        # x-sorted order (bounds widened by a margin, the exact test below decides).
        reach = (hx[i] + max_hx) * (1 + 1e-9) + 1e-9
        lo = np.searchsorted(sorted_x, a[0] - reach, side="left")
        hi = np.searchsorted(sorted_x, a[0] + reach, side="right")
        k = _next_undecided(link, lo)
        while k < hi:
            j = by_x[k]
            b = boxes[j]
            if abs(a[0] - b[0]) < hx[i] + hx[j] and abs(a[1] - b[1]) < hy[i] + hy[j]:
                area_b = b[3] * b[4]
                bound = min(_aligned_overlap(a, b), _aligned_overlap(b, a))
                if bound / max(area_a + area_b - bound, 1e-8) > thresh - 1e-9:
                    inter = _intersection(a, b, ux, uy, bufs)
                    if inter / max(area_a + area_b - inter, 1e-8) > thresh:
                        removed[j] = True
                        link[k] = k + 1
            k = _next_undecided(link, k + 1)
    return kept[:num_kept]


def greedy_rotated_nms(boxes: np.ndarray, thresh: float) -> np.ndarray:
    """Kept positions (ascending) of greedy NMS over ``boxes (N, 7+)`` already sorted by descending score: a box
    is dropped when its rotated BEV IoU with an earlier kept box exceeds ``thresh``."""
    boxes = np.ascontiguousarray(boxes[:, 0:7], dtype=np.float64)
    by_x = np.argsort(boxes[:, 0], kind="stable")
    bufs = np.empty((3, 9, 2))  # polygon, clipping rectangle, clip output (at most 8 vertices)
    return _greedy_kernel(boxes, float(thresh), by_x, _UNIT_X, _UNIT_Y, bufs)
