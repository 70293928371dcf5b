"""A numba ``njit`` that degrades gracefully.

``cache=True`` makes the second process start in milliseconds instead of compiling for seconds. numba refuses
``cache=True`` at decoration time when it finds no writable cache location (read-only install, no home); we then
compile without caching rather than failing. Without numba at all, the plain Python functions still run (slowly).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

from ....utils.common_utils import njit_cached

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a hard requirement in requirements.txt
    numba = None
    HAVE_NUMBA = False
    warnings.warn(
        "numba is not installed: the KITTI evaluator falls back to pure Python and is very slow", stacklevel=2
    )


# Every kernel made here, so that the first evaluation can tell whether it is about to compile.
_KERNELS: list[Any] = []
_announced = False


def njit(fn: Callable[..., Any]) -> Callable[..., Any]:
    if not HAVE_NUMBA:  # pragma: no cover
        return fn
    kernel = njit_cached(fn)
    _KERNELS.append(kernel)
    return kernel


def uncached_kernels() -> list[str]:
    """Names of the kernels without an on-disk cache index yet: their first call compiles them."""
    missing = []
    for kernel in _KERNELS:
        cache_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
        index = getattr(cache_file, "_index_path", None)
        if not kernel.signatures and (index is None or not os.path.exists(index)):
            missing.append(kernel.py_func.__name__)
    return missing


def announce_compilation(logger: logging.Logger | None = None) -> bool:
    """Log once per process that the evaluator is compiling (several seconds with no output otherwise).
    Returns whether it logged."""
    global _announced
    if _announced:
        return False
    _announced = True
    missing = uncached_kernels()
    if missing:
        (logger or logging.getLogger("pcdet")).info(
            f"KITTI evaluation: compiling {len(missing)} numba kernels on first use (about 10 s; cached for later runs)"
        )
    return bool(missing)
