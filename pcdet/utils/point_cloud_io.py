"""Reading LiDAR point-cloud files (KITTI ``.bin``: float32 x, y, z, intensity per point, no header)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .cli import InputError


class PointCloudError(InputError, ValueError):
    """A point-cloud file whose size cannot hold whole points (truncated or not a point cloud at all)."""


def load_points_bin(path: str | os.PathLike, num_features: int = 4) -> np.ndarray:
    """Points ``(N, num_features)`` float32 of a headerless float32 ``.bin``.

    Raises ``FileNotFoundError`` for a missing file and :class:`PointCloudError` (naming the file) when its size is
    not a whole number of points. Values are returned as stored: NaN/inf rows are the caller's decision.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiDAR file not found: {path}")
    point_bytes = 4 * num_features
    data = bytearray(path.read_bytes())  # one read: the size checked is the size parsed; bytearray = writable
    if len(data) % point_bytes != 0:
        raise PointCloudError(
            f"corrupt LiDAR file {path}: {len(data)} bytes is not a multiple of {point_bytes} "
            f"({num_features} float32 per point)"
        )
    return np.frombuffer(data, dtype=np.float32).reshape(-1, num_features)
