"""KITTI object labels computed from the scene geometry.

- 3D box: bottom centre in the rectified camera frame, (h, w, l), ry = -(heading + pi/2) (KITTI/OpenPCDet convention).
- 2D box: projection with P2 of the 3D box (after clipping its edges against the z = 0.1 m plane so that boxes
  reaching behind the camera project correctly), clipped to the image.
- truncated: 1 - (area of the clipped 2D box) / (area of the unclipped one), i.e. the share leaving the image.
- occluded: from the visible share of rays aimed at the object (a dense virtual grid over its angular footprint,
  independent of the LiDAR's beam spacing): >= 0.8 -> 0 (fully visible), >= 0.4 -> 1 (partly), else 2 (largely).
- alpha: observation angle, ry - atan2(x, z) of the object's centre in camera coordinates, wrapped to [-pi, pi).
Objects that are practically invisible (< 5% of their rays) are not labelled, as an annotator could not see them;
objects farther than ``DONTCARE_DEPTH`` or smaller than ``DONTCARE_HEIGHT_PX`` become DontCare regions.
"""

from __future__ import annotations

import math

import numpy as np

from .calib import IMAGE_HEIGHT, IMAGE_WIDTH, lidar_to_rect, rect_to_image
from .object_models import LABELLED_CLASSES
from .raycast import visibility

NEAR_PLANE = 0.1
MIN_VISIBLE = 0.05
DONTCARE_DEPTH = 72.0
DONTCARE_HEIGHT_PX = 10.0
VIS_GRID = (16, 12)  # azimuth x elevation rays per object for the occlusion estimate

# KITTI difficulty definition: (min 2D height px, max occlusion, max truncation) for easy / moderate / hard
DIFFICULTY = ((40.0, 0, 0.15), (25.0, 1, 0.30), (25.0, 2, 0.50))

# box corners in the KITTI camera frame: x along the length, y down (0 = bottom), z along the width
_CORNERS = np.array(
    [[0.5, 0, 0.5], [0.5, 0, -0.5], [-0.5, 0, -0.5], [-0.5, 0, 0.5], [0.5, -1, 0.5], [0.5, -1, -0.5],
     [-0.5, -1, -0.5], [-0.5, -1, 0.5]]
)  # fmt: skip
_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def camera_box_corners(location: np.ndarray, hwl: np.ndarray, ry: float) -> np.ndarray:
    """8 corners (rectified camera frame) of a KITTI label box given bottom centre, (h, w, l) and ry."""
    h, w, l = hwl
    local = _CORNERS * np.array([l, h, w])
    c, s = math.cos(ry), math.sin(ry)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return local @ rot.T + np.asarray(location)


def project_box(corners_rect: np.ndarray, calib: dict) -> np.ndarray | None:
    """Unclipped 2D box (x1, y1, x2, y2) of the part of a 3D box in front of the near plane; None if none is."""
    front = corners_rect[:, 2] >= NEAR_PLANE
    if not front.any():
        return None
    pts = [corners_rect[front]]
    if not front.all():
        extra = []
        for i, j in _EDGES:
            if front[i] != front[j]:
                a, b = corners_rect[i], corners_rect[j]
                t = (NEAR_PLANE - a[2]) / (b[2] - a[2])
                extra.append(a + t * (b - a))
        pts.append(np.array(extra))
    uv, _ = rect_to_image(np.concatenate(pts), calib)
    return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])


def clip_box(box: np.ndarray) -> np.ndarray:
    return np.array(
        [
            np.clip(box[0], 0.0, IMAGE_WIDTH - 1),
            np.clip(box[1], 0.0, IMAGE_HEIGHT - 1),
            np.clip(box[2], 0.0, IMAGE_WIDTH - 1),
            np.clip(box[3], 0.0, IMAGE_HEIGHT - 1),
        ]
    )


def difficulty_of(height_px: float, occluded: int, truncated: float) -> int:
    """0 easy, 1 moderate, 2 hard, -1 none (KITTI's evaluation ignores such boxes)."""
    for level, (min_h, max_occ, max_trunc) in enumerate(DIFFICULTY):
        if height_px >= min_h and occluded <= max_occ and truncated <= max_trunc:
            return level
    return -1


def _visibility_rays(box_lidar: np.ndarray) -> np.ndarray:
    """A regular (azimuth, elevation) grid of unit rays covering the object's box as seen from the sensor."""
    x, y, z, l, w, h, yaw = box_lidar
    c, s = math.cos(yaw), math.sin(yaw)
    dx = np.array([1, 1, -1, -1]) * l / 2
    dy = np.array([1, -1, -1, 1]) * w / 2
    cx = x + c * dx - s * dy
    cy = y + s * dx + c * dy
    az = np.arctan2(cy, cx)
    az = az[0] + np.array([wrap_angle(a - az[0]) for a in az])  # no seam inside one object
    dist = np.hypot(cx, cy)
    el = np.concatenate([np.arctan2(z - h / 2, dist), np.arctan2(z + h / 2, dist)])
    na, ne = VIS_GRID
    a_grid = az.min() + (np.arange(na) + 0.5) / na * (az.max() - az.min())
    e_grid = el.min() + (np.arange(ne) + 0.5) / ne * (el.max() - el.min())
    aa, ee = np.meshgrid(a_grid, e_grid, indexing="ij")
    aa, ee = aa.ravel(), ee.ravel()
    return np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], axis=-1)


