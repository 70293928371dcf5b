"""Checkpoint and result-file IO: one safe loader used everywhere, atomic writes.

Loading always uses ``torch.load(weights_only=True)``; the only extra types accepted are the numpy scalar/array
types OpenPCDet pickles into ``optimizer_state`` (e.g. Adam betas as numpy float64). Anything else in the pickle
(a class, a function call) is refused before it can run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded safely: corrupt, truncated, or carrying code."""


def _numpy_safe_globals() -> list:
    allowed: list = [np.dtype, np.ndarray]
    try:
        from numpy._core.multiarray import _reconstruct, scalar

        allowed += [scalar, _reconstruct]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar

        allowed += [scalar, _reconstruct]
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (np.dtypes.Float64DType ...).
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    allowed += [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]
    return allowed


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` plus numpy scalars; a clear ``CheckpointError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files; normalise them
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: it contains objects that are not plain tensors/numbers ({reason}). "
                "Only load checkpoints from sources you trust, and re-save them as plain state dicts."
            ) from exc
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupt ({reason})") from exc


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write via a temp file in the same directory, fsync, then rename: readers see the old or the new file only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic (same guarantees as :func:`atomic_write_bytes`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 would hide checkpoints from teammates)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
