"""Exact box overlaps used by the KITTI evaluation, on CPU.

Conventions follow the official devkit (``evaluate_object``):

* image boxes ``(x1, y1, x2, y2)`` in pixels, areas without the ``+1`` some other toolkits add;
* bird's-eye-view boxes live on the camera ground plane ``(x, z)``; a box with centre ``(x, z)``, length ``l``, width
  ``w`` and rotation ``ry`` has the corners ``R @ (+-l/2, +-w/2) + (x, z)`` with ``R = [[cos ry, sin ry],
  [-sin ry, cos ry]]``;
* 3D boxes span ``[y - h, y]`` vertically (camera y points down, ``y`` is the bottom face), so the 3D intersection is
  the BEV intersection area times the overlap of those two intervals.

The BEV intersection is computed by clipping one rectangle against the other (Sutherland-Hodgman): exact for convex
polygons up to rounding, and identical boxes give an IoU of exactly 1 (every vertex lies on the clip edges, the
cross products are exactly 0, no intersection point is ever computed).

``criterion``: -1 = intersection over union, 0 = intersection over the area/volume of the first (detection) box; the
devkit uses 0 for the "DontCare" regions.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import njit

# box7 columns used by the rotated kernels (camera frame)
X, Y, Z, L, H, W, RY = range(7)


@njit
def _polygon_area(pts: np.ndarray, n: int) -> float:
    acc = 0.0
    for k in range(n):
        k2 = (k + 1) % n
        acc += pts[k, 0] * pts[k2, 1] - pts[k2, 0] * pts[k, 1]
    return 0.5 * acc


@njit
def fill_bev_corners(box7: np.ndarray, corners: np.ndarray, areas: np.ndarray) -> None:
    """Counter-clockwise ground-plane corners (N, 4, 2) of camera boxes ``(x, y, z, l, h, w, ry)`` and their areas.

    The areas come from the same corners as the intersections, so identical boxes give exactly IoU 1.
    """
    for i in range(box7.shape[0]):
        c = math.cos(box7[i, RY])
        s = math.sin(box7[i, RY])
        hl = 0.5 * box7[i, L]
        hw = 0.5 * box7[i, W]
        for k in range(4):
            # local corners (+l/2, +w/2), (-l/2, +w/2), (-l/2, -w/2), (+l/2, -w/2): counter-clockwise on (x, z)
            lx = hl if (k == 0 or k == 3) else -hl
            lz = hw if k < 2 else -hw
            corners[i, k, 0] = c * lx + s * lz + box7[i, X]
            corners[i, k, 1] = -s * lx + c * lz + box7[i, Z]
        areas[i] = _polygon_area(corners[i], 4)


@njit
def convex_intersection_area(a: np.ndarray, b: np.ndarray, buf0: np.ndarray, buf1: np.ndarray) -> float:
    """Area of the intersection of two counter-clockwise quadrilaterals ``a`` and ``b`` (4, 2).

    ``buf0``/``buf1`` are (16, 2) scratch arrays (a convex 4-gon clipped by a 4-gon has at most 8 vertices).
    """
    n = 4
    for k in range(4):
        buf0[k, 0] = a[k, 0]
        buf0[k, 1] = a[k, 1]
    src = buf0
    dst = buf1
    for e in range(4):
        ex0 = b[e, 0]
        ez0 = b[e, 1]
        dx = b[(e + 1) % 4, 0] - ex0
        dz = b[(e + 1) % 4, 1] - ez0
        m = 0
        for k in range(n):
            px = src[k, 0]
            pz = src[k, 1]
            qx = src[(k + 1) % n, 0]
            qz = src[(k + 1) % n, 1]
            # >= 0: on or left of the clip edge, i.e. inside a counter-clockwise polygon
            cp = dx * (pz - ez0) - dz * (px - ex0)
            cq = dx * (qz - ez0) - dz * (qx - ex0)
            if cp >= 0:
                dst[m, 0] = px
                dst[m, 1] = pz
                m += 1
                if cq < 0:
                    t = cp / (cp - cq)
                    dst[m, 0] = px + t * (qx - px)
                    dst[m, 1] = pz + t * (qz - pz)
                    m += 1
            elif cq >= 0:
                t = cp / (cp - cq)
                dst[m, 0] = px + t * (qx - px)
                dst[m, 1] = pz + t * (qz - pz)
                m += 1
        n = m
        if n < 3:
            return 0.0
        tmp = src
        src = dst
        dst = tmp
    area = _polygon_area(src, n)
    return area if area > 0 else 0.0


@njit
def _image_overlaps_kernel(
    gt_off: np.ndarray,
    dt_off: np.ndarray,
    pair_off: np.ndarray,
    gt_box: np.ndarray,
    dt_box: np.ndarray,
    criterion: int,
    out: np.ndarray,
) -> None:
    for f in range(gt_off.shape[0] - 1):
        g0 = gt_off[f]
        d0 = dt_off[f]
        nd = dt_off[f + 1] - d0
        base = pair_off[f]
        for i in range(g0, gt_off[f + 1]):
            gx1 = gt_box[i, 0]
            gy1 = gt_box[i, 1]
            gx2 = gt_box[i, 2]
            gy2 = gt_box[i, 3]
            for j in range(d0, d0 + nd):
                # the devkit's imageBoxOverlap(det, gt), same operation order (inlined: saves compile time)
                iw = min(dt_box[j, 2], gx2) - max(dt_box[j, 0], gx1)
                ih = min(dt_box[j, 3], gy2) - max(dt_box[j, 1], gy1)
                o = 0.0
                if iw > 0 and ih > 0:
                    inter = iw * ih
                    a_area = (dt_box[j, 2] - dt_box[j, 0]) * (dt_box[j, 3] - dt_box[j, 1])
                    if criterion == -1:
                        o = inter / (a_area + (gx2 - gx1) * (gy2 - gy1) - inter)
                    elif criterion == 0:
                        o = inter / a_area
                    else:
                        o = inter / ((gx2 - gx1) * (gy2 - gy1))
                out[base + (i - g0) * nd + (j - d0)] = o


@njit
def _rotated_overlaps_kernel(
    gt_off: np.ndarray,
    dt_off: np.ndarray,
    pair_off: np.ndarray,
    gt_box7: np.ndarray,
    dt_box7: np.ndarray,
    gc: np.ndarray,
    dc: np.ndarray,
    ga: np.ndarray,
    da: np.ndarray,
    criterion: int,
    use_height: bool,
    buf0: np.ndarray,
    buf1: np.ndarray,
    out: np.ndarray,
) -> None:
    for f in range(gt_off.shape[0] - 1):
        g0 = gt_off[f]
        d0 = dt_off[f]
        nd = dt_off[f + 1] - d0
        base = pair_off[f]
        for i in range(g0, gt_off[f + 1]):
            g = gt_box7[i]
            g_diag = math.sqrt(g[L] * g[L] + g[W] * g[W])
            for j in range(d0, d0 + nd):
                d = dt_box7[j]
                o = 0.0
                d_area = da[j]
                g_area = ga[i]
                # cheap reject first: circumscribed circles apart
                rx = d[X] - g[X]
                rz = d[Z] - g[Z]
                rd = 0.5 * (math.sqrt(d[L] * d[L] + d[W] * d[W]) + g_diag)
                if d_area > 0 and g_area > 0 and rx * rx + rz * rz <= rd * rd * 1.0000001:
                    inter = convex_intersection_area(dc[j], gc[i], buf0, buf1)
                    if inter > 0 and use_height:
                        # vertical extent [y - h, y]; sizes taken as y - (y - h) so identical boxes stay identical
                        d_bot = d[Y] - d[H]
                        g_bot = g[Y] - g[H]
                        ih = min(d[Y], g[Y]) - max(d_bot, g_bot)
                        inter = inter * ih if ih > 0 else 0.0
                        d_area = d_area * (d[Y] - d_bot)
                        g_area = g_area * (g[Y] - g_bot)
                    if inter > 0:
                        if criterion == -1:
                            o = inter / (d_area + g_area - inter)
                        elif criterion == 0:
                            o = inter / d_area
                        else:
                            o = inter / g_area
                out[base + (i - g0) * nd + (j - d0)] = o


def bev_corners(box7: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N, 4, 2) counter-clockwise (x, z) corners, (N,) polygon areas) of camera boxes (N, 7)."""
    box7 = np.ascontiguousarray(box7, dtype=np.float64).reshape(-1, 7)
    corners = np.empty((box7.shape[0], 4, 2))
    areas = np.empty(box7.shape[0])
    fill_bev_corners(box7, corners, areas)
    return corners, areas


