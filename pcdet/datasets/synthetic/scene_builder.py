"""Bookkeeping while a scene is composed: the primitive rows, the objects they form, and the footprints that keep
placements apart.

Primitives are given in an object's local frame and stored as rows in the LiDAR frame (raycast's field layout). The
footprint test is a separating-axis check of oriented rectangles, so objects at any heading can stand close together
without overlapping; the ego car's footprint is reserved from the start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .ground import ground_height
from .materials import MATERIAL_IDS, MATERIALS
from .raycast import F_OBJ

# (x, y, ground z under (x, y), heading): the local frame that an object's primitives are given in
Pose = tuple[float, float, float, float]


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
    def _add_fp(self, cx: float, cy: float, hl: float, hw: float, yaw: float) -> None:
        if self.n_fps == len(self.fps):
            self.fps = np.concatenate([self.fps, np.zeros_like(self.fps)])
        self.fps[self.n_fps] = (cx, cy, hl, hw, yaw)
        self.n_fps += 1

    def free(self, cx: float, cy: float, hl: float, hw: float, yaw: float, margin: float = 0.15) -> bool:
        """Whether the rectangle (centre, half length, half width, heading) keeps ``margin`` from every footprint."""
        return not _overlaps_any(self.fps, self.n_fps, cx, cy, hl, hw, yaw, margin)

    def reserve(self, cx: float, cy: float, hl: float, hw: float, yaw: float, margin: float = 0.15) -> bool:
        """Claims the rectangle if it is free; the caller places nothing when this is False."""
        if not self.free(cx, cy, hl, hw, yaw, margin):
            return False
        self._add_fp(cx, cy, hl, hw, yaw)
        return True

    def refl(self, material: str) -> float:
        """A reflectivity drawn within the material's range."""
        lo, hi, _ = MATERIALS[material]
        return float(self.rng.uniform(lo, hi))

    # ---- primitives in an object's local frame (x along heading, z up from the ground under its centre) -------
    def part(
        self,
        kind: int,
        pose: Pose,
        lx: float,
        ly: float,
        z_lo: float,
        z_hi: float,
        hx: float,
        hy: float,
        material: str,
        refl: float | None = None,
    ) -> None:
        """One primitive (raycast.BOX / CYLINDER / ELLIPSOID) centred at (lx, ly) from z_lo to z_hi above the ground,
        with half extents hx, hy; its reflectivity is drawn from the material unless ``refl`` shares one."""
        x, y, zg, yaw = pose
        c, s = math.cos(yaw), math.sin(yaw)
        self.rows.append(
            [
                kind,
                x + c * lx - s * ly,
                y + s * lx + c * ly,
                zg + 0.5 * (z_lo + z_hi),
                hx,
                hy,
                0.5 * (z_hi - z_lo),
                c,
                s,
                MATERIAL_IDS[material],
                -1,  # the owning object's index, set by end_object
                self.refl(material) if refl is None else refl,
            ]
        )

    def begin_object(self) -> tuple[int, int]:
        """Marks where an object's primitives start; pass the result to end_object."""
        return len(self.rows), len(self.objects)

    def end_object(
        self, name: str, start: tuple[int, int], x: float, y: float, zg: float, l: float, w: float, h: float, yaw: float
    ) -> None:
        """Closes the object begun at ``start``: its primitives since then get its index, its box is (x, y) on the
        ground zg with size (l, w, h) and heading yaw."""
        prim_lo, obj_idx = start
        for row in self.rows[prim_lo:]:
            row[F_OBJ] = obj_idx
        box = np.array([x, y, zg + h / 2.0, l, w, h, yaw])
        self.objects.append(SceneObject(name, box, prim_lo, len(self.rows)))

    def pose(self, x: float, y: float, yaw: float) -> Pose:
        """The local frame of an object standing at (x, y) on the ground with heading yaw."""
        return (x, y, float(ground_height(self.ground, x, y)), yaw)
