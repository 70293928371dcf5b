"""Scatter pillar features back onto the dense BEV grid."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...model_utils.fused_inference import fused_active


class PointPillarScatter(nn.Module):
    def __init__(self, model_cfg, grid_size, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_bev_features = model_cfg.NUM_BEV_FEATURES
        self.nx, self.ny, self.nz = (int(v) for v in grid_size)
        assert self.nz == 1, "pillars span the whole height: the grid must have one z cell"
        self.fused_inference = False  # see model_utils.fused_inference

    def forward(self, batch_dict: dict, **kwargs) -> dict:
        """``pillar_features (V, C)`` at ``voxel_coords (V, [b, z, y, x])`` → ``spatial_features (B, C, ny, nx)``."""
        features = batch_dict["pillar_features"]
        coords = batch_dict["voxel_coords"].long()
        batch_size = int(batch_dict["batch_size"])
        cells = self.nz * self.ny * self.nx
        # Written straight into the (B, C, cells) layout: no transposed copy of the whole canvas, forward or
        # backward (the canvas is most of the memory traffic here). Within a sample the cell index is
        # z + y * nx + x; voxel coordinates are unique, so no cell is written twice.
        cell = coords[:, 1] + coords[:, 2] * self.nx + coords[:, 3]
        if fused_active(self):
            # Channels-last canvas (same values): each pillar writes one contiguous row, and the fused BEV
            # backbone's convolutions take this layout without a reorder.
            canvas = features.new_zeros((batch_size, cells, features.shape[1]))
            canvas[coords[:, 0], cell] = features
            spatial = canvas.view(batch_size, self.ny, self.nx, -1).permute(0, 3, 1, 2)
            batch_dict["spatial_features"] = spatial.contiguous(memory_format=torch.channels_last)
            return batch_dict
        canvas = features.new_zeros((batch_size, features.shape[1], cells))
        canvas[coords[:, 0], :, cell] = features
        batch_dict["spatial_features"] = canvas.view(batch_size, -1, self.ny, self.nx)
        return batch_dict
