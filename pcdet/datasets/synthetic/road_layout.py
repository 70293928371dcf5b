"""The street a scene is built along: a straight road in road coordinates (s along it, u to its left).

The road has 1-2 lanes each way, optional parking lanes, kerbs, sidewalks and sometimes a cross street. It is
placed so that the ego car (the LiDAR origin) drives in one of the right-hand lanes at s = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The stretch of road (s, m) that a scene fills: far enough behind and ahead of the sensor to cover its range.
S_MIN, S_MAX = -50.0, 130.0


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

    def to_world(self, s: float, u: float) -> tuple[float, float]:
        c, sn = math.cos(self.phi), math.sin(self.phi)
        return self.origin[0] + s * c - u * sn, self.origin[1] + s * sn + u * c

    def to_road(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, sn = math.cos(self.phi), math.sin(self.phi)
        dx, dy = x - self.origin[0], y - self.origin[1]
        return dx * c + dy * sn, -dx * sn + dy * c


def sample_road_layout(rng: np.random.Generator) -> RoadLayout:
    """A city (40 %), residential (40 %) or rural (20 %) road with a small random heading."""
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


def in_cross(road: RoadLayout, s: float, half: float = 0.0, margin: float = 1.0) -> bool:
    """Whether a stretch [s - half, s + half] comes within ``margin`` of the cross street (kept clear)."""
    if road.cross_s is None:
        return False
    return abs(s - road.cross_s) < road.cross_width / 2 + half + margin


def segments_without_cross(road: RoadLayout, s0: float, s1: float) -> list[tuple[float, float]]:
    """The parts of [s0, s1] that are not the cross street (where kerbs run)."""
    if road.cross_s is None:
        return [(s0, s1)]
    half = road.cross_width / 2
    return [(s0, road.cross_s - half), (road.cross_s + half, s1)]
