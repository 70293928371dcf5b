"""Procedural street scenes built from primitives: a road with lanes, kerbs and sidewalks on gently curved ground,
parked rows and moving vehicles, pedestrians, cyclists, buildings, trees, poles and street furniture.

Everything is placed in the LiDAR frame (x forward, y left, z up, sensor at the origin, 1.73 m above the ground under
it). Objects are made of several primitives so that their point clouds are not plain boxes: a car is wheels + lower
body + glass cabin + roof + licence plates, a pedestrian legs + torso + arms + head, a cyclist a bicycle + rider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from .lidar import SENSOR_HEIGHT
from .raycast import BOX, CYLINDER, ELLIPSOID, N_FIELDS

LABELLED_CLASSES = ("Car", "Van", "Pedestrian", "Cyclist")

# Materials: (reflectivity low, high, extra dropout). Reflectivity is drawn per object within [low, high].
MATERIALS = {
    "paint": (0.0, 0.7, 0.0),
    "glass": (0.0, 0.12, 0.35),
    "tyre": (0.0, 0.08, 0.10),
    "cloth": (0.05, 0.5, 0.0),
    "metal": (0.15, 0.55, 0.02),
    "wall": (0.15, 0.65, 0.0),
    "vegetation": (0.25, 0.55, 0.12),
    "pole": (0.25, 0.70, 0.0),
    "concrete": (0.25, 0.45, 0.0),
    "plastic": (0.08, 0.50, 0.0),
    "retro": (0.85, 0.99, 0.0),
}
MATERIAL_IDS = {name: i for i, name in enumerate(MATERIALS)}
MATERIAL_DROPOUT = np.array([v[2] for v in MATERIALS.values()])


@njit(cache=True)
def _overlaps_any(fps, n, cx, cy, hl, hw, yaw, margin):
    """Separating-axis test of one oriented rectangle against the first n placed footprints (cx, cy, hl, hw, yaw)."""
    ca, sa = math.cos(yaw), math.sin(yaw)
    for i in range(n):
        dx = fps[i, 0] - cx
        dy = fps[i, 1] - cy
        rb = fps[i, 2] + fps[i, 3] + hl + hw
        if dx * dx + dy * dy > (rb + margin) * (rb + margin):
            continue
        cb, sb = math.cos(fps[i, 4]), math.sin(fps[i, 4])
        separated = False
        for k in range(4):
            if k == 0:
                nx, ny = ca, sa
            elif k == 1:
                nx, ny = -sa, ca
            elif k == 2:
                nx, ny = cb, sb
            else:
                nx, ny = -sb, cb
            ra = hl * abs(ca * nx + sa * ny) + hw * abs(-sa * nx + ca * ny)
            rbb = fps[i, 2] * abs(cb * nx + sb * ny) + fps[i, 3] * abs(-sb * nx + cb * ny)
            if abs(dx * nx + dy * ny) > ra + rbb + margin:
                separated = True
                break
        if not separated:
            return True
    return False


@dataclass
class SceneObject:
    name: str  # a KITTI class for labelled objects, else a clutter kind
    box: np.ndarray  # LiDAR box (x, y, z_centre, l, w, h, heading)
    prim_lo: int
    prim_hi: int


@dataclass
class RoadLayout:
    phi: float  # road direction in the LiDAR frame
    origin: np.ndarray  # world position of road coordinate (s=0, u=0)
    lane_width: float
    lanes_right: int
    lanes_left: int
    u_right: float  # kerb positions (u grows to the left)
    u_left: float
    sidewalk_right: float
    sidewalk_left: float
    parking_right: float
    parking_left: float
    cross_s: float | None
    cross_width: float
    kind: str
    asphalt: float
    sidewalk_refl: float
    terrain_refl: float

    def to_world(self, s, u):
        c, sn = math.cos(self.phi), math.sin(self.phi)
        return self.origin[0] + s * c - u * sn, self.origin[1] + s * sn + u * c

    def to_road(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, sn = math.cos(self.phi), math.sin(self.phi)
        dx, dy = x - self.origin[0], y - self.origin[1]
        return dx * c + dy * sn, -dx * sn + dy * c


@dataclass
class Scene:
    prims: np.ndarray
    objects: list[SceneObject]
    ground: np.ndarray  # z = g0 + g1 x + g2 y + g3 (x^2 + y^2)
    road: RoadLayout
    kind: str
    extras: dict = field(default_factory=dict)


def ground_height(g: np.ndarray, x, y):
    return g[0] + g[1] * x + g[2] * y + g[3] * (x * x + y * y)


def _clipped_normal(rng, mean, std, lo, hi):
    return float(np.clip(rng.normal(mean, std), lo, hi))


class SceneBuilder:
    """Accumulates primitives and objects, rejecting placements whose footprints collide."""

    def __init__(self, rng: np.random.Generator, ground: np.ndarray):
        self.rng = rng
        self.ground = ground
        self.rows: list[list[float]] = []
        self.objects: list[SceneObject] = []
        self.fps = np.zeros((64, 5))
        self.n_fps = 0
        # the ego car (sensor on its roof, ~0.8 m behind the front of a 4.5 m car)
        self._add_fp(-0.9, 0.0, 2.4, 1.0, 0.0)

    # ---- placement -------------------------------------------------------------------------------------------
    def _add_fp(self, cx, cy, hl, hw, yaw):
        if self.n_fps == len(self.fps):
            self.fps = np.concatenate([self.fps, np.zeros_like(self.fps)])
        self.fps[self.n_fps] = (cx, cy, hl, hw, yaw)
        self.n_fps += 1

    def free(self, cx, cy, hl, hw, yaw, margin=0.15) -> bool:
        return not _overlaps_any(self.fps, self.n_fps, cx, cy, hl, hw, yaw, margin)

    def reserve(self, cx, cy, hl, hw, yaw, margin=0.15) -> bool:
        if not self.free(cx, cy, hl, hw, yaw, margin):
            return False
        self._add_fp(cx, cy, hl, hw, yaw)
        return True

    def refl(self, material: str) -> float:
        lo, hi, _ = MATERIALS[material]
        return float(self.rng.uniform(lo, hi))

    # ---- primitives in an object's local frame (x along heading, z up from the ground under its centre) -------
    def part(self, kind, pose, lx, ly, z_lo, z_hi, hx, hy, material, refl=None, obj=-1, yaw_offset=0.0):
        x, y, zg, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        yy = yaw + yaw_offset
        self.rows.append(
            [
                kind,
                x + c * lx - s * ly,
                y + s * lx + c * ly,
                zg + 0.5 * (z_lo + z_hi),
                hx,
                hy,
                0.5 * (z_hi - z_lo),
                math.cos(yy),
                math.sin(yy),
                MATERIAL_IDS[material],
                obj,
                self.refl(material) if refl is None else refl,
            ]
        )

    def begin_object(self):
        return len(self.rows), len(self.objects)

    def end_object(self, name, start, x, y, zg, l, w, h, yaw):
        prim_lo, obj_idx = start
        for row in self.rows[prim_lo:]:
            row[10] = obj_idx
        box = np.array([x, y, zg + h / 2.0, l, w, h, yaw])
        self.objects.append(SceneObject(name, box, prim_lo, len(self.rows)))

    def pose(self, x, y, yaw):
        return (x, y, float(ground_height(self.ground, x, y)), yaw)

    # ---- object models -------------------------------------------------------------------------------------
    def vehicle(self, x, y, yaw, dims, van: bool) -> bool:
        l, w, h = dims
        if not self.reserve(x, y, l / 2, w / 2, yaw):
            return False
        rng = self.rng
        start = self.begin_object()
        pose = self.pose(x, y, yaw)
        paint = self.refl("paint")
        wheel_d = rng.uniform(0.58, 0.7)
        clear = rng.uniform(0.16, 0.26)
        ax_f = l / 2 - rng.uniform(0.7, 0.95)
        ax_r = -l / 2 + rng.uniform(0.65, 0.9)
        tyre = self.refl("tyre")
        for ax in (ax_f, ax_r):
            for side in (-1.0, 1.0):
                self.part(BOX, pose, ax, side * (w / 2 - 0.11), 0.0, wheel_d, wheel_d / 2, 0.1, "tyre", tyre)
        if van:
            belt = h * rng.uniform(0.42, 0.5)
            self.part(BOX, pose, 0.0, 0.0, clear, belt, l / 2 - 0.01, w / 2, "paint", paint)
            shield = rng.uniform(0.7, 1.0)
            self.part(BOX, pose, -shield / 2, 0.0, belt, h, (l - shield) / 2 - 0.01, w / 2 - 0.02, "paint", paint)
            self.part(BOX, pose, l / 2 - shield * 0.7, 0.0, belt, h * 0.9, shield * 0.3, w / 2 * 0.92, "glass")
        else:
            belt = h * rng.uniform(0.5, 0.6)
            shoulder = clear + 0.72 * (belt - clear)
            self.part(BOX, pose, 0.0, 0.0, clear, shoulder, l / 2 - 0.01, w / 2, "paint", paint)
            taper = rng.uniform(0.08, 0.2)
            self.part(BOX, pose, 0.0, 0.0, shoulder, belt, l / 2 - 0.01 - taper, w / 2 - 0.03, "paint", paint)
            long_cabin = rng.random() < 0.3  # hatchbacks / wagons / SUVs
            lc = l * (rng.uniform(0.52, 0.64) if long_cabin else rng.uniform(0.4, 0.52))
            xc = -l * (rng.uniform(0.08, 0.16) if long_cabin else rng.uniform(0.0, 0.1))
            xc = float(np.clip(xc, -l / 2 + lc / 2 + 0.05, l / 2 - lc / 2 - 0.3))
            wc = w / 2 * rng.uniform(0.78, 0.9)
            roof = min(0.08, 0.3 * (h - belt))
            self.part(BOX, pose, xc, 0.0, belt, h - roof, lc / 2, wc, "glass")
            self.part(BOX, pose, xc - 0.05 * lc, 0.0, h - roof, h, lc / 2 * 0.85, wc * 0.95, "paint", paint)
        plate_z = clear + 0.2
        for sign in (-1.0, 1.0):
            self.part(BOX, pose, sign * (l / 2 - 0.01), 0.0, plate_z, plate_z + 0.11, 0.01, 0.26, "retro")
        self.end_object("Van" if van else "Car", start, x, y, pose[2], l, w, h, yaw)
        return True

    def pedestrian(self, x, y, yaw, dims, walking: bool) -> bool:
        l, w, h = dims
        if not self.reserve(x, y, l / 2, w / 2, yaw, margin=0.05):
            return False
        rng = self.rng
        start = self.begin_object()
        pose = self.pose(x, y, yaw)
        trousers, shirt, skin = self.refl("cloth"), self.refl("cloth"), rng.uniform(0.15, 0.4)
        r_leg = rng.uniform(0.055, 0.075)
        reach = max(l / 2 - r_leg - 0.01, 0.0)
        stride = reach * (rng.uniform(0.6, 1.0) if walking else rng.uniform(0.0, 0.3))
        hip = 0.47 * h
        self.part(CYLINDER, pose, stride, 0.09, 0.0, hip, r_leg, r_leg, "cloth", trousers)
        self.part(CYLINDER, pose, -stride, -0.09, 0.0, hip, r_leg, r_leg, "cloth", trousers)
        torso_lo, torso_hi = 0.44 * h, 0.83 * h
        half_t = min(0.2, w / 2 - 0.1)
        self.part(ELLIPSOID, pose, 0.0, 0.0, torso_lo, torso_hi, min(0.14, l / 2), half_t, "cloth", shirt)
        r_arm = 0.045
        swing = 0.5 * stride
        for side in (-1.0, 1.0):
            self.part(CYLINDER, pose, -side * swing, side * (w / 2 - r_arm), 0.46 * h, 0.8 * h, r_arm, r_arm, "cloth")
        head_r = min(0.11, 0.07 * h)
        self.part(ELLIPSOID, pose, 0.0, 0.0, h - 2 * head_r, h, 0.09, 0.08, "cloth", skin)
        if rng.random() < 0.25 and l > 0.45:  # backpack or bag
            self.part(BOX, pose, -min(0.17, l / 2 - 0.06), 0.0, 0.55 * h, 0.78 * h, 0.06, 0.14, "plastic")
        self.end_object("Pedestrian", start, x, y, pose[2], l, w, h, yaw)
        return True

    def bicycle(self, pose, l, w, h, rider: bool):
        """Bicycle parts (and optionally the rider) in the given pose; the caller wraps them in an object."""
        rng = self.rng
        rw = rng.uniform(0.31, 0.36)
        frame = self.refl("metal")
        tyre = self.refl("tyre")
        for sign in (-1.0, 1.0):
            self.part(BOX, pose, sign * (l / 2 - rw), 0.0, 0.0, 2 * rw, rw, 0.02, "tyre", tyre)
        span = l / 2 - rw
        self.part(BOX, pose, 0.0, 0.0, rw - 0.05, rw + 0.03, span * 0.8, 0.025, "metal", frame)
        self.part(BOX, pose, 0.05, 0.0, 0.8, 0.85, span * 0.75, 0.02, "metal", frame)
        self.part(CYLINDER, pose, -0.15, 0.0, rw, 0.9, 0.025, 0.025, "metal", frame)
        bar_x = span - 0.03
        bar_z = 0.58 * h if rider else 1.0
        self.part(BOX, pose, bar_x, 0.0, bar_z - 0.03, bar_z, 0.03, w / 2, "metal", frame)
        if not rider:
            return
        cloth = self.refl("cloth")
        for side in (-1.0, 1.0):
            self.part(CYLINDER, pose, -0.05 + side * 0.08, side * 0.12, 0.25, 0.92, 0.065, 0.065, "cloth", cloth)
        self.part(ELLIPSOID, pose, 0.02, 0.0, 0.53 * h, 0.85 * h, 0.24, 0.17, "cloth", cloth)
        arm_x0, arm_x1 = 0.12, bar_x
        for side in (-1.0, 1.0):
            self.part(
                BOX,
                pose,
                0.5 * (arm_x0 + arm_x1),
                side * (w / 2 - 0.06),
                bar_z,
                0.8 * h,
                0.5 * (arm_x1 - arm_x0),
                0.04,
                "cloth",
                cloth,
            )
        self.part(ELLIPSOID, pose, 0.18, 0.0, h - 0.22, h, 0.1, 0.09, "cloth", rng.uniform(0.1, 0.6))

    def cyclist(self, x, y, yaw, dims) -> bool:
        l, w, h = dims
        if not self.reserve(x, y, l / 2, w / 2, yaw, margin=0.1):
            return False
        start = self.begin_object()
        pose = self.pose(x, y, yaw)
        self.bicycle(pose, l, w, h, rider=True)
        self.end_object("Cyclist", start, x, y, pose[2], l, w, h, yaw)
        return True

    def clutter_box(self, name, x, y, yaw, l, w, h, material, z0=0.0, reserve=True, margin=0.1) -> bool:
        if reserve and not self.reserve(x, y, l / 2, w / 2, yaw, margin=margin):
            return False
        start = self.begin_object()
        pose = self.pose(x, y, yaw)
        self.part(BOX, pose, 0.0, 0.0, z0, h, l / 2, w / 2, material)
        self.end_object(name, start, x, y, pose[2], l, w, h, yaw)
        return True

    def pole(self, x, y, radius, height, material="pole", name="pole") -> bool:
        if not self.reserve(x, y, radius, radius, 0.0, margin=0.05):
            return False
        start = self.begin_object()
        pose = self.pose(x, y, 0.0)
        self.part(CYLINDER, pose, 0.0, 0.0, -0.3, height, radius, radius, material)
        self.end_object(name, start, x, y, pose[2], 2 * radius, 2 * radius, height, 0.0)
        return True


# ---- scene composition ---------------------------------------------------------------------------------------


def _vehicle_dims(rng, van: bool):
    if van:
        return (
            _clipped_normal(rng, 5.05, 0.4, 4.3, 6.0),
            _clipped_normal(rng, 1.9, 0.1, 1.7, 2.15),
            _clipped_normal(rng, 2.15, 0.2, 1.8, 2.6),
        )
    suv = rng.random() < 0.15
    return (
        _clipped_normal(rng, 3.9 + 0.35 * suv, 0.4, 3.1, 5.0),
        _clipped_normal(rng, 1.62 + 0.12 * suv, 0.1, 1.4, 1.95),
        _clipped_normal(rng, 1.52 + 0.2 * suv, 0.12, 1.3, 1.9),
    )


def _ped_dims(rng, walking: bool):
    h = _clipped_normal(rng, 1.75, 0.1, 1.45, 2.0) if rng.random() > 0.06 else rng.uniform(1.0, 1.4)
    w = _clipped_normal(rng, 0.64 * min(1.0, h / 1.6), 0.1, 0.42, 0.9)
    l = _clipped_normal(rng, 0.85, 0.18, 0.45, 1.25) if walking else _clipped_normal(rng, 0.6, 0.12, 0.35, 0.9)
    return l, w, h


def _cyc_dims(rng):
    return (
        _clipped_normal(rng, 1.76, 0.15, 1.4, 2.1),
        _clipped_normal(rng, 0.62, 0.1, 0.42, 0.85),
        _clipped_normal(rng, 1.74, 0.09, 1.5, 2.0),
    )


def _road_layout(rng) -> RoadLayout:
    kind = str(rng.choice(["city", "residential", "road"], p=[0.4, 0.4, 0.2]))
    lane_w = rng.uniform(3.0, 3.6)
    lanes_r = 1 if rng.random() < 0.65 else 2
    lanes_l = lanes_r if rng.random() < 0.8 else 1
    has_parking = kind != "road"
    park_r = rng.uniform(2.0, 2.5) if has_parking and rng.random() < 0.8 else 0.0
    park_l = rng.uniform(2.0, 2.5) if has_parking and rng.random() < 0.7 else 0.0
    ego_lane = int(rng.integers(0, lanes_r))
    u_ego = -(ego_lane + 0.5) * lane_w + rng.normal(0, 0.2)
    phi = float(rng.normal(0.0, 0.04))
    # choose the road origin so that the ego (at s=0, u=u_ego) is the LiDAR origin
    origin = np.array([u_ego * math.sin(phi), -u_ego * math.cos(phi)])
    sw = (1.5, 3.0) if kind == "road" else (2.0, 5.0)
    cross = rng.random() < (0.45 if kind == "city" else 0.3 if kind == "residential" else 0.1)
    return RoadLayout(
        phi=phi,
        origin=origin,
        lane_width=lane_w,
        lanes_right=lanes_r,
        lanes_left=lanes_l,
        u_right=-(lanes_r * lane_w + park_r),
        u_left=lanes_l * lane_w + park_l,
        sidewalk_right=rng.uniform(*sw),
        sidewalk_left=rng.uniform(*sw),
        parking_right=park_r,
        parking_left=park_l,
        cross_s=float(rng.uniform(12.0, 60.0)) if cross else None,
        cross_width=float(rng.uniform(6.0, 10.0)),
        kind=kind,
        asphalt=rng.uniform(0.32, 0.52),
        sidewalk_refl=rng.uniform(0.38, 0.6),
        terrain_refl=rng.uniform(0.35, 0.7),
    )


def _in_cross(road: RoadLayout, s: float, half: float = 0.0, margin: float = 1.0) -> bool:
    if road.cross_s is None:
        return False
    return abs(s - road.cross_s) < road.cross_width / 2 + half + margin


def build_scene(rng: np.random.Generator, extra_objects=None) -> Scene:
    """A street scene. ``extra_objects(builder, road, rng)``, when given, adds objects before the street furniture
    (the nuScenes-layout generator's extra classes); without it the random stream, and so every KITTI-format frame,
    is unchanged."""
    ground = np.array(
        [
            -SENSOR_HEIGHT + rng.normal(0.0, 0.03),
            rng.uniform(-0.015, 0.015),
            rng.uniform(-0.01, 0.01),
            rng.uniform(-1.2e-4, 1.2e-4),
        ]
    )
    road = _road_layout(rng)
    b = SceneBuilder(rng, ground)
    phi = road.phi
    S_MIN, S_MAX = -50.0, 130.0

    def place(s, u):
        return road.to_world(s, u)

    # 1) buildings / houses / walls behind the sidewalks (placed first: they are the largest footprints)
    for side in (-1.0, 1.0):
        kerb = road.u_left if side > 0 else road.u_right
        walk = road.sidewalk_left if side > 0 else road.sidewalk_right
        back = kerb + side * walk
        s = S_MIN + rng.uniform(-10, 0)
        while s < S_MAX:
            if road.kind == "city":
                length, gap, height = rng.uniform(8, 30), (rng.uniform(3, 10) if rng.random() < 0.2 else 0.0), None
                setback, depth = rng.uniform(0.0, 1.5), rng.uniform(8, 15)
                height = rng.uniform(6, 22)
            elif road.kind == "residential":
                length, gap = rng.uniform(8, 14), rng.uniform(4, 14)
                setback, depth, height = rng.uniform(3, 9), rng.uniform(7, 11), rng.uniform(5, 9)
            else:
                length, gap = rng.uniform(10, 40), rng.uniform(10, 60)
                setback, depth, height = rng.uniform(3, 15), rng.uniform(0.3, 8), rng.uniform(1.5, 5)
            sc = s + length / 2
            if not _in_cross(road, sc, length / 2):
                u = back + side * (setback + depth / 2)
                x, y = place(sc, u)
                kind_name = "building" if height > 4 else "wall"
                b.clutter_box(kind_name, x, y, phi, length, depth, height, "wall", z0=-1.5)
            s += length + gap
        # hedges / fences along the property line in residential and rural scenes
        if road.kind != "city":
            s = S_MIN + rng.uniform(0, 10)
            while s < S_MAX:
                length = rng.uniform(3, 15)
                sc = s + length / 2
                if rng.random() < 0.5 and not _in_cross(road, sc, length / 2):
                    hedge = rng.random() < 0.6
                    thick = rng.uniform(0.6, 1.2) if hedge else 0.05
                    x, y = place(sc, back + side * (thick / 2 + 0.2))
                    b.clutter_box(
                        "hedge" if hedge else "fence",
                        x,
                        y,
                        phi,
                        length,
                        thick,
                        rng.uniform(0.8, 1.8),
                        "vegetation" if hedge else "metal",
                        z0=-0.5,
                    )
                s += length + rng.uniform(1, 8)

    # kerb stones (low, long) make the road edge visible in the point cloud like real kerbs
    for kerb in (road.u_left, road.u_right):
        for s0, s1 in _segments_without_cross(road, S_MIN, S_MAX):
            x, y = place(0.5 * (s0 + s1), kerb)
            b.clutter_box("kerb", x, y, phi, s1 - s0, 0.2, 0.13, "concrete", z0=-0.5, reserve=False)

    # 2) parked rows along the kerbs (the KITTI scene type that makes occlusion common)
    for side in (-1.0, 1.0):
        kerb = road.u_left if side > 0 else road.u_right
        parking = road.parking_left if side > 0 else road.parking_right
        if parking <= 0.0 and not (road.kind == "residential" and rng.random() < 0.3):
            continue
        angled = rng.random() < 0.12
        s = rng.uniform(-40, 10)
        s_end = min(S_MAX, s + rng.uniform(25, 120))
        while s < s_end:
            van = rng.random() < 0.1
            l, w, h = _vehicle_dims(rng, van)
            if angled:
                yaw = phi + (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + rng.normal(0, 0.12)
                sc, u = s + w / 2, kerb + side * (l / 2 + rng.uniform(0.2, 0.5))
                step = w + rng.uniform(0.5, 1.5)
            else:
                facing = (phi if side < 0 else phi + math.pi) + (math.pi if rng.random() < 0.15 else 0.0)
                yaw = facing + rng.normal(0, 0.04)
                sc, u = s + l / 2, kerb - side * (w / 2 + rng.uniform(0.15, 0.5))
                step = l + (rng.uniform(0.5, 2.5) if rng.random() > 0.25 else rng.uniform(4.0, 14.0))
            if rng.random() < 0.85 and not _in_cross(road, sc, 2.5):
                x, y = place(sc, u)
                b.vehicle(x, y, yaw, (l, w, h), van)
            s += step

    # 3) moving traffic in the lanes (both directions) and on the cross street
    for lane in range(road.lanes_right):
        u_lane = -(lane + 0.5) * road.lane_width
        for _ in range(rng.poisson(1.3)):
            s = rng.uniform(-45, 95)
            if abs(s) < 7:
                continue
            van = rng.random() < 0.08
            x, y = place(s, u_lane + rng.normal(0, 0.25))
            b.vehicle(x, y, phi + rng.normal(0, 0.03), _vehicle_dims(rng, van), van)
    for lane in range(road.lanes_left):
        u_lane = (lane + 0.5) * road.lane_width
        for _ in range(rng.poisson(1.5)):
            van = rng.random() < 0.08
            x, y = place(rng.uniform(-45, 95), u_lane + rng.normal(0, 0.25))
            b.vehicle(x, y, phi + math.pi + rng.normal(0, 0.03), _vehicle_dims(rng, van), van)
    if road.cross_s is not None:
        for _ in range(rng.poisson(2.5)):
            direction = 1.0 if rng.random() < 0.5 else -1.0
            u = rng.uniform(road.u_right - 25, road.u_left + 25)
            s = road.cross_s + direction * road.cross_width / 4 + rng.normal(0, 0.2)
            turning = road.u_right < u < road.u_left
            yaw = phi + direction * math.pi / 2 + (rng.uniform(-0.8, 0.8) if turning else rng.normal(0, 0.03))
            van = rng.random() < 0.08
            x, y = place(s, u)
            b.vehicle(x, y, yaw, _vehicle_dims(rng, van), van)
    # cars off the road (driveways, parking lots), at arbitrary headings
    for _ in range(rng.poisson(1.0 if road.kind != "city" else 0.5)):
        side = 1.0 if rng.random() < 0.5 else -1.0
        kerb = road.u_left if side > 0 else road.u_right
        walk = road.sidewalk_left if side > 0 else road.sidewalk_right
        u = kerb + side * (walk + rng.uniform(2.5, 12.0))
        x, y = place(rng.uniform(-30, 80), u)
        van = rng.random() < 0.1
        b.vehicle(x, y, rng.uniform(-math.pi, math.pi), _vehicle_dims(rng, van), van)

    # 4) pedestrians: on the sidewalks (often in small groups), some crossing
    lam_ped = {"city": 6.0, "residential": 4.0, "road": 1.0}[road.kind]
    for _ in range(rng.poisson(lam_ped)):
        side = 1.0 if rng.random() < 0.5 else -1.0
        kerb = road.u_left if side > 0 else road.u_right
        walk = road.sidewalk_left if side > 0 else road.sidewalk_right
        s = rng.uniform(-15, 60) if rng.random() < 0.8 else rng.uniform(-40, 90)
        u = kerb + side * rng.uniform(0.5, max(walk - 0.4, 0.6))
        group = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        walking = rng.random() < 0.7
        heading = phi + (0.0 if rng.random() < 0.5 else math.pi)
        for g in range(group):
            yaw = heading + rng.normal(0, 0.25) if walking else rng.uniform(-math.pi, math.pi)
            x, y = place(s + g * rng.uniform(0.7, 1.2) * (1 if walking else 0.5), u + (g % 2) * side * 0.7)
            b.pedestrian(x, y, yaw, _ped_dims(rng, walking), walking)
    if rng.random() < 0.3:
        s = road.cross_s if road.cross_s is not None and rng.random() < 0.6 else rng.uniform(8, 45)
        for _ in range(1 + int(rng.poisson(0.7))):
            u = rng.uniform(road.u_right, road.u_left)
            yaw = phi + (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + rng.normal(0, 0.15)
            x, y = place(s + rng.normal(0, 1.0), u)
            b.pedestrian(x, y, yaw, _ped_dims(rng, True), True)

    # 5) cyclists: along the lane edge or on the sidewalk, both directions
    lam_cyc = {"city": 3.0, "residential": 2.8, "road": 1.8}[road.kind]
    for _ in range(rng.poisson(lam_cyc)):
        same_dir = rng.random() < 0.6
        if rng.random() < 0.8:
            u = (-1.0 if same_dir else 1.0) * (
                (road.lanes_right if same_dir else road.lanes_left) * road.lane_width - rng.uniform(0.5, 1.0)
            )
        else:
            u = road.u_right - rng.uniform(0.6, 1.6) if same_dir else road.u_left + rng.uniform(0.6, 1.6)
        s = rng.uniform(-10, 60) if rng.random() < 0.85 else rng.uniform(-40, 90)
        yaw = phi + (0.0 if same_dir else math.pi) + rng.normal(0, 0.08)
        x, y = place(s, u)
        b.cyclist(x, y, yaw, _cyc_dims(rng))

    if extra_objects is not None:
        extra_objects(b, road, rng)

    # 6) street furniture and vegetation: the clutter that looks a bit like objects
    _add_furniture(b, road, rng, S_MIN, S_MAX)

    prims = np.array(b.rows, dtype=np.float64).reshape(-1, N_FIELDS)
    return Scene(prims=prims, objects=b.objects, ground=ground, road=road, kind=road.kind)


def _segments_without_cross(road: RoadLayout, s0: float, s1: float) -> list[tuple[float, float]]:
    if road.cross_s is None:
        return [(s0, s1)]
    half = road.cross_width / 2
    return [(s0, road.cross_s - half), (road.cross_s + half, s1)]


def _add_furniture(b: SceneBuilder, road: RoadLayout, rng, s_min: float, s_max: float) -> None:
    phi = road.phi
    for side in (-1.0, 1.0):
        kerb = road.u_left if side > 0 else road.u_right
        walk = road.sidewalk_left if side > 0 else road.sidewalk_right
        # street lamps at regular spacing near the kerb
        if rng.random() < 0.75:
            s = rng.uniform(s_min, s_min + 25)
            spacing = rng.uniform(18, 35)
            while s < s_max:
                x, y = road.to_world(s, kerb + side * 0.5)
                height = rng.uniform(5, 8)
                if b.pole(x, y, rng.uniform(0.07, 0.13), height, name="lamp"):
                    start = b.begin_object()
                    ax, ay = road.to_world(s, kerb - side * 0.7)
                    pose = b.pose(ax, ay, phi + math.pi / 2)
                    b.part(BOX, pose, 0.0, 0.0, height - 0.25, height - 0.05, 1.25, 0.12, "pole")
                    b.end_object("lamp_arm", start, ax, ay, pose[2], 2.5, 0.24, height, phi + math.pi / 2)
                s += spacing
        # trees along the sidewalk
        tree_p = {"city": 0.55, "residential": 0.75, "road": 0.85}[road.kind]
        if rng.random() < tree_p:
            s = rng.uniform(s_min, s_min + 15)
            while s < s_max:
                u = kerb + side * rng.uniform(0.8, max(walk - 0.5, 1.0))
                if road.kind == "road":
                    u = kerb + side * (walk + rng.uniform(1.0, 8.0))
                x, y = road.to_world(s, u)
                _tree(b, rng, x, y)
                s += rng.uniform(6, 16)
        # ped-sized clutter: sign posts, bollards, advertising columns, bins, utility boxes, parked bicycles
        for _ in range(rng.poisson(1.5)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * rng.uniform(0.3, 0.8))
            height = rng.uniform(2.0, 2.9)
            if b.pole(x, y, rng.uniform(0.03, 0.05), height, name="sign"):
                start = b.begin_object()
                pose = b.pose(x, y, phi)
                b.part(BOX, pose, 0.06, 0.0, height - 0.65, height, 0.02, rng.uniform(0.3, 0.45), "retro")
                b.end_object("sign_plate", start, x, y, pose[2], 0.05, 0.8, height, phi)
        for _ in range(rng.poisson(1.2)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * rng.uniform(0.3, max(walk - 0.3, 0.4)))
            if rng.random() < 0.6:
                b.pole(x, y, rng.uniform(0.1, 0.3), rng.uniform(0.8, 2.2), material="plastic", name="post")
            else:
                b.pole(x, y, rng.uniform(0.5, 0.7), rng.uniform(2.5, 3.2), material="wall", name="column")
        for _ in range(rng.poisson(1.5)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * rng.uniform(0.4, max(walk - 0.3, 0.5)))
            yaw = phi + rng.normal(0, 0.2)
            if rng.random() < 0.6:
                b.clutter_box(
                    "bin", x, y, yaw, rng.uniform(0.5, 0.75), rng.uniform(0.5, 0.75), rng.uniform(0.9, 1.3), "plastic"
                )
            else:
                b.clutter_box(
                    "utility", x, y, yaw, rng.uniform(0.8, 1.5), rng.uniform(0.4, 0.6), rng.uniform(1.0, 1.6), "metal"
                )
        if rng.random() < 0.25:
            s = rng.uniform(-20, 60)
            for k in range(int(rng.integers(1, 4))):
                x, y = road.to_world(s + 0.7 * k, kerb + side * rng.uniform(0.4, 1.0))
                yaw = phi + side * math.pi / 2 + rng.normal(0, 0.1)
                if b.reserve(x, y, 0.85, 0.3, yaw, margin=0.05):
                    start = b.begin_object()
                    b.bicycle(b.pose(x, y, yaw), 1.7, 0.55, 1.1, rider=False)
                    b.end_object("parked_bicycle", start, x, y, b.pose(x, y, yaw)[2], 1.7, 0.55, 1.1, yaw)
        # car-sized clutter: containers, trailers, large bushes
        for _ in range(rng.poisson(0.35 if road.kind == "city" else 1.2)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * (walk + rng.uniform(1.0, 6.0)))
            if rng.random() < 0.5:
                b.clutter_box(
                    "container",
                    x,
                    y,
                    rng.uniform(-math.pi, math.pi),
                    rng.uniform(2.0, 4.0),
                    rng.uniform(1.4, 2.2),
                    rng.uniform(1.0, 2.2),
                    "metal",
                )
            else:
                r = rng.uniform(0.7, 1.6)
                if b.reserve(x, y, r, r, 0.0):
                    start = b.begin_object()
                    pose = b.pose(x, y, rng.uniform(-math.pi, math.pi))
                    b.part(
                        ELLIPSOID,
                        pose,
                        0.0,
                        0.0,
                        -0.3,
                        rng.uniform(0.9, 1.8),
                        r,
                        r * rng.uniform(0.6, 1.0),
                        "vegetation",
                    )
                    b.end_object("bush", start, x, y, pose[2], 2 * r, 2 * r, 1.5, pose[3])


def _tree(b: SceneBuilder, rng, x, y) -> None:
    trunk_r = rng.uniform(0.1, 0.3)
    trunk_h = rng.uniform(2.2, 3.6)
    if not b.reserve(x, y, trunk_r, trunk_r, 0.0, margin=0.3):
        return
    start = b.begin_object()
    pose = b.pose(x, y, rng.uniform(-math.pi, math.pi))
    b.part(CYLINDER, pose, 0.0, 0.0, -0.3, trunk_h, trunk_r, trunk_r, "vegetation", rng.uniform(0.3, 0.5))
    rh, rz = rng.uniform(1.2, 3.0), rng.uniform(1.5, 3.5)
    cz = max(trunk_h + 0.5 * rz, 2.8 + rz)  # crowns stay above the tallest vans
    b.part(ELLIPSOID, pose, 0.0, 0.0, cz - rz, cz + rz, rh, rh * rng.uniform(0.75, 1.0), "vegetation")
    b.end_object("tree", start, x, y, pose[2], 2 * rh, 2 * rh, cz + rz, pose[3])
