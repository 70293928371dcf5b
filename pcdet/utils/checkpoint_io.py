"""Checkpoint and result-file IO: one safe loader used everywhere, atomic writes.

Loading always uses ``torch.load(weights_only=True)``; the only extra types accepted are the numpy scalar/array
types OpenPCDet pickles into ``optimizer_state`` (e.g. Adam betas as numpy float64). Anything else in the pickle
(a class, a function call) is refused before it can run. Plain pickles (info, dbinfo and result ``.pkl`` files) go
through :func:`safe_pickle_load`, which resolves only numpy array/scalar/dtype reconstruction and a few built-in
containers.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import importlib
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .cli import InputError


class CheckpointError(InputError, RuntimeError):
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


# (module, name) pairs a data pickle may reference: numpy arrays, scalars and dtypes (numpy 1.x spells the modules
# numpy.core.*, numpy 2 numpy._core.*; both are accepted), data-only built-ins, and the codec that protocol-2 pickles
# use for bytes. numpy.dtypes.*DType classes are matched by name below.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell modules the Python 2 way (__builtin__, copy_reg): map them as pickle itself does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        canonical = module.replace("numpy.core.", "numpy._core.", 1) if module.startswith("numpy.core.") else module
        if (canonical, name) not in _PICKLE_ALLOWED and not (canonical == "numpy.dtypes" and name.endswith("DType")):
            raise pickle.UnpicklingError(f"it references {module}.{name}, which is not plain data")
        for candidate in (canonical, canonical.replace("numpy._core.", "numpy.core.", 1)):
            try:  # numpy >= 2 has numpy._core, numpy 1.x only numpy.core
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve {module}.{name} in this numpy version")


def safe_pickle_load(path: str | os.PathLike) -> Any:
    """Load an info/dbinfo/result ``.pkl`` without running code: only numpy arrays, scalars and dtypes and plain
    containers are rebuilt. Raises ``CheckpointError`` naming the file for anything else and for truncated files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f).load()
    except Exception as exc:  # a damaged pickle can fail in many ways (EOFError, ValueError, KeyError, ...)
        if isinstance(exc, pickle.UnpicklingError) and "not plain data" in str(exc):
            raise CheckpointError(f"refusing to load {path}: {exc}. Only load files from sources you trust.") from exc
        raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({exc!r})") from exc


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file in the target's directory, fsync, rename over ``path``: readers only ever
    see the old or the new file, never a part of it; a failure leaves the old file and no temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: torch.save(obj, f))


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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
