"""Base class of voxel feature encoders: turn the points of each voxel/pillar into one feature vector."""

from __future__ import annotations

import torch.nn as nn


class VFETemplate(nn.Module):
    def __init__(self, model_cfg, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg

    def get_output_feature_dim(self) -> int:
        """Channels of the feature the encoder writes, which sizes the next module."""
        raise NotImplementedError(f"{type(self).__name__} must define get_output_feature_dim()")

    def forward(self, batch_dict: dict, **kwargs) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")
