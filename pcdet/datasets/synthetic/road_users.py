"""The labelled road users of a street scene: parked and moving vehicles, pedestrians and cyclists.

Placement follows where KITTI's objects are: rows of cars along the kerbs (what makes occlusion common), traffic in
both directions and on the cross street, people on the sidewalks and crossing, cyclists at the lane edges. The
object models are in ``object_models``; positions are in road coordinates (``road_layout``).
"""

from __future__ import annotations

import math

import numpy as np

from .object_models import add_cyclist, add_pedestrian, add_vehicle, cyclist_dims, pedestrian_dims, vehicle_dims
from .road_layout import S_MAX, RoadLayout, in_cross
from .scene_builder import SceneBuilder


def add_parked_rows(b: SceneBuilder, road: RoadLayout, rng: np.random.Generator) -> None:
    """Rows of parked cars along the kerbs with parking lanes (sometimes in residential streets without), with
    random gaps and driveways; some cars face the wrong way and 12 % of rows are angled or perpendicular."""
    phi = road.phi
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
            l, w, h = vehicle_dims(rng, van)
            if angled:
                yaw = phi + (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + rng.normal(0, 0.12)
                sc, u = s + w / 2, kerb + side * (l / 2 + rng.uniform(0.2, 0.5))
                step = w + rng.uniform(0.5, 1.5)
            else:
                facing = (phi if side < 0 else phi + math.pi) + (math.pi if rng.random() < 0.15 else 0.0)
                yaw = facing + rng.normal(0, 0.04)
                sc, u = s + l / 2, kerb - side * (w / 2 + rng.uniform(0.15, 0.5))
                step = l + (rng.uniform(0.5, 2.5) if rng.random() > 0.25 else rng.uniform(4.0, 14.0))
            if rng.random() < 0.85 and not in_cross(road, sc, 2.5):
                x, y = road.to_world(sc, u)
                add_vehicle(b, x, y, yaw, (l, w, h), van)
            s += step


def add_traffic(b: SceneBuilder, road: RoadLayout, rng: np.random.Generator) -> None:
    """Moving vehicles in the lanes (both directions) and on the cross street, and cars off the road (driveways,
    parking lots) at arbitrary headings."""
    phi = road.phi
    for lane in range(road.lanes_right):
        u_lane = -(lane + 0.5) * road.lane_width
        for _ in range(rng.poisson(1.3)):
            s = rng.uniform(-45, 95)
            if abs(s) < 7:
                continue
            van = rng.random() < 0.08
            x, y = road.to_world(s, u_lane + rng.normal(0, 0.25))
            add_vehicle(b, x, y, phi + rng.normal(0, 0.03), vehicle_dims(rng, van), van)
    for lane in range(road.lanes_left):
        u_lane = (lane + 0.5) * road.lane_width
        for _ in range(rng.poisson(1.5)):
            van = rng.random() < 0.08
            x, y = road.to_world(rng.uniform(-45, 95), u_lane + rng.normal(0, 0.25))
            add_vehicle(b, x, y, phi + math.pi + rng.normal(0, 0.03), vehicle_dims(rng, van), van)
    if road.cross_s is not None:
        for _ in range(rng.poisson(2.5)):
            direction = 1.0 if rng.random() < 0.5 else -1.0
            u = rng.uniform(road.u_right - 25, road.u_left + 25)
            s = road.cross_s + direction * road.cross_width / 4 + rng.normal(0, 0.2)
            turning = road.u_right < u < road.u_left
            yaw = phi + direction * math.pi / 2 + (rng.uniform(-0.8, 0.8) if turning else rng.normal(0, 0.03))
            van = rng.random() < 0.08
            x, y = road.to_world(s, u)
            add_vehicle(b, x, y, yaw, vehicle_dims(rng, van), van)
    # cars off the road (driveways, parking lots), at arbitrary headings
    for _ in range(rng.poisson(1.0 if road.kind != "city" else 0.5)):
        side = 1.0 if rng.random() < 0.5 else -1.0
        kerb = road.u_left if side > 0 else road.u_right
        walk = road.sidewalk_left if side > 0 else road.sidewalk_right
        u = kerb + side * (walk + rng.uniform(2.5, 12.0))
        x, y = road.to_world(rng.uniform(-30, 80), u)
        van = rng.random() < 0.1
        add_vehicle(b, x, y, rng.uniform(-math.pi, math.pi), vehicle_dims(rng, van), van)


def add_pedestrians(b: SceneBuilder, road: RoadLayout, rng: np.random.Generator) -> None:
    """Pedestrians on the sidewalks (often in small groups), walking or standing, and some crossing the road."""
    phi = road.phi
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
            x, y = road.to_world(s + g * rng.uniform(0.7, 1.2) * (1 if walking else 0.5), u + (g % 2) * side * 0.7)
            add_pedestrian(b, x, y, yaw, pedestrian_dims(rng, walking), walking)
    if rng.random() < 0.3:
        s = road.cross_s if road.cross_s is not None and rng.random() < 0.6 else rng.uniform(8, 45)
        for _ in range(1 + int(rng.poisson(0.7))):
            u = rng.uniform(road.u_right, road.u_left)
            yaw = phi + (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + rng.normal(0, 0.15)
            x, y = road.to_world(s + rng.normal(0, 1.0), u)
            add_pedestrian(b, x, y, yaw, pedestrian_dims(rng, True), True)


def add_cyclists(b: SceneBuilder, road: RoadLayout, rng: np.random.Generator) -> None:
    """Cyclists along the lane edge or on the sidewalk, in both directions."""
    phi = road.phi
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
        x, y = road.to_world(s, u)
        add_cyclist(b, x, y, yaw, cyclist_dims(rng))