def frame_image_overlaps(
    gt_off: np.ndarray, dt_off: np.ndarray, pair_off: np.ndarray, gt_box: np.ndarray, dt_box: np.ndarray, criterion: int
) -> np.ndarray:
    """Per-frame (gt x det) 2D overlaps, flattened frame by frame (row-major gt, det) at ``pair_off[f]``."""
    out = np.zeros(int(pair_off[-1]))
    _image_overlaps_kernel(gt_off, dt_off, pair_off, gt_box, dt_box, criterion, out)
    return out


def frame_rotated_overlaps(
    gt_off: np.ndarray,
    dt_off: np.ndarray,
    pair_off: np.ndarray,
    gt_box7: np.ndarray,
    dt_box7: np.ndarray,
    criterion: int,
    use_height: bool,
) -> np.ndarray:
    """Per-frame (gt x det) BEV or 3D overlaps, same layout as :func:`frame_image_overlaps`."""
    # allocations stay in Python: numba's np.empty/np.zeros would add a second of first-time compilation
    out = np.zeros(int(pair_off[-1]))
    gc, ga = bev_corners(gt_box7)
    dc, da = bev_corners(dt_box7)
    buf0 = np.empty((16, 2))
    buf1 = np.empty((16, 2))
    _rotated_overlaps_kernel(
        gt_off, dt_off, pair_off, gt_box7, dt_box7, gc, dc, ga, da, criterion, bool(use_height), buf0, buf1, out
    )
    return out


