"""Modules that turn 3D/pillar features into a BEV map, by the NAME used in ``MODEL.MAP_TO_BEV``."""

from .height_compression import HeightCompression
from .pointpillar_scatter import PointPillarScatter

__all__ = {
    "HeightCompression": HeightCompression,
    "PointPillarScatter": PointPillarScatter,
}
