"""Voxel feature encoders, by the NAME used in ``MODEL.VFE``."""

from .mean_vfe import MeanVFE
from .pillar_vfe import PillarVFE
from .vfe_template import VFETemplate

# Registry (OpenPCDet keeps it in __all__, and users extend it there).
__all__ = {
    "VFETemplate": VFETemplate,
    "MeanVFE": MeanVFE,
    "PillarVFE": PillarVFE,
}
