"""MeanVFE (SECOND and friends): a voxel's feature is the mean of its points."""

from __future__ import annotations

from .vfe_template import VFETemplate


class MeanVFE(VFETemplate):
    def __init__(self, model_cfg, num_point_features: int, **kwargs):
        super().__init__(model_cfg=model_cfg)
        self.num_point_features = num_point_features

    def get_output_feature_dim(self) -> int:
        return self.num_point_features

    def forward(self, batch_dict: dict, **kwargs) -> dict:
        """``voxels (V, P, C)`` with padded slots zeroed, ``voxel_num_points (V)`` → ``voxel_features (V, C)``."""
        voxels = batch_dict["voxels"]
        count = batch_dict["voxel_num_points"].view(-1, 1).clamp(min=1).type_as(voxels)
        batch_dict["voxel_features"] = (voxels.sum(dim=1) / count).contiguous()
        return batch_dict
