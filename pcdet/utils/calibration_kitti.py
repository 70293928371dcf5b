"""KITTI calibration: LiDAR ↔ rectified camera ↔ left colour image (P2).

Frames: LiDAR (x forward, y left, z up) --Tr_velo_to_cam--> reference camera --R0_rect--> rectified camera
(x right, y down, z forward) --P2--> image pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .cli import InputError

# Key spellings accepted for each matrix: the calib file's names, and the short names of OpenPCDet's calib dicts.
_KEY_ALIASES = {
    "P2": ("P2",),
    "R0_rect": ("R0_rect", "R0"),
    "Tr_velo_to_cam": ("Tr_velo_to_cam", "Tr_velo2cam"),
}


_FLOAT32_MAX = float(np.finfo(np.float32).max)


class CalibrationError(InputError, ValueError):
    """A calibration file or dict that lacks a required matrix, holds one of the wrong size, a non-finite number, or
    a projection that cannot be inverted; or a file that is not text."""


def get_calib_from_file(calib_file: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a KITTI calib .txt: every ``NAME: v1 v2 ...`` line → float32 array (P* 3×4, R0_rect 3×3, Tr_* 3×4).

    Returns the file's own key names plus OpenPCDet's short aliases ``R0`` and ``Tr_velo2cam``.
    """
    calib_file = Path(calib_file)
    if not calib_file.is_file():
        raise FileNotFoundError(f"calibration file not found: {calib_file}")
    try:
        text = calib_file.read_text()
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{calib_file}: not a text file ({exc})") from exc
    out: dict[str, np.ndarray] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        name, values = line.split(":", 1)
        try:
            numbers = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError as exc:
            raise CalibrationError(f"{calib_file}: non-numeric value in '{name.strip()}'") from exc
        if not np.all(np.abs(numbers) <= _FLOAT32_MAX):
            raise CalibrationError(f"{calib_file}: NaN, inf or out-of-range value in '{name.strip()}'")
        numbers = numbers.astype(np.float32)
        if numbers.size == 12:
            numbers = numbers.reshape(3, 4)
        elif numbers.size == 9:
            numbers = numbers.reshape(3, 3)
        out[name.strip()] = numbers
    if "R0_rect" in out:
        out["R0"] = out["R0_rect"]
    if "Tr_velo_to_cam" in out:
        out["Tr_velo2cam"] = out["Tr_velo_to_cam"]
    return out


