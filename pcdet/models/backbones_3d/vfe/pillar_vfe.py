"""PointPillars' pillar feature net: decorate each point of a pillar, then a PointNet (linear + BN + ReLU + max)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...model_utils.fused_inference import FoldCache, fold_batchnorm, fused_active
from .pillar_pfn_fused import pillar_pfn_fused
from .vfe_template import VFETemplate


class PFNLayer(nn.Module):
    """Linear → (BatchNorm1d) → ReLU per point, then max over the points of a pillar.

    A non-last layer outputs ``out_channels // 2`` per-point channels concatenated with the pillar max (so the next
    layer sees both); the last layer outputs the max only, ``(V, 1, out_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, use_norm: bool = True, last_layer: bool = False):
        super().__init__()
        self.last_vfe = last_layer
        self.use_norm = use_norm
        if not last_layer:
            out_channels = out_channels // 2
        if use_norm:
            self.linear = nn.Linear(in_channels, out_channels, bias=False)
            self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01)
        else:
            self.linear = nn.Linear(in_channels, out_channels, bias=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.linear(inputs)
        if self.last_vfe and self._norm_is_monotone_map(x):
            return self.reduce_then_norm(x)
        return self.norm_then_reduce(x)

    def _norm_is_monotone_map(self, x: torch.Tensor) -> bool:
        """True where BN is a fixed per-channel map (eval mode, running statistics) and nothing needs gradients
        (the reference eval path, a KD teacher with FUSED_INFERENCE false). Only on the CPU, where the bit-equality
        below is tested."""
        return (
            self.use_norm
            and not self.norm.training
            and self.norm.running_mean is not None
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.shape[1] > 1  # one point per pillar: BN's (V, C, 1) input takes another kernel
        )

    def reduce_then_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``norm_then_reduce`` of a last layer on 2 values per pillar instead of P: eval BN is, per channel, a chain
        of rounded float operations each monotone in its input, so the max over points of relu(BN(x)) is the
        larger of BN(max x) and BN(min x) after relu, bit for bit. The (V, C, 2) extremes take BN's same kernel as
        the (V, C, P) points (channels in dim 1, more than one value per channel)."""
        low, high = torch.aminmax(x, dim=1)
        extremes = self.norm(torch.stack([high, low], dim=2))
        return F.relu(extremes.amax(dim=2)).unsqueeze(1)

    def norm_then_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """BN → ReLU per point of ``x = linear(inputs)`` ``(V, P, C)``, then the max over the points."""
        if self.use_norm:
            # BatchNorm1d normalises dim 1: move channels there (statistics over pillars and slots, padding included).
            # Contiguous, because on CPU BatchNorm's kernels for a strided (permuted) view are ~3x slower, forward
            # and backward; the result differs only in float32 summation order (~1e-6).
            x = self.norm(x.permute(0, 2, 1).contiguous()).permute(0, 2, 1)
        x = F.relu(x)
        x_max = torch.max(x, dim=1, keepdim=True)[0]
        if self.last_vfe:
            return x_max
        return torch.cat([x, x_max.expand(-1, x.shape[1], -1)], dim=2)


def get_paddings_indicator(actual_num: torch.Tensor, max_num: int) -> torch.Tensor:
    """``(V, max_num)`` bool: True for the slots that hold a real point (the first ``actual_num`` of each row)."""
    return torch.arange(max_num, device=actual_num.device)[None, :] < actual_num.view(-1, 1)


class PillarVFE(VFETemplate):
    """Config keys: ``USE_NORM``, ``WITH_DISTANCE``, ``USE_ABSLOTE_XYZ`` (OpenPCDet's spelling), ``NUM_FILTERS``."""

    def __init__(self, model_cfg, num_point_features: int, voxel_size, point_cloud_range, **kwargs):
        super().__init__(model_cfg=model_cfg)
        self.use_norm = model_cfg.USE_NORM
        self.with_distance = model_cfg.WITH_DISTANCE
        self.use_absolute_xyz = model_cfg.USE_ABSLOTE_XYZ
        # Decoration adds offsets to the pillar mean and to the pillar centre (3 + 3); without absolute xyz the
        # raw x, y, z are dropped again (hence only + 3 net).
        num_point_features += 6 if self.use_absolute_xyz else 3
        if self.with_distance:
            num_point_features += 1

        self.num_filters = list(model_cfg.NUM_FILTERS)
        assert len(self.num_filters) > 0, "PillarVFE needs at least one entry in NUM_FILTERS"
        channels = [num_point_features] + self.num_filters
        self.pfn_layers = nn.ModuleList(
            [
                PFNLayer(channels[i], channels[i + 1], self.use_norm, last_layer=(i == len(channels) - 2))
                for i in range(len(channels) - 1)
            ]
        )
        self.voxel_x, self.voxel_y, self.voxel_z = (float(v) for v in voxel_size[:3])
        self.x_offset = self.voxel_x / 2 + float(point_cloud_range[0])
        self.y_offset = self.voxel_y / 2 + float(point_cloud_range[1])
        self.z_offset = self.voxel_z / 2 + float(point_cloud_range[2])
        self.fused_inference = False  # see model_utils.fused_inference
        self._fold_cache = FoldCache()

    def get_output_feature_dim(self) -> int:
        return self.num_filters[-1]

    def decorate(self, voxels: torch.Tensor, voxel_num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Per-point input of the PFN ``(V, P, C')``: raw features, offset to the points' mean, offset to the
        pillar centre (+ distance to the origin); padded slots are zero."""
        xyz = voxels[:, :, :3]
        points_mean = xyz.sum(dim=1, keepdim=True) / voxel_num_points.type_as(voxels).view(-1, 1, 1)
        f_cluster = xyz - points_mean
        # coords are (batch, z, y, x); centre = index * size + size / 2 + range min, per axis.
        f_center = torch.stack(
            [
                xyz[:, :, 0] - (coords[:, 3].to(voxels.dtype).unsqueeze(1) * self.voxel_x + self.x_offset),
                xyz[:, :, 1] - (coords[:, 2].to(voxels.dtype).unsqueeze(1) * self.voxel_y + self.y_offset),
                xyz[:, :, 2] - (coords[:, 1].to(voxels.dtype).unsqueeze(1) * self.voxel_z + self.z_offset),
            ],
            dim=-1,
        )
        raw = voxels if self.use_absolute_xyz else voxels[:, :, 3:]
        features = [raw, f_cluster, f_center]
        if self.with_distance:
            features.append(torch.linalg.vector_norm(xyz, ord=2, dim=2, keepdim=True))
        features = torch.cat(features, dim=-1)
        # The offsets above are non-zero in the padded slots too: zero them after decoration.
        mask = get_paddings_indicator(voxel_num_points, features.shape[1]).unsqueeze(-1).type_as(features)
        return features * mask

    def forward(self, batch_dict: dict, **kwargs) -> dict:
        """``voxels (V, P, C)``, ``voxel_num_points (V)``, ``voxel_coords (V, 4)`` → ``pillar_features (V, F)``."""
        if self._can_fuse(batch_dict["voxels"]):
            batch_dict["pillar_features"] = self._fused_forward(batch_dict)
            return batch_dict
        features = self.decorate(batch_dict["voxels"], batch_dict["voxel_num_points"], batch_dict["voxel_coords"])
        for pfn in self.pfn_layers:
            features = pfn(features)
        batch_dict["pillar_features"] = features.squeeze(1)
        return batch_dict

    def _can_fuse(self, voxels: torch.Tensor) -> bool:
        # The kernel covers the configs in use: one PFN layer with batch-norm, float32 on the CPU.
        return (
            fused_active(self)
            and len(self.pfn_layers) == 1
            and self.use_norm
            and voxels.device.type == "cpu"
            and voxels.dtype == torch.float32
        )

    def _fused_forward(self, batch_dict: dict) -> torch.Tensor:
        pfn = self.pfn_layers[0]

        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            weight, bias = fold_batchnorm(pfn.linear.weight, pfn.norm)
            return weight.t().contiguous(), bias.contiguous()

        norm = pfn.norm
        weight_t, bias = self._fold_cache.get(
            [pfn.linear.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var], fold
        )
        geometry = (self.voxel_x, self.voxel_y, self.voxel_z, self.x_offset, self.y_offset, self.z_offset)
        return pillar_pfn_fused(
            batch_dict["voxels"],
            batch_dict["voxel_num_points"],
            batch_dict["voxel_coords"],
            weight_t,
            bias,
            geometry,
            self.use_absolute_xyz,
            self.with_distance,
        )