def pairwise_overlaps(gt: np.ndarray, dt: np.ndarray, metric: str, criterion: int = -1) -> np.ndarray:
    """Dense (num_gt, num_det) overlap matrix for one frame (a convenience for tests and tools).

    ``metric``: 'bbox' (rows ``x1, y1, x2, y2``) or 'bev' / '3d' (rows ``x, y, z, l, h, w, ry`` in camera frame).
    """
    gt = np.ascontiguousarray(gt, dtype=np.float64)
    dt = np.ascontiguousarray(dt, dtype=np.float64)
    gt_off = np.array([0, gt.shape[0]], dtype=np.int64)
    dt_off = np.array([0, dt.shape[0]], dtype=np.int64)
    pair_off = np.array([0, gt.shape[0] * dt.shape[0]], dtype=np.int64)
    if metric == "bbox":
        flat = frame_image_overlaps(gt_off, dt_off, pair_off, gt.reshape(-1, 4), dt.reshape(-1, 4), criterion)
    elif metric in ("bev", "3d"):
        flat = frame_rotated_overlaps(
            gt_off, dt_off, pair_off, gt.reshape(-1, 7), dt.reshape(-1, 7), criterion, metric == "3d"
        )
    else:
        raise ValueError(f"unknown metric {metric!r} (expected 'bbox', 'bev' or '3d')")
    return flat.reshape(gt.shape[0], dt.shape[0])
