"""Ray casting for the synthetic LiDAR: ground surface + oriented boxes, vertical cylinders and ellipsoids.

Primitives are rows of a float64 array (see ``F_*``). All rays start at the sensor origin (0, 0, 0) except in
:func:`visibility`, which takes an origin. The LiDAR scan is cast "rasteriser style": each primitive only tests the
rays of the (beam, azimuth) window its bounding cylinder covers, so the cost is proportional to the scan size plus
the primitives' angular footprints rather than rays x primitives.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
# Column layout of a primitive row. Sizes are half extents (box), radius/half-height (cylinder: hx, hz) or radii.
F_TYPE, F_CX, F_CY, F_CZ, F_HX, F_HY, F_HZ, F_COS, F_SIN, F_MAT, F_OBJ, F_REFL = range(12)
N_FIELDS = 12
GROUND_ID = -2
NO_HIT = -1
_EPS = 1e-9


@njit(cache=True)
def _slab(o, d, h, tmin, tmax, cos_in, axis_cos):
    if abs(d) < _EPS:
        if abs(o) > h:
            return 1.0, -1.0, cos_in  # parallel and outside: empty interval
        return tmin, tmax, cos_in
    t1 = (-h - o) / d
    t2 = (h - o) / d
    if t1 > t2:
        t1, t2 = t2, t1
    if t1 > tmin:
        tmin = t1
        cos_in = axis_cos
    if t2 < tmax:
        tmax = t2
    return tmin, tmax, cos_in


@njit(cache=True)
def hit_primitive(p, ox, oy, oz, dx, dy, dz):
    """First entry of the ray o + t d into primitive ``p``: returns (t, |cos incidence|); t = inf on a miss."""
    kind = int(p[0])
    rx = ox - p[1]
    ry = oy - p[2]
    rz = oz - p[3]
    if kind == 1:  # vertical cylinder: side, then the caps
        r = p[4]
        hz = p[6]
        best = np.inf
        best_cos = 0.0
        a = dx * dx + dy * dy
        if a > _EPS:
            b = rx * dx + ry * dy
            c = rx * rx + ry * ry - r * r
            disc = b * b - a * c
            if disc >= 0.0:
                t = (-b - np.sqrt(disc)) / a
                if t > 0.0:
                    z = rz + t * dz
                    if -hz <= z <= hz:
                        best = t
                        best_cos = abs((rx + t * dx) * dx + (ry + t * dy) * dy) / r
        if abs(dz) > _EPS:
            for cap in (-hz, hz):
                t = (cap - rz) / dz
                if 0.0 < t < best:
                    px = rx + t * dx
                    py = ry + t * dy
                    if px * px + py * py <= r * r:
                        best = t
                        best_cos = abs(dz)
        return best, best_cos
    c = p[7]
    s = p[8]
    lox = c * rx + s * ry
    loy = -s * rx + c * ry
    ldx = c * dx + s * dy
    ldy = -s * dx + c * dy
    if kind == 0:  # oriented box (yaw about z): slab test, remembering which face we entered through
        tmin = -np.inf
        tmax = np.inf
        cos_in = 0.0
        tmin, tmax, cos_in = _slab(lox, ldx, p[4], tmin, tmax, cos_in, abs(ldx))
        tmin, tmax, cos_in = _slab(loy, ldy, p[5], tmin, tmax, cos_in, abs(ldy))
        tmin, tmax, cos_in = _slab(rz, dz, p[6], tmin, tmax, cos_in, abs(dz))
        if tmin > tmax or tmin <= 0.0:
            return np.inf, 0.0
        return tmin, cos_in
    # ellipsoid: scale to the unit sphere
    ax = p[4]
    ay = p[5]
    az = p[6]
    sox = lox / ax
    soy = loy / ay
    soz = rz / az
    sdx = ldx / ax
    sdy = ldy / ay
    sdz = dz / az
    a = sdx * sdx + sdy * sdy + sdz * sdz
    b = sox * sdx + soy * sdy + soz * sdz
    cc = sox * sox + soy * soy + soz * soz - 1.0
    disc = b * b - a * cc
    if disc < 0.0:
        return np.inf, 0.0
    t = (-b - np.sqrt(disc)) / a
    if t <= 0.0:
        return np.inf, 0.0
    nx = (lox + t * ldx) / (ax * ax)
    ny = (loy + t * ldy) / (ay * ay)
    nz = (rz + t * dz) / (az * az)
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    return t, abs(nx * ldx + ny * ldy + nz * dz) / max(norm, _EPS)


@njit(cache=True)
def hit_ground(g, ox, oy, oz, dx, dy, dz):
    """Ray vs. the ground z = g0 + g1 x + g2 y + g3 (x^2 + y^2); returns (t, |cos incidence|)."""
    g0, g1, g2, g3 = g[0], g[1], g[2], g[3]
    a = g3 * (dx * dx + dy * dy)
    b = 2.0 * g3 * (ox * dx + oy * dy) + g1 * dx + g2 * dy - dz
    c = g3 * (ox * ox + oy * oy) + g1 * ox + g2 * oy + g0 - oz  # < 0 while the origin is above ground
    t = np.inf
    if abs(a) < 1e-12:
        if abs(b) > _EPS:
            t = -c / b
    else:
        disc = b * b - 4.0 * a * c
        if disc >= 0.0:
            sq = np.sqrt(disc)
            t1 = (-b - sq) / (2.0 * a)
            t2 = (-b + sq) / (2.0 * a)
            if t1 > t2:
                t1, t2 = t2, t1
            t = t1 if t1 > 0.0 else t2
    if not t > 0.0:
        return np.inf, 0.0
    x = ox + t * dx
    y = oy + t * dy
    nx = -(g1 + 2.0 * g3 * x)
    ny = -(g2 + 2.0 * g3 * y)
    norm = np.sqrt(nx * nx + ny * ny + 1.0)
    return t, abs(nx * dx + ny * dy + dz) / norm


@njit(cache=True)
def cast_scan(dirs, prims, beam_lo, beam_hi, col_lo, col_hi, ground, max_range):
    """Nearest hit for every ray of a (beams, cols, 3) direction grid.

    Returns t (inf = no return), the hit primitive index (``GROUND_ID`` for ground, ``NO_HIT``) and |cos incidence|.
    """
    nb, nc = dirs.shape[0], dirs.shape[1]
    t_buf = np.full((nb, nc), np.inf)
    id_buf = np.full((nb, nc), -1, dtype=np.int32)
    cos_buf = np.zeros((nb, nc))
    for b in range(nb):
        for a in range(nc):
            t, cs = hit_ground(ground, 0.0, 0.0, 0.0, dirs[b, a, 0], dirs[b, a, 1], dirs[b, a, 2])
            if t < max_range:
                t_buf[b, a] = t
                id_buf[b, a] = GROUND_ID
                cos_buf[b, a] = cs
    for k in range(prims.shape[0]):
        p = prims[k]
        for b in range(beam_lo[k], beam_hi[k] + 1):
            for cc in range(col_lo[k], col_hi[k] + 1):
                a = cc % nc
                t, cs = hit_primitive(p, 0.0, 0.0, 0.0, dirs[b, a, 0], dirs[b, a, 1], dirs[b, a, 2])
                if t < t_buf[b, a] and t < max_range:
                    t_buf[b, a] = t
                    id_buf[b, a] = k
                    cos_buf[b, a] = cs
    return t_buf, id_buf, cos_buf


@njit(cache=True)
def visibility(origin, dirs, own_lo, own_hi, prims, az_c, az_half, el_lo, el_hi, ground):
    """Per object k, rays ``dirs[k]`` are aimed at it; count rays that hit it (n_own) and, of those, rays that no
    other primitive or the ground blocks first (n_visible). Primitives own_lo[k]..own_hi[k]-1 belong to object k.

    The angular bounds (as seen from ``origin``) let us skip primitives a ray cannot touch.
    """
    n_obj, n_rays = dirs.shape[0], dirs.shape[1]
    n_own = np.zeros(n_obj, dtype=np.int64)
    n_vis = np.zeros(n_obj, dtype=np.int64)
    ox, oy, oz = origin[0], origin[1], origin[2]
    for k in range(n_obj):
        for r in range(n_rays):
            dx, dy, dz = dirs[k, r, 0], dirs[k, r, 1], dirs[k, r, 2]
            t_own = np.inf
            for j in range(own_lo[k], own_hi[k]):
                t, _ = hit_primitive(prims[j], ox, oy, oz, dx, dy, dz)
                if t < t_own:
                    t_own = t
            if t_own == np.inf:
                continue
            n_own[k] += 1
            t_limit = t_own - 1e-3
            tg, _ = hit_ground(ground, ox, oy, oz, dx, dy, dz)
            if tg < t_limit:
                continue
            ray_az = np.arctan2(dy, dx)
            ray_el = np.arctan2(dz, np.sqrt(dx * dx + dy * dy))
            blocked = False
            for j in range(prims.shape[0]):
                if own_lo[k] <= j < own_hi[k]:
                    continue
                if ray_el < el_lo[j] or ray_el > el_hi[j]:
                    continue
                diff = ray_az - az_c[j]
                diff = (diff + np.pi) % (2.0 * np.pi) - np.pi
                if abs(diff) > az_half[j]:
                    continue
                t, _ = hit_primitive(prims[j], ox, oy, oz, dx, dy, dz)
                if t < t_limit:
                    blocked = True
                    break
            if not blocked:
                n_vis[k] += 1
    return n_own, n_vis


def angular_bounds(prims: np.ndarray, origin=(0.0, 0.0, 0.0), margin: float = 2e-3):
    """Azimuth centre / half-width and elevation range of each primitive's bounding cylinder seen from ``origin``."""
    if len(prims) == 0:
        z = np.zeros(0)
        return z, z, z, z
    kind = prims[:, F_TYPE].astype(np.int64)
    hx, hy, hz = prims[:, F_HX], prims[:, F_HY], prims[:, F_HZ]
    r_xy = np.where(kind == BOX, np.hypot(hx, hy), np.where(kind == CYLINDER, hx, np.maximum(hx, hy)))
    rx = prims[:, F_CX] - origin[0]
    ry = prims[:, F_CY] - origin[1]
    dist = np.hypot(rx, ry)
    az_c = np.arctan2(ry, rx)
    inside = dist <= r_xy + 0.05
    az_half = np.where(inside, np.pi + 0.1, np.arcsin(np.clip(r_xy / np.maximum(dist, 1e-6), 0.0, 1.0)) + margin)
    d_min = np.maximum(dist - r_xy, 0.05)
    d_max = dist + r_xy
    z_lo = prims[:, F_CZ] - hz - origin[2]
    z_hi = prims[:, F_CZ] + hz - origin[2]
    el_hi = np.where(z_hi > 0, np.arctan2(z_hi, d_min), np.arctan2(z_hi, d_max)) + margin
    el_lo = np.where(z_lo < 0, np.arctan2(z_lo, d_min), np.arctan2(z_lo, d_max)) - margin
    return az_c, az_half, el_lo, el_hi
