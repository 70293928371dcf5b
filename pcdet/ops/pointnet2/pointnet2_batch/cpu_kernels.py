"""numba kernels: the CPU paths of farthest point sampling, ball query and three_nn in ``pointnet2_utils``.

The PyTorch formulations there suit a GPU; on a CPU farthest point sampling is thousands of tiny tensor operations
(one per sampling step) and the neighbour searches are dense (queries x points) distance matrices. Here each is a
plain loop with the arithmetic of OpenPCDet's CUDA kernels, in the input's dtype and in the same order
(``(a - b) * (a - b)`` summed x, y, z, strict ``<``), so the indices equal the PyTorch path's, tie breaks included.
Threads follow ``torch.get_num_threads()`` (``pointnet2_utils`` calls ``numba_utils.numba_threads``), so one knob
controls both libraries.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ....utils.numba_utils import insert_sorted, njit_cached


@njit_cached(parallel=True)
def farthest_point_sample(xyz: np.ndarray, npoint: int, out: np.ndarray) -> None:
    """``xyz`` (3, B, N) (coordinate-major, so the inner loop reads contiguous rows) -> ``out`` (B, npoint)."""
    _, batch, n = xyz.shape
    for b in numba.prange(batch):
        x, y, z = xyz[0, b], xyz[1, b], xyz[2, b]
        # Squared distance to the chosen set; OpenPCDet starts it at 1e10, not infinity.
        temp = np.full(n, 1e10, dtype=xyz.dtype)
        last = 0
        out[b, 0] = 0
        for j in range(1, npoint):
            x1, y1, z1 = x[last], y[last], z[last]
            best = -1.0
            best_i = 0
            for k in range(n):
                d = (x[k] - x1) * (x[k] - x1) + (y[k] - y1) * (y[k] - y1) + (z[k] - z1) * (z[k] - z1)
                t = temp[k]
                if d < t:
                    t = d
                    temp[k] = d
                if t > best:  # strict: the lowest index wins a tie, as torch.argmax
                    best = t
                    best_i = k
            out[b, j] = best_i
            last = best_i


@njit_cached
def _lower_bound(sorted_keys: np.ndarray, key: int) -> int:
    """First position whose key is >= ``key`` (a hand-written np.searchsorted: numba's compiles far slower)."""
    lo, hi = 0, sorted_keys.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit_cached
def _cell_grid(pts: np.ndarray, cell: float):
    """Cubic cells of side ``cell`` over ``pts`` (N, 3): the grid origin and shape, and the point indices sorted
    by cell key (stably, so ascending within a cell) with their keys."""
    n = pts.shape[0]
    lo = np.empty(3)
    dims = np.empty(3, dtype=np.int64)
    for a in range(3):
        lo[a] = pts[:, a].min()
        dims[a] = int(math.floor((pts[:, a].max() - lo[a]) / cell)) + 1
    keys = np.empty(n, dtype=np.int64)
    for i in range(n):
        cx = int(math.floor((pts[i, 0] - lo[0]) / cell))
        cy = int(math.floor((pts[i, 1] - lo[1]) / cell))
        cz = int(math.floor((pts[i, 2] - lo[2]) / cell))
        keys[i] = (cx * dims[1] + cy) * dims[2] + cz
    order = np.argsort(keys, kind="mergesort")
    return lo, dims, order, keys[order]


@njit_cached(parallel=True)
def ball_query(xyz: np.ndarray, new_xyz: np.ndarray, radius2, cell: float, nsample: int, out: np.ndarray) -> None:
    """First ``nsample`` indices (ascending) of ``xyz`` (B, N, 3) with squared distance ``< radius2`` from each
    centre of ``new_xyz`` (B, M, 3), padded with the first one (0 when none) -> ``out`` (B, M, nsample).

    Points are bucketed into cubic cells of side ``cell`` (a bit over the radius), so a centre only looks at the
    27 cells around it; the kept set is the smallest indices, i.e. the ones a scan in index order finds.
    """
    batch = xyz.shape[0]
    m = new_xyz.shape[1]
    for b in range(batch):
        pts = xyz[b]
        lo, dims, order, sorted_keys = _cell_grid(pts, cell)
        for q in numba.prange(m):
            row = out[b, q]
            qx, qy, qz = new_xyz[b, q, 0], new_xyz[b, q, 1], new_xyz[b, q, 2]
            cx = int(math.floor((qx - lo[0]) / cell))
            cy = int(math.floor((qy - lo[1]) / cell))
            cz = int(math.floor((qz - lo[2]) / cell))
            z_lo, z_hi = max(cz - 1, 0), min(cz + 1, dims[2] - 1)
            count = 0
            if z_lo <= z_hi:
                for ix in range(max(cx - 1, 0), min(cx + 1, dims[0] - 1) + 1):
                    for iy in range(max(cy - 1, 0), min(cy + 1, dims[1] - 1) + 1):
                        # The z-neighbours of one (x, y) column are consecutive keys: one range.
                        base = (ix * dims[1] + iy) * dims[2]
                        start = _lower_bound(sorted_keys, base + z_lo)
                        stop = _lower_bound(sorted_keys, base + z_hi + 1)
                        for t in range(start, stop):
                            j = order[t]
                            d2 = (qx - pts[j, 0]) * (qx - pts[j, 0]) + (qy - pts[j, 1]) * (qy - pts[j, 1])
                            d2 += (qz - pts[j, 2]) * (qz - pts[j, 2])
                            if d2 < radius2:
                                count = insert_sorted(row, count, nsample, j)
            first = row[0] if count > 0 else 0
            for s in range(count, nsample):
                row[s] = first


@njit_cached(parallel=True)
def three_nn(unknown: np.ndarray, known: np.ndarray, dist2: np.ndarray, idx: np.ndarray) -> None:
    """Three nearest ``known`` (B, M, 3) points of each ``unknown`` (B, N, 3) point: squared distances and indices
    (B, N, 3), nearest first; ties keep the lower index; with M < 3 the missing ones are (inf, 0)."""
    batch, n, _ = unknown.shape
    m = known.shape[1]
    for flat in numba.prange(batch * n):
        b, i = flat // n, flat % n
        ux, uy, uz = unknown[b, i, 0], unknown[b, i, 1], unknown[b, i, 2]
        best1 = best2 = best3 = np.inf
        i1 = i2 = i3 = 0
        for k in range(m):
            x, y, z = known[b, k, 0], known[b, k, 1], known[b, k, 2]
            d = (ux - x) * (ux - x) + (uy - y) * (uy - y) + (uz - z) * (uz - z)
            if d < best3:
                if d < best1:
                    best3, i3, best2, i2, best1, i1 = best2, i2, best1, i1, d, k
                elif d < best2:
                    best3, i3, best2, i2 = best2, i2, d, k
                else:
                    best3, i3 = d, k
        dist2[b, i, 0], dist2[b, i, 1], dist2[b, i, 2] = best1, best2, best3
        idx[b, i, 0], idx[b, i, 1], idx[b, i, 2] = i1, i2, i3
