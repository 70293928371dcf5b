"""Procedural street scenes built from primitives: a road with lanes, kerbs and sidewalks on gently curved ground,
parked rows and moving vehicles, pedestrians, cyclists, buildings, trees, poles and street furniture.

Everything is placed in the LiDAR frame (x forward, y left, z up, sensor at the origin, 1.73 m above the ground under
it). This module only fixes the order of the composition steps; the road is in ``road_layout``, the labelled objects'
placement in ``road_users``, the unlabelled clutter in ``clutter`` and the shapes of both in ``object_models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .clutter import add_buildings, add_furniture, add_kerbs
from .ground import sample_ground
from .raycast import N_FIELDS
from .road_layout import RoadLayout, sample_road_layout
from .road_users import add_cyclists, add_parked_rows, add_pedestrians, add_traffic
from .scene_builder import SceneBuilder, SceneObject


@dataclass
class Scene:
    prims: np.ndarray
    objects: list[SceneObject]
    ground: np.ndarray  # z = g0 + g1 x + g2 y + g3 (x^2 + y^2)
    road: RoadLayout
    kind: str


def build_scene(
    rng: np.random.Generator,
    extra_objects: Callable[[SceneBuilder, RoadLayout, np.random.Generator], None] | None = None,
) -> Scene:
    """A street scene. ``extra_objects(builder, road, rng)``, when given, adds objects before the street furniture
    (the nuScenes-layout generator's extra classes); without it the random stream, and so every KITTI-format frame,
    is unchanged."""
    # Every step draws from the one stream in this order, so reordering them changes every generated frame.
    ground = sample_ground(rng)
    road = sample_road_layout(rng)
    b = SceneBuilder(rng, ground)
    add_buildings(b, road, rng)
    add_kerbs(b, road)
    add_parked_rows(b, road, rng)
    add_traffic(b, road, rng)
    add_pedestrians(b, road, rng)
    add_cyclists(b, road, rng)
    if extra_objects is not None:
        extra_objects(b, road, rng)
    add_furniture(b, road, rng)
    prims = np.array(b.rows, dtype=np.float64).reshape(-1, N_FIELDS)
    return Scene(prims=prims, objects=b.objects, ground=ground, road=road, kind=road.kind)
