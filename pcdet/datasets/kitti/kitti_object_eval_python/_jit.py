"""A numba ``njit`` that degrades gracefully.

``cache=True`` makes the second process start in milliseconds instead of compiling for seconds. numba refuses
``cache=True`` at decoration time when it finds no writable cache location (read-only install, no home); we then
compile without caching rather than failing. Without numba at all, the plain Python functions still run (slowly).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a hard requirement in requirements.txt
    numba = None
    HAVE_NUMBA = False
    warnings.warn(
        "numba is not installed: the KITTI evaluator falls back to pure Python and is very slow", stacklevel=2
    )


def njit(fn: Callable[..., Any]) -> Callable[..., Any]:
    if not HAVE_NUMBA:  # pragma: no cover
        return fn
    try:
        return numba.njit(cache=True)(fn)
    except RuntimeError:  # "no locator available": nowhere writable to cache
        return numba.njit(fn)
