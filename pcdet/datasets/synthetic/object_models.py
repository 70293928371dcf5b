"""The object models: each labelled class and each kind of clutter as a few primitives, and the label sizes.

Objects are not single boxes, so that their point clouds are not either: a car is wheels + lower body + tapered
shoulder + glass cabin + roof + licence plates, a pedestrian legs + torso + arms + head, a cyclist a bicycle + rider.
Every part lies inside the object's box, which is its label. Sizes follow KITTI's statistics (clipped normals).
"""

from __future__ import annotations

import math

import numpy as np

from .raycast import BOX, CYLINDER, ELLIPSOID
from .scene_builder import Pose, SceneBuilder

LABELLED_CLASSES = ("Car", "Van", "Pedestrian", "Cyclist")

Dims = tuple[float, float, float]  # (l, w, h) of the label box


def _clipped_normal(rng: np.random.Generator, mean: float, std: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, std), lo, hi))


def vehicle_dims(rng: np.random.Generator, van: bool) -> Dims:
    """A Van, or a car (15 % SUVs: longer, wider and taller)."""
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


def pedestrian_dims(rng: np.random.Generator, walking: bool) -> Dims:
    """6 % children (1.0-1.4 m); a walking stride makes the box longer."""
    h = _clipped_normal(rng, 1.75, 0.1, 1.45, 2.0) if rng.random() > 0.06 else rng.uniform(1.0, 1.4)
    w = _clipped_normal(rng, 0.64 * min(1.0, h / 1.6), 0.1, 0.42, 0.9)
    l = _clipped_normal(rng, 0.85, 0.18, 0.45, 1.25) if walking else _clipped_normal(rng, 0.6, 0.12, 0.35, 0.9)
    return l, w, h


def cyclist_dims(rng: np.random.Generator) -> Dims:
    return (
        _clipped_normal(rng, 1.76, 0.15, 1.4, 2.1),
        _clipped_normal(rng, 0.62, 0.1, 0.42, 0.85),
        _clipped_normal(rng, 1.74, 0.09, 1.5, 2.0),
    )


def add_vehicle(b: SceneBuilder, x: float, y: float, yaw: float, dims: Dims, van: bool) -> bool:
    """A Car (lower body, tapered shoulder, glass cabin and roof whose length varies from sedan to SUV) or a Van
    (tall body, short windscreen section), each on 4 wheels with licence plates. False where the spot is taken."""
    l, w, h = dims
    if not b.reserve(x, y, l / 2, w / 2, yaw):
        return False
    rng = b.rng
    start = b.begin_object()
    pose = b.pose(x, y, yaw)
    paint = b.refl("paint")
    wheel_d = rng.uniform(0.58, 0.7)
    clear = rng.uniform(0.16, 0.26)
    ax_f = l / 2 - rng.uniform(0.7, 0.95)
    ax_r = -l / 2 + rng.uniform(0.65, 0.9)
    tyre = b.refl("tyre")
    for ax in (ax_f, ax_r):
        for side in (-1.0, 1.0):
            b.part(BOX, pose, ax, side * (w / 2 - 0.11), 0.0, wheel_d, wheel_d / 2, 0.1, "tyre", tyre)
    if van:
        belt = h * rng.uniform(0.42, 0.5)
        b.part(BOX, pose, 0.0, 0.0, clear, belt, l / 2 - 0.01, w / 2, "paint", paint)
        shield = rng.uniform(0.7, 1.0)
        b.part(BOX, pose, -shield / 2, 0.0, belt, h, (l - shield) / 2 - 0.01, w / 2 - 0.02, "paint", paint)
        b.part(BOX, pose, l / 2 - shield * 0.7, 0.0, belt, h * 0.9, shield * 0.3, w / 2 * 0.92, "glass")
    else:
        belt = h * rng.uniform(0.5, 0.6)
        shoulder = clear + 0.72 * (belt - clear)
        b.part(BOX, pose, 0.0, 0.0, clear, shoulder, l / 2 - 0.01, w / 2, "paint", paint)
        taper = rng.uniform(0.08, 0.2)
        b.part(BOX, pose, 0.0, 0.0, shoulder, belt, l / 2 - 0.01 - taper, w / 2 - 0.03, "paint", paint)
        long_cabin = rng.random() < 0.3  # hatchbacks / wagons / SUVs
        lc = l * (rng.uniform(0.52, 0.64) if long_cabin else rng.uniform(0.4, 0.52))
        xc = -l * (rng.uniform(0.08, 0.16) if long_cabin else rng.uniform(0.0, 0.1))
        xc = float(np.clip(xc, -l / 2 + lc / 2 + 0.05, l / 2 - lc / 2 - 0.3))
        wc = w / 2 * rng.uniform(0.78, 0.9)
        roof = min(0.08, 0.3 * (h - belt))
        b.part(BOX, pose, xc, 0.0, belt, h - roof, lc / 2, wc, "glass")
        b.part(BOX, pose, xc - 0.05 * lc, 0.0, h - roof, h, lc / 2 * 0.85, wc * 0.95, "paint", paint)
    plate_z = clear + 0.2
    for sign in (-1.0, 1.0):
        b.part(BOX, pose, sign * (l / 2 - 0.01), 0.0, plate_z, plate_z + 0.11, 0.01, 0.26, "retro")
    b.end_object("Van" if van else "Car", start, x, y, pose[2], l, w, h, yaw)
    return True


