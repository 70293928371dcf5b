"""3D backbones, by the NAME used in ``MODEL.BACKBONE_3D``."""

from .pointnet2_backbone import PointNet2MSG
from .spconv_backbone import VoxelBackBone8x, VoxelResBackBone8x

__all__ = {
    "VoxelBackBone8x": VoxelBackBone8x,
    "VoxelResBackBone8x": VoxelResBackBone8x,
    "PointNet2MSG": PointNet2MSG,
}
