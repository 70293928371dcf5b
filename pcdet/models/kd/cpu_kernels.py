"""numba kernels: the CPU paths of PointDistiller's k-nearest-neighbour selection and edge loss.

On a CPU the PyTorch formulations are bound by memory traffic: ``topk`` over a 6000 × 10199 distance block costs
~55 µs per row, and the edge loss materialises several (R, K, A) tensors (relu(a_i + b_j) for both sides, their
difference, its square, and as many again in the backward). The kernels below compute the same quantities from the
(R, A) / (M, A) projections directly. ``use_cpu_kernels`` decides per call; ``reference_paths`` forces the PyTorch
formulations (they stay the CUDA path, and the tests and benchmarks compare the two).

Determinism: each row of a ``prange`` loop writes only its own outputs, and every sum over rows or scatter into
shared rows runs serially in row order, so results do not depend on the thread count. Threads follow
``torch.get_num_threads()`` (``numba_utils.numba_threads``, as for the pointnet2 kernels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import numpy as np
import torch

from ...utils.numba_utils import insert_sorted, njit_cached

_reference_depth = 0


@contextlib.contextmanager
def reference_paths() -> Iterator[None]:
    """Within the block every caller takes its PyTorch formulation, on the CPU too."""
    global _reference_depth
    _reference_depth += 1
    try:
        yield
    finally:
        _reference_depth -= 1


def use_cpu_kernels(*tensors: torch.Tensor) -> bool:
    """True for float32 (and integer index) CPU tensors outside ``reference_paths``: the kernels are compiled for
    float32 only; other dtypes and devices keep the PyTorch path."""
    if _reference_depth:
        return False
    return all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors)


# ------------------------------------------------------------------------------------------ k smallest per row
@njit_cached
def _order_key(bits: np.int32, index: int) -> np.int64:
    """int64 whose order is (float value, index): the float's bits made monotone as a signed int (negative floats
    flip their magnitude bits), -0.0 mapped onto +0.0 so that equal values tie, the index in the low 32 bits."""
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    if key == -1:  # -0.0
        key = 0
    return (np.int64(key) << 32) | index


@njit_cached
def _select(a: np.ndarray, n: int, r: int) -> None:
    """Quickselect: reorder ``a[:n]`` so that ``a[:r]`` holds its ``r`` smallest (in no particular order)."""
    lo, hi = 0, n - 1
    while lo < hi:
        x, y, z = a[lo], a[(lo + hi) >> 1], a[hi]  # median of three as the pivot
        if x > y:
            x, y = y, x
        if y > z:
            y = z
        pivot = max(x, y)
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if r - 1 <= j:
            hi = j
        elif r - 1 >= i:
            lo = i
        else:
            return


@njit_cached
def _sample_threshold(row: np.ndarray, count: int, stride: int, r: int, best: np.ndarray) -> np.float32:
    """The ``r``-th smallest of ``count`` evenly spaced samples of ``row`` (kept sorted in ``best``)."""
    filled = 0
    for t in range(count):
        filled = insert_sorted(best, filled, r, row[t * stride])
    return best[r - 1]


@njit_cached(parallel=True)
def smallest_k(block: np.ndarray, k: int, out: np.ndarray, chunks: int) -> None:
    """``out[i]`` = indices of the ``k`` smallest values of ``block[i]`` (float32), unordered; equal values are
    taken by lower index. Rows go in ``chunks`` contiguous runs, one per thread, each with its own scratch.

    A threshold from a sample bounds the candidates: the r-th smallest of s samples has at least r row values at or
    below it, r·M/s of them in expectation, so with r ≈ 2k·s/M a single pass keeps ~2k candidates and an exact
    selection among them finishes the row. A row where fewer than k values pass falls back to selecting among all.
    """
    rows, m = block.shape
    bits = block.view(np.int32)
    samples = min(m, 512)
    stride = m // samples
    r = min(samples, (2 * k * samples + m - 1) // m + 4)
    per_chunk = (rows + chunks - 1) // chunks
    for chunk in numba.prange(chunks):
        best = np.empty(r, block.dtype)
        keys = np.empty(m, np.int64)
        for i in range(chunk * per_chunk, min(rows, (chunk + 1) * per_chunk)):
            row = block[i]
            threshold = _sample_threshold(row, samples, stride, r, best)
            count = 0
            for j in range(m):
                if row[j] <= threshold:
                    keys[count] = j
                    count += 1
            if count < k:
                for j in range(m):
                    keys[j] = j
                count = m
            for t in range(count):
                keys[t] = _order_key(bits[i, keys[t]], keys[t])
            _select(keys, count, k)
            for t in range(k):
                out[i, t] = keys[t] & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------- the edge loss
@njit_cached(parallel=True)
def edge_loss_sum(
    a_t: np.ndarray, b_t: np.ndarray, a_s: np.ndarray, b_s: np.ndarray, neighbours: np.ndarray, weights: np.ndarray
) -> float:
    """Σ_i φ_i Σ_k Σ_c (relu(a_t[i,c] + b_t[j,c]) − relu(a_s[i,c] + b_s[j,c]))², j = neighbours[i, k]; the
    responses in float32 as PyTorch forms them, the sums in float64."""
    rows, k = neighbours.shape
    width = a_t.shape[1]
    per_row = np.zeros(rows, np.float64)
    for i in numba.prange(rows):
        acc = 0.0
        for kk in range(k):
            j = neighbours[i, kk]
            for c in range(width):
                t = max(a_t[i, c] + b_t[j, c], np.float32(0))
                s = max(a_s[i, c] + b_s[j, c], np.float32(0))
                d = np.float64(t - s)
                acc += d * d
        per_row[i] = weights[i] * acc
    return per_row.sum()


@njit_cached
def edge_loss_backward(
    a_t: np.ndarray,
    b_t: np.ndarray,
    a_s: np.ndarray,
    b_s: np.ndarray,
    neighbours: np.ndarray,
    weights: np.ndarray,
    coef: float,
    grad_a_t: np.ndarray,
    grad_b_t: np.ndarray,
    grad_a_s: np.ndarray,
    grad_b_s: np.ndarray,
    teacher: bool,
) -> None:
    """Adds ``coef`` · ∂(edge_loss_sum)/∂ each input into the float64 ``grad_*`` arrays (the teacher's only when
    ``teacher``). Serial: neighbour rows j are shared between queries, and row order fixes the summation order.
    A relu passes gradient where its input is > 0, as torch's."""
    rows, k = neighbours.shape
    width = a_t.shape[1]
    for i in range(rows):
        scale = 2.0 * coef * weights[i]
        for kk in range(k):
            j = neighbours[i, kk]
            for c in range(width):
                pre_t = a_t[i, c] + b_t[j, c]
                pre_s = a_s[i, c] + b_s[j, c]
                d = scale * np.float64(max(pre_t, np.float32(0)) - max(pre_s, np.float32(0)))
                if pre_s > 0:
                    grad_a_s[i, c] -= d
                    grad_b_s[j, c] -= d
                if teacher and pre_t > 0:
                    grad_a_t[i, c] += d
                    grad_b_t[j, c] += d


@njit_cached
def scatter_rows(grad: np.ndarray, neighbours: np.ndarray, out: np.ndarray) -> None:
    """``out[neighbours[i, k]] += grad[i]`` for every edge, serially in row order: the backward of
    embedding_bag(neighbours, b, mode="sum") without its sort of all N·K indices."""
    rows, k = neighbours.shape
    width = grad.shape[1]
    for i in range(rows):
        for kk in range(k):
            j = neighbours[i, kk]
            for c in range(width):
                out[j, c] += grad[i, c]
