"""Scatter pillar features back onto the dense BEV grid."""

from __future__ import annotations

import torch.nn as nn


class PointPillarScatter(nn.Module):
    def __init__(self, model_cfg, grid_size, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_bev_features = model_cfg.NUM_BEV_FEATURES
        self.nx, self.ny, self.nz = (int(v) for v in grid_size)
        assert self.nz == 1, "pillars span the whole height: the grid must have one z cell"

    def forward(self, batch_dict: dict, **kwargs) -> dict:
        """``pillar_features (V, C)`` at ``voxel_coords (V, [b, z, y, x])`` → ``spatial_features (B, C, ny, nx)``."""
        features = batch_dict["pillar_features"]
        coords = batch_dict["voxel_coords"].long()
        batch_size = int(batch_dict["batch_size"])
        cells = self.nz * self.ny * self.nx
        # One flat canvas for the whole batch; within a sample the cell index is z + y * nx + x.
        flat = coords[:, 0] * cells + coords[:, 1] + coords[:, 2] * self.nx + coords[:, 3]
        canvas = features.new_zeros((batch_size * cells, features.shape[1]))
        canvas = canvas.index_copy(0, flat, features)
        spatial = canvas.view(batch_size, cells, -1).permute(0, 2, 1)
        batch_dict["spatial_features"] = spatial.reshape(batch_size, -1, self.ny, self.nx).contiguous()
        return batch_dict
