"""Flatten a dense 3D feature volume into a BEV map by stacking the z slices as channels."""

from __future__ import annotations

import torch.nn as nn


class HeightCompression(nn.Module):
    def __init__(self, model_cfg, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_bev_features = model_cfg.NUM_BEV_FEATURES

    def forward(self, batch_dict: dict) -> dict:
        """``encoded_spconv_tensor`` (sparse, dense shape ``(B, C, D, H, W)``) → ``spatial_features (B, C·D, H, W)``."""
        dense = batch_dict["encoded_spconv_tensor"].dense()
        n, c, d, h, w = dense.shape
        batch_dict["spatial_features"] = dense.view(n, c * d, h, w)
        batch_dict["spatial_features_stride"] = batch_dict["encoded_spconv_tensor_stride"]
        return batch_dict
