"""A 64-beam spinning LiDAR in the style of the Velodyne HDL-64E that recorded KITTI.

Beam layout (public spec): two blocks of 32 lasers, the upper one from +2.0 deg to -8.33 deg (1/3 deg spacing), the
lower one from -8.83 deg to -24.8 deg (~1/2 deg spacing); 10 Hz spin; mounted 1.73 m above the road in KITTI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import raycast

SENSOR_HEIGHT = 1.73


def _default_elevations() -> np.ndarray:
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.8, 32)
    return np.deg2rad(np.concatenate([upper, lower]))


@dataclass(frozen=True)
class LidarSpec:
    elevations: np.ndarray = field(default_factory=_default_elevations)  # radians, descending
    num_cols: int = 2160  # 0.1667 deg azimuth step, ~138k rays per spin
    min_range: float = 2.5  # returns from the ego car's roof are removed
    max_range: float = 110.0
    range_noise: float = 0.02  # metres, 1 sigma
    base_dropout: float = 0.02

    def directions(self) -> np.ndarray:
        return _directions(tuple(np.round(self.elevations, 9)), self.num_cols)


_DIR_CACHE: dict = {}


def _directions(elevations: tuple, num_cols: int) -> np.ndarray:
    key = (elevations, num_cols)
    if key not in _DIR_CACHE:
        el = np.asarray(elevations)[:, None]
        az = (np.arange(num_cols) * (2.0 * np.pi / num_cols))[None, :]
        d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], axis=-1)
        _DIR_CACHE[key] = np.ascontiguousarray(d)
    return _DIR_CACHE[key]


def scan_windows(prims: np.ndarray, spec: LidarSpec) -> tuple[np.ndarray, ...]:
    """For each primitive, the inclusive beam and (unwrapped) column range its angular footprint covers."""
    n = len(prims)
    if n == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e - 1, e, e - 1
    az_c, az_half, el_lo, el_hi = raycast.angular_bounds(prims)
    el = spec.elevations
    # elevations are descending: beams with el_lo <= el <= el_hi form a contiguous index range
    neg = -el
    beam_lo = np.searchsorted(neg, -el_hi, side="left")
    beam_hi = np.searchsorted(neg, -el_lo, side="right") - 1
    step = 2.0 * np.pi / spec.num_cols
    full = az_half >= np.pi
    col_lo = np.where(full, 0, np.floor((az_c - az_half) / step)).astype(np.int64)
    col_hi = np.where(full, spec.num_cols - 1, np.ceil((az_c + az_half) / step)).astype(np.int64)
    shift = np.where(col_lo < 0, spec.num_cols, 0)  # cast_scan wraps columns modulo num_cols
    col_lo = col_lo + shift
    col_hi = np.minimum(col_hi + shift, col_lo + spec.num_cols - 1)
    return beam_lo.astype(np.int64), beam_hi.astype(np.int64), col_lo, col_hi
