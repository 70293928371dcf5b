"""The unlabelled clutter of a street scene: buildings, walls, hedges and fences, kerb stones, street lamps, trees,
sign posts, bollards, columns, bins, utility boxes, parked bicycles, containers and bushes.

Much of it is object-sized on purpose (ped-sized posts and columns, car-sized containers), so that a detector has
to tell objects from things that merely look a bit like them. Nothing here gets a label.
"""

from __future__ import annotations

import math

import numpy as np

from .object_models import add_bicycle_parts, add_clutter_box, add_pole, add_tree
from .raycast import BOX, ELLIPSOID
from .road_layout import S_MAX, S_MIN, RoadLayout, in_cross, segments_without_cross
from .scene_builder import SceneBuilder


def add_buildings(b: SceneBuilder, road: RoadLayout, rng: np.random.Generator) -> None:
    """Buildings, houses and walls behind the sidewalks, and in residential and rural scenes hedges and fences
    along the property line. They are the largest footprints, so they are placed first."""
    phi = road.phi
    for side in (-1.0, 1.0):
        kerb = road.u_left if side > 0 else road.u_right
        walk = road.sidewalk_left if side > 0 else road.sidewalk_right
        back = kerb + side * walk
        s = S_MIN + rng.uniform(-10, 0)
        while s < S_MAX:
            if road.kind == "city":
                length, gap = rng.uniform(8, 30), (rng.uniform(3, 10) if rng.random() < 0.2 else 0.0)
                setback, depth = rng.uniform(0.0, 1.5), rng.uniform(8, 15)
                height = rng.uniform(6, 22)
            elif road.kind == "residential":
                length, gap = rng.uniform(8, 14), rng.uniform(4, 14)
                setback, depth, height = rng.uniform(3, 9), rng.uniform(7, 11), rng.uniform(5, 9)
            else:
                length, gap = rng.uniform(10, 40), rng.uniform(10, 60)
                setback, depth, height = rng.uniform(3, 15), rng.uniform(0.3, 8), rng.uniform(1.5, 5)
            sc = s + length / 2
            if not in_cross(road, sc, length / 2):
                u = back + side * (setback + depth / 2)
                x, y = road.to_world(sc, u)
                kind_name = "building" if height > 4 else "wall"
                add_clutter_box(b, kind_name, x, y, phi, length, depth, height, "wall", z0=-1.5)
            s += length + gap
        # hedges / fences along the property line in residential and rural scenes
        if road.kind != "city":
            s = S_MIN + rng.uniform(0, 10)
            while s < S_MAX:
                length = rng.uniform(3, 15)
                sc = s + length / 2
                if rng.random() < 0.5 and not in_cross(road, sc, length / 2):
                    hedge = rng.random() < 0.6
                    thick = rng.uniform(0.6, 1.2) if hedge else 0.05
                    x, y = road.to_world(sc, back + side * (thick / 2 + 0.2))
                    add_clutter_box(
                        b,
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


def add_kerbs(b: SceneBuilder, road: RoadLayout) -> None:
    """Kerb stones (low, long) along both road edges: they make the edge visible in the point cloud like real
    kerbs. They reserve no footprint, so that parked cars can stand next to them."""
    phi = road.phi
    for kerb in (road.u_left, road.u_right):
        for s0, s1 in segments_without_cross(road, S_MIN, S_MAX):
            x, y = road.to_world(0.5 * (s0 + s1), kerb)
            add_clutter_box(b, "kerb", x, y, phi, s1 - s0, 0.2, 0.13, "concrete", z0=-0.5, reserve=False)


def add_furniture(b: SceneBuilder, road: RoadLayout, rng: np.random.Generator) -> None:
    """Street furniture and vegetation along both sides: the clutter that looks a bit like objects."""
    phi = road.phi
    for side in (-1.0, 1.0):
        kerb = road.u_left if side > 0 else road.u_right
        walk = road.sidewalk_left if side > 0 else road.sidewalk_right
        # street lamps at regular spacing near the kerb
        if rng.random() < 0.75:
            s = rng.uniform(S_MIN, S_MIN + 25)
            spacing = rng.uniform(18, 35)
            while s < S_MAX:
                x, y = road.to_world(s, kerb + side * 0.5)
                height = rng.uniform(5, 8)
                if add_pole(b, x, y, rng.uniform(0.07, 0.13), height, name="lamp"):
                    start = b.begin_object()
                    ax, ay = road.to_world(s, kerb - side * 0.7)
                    pose = b.pose(ax, ay, phi + math.pi / 2)
                    b.part(BOX, pose, 0.0, 0.0, height - 0.25, height - 0.05, 1.25, 0.12, "pole")
                    b.end_object("lamp_arm", start, ax, ay, pose[2], 2.5, 0.24, height, phi + math.pi / 2)
                s += spacing
        # trees along the sidewalk
        tree_p = {"city": 0.55, "residential": 0.75, "road": 0.85}[road.kind]
        if rng.random() < tree_p:
            s = rng.uniform(S_MIN, S_MIN + 15)
            while s < S_MAX:
                u = kerb + side * rng.uniform(0.8, max(walk - 0.5, 1.0))
                if road.kind == "road":
                    u = kerb + side * (walk + rng.uniform(1.0, 8.0))
                x, y = road.to_world(s, u)
                add_tree(b, x, y)
                s += rng.uniform(6, 16)
        # ped-sized clutter: sign posts, bollards, advertising columns, bins, utility boxes, parked bicycles
        for _ in range(rng.poisson(1.5)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * rng.uniform(0.3, 0.8))
            height = rng.uniform(2.0, 2.9)
            if add_pole(b, x, y, rng.uniform(0.03, 0.05), height, name="sign"):
                start = b.begin_object()
                pose = b.pose(x, y, phi)
                b.part(BOX, pose, 0.06, 0.0, height - 0.65, height, 0.02, rng.uniform(0.3, 0.45), "retro")
                b.end_object("sign_plate", start, x, y, pose[2], 0.05, 0.8, height, phi)
        for _ in range(rng.poisson(1.2)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * rng.uniform(0.3, max(walk - 0.3, 0.4)))
            if rng.random() < 0.6:
                add_pole(b, x, y, rng.uniform(0.1, 0.3), rng.uniform(0.8, 2.2), material="plastic", name="post")
            else:
                add_pole(b, x, y, rng.uniform(0.5, 0.7), rng.uniform(2.5, 3.2), material="wall", name="column")
        for _ in range(rng.poisson(1.5)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * rng.uniform(0.4, max(walk - 0.3, 0.5)))
            yaw = phi + rng.normal(0, 0.2)
            if rng.random() < 0.6:
                add_clutter_box(
                    b,
                    "bin",
                    x,
                    y,
                    yaw,
                    rng.uniform(0.5, 0.75),
                    rng.uniform(0.5, 0.75),
                    rng.uniform(0.9, 1.3),
                    "plastic",
                )
            else:
                add_clutter_box(
                    b,
                    "utility",
                    x,
                    y,
                    yaw,
                    rng.uniform(0.8, 1.5),
                    rng.uniform(0.4, 0.6),
                    rng.uniform(1.0, 1.6),
                    "metal",
                )
        if rng.random() < 0.25:
            s = rng.uniform(-20, 60)
            for k in range(int(rng.integers(1, 4))):
                x, y = road.to_world(s + 0.7 * k, kerb + side * rng.uniform(0.4, 1.0))
                yaw = phi + side * math.pi / 2 + rng.normal(0, 0.1)
                if b.reserve(x, y, 0.85, 0.3, yaw, margin=0.05):
                    start = b.begin_object()
                    add_bicycle_parts(b, b.pose(x, y, yaw), 1.7, 0.55, 1.1, rider=False)
                    b.end_object("parked_bicycle", start, x, y, b.pose(x, y, yaw)[2], 1.7, 0.55, 1.1, yaw)
        # car-sized clutter: containers and large bushes
        for _ in range(rng.poisson(0.35 if road.kind == "city" else 1.2)):
            x, y = road.to_world(rng.uniform(-30, 80), kerb + side * (walk + rng.uniform(1.0, 6.0)))
            if rng.random() < 0.5:
                add_clutter_box(
                    b,
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
