"""2D BEV backbones, by the NAME used in ``MODEL.BACKBONE_2D``."""

from .base_bev_backbone import BaseBEVBackbone

__all__ = {
    "BaseBEVBackbone": BaseBEVBackbone,
}
