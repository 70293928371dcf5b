"""PointRCNN's stage two (``PointRCNNHead``): pool the points inside each RoI, move them into the RoI's canonical
frame, run PointNet++ set abstraction on them, and score and refine the RoI."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops.pointnet2.pointnet2_batch import pointnet2_modules
from ...ops.roipoint_pool3d import roipoint_pool3d_utils
from ...utils import common_utils
from .roi_head_template import RoIHeadTemplate

_NUM_PREFIX_CHANNELS = 5  # canonical x, y, z + the point's foreground score + its normalised depth


def _conv2d_block(channels: list[int], use_bn: bool) -> nn.Sequential:
    """``Conv2d(1x1) [-> BatchNorm2d] -> ReLU`` per consecutive pair of widths; bias only without BN."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=1, bias=not use_bn))
        if use_bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def padding_rois(rois: torch.Tensor) -> torch.Tensor:
    """(B, N) True for the all-zero rows the proposal layer pads with when NMS kept fewer boxes."""
    return (rois[..., 3:6] == 0).all(dim=-1)


class PointRCNNHead(RoIHeadTemplate):
    def __init__(self, input_channels: int, model_cfg, num_class: int = 1, **kwargs):
        super().__init__(num_class=num_class, model_cfg=model_cfg)
        use_bn = model_cfg.USE_BN
        # Registration order = OpenPCDet's state-dict order: SA_modules, xyz_up_layer, merge_down_layer, fc heads.
        sa_cfg = model_cfg.SA_CONFIG
        self.SA_modules = nn.ModuleList()
        channel_in = input_channels
        for k, npoint in enumerate(sa_cfg.NPOINTS):
            mlp = [channel_in] + list(sa_cfg.MLPS[k])
            self.SA_modules.append(
                pointnet2_modules.PointnetSAModule(
                    npoint=npoint if npoint != -1 else None,
                    radius=sa_cfg.RADIUS[k],
                    nsample=sa_cfg.NSAMPLE[k],
                    mlp=mlp,
                    use_xyz=True,
                    bn=use_bn,
                )
            )
            channel_in = mlp[-1]

        up = list(model_cfg.XYZ_UP_LAYER)
        self.num_prefix_channels = _NUM_PREFIX_CHANNELS
        self.xyz_up_layer = _conv2d_block([_NUM_PREFIX_CHANNELS] + up, use_bn)
        # Lifted xyz (up[-1]) concatenated with the backbone's point features, which must be as wide.
        if input_channels != up[-1]:
            raise ValueError(f"XYZ_UP_LAYER must end at the backbone's width {input_channels}, got {up}")
        self.merge_down_layer = _conv2d_block([up[-1] * 2, up[-1]], use_bn)

        self.cls_layers = self.make_fc_layers(channel_in, self.num_class, model_cfg.CLS_FC)
        self.reg_layers = self.make_fc_layers(channel_in, self.box_coder.code_size * self.num_class, model_cfg.REG_FC)
        pool_cfg = model_cfg.ROI_POINT_POOL
        self.roipoint_pool3d_layer = roipoint_pool3d_utils.RoIPointPool3d(
            num_sampled_points=pool_cfg.NUM_SAMPLED_POINTS, pool_extra_width=pool_cfg.POOL_EXTRA_WIDTH
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-normal convolutions with zero biases, and a near-zero last regression layer (OpenPCDet's)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv1d)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        nn.init.normal_(self.reg_layers[-1].weight, mean=0, std=0.001)

    def roipool3d_gpu(self, batch_dict: dict) -> torch.Tensor:
        """-> (B * num_rois, K, 3 + 2 + C): each RoI's pooled points in its canonical frame (centre at the origin,
        heading along +x), then score, depth and features; all zero for a RoI without points.

        As in OpenPCDet, pooling runs without gradient: stage two trains on the backbone's features, detached."""
        batch_size = batch_dict["batch_size"]
        point_coords = batch_dict["point_coords"][:, 1:4]
        rois = batch_dict["rois"]
        point_scores = batch_dict["point_cls_scores"].detach()
        depth = point_coords.norm(dim=1) / self.model_cfg.ROI_POINT_POOL.DEPTH_NORMALIZER - 0.5
        features = torch.cat([point_scores[:, None], depth[:, None], batch_dict["point_features"]], dim=1)
        batch_points = point_coords.view(batch_size, -1, 3)
        batch_features = features.view(batch_size, -1, features.shape[-1])
        with torch.no_grad():
            pooled, empty = self.roipoint_pool3d_layer(batch_points, batch_features, rois)
            pooled[..., 0:3] -= rois[:, :, None, 0:3]
            pooled = pooled.view(-1, pooled.shape[-2], pooled.shape[-1])
            pooled[:, :, 0:3] = common_utils.rotate_points_along_z(pooled[:, :, 0:3], -rois.reshape(-1, 7)[:, 6])
            pooled[empty.view(-1) > 0] = 0
        return pooled

    def forward(self, batch_dict: dict) -> dict:
        nms_config = self.model_cfg.NMS_CONFIG["TRAIN" if self.training else "TEST"]
        self.proposal_layer(batch_dict, nms_config=nms_config)
        if self.training:
            targets_dict = self.assign_targets(batch_dict)
            batch_dict["rois"] = targets_dict["rois"]
            batch_dict["roi_labels"] = targets_dict["roi_labels"]

        pooled = self.roipool3d_gpu(batch_dict)  # (total_rois, K, 5 + C)
        xyz_input = pooled[..., 0 : self.num_prefix_channels].transpose(1, 2).unsqueeze(dim=3).contiguous()
        xyz_features = self.xyz_up_layer(xyz_input)
        point_features = pooled[..., self.num_prefix_channels :].transpose(1, 2).unsqueeze(dim=3)
        merged = self.merge_down_layer(torch.cat([xyz_features, point_features], dim=1))
        l_xyz, l_features = [pooled[..., 0:3].contiguous()], [merged.squeeze(dim=3).contiguous()]
        for sa in self.SA_modules:
            new_xyz, new_features = sa(l_xyz[-1], l_features[-1])
            l_xyz.append(new_xyz)
            l_features.append(new_features)
        shared_features = l_features[-1]  # (total_rois, C, 1)
        rcnn_cls = self.cls_layers(shared_features).transpose(1, 2).contiguous().squeeze(dim=1)  # (total_rois, 1)
        rcnn_reg = self.reg_layers(shared_features).transpose(1, 2).contiguous().squeeze(dim=1)  # (total_rois, 7)

        if not self.training:
            batch_cls_preds, batch_box_preds = self.generate_predicted_boxes(
                batch_dict["batch_size"], rois=batch_dict["rois"], cls_preds=rcnn_cls, box_preds=rcnn_reg
            )
            # Padding RoIs (NMS kept fewer than NMS_POST_MAXSIZE) decode to zero-size boxes at the RoI origin;
            # OpenPCDet scores them like real ones, so they could reach the output. Here they score 0.
            pad = padding_rois(batch_dict["rois"])
            batch_cls_preds = batch_cls_preds.masked_fill(pad[..., None], torch.finfo(batch_cls_preds.dtype).min)
            batch_dict["batch_cls_preds"] = batch_cls_preds
            batch_dict["batch_box_preds"] = batch_box_preds
            batch_dict["cls_preds_normalized"] = False
        else:
            targets_dict["rcnn_cls"] = rcnn_cls
            targets_dict["rcnn_reg"] = rcnn_reg
            self.forward_ret_dict = targets_dict
        return batch_dict