def add_pedestrian(b: SceneBuilder, x: float, y: float, yaw: float, dims: Dims, walking: bool) -> bool:
    """Two legs at stride, torso, arms, head and sometimes a backpack. False where the spot is taken."""
    l, w, h = dims
    if not b.reserve(x, y, l / 2, w / 2, yaw, margin=0.05):
        return False
    rng = b.rng
    start = b.begin_object()
    pose = b.pose(x, y, yaw)
    trousers, shirt, skin = b.refl("cloth"), b.refl("cloth"), rng.uniform(0.15, 0.4)
    r_leg = rng.uniform(0.055, 0.075)
    reach = max(l / 2 - r_leg - 0.01, 0.0)
    stride = reach * (rng.uniform(0.6, 1.0) if walking else rng.uniform(0.0, 0.3))
    hip = 0.47 * h
    b.part(CYLINDER, pose, stride, 0.09, 0.0, hip, r_leg, r_leg, "cloth", trousers)
    b.part(CYLINDER, pose, -stride, -0.09, 0.0, hip, r_leg, r_leg, "cloth", trousers)
    torso_lo, torso_hi = 0.44 * h, 0.83 * h
    half_t = min(0.2, w / 2 - 0.1)
    b.part(ELLIPSOID, pose, 0.0, 0.0, torso_lo, torso_hi, min(0.14, l / 2), half_t, "cloth", shirt)
    r_arm = 0.045
    swing = 0.5 * stride
    for side in (-1.0, 1.0):
        b.part(CYLINDER, pose, -side * swing, side * (w / 2 - r_arm), 0.46 * h, 0.8 * h, r_arm, r_arm, "cloth")
    head_r = min(0.11, 0.07 * h)
    b.part(ELLIPSOID, pose, 0.0, 0.0, h - 2 * head_r, h, 0.09, 0.08, "cloth", skin)
    if rng.random() < 0.25 and l > 0.45:  # backpack or bag
        b.part(BOX, pose, -min(0.17, l / 2 - 0.06), 0.0, 0.55 * h, 0.78 * h, 0.06, 0.14, "plastic")
    b.end_object("Pedestrian", start, x, y, pose[2], l, w, h, yaw)
    return True


