"""What every numba kernel of the project shares: the cached ``njit`` decorator, the thread count that follows
torch's, and the bounded sorted insertion two of the kernels' selections are built on.

numba's on-disk cache is keyed on the decorated function's own file: a kernel that calls ``insert_sorted`` keeps its
cached machine code when only this file changes. Clear ``__pycache__`` (or the cache directory) after editing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import torch


def njit_cached(fn: Callable[..., Any] | None = None, *, parallel: bool = False) -> Any:
    """``numba.njit(cache=True)`` (``@njit_cached`` or ``@njit_cached(parallel=True)``), so later processes load
    the compiled kernel in milliseconds; without a writable cache location numba refuses ``cache=True`` at
    decoration time, and the kernel is then compiled uncached."""

    def wrap(kernel: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return numba.njit(parallel=parallel, cache=True)(kernel)
        except RuntimeError:  # "no locator available"
            return numba.njit(parallel=parallel)(kernel)

    return wrap if fn is None else wrap(fn)


def numba_threads() -> int:
    """Sets numba's thread count to torch's (capped by numba's pool), so one knob controls both; returns it."""
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    # numba and torch load the same libgomp. Starting numba's OpenMP pool (the first set_num_threads) sets OpenMP's
    # thread count to the pool size, and torch, once it has initialised its threads, reads that count as its own:
    # with 1 thread asked for, every later torch op ran on 2 (measured: topk + matmul 1.0 s thread / 1.5 s process
    # CPU instead of 1.5 / 1.5). Setting torch's count again restores it.
    torch.set_num_threads(torch_threads)
    return threads


@njit_cached
def insert_sorted(kept: np.ndarray, count: int, capacity: int, value: Any) -> int:
    """Keep ``kept[:count]`` the ``capacity`` smallest values seen so far, ascending (a new value equal to the
    largest kept one is not taken); inserts ``value`` where it belongs and returns the new count."""
    if count < capacity:
        pos = count
        count += 1
    elif value < kept[capacity - 1]:
        pos = capacity - 1
    else:
        return count
    while pos > 0 and kept[pos - 1] > value:
        kept[pos] = kept[pos - 1]
        pos -= 1
    kept[pos] = value
    return count
