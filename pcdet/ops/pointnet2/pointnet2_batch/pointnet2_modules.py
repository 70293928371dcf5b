"""PointNet++ set abstraction (SA) and feature propagation (FP) layers with OpenPCDet's constructor arguments and
parameter names, so a checkpoint's ``SA_modules.*`` / ``FP_modules.*`` weights load strictly.

Each shared MLP is ``Conv2d(1x1, bias=False), BatchNorm2d, ReLU`` per layer (state-dict indices 0, 1, 3, 4, ...).
``bn`` is accepted and, as in OpenPCDet, does not remove the batch norms: PointRCNN's ROI head passes
``USE_BN: False`` and its checkpoints still hold BatchNorm weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import pointnet2_utils


def _shared_mlp(channels: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class _PointnetSAModuleBase(nn.Module):
    def __init__(self):
        super().__init__()
        self.npoint: int | None = None
        self.groupers = nn.ModuleList()
        self.mlps = nn.ModuleList()
        self.pool_method = "max_pool"

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None = None, new_xyz: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """xyz (B, N, 3), features (B, C, N) -> new_xyz (B, npoint, 3) (farthest point samples of ``xyz`` unless
        given; None for a group-all layer), new_features (B, sum of the MLPs' last widths, npoint)."""
        if new_xyz is None and self.npoint is not None:
            idx = pointnet2_utils.farthest_point_sample(xyz, self.npoint)
            new_xyz = pointnet2_utils.gather_operation(xyz.transpose(1, 2), idx).transpose(1, 2).contiguous()
        pooled = []
        for grouper, mlp in zip(self.groupers, self.mlps):
            grouped = mlp(grouper(xyz, new_xyz, features))  # (B, C', npoint, nsample)
            if self.pool_method == "max_pool":
                grouped = F.max_pool2d(grouped, kernel_size=[1, grouped.shape[3]])
            elif self.pool_method == "avg_pool":
                grouped = F.avg_pool2d(grouped, kernel_size=[1, grouped.shape[3]])
            else:
                raise NotImplementedError(f"pool_method {self.pool_method!r}: expected 'max_pool' or 'avg_pool'")
            pooled.append(grouped.squeeze(-1))
        return new_xyz, torch.cat(pooled, dim=1)


class PointnetSAModuleMSG(_PointnetSAModuleBase):
    """Set abstraction with multi-scale grouping: one ball query + shared MLP + pooling per radius, concatenated."""

    def __init__(
        self,
        *,
        npoint: int | None,
        radii: list[float],
        nsamples: list[int],
        mlps: list[list[int]],
        bn: bool = True,
        use_xyz: bool = True,
        pool_method: str = "max_pool",
    ):
        """``mlps[i]`` starts with the input feature width; 3 is added for the coordinates when ``use_xyz`` (the
        caller's lists are not modified). ``npoint=None`` groups all points into one set."""
        super().__init__()
        if not len(radii) == len(nsamples) == len(mlps):
            raise ValueError(f"radii, nsamples and mlps differ in length: {len(radii)}, {len(nsamples)}, {len(mlps)}")
        self.npoint = npoint
        for radius, nsample, spec in zip(radii, nsamples, mlps):
            grouper = (
                pointnet2_utils.QueryAndGroup(radius, nsample, use_xyz=use_xyz)
                if npoint is not None
                else pointnet2_utils.GroupAll(use_xyz)
            )
            self.groupers.append(grouper)
            self.mlps.append(_shared_mlp([spec[0] + 3 * use_xyz] + list(spec[1:])))
        self.pool_method = pool_method


class PointnetSAModule(PointnetSAModuleMSG):
    """Set abstraction with a single scale."""

    def __init__(
        self,
        *,
        mlp: list[int],
        npoint: int | None = None,
        radius: float | None = None,
        nsample: int | None = None,
        bn: bool = True,
        use_xyz: bool = True,
        pool_method: str = "max_pool",
    ):
        super().__init__(
            mlps=[mlp],
            npoint=npoint,
            radii=[radius],
            nsamples=[nsample],
            bn=bn,
            use_xyz=use_xyz,
            pool_method=pool_method,
        )


class PointnetFPModule(nn.Module):
    """Feature propagation: inverse-distance interpolation from the three nearest known points, concatenated with
    the unknown points' own features, then a shared MLP."""

    def __init__(self, *, mlp: list[int], bn: bool = True):
        super().__init__()
        self.mlp = _shared_mlp(list(mlp))

    def forward(
        self,
        unknown: torch.Tensor,
        known: torch.Tensor | None,
        unknow_feats: torch.Tensor | None,
        known_feats: torch.Tensor,
    ) -> torch.Tensor:
        """unknown (B, n, 3), known (B, m, 3), unknow_feats (B, C1, n), known_feats (B, C2, m) -> (B, mlp[-1], n).

        Weights are ``1 / (dist + 1e-8)`` normalised to sum 1 (plain distances, as OpenPCDet); without ``known``
        the single known feature vector is broadcast to every unknown point."""
        if known is not None:
            dist, idx = pointnet2_utils.three_nn(unknown, known)
            dist_recip = 1.0 / (dist + 1e-8)
            weight = dist_recip / dist_recip.sum(dim=2, keepdim=True)
            interpolated = pointnet2_utils.three_interpolate(known_feats, idx, weight)
        else:
            interpolated = known_feats.expand(*known_feats.shape[:2], unknown.shape[1])
        new_features = interpolated if unknow_feats is None else torch.cat([interpolated, unknow_feats], dim=1)
        return self.mlp(new_features.unsqueeze(-1)).squeeze(-1)
