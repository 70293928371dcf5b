"""The shared numba helpers: the bounded sorted insertion behind two selections (ball query's neighbour lists and
the kNN's sample threshold), the cached decorator, and the thread count that follows torch's without changing it."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from pcdet.utils import numba_utils
from pcdet.utils.numba_utils import insert_sorted, njit_cached


@njit_cached
def _keep_smallest(values: np.ndarray, capacity: int, kept: np.ndarray) -> int:
    count = 0
    for v in values:
        count = insert_sorted(kept, count, capacity, v)
    return count


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
@pytest.mark.parametrize("capacity", [1, 3, 16, 40])
def test_insert_sorted_keeps_the_smallest_values_ascending(dtype, capacity):
    rng = np.random.default_rng(capacity)
    values = rng.integers(0, 12, size=30).astype(dtype)  # many ties, and fewer values than some capacities
    kept = np.full(capacity, -1, dtype)
    count = _keep_smallest(values, capacity, kept)
    expected = np.sort(values)[:capacity]
    assert count == len(expected)
    np.testing.assert_array_equal(kept[:count], expected)


@njit_cached(parallel=True)
def _row_sums(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape[0])
    for i in numba.prange(x.shape[0]):
        out[i] = x[i].sum()
    return out


def test_njit_cached_decorates_with_and_without_arguments():
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(_row_sums(x), x.sum(axis=1))
    assert _keep_smallest.__name__ == "_keep_smallest" and hasattr(_keep_smallest, "py_func")


@pytest.mark.parametrize("parallel", [False, True])
def test_njit_cached_compiles_uncached_without_a_cache_location(monkeypatch, parallel):
    calls = []

    def fake_njit(**options):  # numba refuses cache=True at decoration time when it finds no writable location
        calls.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return lambda fn: fn

    monkeypatch.setattr(numba_utils.numba, "njit", fake_njit)
    decorated = njit_cached(parallel=True)(abs) if parallel else njit_cached(abs)
    assert decorated(-2) == 2
    assert calls == [{"parallel": parallel, "cache": True}, {"parallel": parallel}]


_FRESH_PROCESS = """
import numpy as np, torch
torch.set_num_threads(1)
torch.get_num_threads()  # torch initialises its OpenMP threads before numba's pool starts, as in a training run
{call}
import numba
print(numba.get_num_threads(), torch.get_num_threads())
"""
_CALLS = {
    "PointDistiller kNN": "from pcdet.models.kd.knn import knn_indices\n"
    "knn_indices(torch.rand(64, 8), torch.rand(300, 8), 5)",
    "PointNet++ farthest point sampling": "from pcdet.ops.pointnet2.pointnet2_batch import pointnet2_utils\n"
    "pointnet2_utils.farthest_point_sample(torch.rand(2, 500, 3), 64)",
}


@pytest.mark.parametrize("caller", sorted(_CALLS))
def test_numba_kernels_follow_torch_threads_and_leave_them_alone(caller):
    """Starting numba's OpenMP pool sets the OpenMP thread count that torch reads as its own (both load one
    libgomp); it happens once per process, so a fresh interpreter checks each caller."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}  # a pool larger than torch's 1 thread
    script = _FRESH_PROCESS.format(call=_CALLS[caller])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["1", "1"]
