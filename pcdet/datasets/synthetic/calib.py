"""KITTI-like calibration for the synthetic data set: sampling, text format and the projection math we need.

The values are built from the physical rig (HDL-64E on the roof, a stereo pair of 1242x375 cameras ~0.27 m in front
of it, colour camera 2 about 6 cm left of the reference camera 0, 0.54 m baseline), with small per-frame jitter the
way KITTI's recordings were calibrated on different days. The generator keeps this small module self-contained so
that it does not depend on the project's calibration parser (the tests check both agree through the text format).
"""

from __future__ import annotations

import numpy as np

IMAGE_WIDTH = 1242
IMAGE_HEIGHT = 375
IMAGE_SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH)  # (rows, cols) as KITTI infos store it

# Velodyne (x fwd, y left, z up) -> camera (x right, y down, z fwd) before the small mounting rotation.
_AXES_VELO_TO_CAM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def _small_rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def sample_calib(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw one KITTI-style calibration: P0..P3 (3x4), R0_rect (3x3), Tr_velo_to_cam and Tr_imu_to_velo (3x4)."""
    f = rng.uniform(707.0, 721.6)
    cx = rng.uniform(601.0, 610.0)
    cy = rng.uniform(172.0, 185.0)
    baseline = rng.uniform(0.532, 0.540)
    cam2_offset = rng.uniform(0.059, 0.065)  # colour camera 2 sits this far left of camera 0
    cam3_offset = cam2_offset - baseline

    def projection(offset_x: float, dy: float, dz: float) -> np.ndarray:
        p = np.zeros((3, 4))
        p[0, 0] = p[1, 1] = f
        p[0, 2], p[1, 2], p[2, 2] = cx, cy, 1.0
        p[:, 3] = [f * offset_x + cx * dz, f * dy + cy * dz, dz]
        return p

    calib = {
        "P0": projection(0.0, 0.0, 0.0),
        "P1": projection(-baseline, 0.0, 0.0),
        "P2": projection(cam2_offset, rng.uniform(-0.001, 0.001), rng.uniform(0.002, 0.006)),
        "P3": projection(cam3_offset, rng.uniform(0.002, 0.004), rng.uniform(0.002, 0.004)),
        "R0_rect": _small_rotation(*rng.uniform(-0.006, 0.006, size=3)),
    }
    rot = _small_rotation(*rng.uniform(-0.008, 0.008, size=3)) @ _AXES_VELO_TO_CAM
    # Camera 0 is ~0.27 m ahead of and ~0.08 m below the LiDAR; t = -R @ (camera position in velodyne frame).
    cam_pos_velo = np.array([rng.uniform(0.26, 0.33), rng.uniform(-0.03, 0.03), rng.uniform(-0.09, -0.05)])
    calib["Tr_velo_to_cam"] = np.hstack([rot, (-rot @ cam_pos_velo)[:, None]])
    imu_rot = _small_rotation(*rng.uniform(-0.015, 0.015, size=3))
    imu_t = np.array([rng.uniform(-0.82, -0.80), rng.uniform(0.30, 0.33), rng.uniform(-0.81, -0.79)])
    calib["Tr_imu_to_velo"] = np.hstack([imu_rot, imu_t[:, None]])
    return calib


_KEY_ORDER = ("P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo")


def calib_to_text(calib: dict[str, np.ndarray]) -> str:
    """Serialise exactly like KITTI's object calib files (one matrix per line, row-major, %.12e)."""
    lines = []
    for key in _KEY_ORDER:
        values = " ".join(f"{v:.12e}" for v in np.asarray(calib[key], dtype=np.float64).reshape(-1))
        lines.append(f"{key}: {values}")
    return "\n".join(lines) + "\n"


def parse_calib_text(text: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`calib_to_text` (also reads real KITTI calib files)."""
    out = {}
    for line in text.strip().splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        arr = np.array([float(v) for v in values.split()], dtype=np.float64)
        out[key.strip()] = arr.reshape(3, 3) if arr.size == 9 else arr.reshape(3, 4)
    return out


def velo_to_rect_matrix(calib: dict[str, np.ndarray]) -> np.ndarray:
    """4x4 matrix taking homogeneous velodyne points to the rectified camera frame (R0_rect @ Tr_velo_to_cam)."""
    r0 = np.eye(4)
    r0[:3, :3] = calib["R0_rect"]
    tr = np.eye(4)
    tr[:3, :4] = calib["Tr_velo_to_cam"]
    return r0 @ tr


def _affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    # explicit per-row arithmetic: (N,3)@(3,3) through BLAS is slow here when the cores are shared
    pts = np.asarray(points, dtype=np.float64)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    out = np.empty((len(pts), m.shape[0]))
    for r in range(m.shape[0]):
        out[:, r] = m[r, 0] * x + m[r, 1] * y + m[r, 2] * z + m[r, 3]
    return out


def lidar_to_rect(points: np.ndarray, calib: dict[str, np.ndarray]) -> np.ndarray:
    return _affine(points, velo_to_rect_matrix(calib)[:3])


def rect_to_lidar(points: np.ndarray, calib: dict[str, np.ndarray]) -> np.ndarray:
    return _affine(points, np.linalg.inv(velo_to_rect_matrix(calib))[:3])


def rect_to_image(points_rect: np.ndarray, calib: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Project rectified-camera points with P2; returns (uv (N,2), depth (N,))."""
    uvw = _affine(points_rect, calib["P2"])
    depth = uvw[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / depth[:, None]
    return uv, depth
