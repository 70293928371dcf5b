"""From a scene to a LiDAR scan: ray cast, then the sensor effects (intensity, range noise, dropout, range limits)."""

from __future__ import annotations

import numpy as np
from numba import njit

from . import raycast
from .lidar import LidarSpec, scan_windows
from .materials import MATERIAL_DROPOUT
from .raycast import N_FIELDS
from .scene import Scene


@njit(cache=True)
def _ground_reflectivity(x, y, road, jitter):
    """Asphalt on the road with brighter lane markings, concrete sidewalks, grass/soil beyond (see RoadLayout)."""
    phi, ox, oy, u_right, u_left, walk_r, walk_l, cross_s, cross_w, lw, n_r, n_l, asphalt, walk, terrain = road
    c, sn = np.cos(phi), np.sin(phi)
    dx, dy = x - ox, y - oy
    s = dx * c + dy * sn
    u = -dx * sn + dy * c
    on_road = u_right < u < u_left
    if not np.isnan(cross_s) and abs(s - cross_s) < cross_w / 2:
        on_road = True
    if on_road:
        refl = asphalt
        # dashed lines between lanes (3 m on / 6 m off), solid lines at the outer lane edges
        if abs(u + n_r * lw) < 0.07 or abs(u - n_l * lw) < 0.07:
            refl = 0.6
        elif (s % 9.0) < 3.0:
            for k in range(int(-n_r) + 1, int(n_l)):
                if abs(u - k * lw) < 0.07:
                    refl = 0.6
    elif u_right - walk_r < u < u_left + walk_l:
        refl = walk
    else:
        refl = terrain
    return refl * jitter


@njit(cache=True)
def _finish_scan(dirs, t, hit, cos_inc, prims, mat_dropout, road, rand, min_range, base_dropout, range_noise):
    """Sensor effects for every valid ray; ``rand`` (n_rays, 4) holds the frame's random numbers (uniform jitter,
    intensity noise, range noise, dropout draw) so that the result depends only on the frame's generator."""
    nb, nc = t.shape
    out = np.empty((nb * nc, 4), dtype=np.float32)
    obj = np.empty(nb * nc, dtype=np.int64)
    n = 0
    for b in range(nb):
        for a in range(nc):
            k = hit[b, a]
            r = t[b, a]
            if k == -1 or r < min_range:
                continue
            i = b * nc + a
            dx, dy, dz = dirs[b, a, 0], dirs[b, a, 1], dirs[b, a, 2]
            drop = base_dropout
            if k == -2:
                refl = _ground_reflectivity(dx * r, dy * r, road, 0.85 + 0.3 * rand[i, 0])
                drop += min(max((r - 50.0) / 70.0, 0.0), 0.85)  # grazing ground returns fade out
                o = -1
            else:
                refl = prims[k, 11]
                drop += mat_dropout[int(prims[k, 9])]
                o = int(prims[k, 10])
            cs = cos_inc[b, a]
            # reflectivity, a Lambert-ish incidence term and a mild range falloff; weak returns read as zero
            inten = refl * (0.55 + 0.45 * cs) * np.exp(-r / 150.0) + 0.015 * rand[i, 1]
            inten = min(max(inten, 0.0), 0.99)
            if inten < 0.02:
                inten = 0.0
                if r > 30.0:
                    drop += 0.4  # weak far returns are lost
            if cs < 0.08:
                drop += 0.3
            if rand[i, 3] < drop:
                continue
            rn = r + range_noise * rand[i, 2]
            out[n, 0] = dx * rn
            out[n, 1] = dy * rn
            out[n, 2] = dz * rn
            out[n, 3] = np.round(inten * 100.0) / 100.0  # KITTI intensities come in steps of 0.01
            obj[n] = o
            n += 1
    return out[:n], obj[:n]


def _road_params(scene: Scene) -> np.ndarray:
    r = scene.road
    return np.array(
        [
            r.phi, r.origin[0], r.origin[1], r.u_right, r.u_left, r.sidewalk_right, r.sidewalk_left,
            np.nan if r.cross_s is None else r.cross_s, r.cross_width, r.lane_width, r.lanes_right, r.lanes_left,
            r.asphalt, r.sidewalk_refl, r.terrain_refl,
        ],
        dtype=np.float64,
    )  # fmt: skip


def simulate_scan(scene: Scene, spec: LidarSpec, rng: np.random.Generator) -> dict:
    """Returns points (N, 4) float32 [x, y, z, intensity] and the scene-object index of each point (-1 = none)."""
    dirs = spec.directions()
    windows = scan_windows(scene.prims, spec)
    prims = scene.prims if len(scene.prims) else np.zeros((1, N_FIELDS))
    t, hit, cos_inc = raycast.cast_scan(dirs, scene.prims, *windows, scene.ground, spec.max_range)
    n_rays = t.size
    rand = np.empty((n_rays, 4))
    rand[:, 0] = rng.random(n_rays)
    rand[:, 1:3] = rng.standard_normal((n_rays, 2))
    rand[:, 3] = rng.random(n_rays)
    points, obj = _finish_scan(
        dirs, t, hit, cos_inc, prims, MATERIAL_DROPOUT, _road_params(scene), rand, spec.min_range,
        spec.base_dropout, spec.range_noise,
    )  # fmt: skip
    return {"points": points, "object": obj}
