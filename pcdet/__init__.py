"""pcdet: an OpenPCDet-compatible 3D LiDAR detection toolbox with knowledge distillation."""

from .version import __version__

__all__ = ["__version__"]