def add_bicycle_parts(b: SceneBuilder, pose: Pose, l: float, w: float, h: float, rider: bool) -> None:
    """Bicycle parts (and optionally the rider) in the given pose; the caller wraps them in an object."""
    rng = b.rng
    rw = rng.uniform(0.31, 0.36)
    frame = b.refl("metal")
    tyre = b.refl("tyre")
    for sign in (-1.0, 1.0):
        b.part(BOX, pose, sign * (l / 2 - rw), 0.0, 0.0, 2 * rw, rw, 0.02, "tyre", tyre)
    span = l / 2 - rw
    b.part(BOX, pose, 0.0, 0.0, rw - 0.05, rw + 0.03, span * 0.8, 0.025, "metal", frame)
    b.part(BOX, pose, 0.05, 0.0, 0.8, 0.85, span * 0.75, 0.02, "metal", frame)
    b.part(CYLINDER, pose, -0.15, 0.0, rw, 0.9, 0.025, 0.025, "metal", frame)
    bar_x = span - 0.03
    bar_z = 0.58 * h if rider else 1.0
    b.part(BOX, pose, bar_x, 0.0, bar_z - 0.03, bar_z, 0.03, w / 2, "metal", frame)
    if not rider:
        return
    cloth = b.refl("cloth")
    for side in (-1.0, 1.0):
        b.part(CYLINDER, pose, -0.05 + side * 0.08, side * 0.12, 0.25, 0.92, 0.065, 0.065, "cloth", cloth)
    b.part(ELLIPSOID, pose, 0.02, 0.0, 0.53 * h, 0.85 * h, 0.24, 0.17, "cloth", cloth)
    arm_x0, arm_x1 = 0.12, bar_x
    for side in (-1.0, 1.0):
        b.part(
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
    b.part(ELLIPSOID, pose, 0.18, 0.0, h - 0.22, h, 0.1, 0.09, "cloth", rng.uniform(0.1, 0.6))


def add_cyclist(b: SceneBuilder, x: float, y: float, yaw: float, dims: Dims) -> bool:
    """A ridden bicycle (label class Cyclist). False where the spot is taken."""
    l, w, h = dims
    if not b.reserve(x, y, l / 2, w / 2, yaw, margin=0.1):
        return False
    start = b.begin_object()
    pose = b.pose(x, y, yaw)
    add_bicycle_parts(b, pose, l, w, h, rider=True)
    b.end_object("Cyclist", start, x, y, pose[2], l, w, h, yaw)
    return True


def add_clutter_box(
    b: SceneBuilder,
    name: str,
    x: float,
    y: float,
    yaw: float,
    l: float,
    w: float,
    h: float,
    material: str,
    z0: float = 0.0,
    reserve: bool = True,
    margin: float = 0.1,
) -> bool:
    """An unlabelled box from z0 to h above the ground (buildings, walls, bins, ...); ``reserve=False`` for long thin
    objects such as kerbs that others may stand next to."""
    if reserve and not b.reserve(x, y, l / 2, w / 2, yaw, margin=margin):
        return False
    start = b.begin_object()
    pose = b.pose(x, y, yaw)
    b.part(BOX, pose, 0.0, 0.0, z0, h, l / 2, w / 2, material)
    b.end_object(name, start, x, y, pose[2], l, w, h, yaw)
    return True


def add_pole(
    b: SceneBuilder, x: float, y: float, radius: float, height: float, material: str = "pole", name: str = "pole"
) -> bool:
    """A vertical cylinder reaching 0.3 m into the ground, so that it meets the ground on slopes too."""
    if not b.reserve(x, y, radius, radius, 0.0, margin=0.05):
        return False
    start = b.begin_object()
    pose = b.pose(x, y, 0.0)
    b.part(CYLINDER, pose, 0.0, 0.0, -0.3, height, radius, radius, material)
    b.end_object(name, start, x, y, pose[2], 2 * radius, 2 * radius, height, 0.0)
    return True


def add_tree(b: SceneBuilder, x: float, y: float) -> None:
    """A cylinder trunk and an ellipsoid crown (unlabelled)."""
    rng = b.rng
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
