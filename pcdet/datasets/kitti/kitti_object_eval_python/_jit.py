"""The KITTI evaluator's numba decorator: ``numba_utils.njit_cached`` (on-disk cache, uncached where no cache
location is writable), recording every kernel so that the first evaluation can say it is about to compile."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from ....utils.numba_utils import njit_cached

_KERNELS: list[Any] = []
_announced = False


def njit(fn: Callable[..., Any]) -> Callable[..., Any]:
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
