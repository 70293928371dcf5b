"""A cheap stand-in for the camera image: sky/ground background plus the LiDAR points projected into image 2,
coloured by depth and shaded by intensity. It mainly fixes the image shape and lets people eyeball alignment."""

from __future__ import annotations

import numpy as np

from .calib import IMAGE_HEIGHT, IMAGE_WIDTH, lidar_to_rect, rect_to_image

# depth colour ramp, near -> far: red, yellow, green, cyan, blue (a small hand-made lookup table)
_STOPS = np.array([[230, 50, 40], [250, 200, 40], [60, 200, 80], [40, 180, 230], [70, 70, 220]], dtype=np.float64)
_LUT = np.stack([np.interp(np.linspace(0, 4, 256), np.arange(5), _STOPS[:, c]) for c in range(3)], axis=1)


def render_image(points: np.ndarray, calib: dict, is_ground: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image of the points seen by camera 2; ground points (if flagged) are drawn in gray."""
    img = np.empty((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    horizon_uv, _ = rect_to_image(lidar_to_rect(np.array([[1000.0, 0.0, 0.0]]), calib), calib)
    horizon = int(np.clip(horizon_uv[0, 1], 0, IMAGE_HEIGHT))
    img[:horizon] = (178, 186, 196)
    img[horizon:] = (92, 92, 92)
    if len(points) == 0:
        return img
    sel = points[:, 0] > 0.5  # the camera looks along +x; skip the rear half before projecting
    ahead = points[sel]
    ground = np.zeros(len(ahead), dtype=bool) if is_ground is None else np.asarray(is_ground)[sel]
    rect = lidar_to_rect(ahead[:, :3], calib)
    front = rect[:, 2] > 0.5
    uv, depth = rect_to_image(rect[front], calib)
    u = np.round(uv[:, 0]).astype(np.int64)
    v = np.round(uv[:, 1]).astype(np.int64)
    inside = (u >= 0) & (u < IMAGE_WIDTH) & (v >= 0) & (v < IMAGE_HEIGHT)
    u, v, depth = u[inside], v[inside], depth[inside]
    intensity = ahead[front][inside, 3]
    ground = ground[front][inside]
    order = np.argsort(-depth, kind="stable")  # far first so that near points paint over them
    u, v, depth, intensity, ground = u[order], v[order], depth[order], intensity[order], ground[order]
    shade = 0.75 + 0.25 * np.clip(intensity * 2.0, 0.0, 1.0)
    colour = _LUT[np.clip(depth / 60.0 * 255.0, 0, 255).astype(np.int64)] * shade[:, None]
    gray = (70.0 + 120.0 * np.clip(intensity * 1.5, 0.0, 1.0))[:, None]
    colour = np.where(ground[:, None], gray, colour).astype(np.uint8)
    # splat size shrinks with depth so that near surfaces look closed; far-first order is kept per size class
    size = np.clip((25.0 / depth).astype(np.int64), 1, 4)
    for du in range(4):
        for dv in range(4):
            m = size > max(du, dv)
            uu = np.minimum(u[m] + du, IMAGE_WIDTH - 1)
            vv = np.minimum(v[m] + dv, IMAGE_HEIGHT - 1)
            img[vv, uu] = colour[m]
    return img