def _pick(calib: dict, key: str, rows: int, cols: int, source: str) -> np.ndarray:
    for alias in _KEY_ALIASES[key]:
        if alias in calib:
            try:
                mat = np.asarray(calib[alias], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise CalibrationError(f"{source}: matrix '{key}' is not numeric ({exc})") from exc
            break
    else:
        raise CalibrationError(f"{source}: missing calibration matrix '{key}'")
    if mat.size == rows * cols:
        mat = mat.reshape(rows, cols)
    elif mat.ndim == 2 and mat.shape[0] >= rows and mat.shape[1] >= cols:  # 4×4 homogeneous form (as in infos)
        mat = mat[:rows, :cols]
    else:
        raise CalibrationError(f"{source}: matrix '{key}' has shape {mat.shape}, expected {rows}×{cols}")
    if not np.all(np.abs(mat) <= _FLOAT32_MAX):
        raise CalibrationError(f"{source}: matrix '{key}' holds NaN, inf or out-of-range values")
    return mat


class Calibration:
    """Projection helpers for one KITTI frame; built from a calib file path or a dict of matrices."""

    def __init__(self, calib_file_or_dict: str | os.PathLike | dict):
        if isinstance(calib_file_or_dict, dict):
            calib, source = calib_file_or_dict, "calibration dict"
        else:
            calib, source = get_calib_from_file(calib_file_or_dict), str(calib_file_or_dict)
        self.P2 = _pick(calib, "P2", 3, 4, source)
        self.R0 = _pick(calib, "R0_rect", 3, 3, source)
        self.V2C = _pick(calib, "Tr_velo_to_cam", 3, 4, source)

        # LiDAR → rectified camera as one 4×4, and its exact inverse for the way back.
        v2c = np.eye(4)
        v2c[:3, :4] = self.V2C
        r0 = np.eye(4)
        r0[:3, :3] = self.R0
        self._lidar_to_rect = r0 @ v2c
        # A singular (or numerically singular) transform cannot take points back from the camera to the LiDAR.
        with np.errstate(all="ignore"):
            cond = np.linalg.cond(self._lidar_to_rect)
        if not cond < 1e12:
            raise CalibrationError(f"{source}: R0_rect · Tr_velo_to_cam is singular, not a rigid transform")
        self._rect_to_lidar = np.linalg.inv(self._lidar_to_rect)

        # Intrinsics of P2 = [[fu, 0, cu, -fu*bx], [0, fv, cv, -fv*by], [0, 0, 1, bz]].
        self.cu, self.cv = self.P2[0, 2], self.P2[1, 2]
        self.fu, self.fv = self.P2[0, 0], self.P2[1, 1]
        if self.fu == 0 or self.fv == 0:
            raise CalibrationError(f"{source}: P2 has a zero focal length (fu={self.fu}, fv={self.fv})")
        self.tx = self.P2[0, 3] / (-self.fu)
        self.ty = self.P2[1, 3] / (-self.fv)

    @staticmethod
    def cart_to_hom(pts: np.ndarray) -> np.ndarray:
        """``(N, 3)`` → homogeneous ``(N, 4)``."""
        return np.hstack((pts, np.ones((pts.shape[0], 1), dtype=pts.dtype)))

    def lidar_to_rect(self, pts_lidar: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts_lidar, dtype=np.float64)[:, 0:3]
        return pts @ self._lidar_to_rect[:3, :3].T + self._lidar_to_rect[:3, 3]

    def rect_to_lidar(self, pts_rect: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts_rect, dtype=np.float64)[:, 0:3]
        return pts @ self._rect_to_lidar[:3, :3].T + self._rect_to_lidar[:3, 3]

    def rect_to_img(self, pts_rect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``(N, 2)`` and depth ``(N,)`` in the rectified camera frame (z minus P2's z offset)."""
        pts = np.asarray(pts_rect, dtype=np.float64)[:, 0:3]
        hom = pts @ self.P2[:, :3].T + self.P2[:, 3]
        pts_img = hom[:, 0:2] / hom[:, 2:3]
        depth = hom[:, 2] - self.P2[2, 3]
        return pts_img, depth

    def lidar_to_img(self, pts_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rect_to_img(self.lidar_to_rect(pts_lidar))

    def img_to_rect(self, u: np.ndarray, v: np.ndarray, depth_rect: np.ndarray) -> np.ndarray:
        """Back-project pixels with known rectified depth → rectified camera points ``(N, 3)`` (exact inverse of
        :meth:`rect_to_img`, including P2's small z offset)."""
        u, v, depth_rect = (np.asarray(a, dtype=np.float64) for a in (u, v, depth_rect))
        hom_z = depth_rect + self.P2[2, 3]
        x = (u * hom_z - self.cu * depth_rect - self.P2[0, 3]) / self.fu
        y = (v * hom_z - self.cv * depth_rect - self.P2[1, 3]) / self.fv
        return np.stack([x, y, depth_rect], axis=-1).reshape(-1, 3)

    def corners3d_to_img_boxes(self, corners3d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rectified-camera corners ``(N, 8, 3)`` → enclosing 2D boxes ``(N, 4)``, projected corners ``(N, 8, 2)``."""
        corners3d = np.asarray(corners3d, dtype=np.float64)
        pts_img, _ = self.rect_to_img(corners3d.reshape(-1, 3))
        corners_img = pts_img.reshape(-1, 8, 2)
        boxes = np.concatenate([corners_img.min(axis=1), corners_img.max(axis=1)], axis=1)
        return boxes, corners_img
