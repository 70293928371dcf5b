"""PointNet++ backbone of PointRCNN (``PointNet2MSG``): multi-scale set abstraction down, feature propagation up,
one feature vector per input point. Parameter names follow OpenPCDet (``SA_modules.*``, ``FP_modules.*``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops.pointnet2.pointnet2_batch import pointnet2_modules


def split_points_by_sample(points: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``points (N, 1 + 3 + C)`` ``[b, x, y, z, ...]`` -> xyz (B, n, 3), features (B, C, n) (None without C).

    The batched PointNet++ ops need the same number of points in every sample (as OpenPCDet's); a batch without
    that is refused with the counts, rather than silently mixing samples.
    """
    batch_idx = points[:, 0].long()
    counts = torch.bincount(batch_idx, minlength=batch_size)[:batch_size]
    if counts.numel() == 0 or int(counts.min()) != int(counts.max()) or int(counts.min()) == 0:
        raise ValueError(
            f"PointNet2MSG needs the same, non-zero number of points in every sample, got {counts.tolist()}: add "
            "DATA_PROCESSOR sample_points (NUM_POINTS) to the data config; a frame with no point in range cannot "
            "be sampled"
        )
    order = torch.argsort(batch_idx, stable=True)  # samples are contiguous after collate; this makes sure
    points = points[order]
    xyz = points[:, 1:4].reshape(batch_size, -1, 3).contiguous()
    if points.shape[1] <= 4:
        return xyz, None
    features = points[:, 4:].reshape(batch_size, xyz.shape[1], -1).permute(0, 2, 1).contiguous()
    return xyz, features


class PointNet2MSG(nn.Module):
    """``SA_CONFIG`` (NPOINTS, RADIUS, NSAMPLE, MLPS per level) and ``FP_MLPS`` as in OpenPCDet's pointrcnn.yaml.

    Reads ``points``; writes ``point_features (N, FP_MLPS[0][-1])`` and ``point_coords (N, 4: [b, x, y, z])`` for
    the same points (sample-major order).
    """

    def __init__(self, model_cfg, input_channels: int, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        sa_cfg = model_cfg.SA_CONFIG
        self.SA_modules = nn.ModuleList()
        channel_in = input_channels - 3  # x, y, z are coordinates, not features
        skip_channels = [channel_in]
        for k, npoint in enumerate(sa_cfg.NPOINTS):
            mlps = [[channel_in] + list(spec) for spec in sa_cfg.MLPS[k]]
            self.SA_modules.append(
                pointnet2_modules.PointnetSAModuleMSG(
                    npoint=npoint,
                    radii=sa_cfg.RADIUS[k],
                    nsamples=sa_cfg.NSAMPLE[k],
                    mlps=mlps,
                    use_xyz=sa_cfg.get("USE_XYZ", True),
                )
            )
            channel_in = sum(spec[-1] for spec in mlps)
            skip_channels.append(channel_in)

        fp_mlps = model_cfg.FP_MLPS
        self.FP_modules = nn.ModuleList()
        for k, spec in enumerate(fp_mlps):
            # Level k fuses the level above (the last SA output at the top) with SA level k's skip features.
            above = fp_mlps[k + 1][-1] if k + 1 < len(fp_mlps) else channel_in
            self.FP_modules.append(pointnet2_modules.PointnetFPModule(mlp=[above + skip_channels[k]] + list(spec)))
        self.num_point_features = fp_mlps[0][-1]

    def forward(self, batch_dict: dict) -> dict:
        batch_size = batch_dict["batch_size"]
        xyz, features = split_points_by_sample(batch_dict["points"], batch_size)
        l_xyz, l_features = [xyz], [features]
        for sa in self.SA_modules:
            new_xyz, new_features = sa(l_xyz[-1], l_features[-1])
            l_xyz.append(new_xyz)
            l_features.append(new_features)
        for i in range(-1, -(len(self.FP_modules) + 1), -1):
            l_features[i - 1] = self.FP_modules[i](l_xyz[i - 1], l_xyz[i], l_features[i - 1], l_features[i])
        point_features = l_features[0].permute(0, 2, 1).contiguous()  # (B, n, C)
        batch_idx = torch.arange(batch_size, device=xyz.device, dtype=xyz.dtype).repeat_interleave(xyz.shape[1])
        batch_dict["point_features"] = point_features.view(-1, point_features.shape[-1])
        batch_dict["point_coords"] = torch.cat([batch_idx[:, None], xyz.view(-1, 3)], dim=1)
        return batch_dict