def build_labels(
    scene, calib: dict, bounds: tuple, point_counts: np.ndarray, label_range: tuple | None = None
) -> tuple[list[dict], list[dict]]:
    """Labels (list of dicts) for the labelled objects in the camera's view, plus DontCare regions.

    ``label_range`` = (x_min, y_min, x_max, y_max) in LiDAR BEV: objects whose centre lies outside become DontCare,
    so a data set made for a detector with a smaller point-cloud range does not count unreachable objects as misses
    (as KITTI's annotators marked far objects DontCare)."""
    candidates = []
    for idx, obj in enumerate(scene.objects):
        if obj.name not in LABELLED_CLASSES:
            continue
        x, y, zc, l, w, h, yaw = obj.box
        bottom = lidar_to_rect(np.array([[x, y, zc - h / 2]]), calib)[0]
        # round first, so that the 2D box is exactly the projection of the 3D box as written in the file
        location = np.round(bottom, 2)
        hwl = np.round(np.array([h, w, l]), 2)
        ry = round(wrap_angle(-yaw - math.pi / 2), 2)
        corners = camera_box_corners(location, hwl, ry)
        full = project_box(corners, calib)
        if full is None:
            continue
        clipped = clip_box(full)
        if clipped[2] - clipped[0] < 1.0 or clipped[3] - clipped[1] < 1.0:
            continue
        area_full = max((full[2] - full[0]) * (full[3] - full[1]), 1e-6)
        truncated = 1.0 - (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / area_full
        candidates.append((idx, obj, location, hwl, ry, clipped, float(np.clip(truncated, 0.0, 1.0))))
    if not candidates:
        return [], []

    dirs = np.stack([_visibility_rays(c[1].box) for c in candidates])
    own_lo = np.array([c[1].prim_lo for c in candidates], dtype=np.int64)
    own_hi = np.array([c[1].prim_hi for c in candidates], dtype=np.int64)
    n_own, n_vis = visibility(np.zeros(3), dirs, own_lo, own_hi, scene.prims, *bounds, scene.ground)

    labels, dontcare = [], []
    for (idx, obj, location, hwl, ry, bbox, truncated), own, vis in zip(candidates, n_own, n_vis):
        frac = vis / own if own > 0 else 0.0
        if frac < MIN_VISIBLE:
            continue
        height_px = bbox[3] - bbox[1]
        outside = label_range is not None and not (
            label_range[0] <= obj.box[0] <= label_range[2] and label_range[1] <= obj.box[1] <= label_range[3]
        )
        if outside or location[2] > DONTCARE_DEPTH or height_px < DONTCARE_HEIGHT_PX:
            dontcare.append({"name": "DontCare", "bbox": np.round(bbox, 2)})
            continue
        occluded = 0 if frac >= 0.8 else (1 if frac >= 0.4 else 2)
        truncated = round(truncated, 2)
        alpha = round(wrap_angle(ry - math.atan2(location[0], location[2])), 2)
        bbox = np.round(bbox, 2)
        labels.append(
            {
                "name": obj.name,
                "truncated": truncated,
                "occluded": occluded,
                "alpha": alpha,
                "bbox": bbox,
                "dimensions_hwl": hwl,
                "location": location,
                "rotation_y": ry,
                "box_lidar": obj.box.copy(),
                "num_points_in_gt": int(point_counts[idx]),
                "visible_fraction": float(frac),
                "difficulty": difficulty_of(bbox[3] - bbox[1], occluded, truncated),
                "object_index": idx,
            }
        )
    return labels, dontcare


def _fmt(values) -> str:
    return " ".join(f"{float(v) + 0.0:.2f}" for v in values)  # + 0.0 turns -0.00 into 0.00


def label_text(labels: list[dict], dontcare: list[dict]) -> str:
    """KITTI label file text: type trunc occ alpha x1 y1 x2 y2 h w l x y z ry; DontCare regions last."""
    lines = []
    for lb in labels:
        geometry = _fmt([lb["alpha"], *lb["bbox"], *lb["dimensions_hwl"], *lb["location"], lb["rotation_y"]])
        lines.append(f"{lb['name']} {lb['truncated']:.2f} {lb['occluded']:d} {geometry}")
    for dc in dontcare:
        lines.append(f"DontCare -1 -1 -10 {_fmt(dc['bbox'])} -1 -1 -1 -1000 -1000 -1000 -10")
    return "\n".join(lines) + ("\n" if lines else "")
