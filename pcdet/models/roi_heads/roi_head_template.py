"""Shared machinery of RoI heads: proposals by NMS on the first stage's boxes, RoI targets in each RoI's canonical
frame, the classification / regression / corner losses, and decoding the refined boxes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...utils import box_coder_utils, common_utils, loss_utils
from ..model_utils import model_nms_utils
from .target_assigner.proposal_target_layer import ProposalTargetLayer


def make_conv1d_fc_layers(input_channels: int, output_channels: int, fc_list: list[int], dp_ratio: float):
    """``Conv1d(1x1, no bias) -> BatchNorm1d -> ReLU`` per width (a Dropout after the first when ``dp_ratio`` >= 0),
    then ``Conv1d`` with bias (state-dict indices 0, 1, 4, 5, 7 for two widths, as OpenPCDet)."""
    layers: list[nn.Module] = []
    c_in = input_channels
    for k, width in enumerate(fc_list):
        layers += [nn.Conv1d(c_in, width, kernel_size=1, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        c_in = width
        if dp_ratio >= 0 and k == 0:
            layers.append(nn.Dropout(dp_ratio))
    layers.append(nn.Conv1d(c_in, output_channels, kernel_size=1, bias=True))
    return nn.Sequential(*layers)


def canonical_heading(heading: torch.Tensor) -> torch.Tensor:
    """A gt heading relative to its RoI, flipped by pi when it points backwards, in [-pi/2, pi/2] (the RoI's
    direction is taken as right: the regression never has to turn a box around)."""
    heading = heading % (2 * np.pi)
    opposite = (heading > np.pi * 0.5) & (heading < np.pi * 1.5)
    heading = torch.where(opposite, (heading + np.pi) % (2 * np.pi), heading)
    heading = torch.where(heading > np.pi, heading - 2 * np.pi, heading)
    return torch.clamp(heading, min=-np.pi / 2, max=np.pi / 2)


class RoIHeadTemplate(nn.Module):
    def __init__(self, num_class: int, model_cfg, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        target_cfg = model_cfg.TARGET_CONFIG
        self.box_coder = getattr(box_coder_utils, target_cfg.BOX_CODER)(**target_cfg.get("BOX_CODER_CONFIG", {}))
        self.proposal_target_layer = ProposalTargetLayer(roi_sampler_cfg=target_cfg)
        self.build_losses(model_cfg.LOSS_CONFIG)
        self.forward_ret_dict: dict | None = None

    def build_losses(self, losses_cfg) -> None:
        self.add_module(
            "reg_loss_func", loss_utils.WeightedSmoothL1Loss(code_weights=losses_cfg.LOSS_WEIGHTS["code_weights"])
        )

    def make_fc_layers(self, input_channels: int, output_channels: int, fc_list: list[int]) -> nn.Sequential:
        return make_conv1d_fc_layers(input_channels, output_channels, fc_list, self.model_cfg.DP_RATIO)

    @torch.no_grad()
    def proposal_layer(self, batch_dict: dict, nms_config) -> dict:
        """Per sample: the first stage's boxes (``batch_box_preds``/``batch_cls_preds`` with ``batch_index``, or
        batched (B, N, ...)), best class score, class-agnostic NMS -> ``rois (B, NMS_POST_MAXSIZE, 7)``,
        ``roi_scores``, ``roi_labels`` (1-based); rows past the kept boxes stay all-zero."""
        if nms_config.MULTI_CLASSES_NMS:
            raise NotImplementedError("proposal_layer: MULTI_CLASSES_NMS is not supported (as in OpenPCDet)")
        batch_size = batch_dict["batch_size"]
        batch_box_preds, batch_cls_preds = batch_dict["batch_box_preds"], batch_dict["batch_cls_preds"]
        post = nms_config.NMS_POST_MAXSIZE
        rois = batch_box_preds.new_zeros((batch_size, post, batch_box_preds.shape[-1]))
        roi_scores = batch_box_preds.new_zeros((batch_size, post))
        roi_labels = batch_box_preds.new_zeros((batch_size, post), dtype=torch.long)
        for index in range(batch_size):
            if batch_dict.get("batch_index") is not None:
                mask = batch_dict["batch_index"] == index
            else:
                mask = index
            box_preds, cls_preds = batch_box_preds[mask], batch_cls_preds[mask]
            if box_preds.shape[0] == 0:
                continue  # no first-stage box in this sample: its RoIs stay empty
            cur_scores, cur_labels = torch.max(cls_preds, dim=1)
            selected, _ = model_nms_utils.class_agnostic_nms(
                box_scores=cur_scores, box_preds=box_preds, nms_config=nms_config
            )
            rois[index, : len(selected)] = box_preds[selected]
            roi_scores[index, : len(selected)] = cur_scores[selected]
            roi_labels[index, : len(selected)] = cur_labels[selected]
        batch_dict["rois"] = rois
        batch_dict["roi_scores"] = roi_scores
        batch_dict["roi_labels"] = roi_labels + 1
        batch_dict["has_class_labels"] = batch_cls_preds.shape[-1] > 1
        batch_dict.pop("batch_index", None)
        return batch_dict

    def assign_targets(self, batch_dict: dict) -> dict:
        """Sampled RoIs with their gt boxes expressed in each RoI's canonical frame (``gt_of_rois``: centre relative
        to the RoI, rotated by minus its heading, heading via :func:`canonical_heading`); ``gt_of_rois_src`` keeps
        them in the LiDAR frame for the corner loss."""
        with torch.no_grad():
            targets_dict = self.proposal_target_layer.forward(batch_dict)
        rois, gt_of_rois = targets_dict["rois"], targets_dict["gt_of_rois"]
        targets_dict["gt_of_rois_src"] = gt_of_rois.clone().detach()
        roi_center, roi_ry = rois[:, :, 0:3], rois[:, :, 6] % (2 * np.pi)
        gt_of_rois = gt_of_rois.clone()
        gt_of_rois[:, :, 0:3] = gt_of_rois[:, :, 0:3] - roi_center
        gt_of_rois[:, :, 6] = gt_of_rois[:, :, 6] - roi_ry
        local = common_utils.rotate_points_along_z(gt_of_rois.view(-1, 1, gt_of_rois.shape[-1]), -roi_ry.view(-1))
        gt_of_rois = local.view(rois.shape[0], -1, gt_of_rois.shape[-1])
        gt_of_rois[:, :, 6] = canonical_heading(gt_of_rois[:, :, 6])
        targets_dict["gt_of_rois"] = gt_of_rois
        return targets_dict

    def get_box_reg_layer_loss(self, forward_ret_dict: dict) -> tuple[torch.Tensor, dict]:
        """Smooth-L1 on the residual codes of foreground RoIs (over their count), plus the corner loss of the
        decoded boxes against the LiDAR-frame gt when ``CORNER_LOSS_REGULARIZATION``."""
        loss_cfgs = self.model_cfg.LOSS_CONFIG
        code_size = self.box_coder.code_size
        fg_mask = forward_ret_dict["reg_valid_mask"].view(-1) > 0
        gt_ct = forward_ret_dict["gt_of_rois"][..., 0:code_size].reshape(-1, code_size)
        gt_src = forward_ret_dict["gt_of_rois_src"][..., 0:code_size].reshape(-1, code_size)
        rcnn_reg = forward_ret_dict["rcnn_reg"].view(gt_ct.shape[0], -1)
        roi_boxes = forward_ret_dict["rois"].reshape(-1, code_size)
        fg_sum = int(fg_mask.sum().item())
        tb_dict: dict = {}
        if loss_cfgs.REG_LOSS != "smooth-l1":
            raise NotImplementedError(f"REG_LOSS {loss_cfgs.REG_LOSS!r}: only smooth-l1")
        anchors = roi_boxes.clone().detach()
        anchors[:, 0:3] = 0  # targets are in the canonical frame: centre and heading relative to the RoI
        anchors[:, 6] = 0
        reg_targets = self.box_coder.encode_torch(gt_ct, anchors)
        loss_reg = self.reg_loss_func(rcnn_reg.unsqueeze(0), reg_targets.unsqueeze(0))[0]
        loss_reg = (loss_reg.sum(dim=-1) * fg_mask.float()).sum() / max(fg_sum, 1)
        loss_reg = loss_reg * loss_cfgs.LOSS_WEIGHTS["rcnn_reg_weight"]
        tb_dict["rcnn_loss_reg"] = loss_reg.item()
        if loss_cfgs.CORNER_LOSS_REGULARIZATION and fg_sum > 0:
            fg_rois = roi_boxes[fg_mask]
            boxes = self.decode_in_lidar_frame(rcnn_reg[fg_mask], fg_rois)
            loss_corner = loss_utils.get_corner_loss_lidar(boxes[:, 0:7], gt_src[fg_mask][:, 0:7]).mean()
            loss_corner = loss_corner * loss_cfgs.LOSS_WEIGHTS["rcnn_corner_weight"]
            loss_reg = loss_reg + loss_corner
            tb_dict["rcnn_loss_corner"] = loss_corner.item()
        return loss_reg, tb_dict

    def get_box_cls_layer_loss(self, forward_ret_dict: dict) -> tuple[torch.Tensor, dict]:
        """Binary (sigmoid) or softmax cross-entropy over the RoIs whose label is not -1 (ignored)."""
        loss_cfgs = self.model_cfg.LOSS_CONFIG
        rcnn_cls = forward_ret_dict["rcnn_cls"]
        labels = forward_ret_dict["rcnn_cls_labels"].view(-1)
        valid = (labels >= 0).float()
        if loss_cfgs.CLS_LOSS == "BinaryCrossEntropy":
            target = labels.float().clamp(min=0)
            loss = F.binary_cross_entropy(torch.sigmoid(rcnn_cls.view(-1)), target, reduction="none")
            loss_cls = (loss * valid).sum() / torch.clamp(valid.sum(), min=1.0)
        elif loss_cfgs.CLS_LOSS == "CrossEntropy":
            loss = F.cross_entropy(rcnn_cls, labels.long().clamp(min=0), reduction="none")
            loss_cls = (loss * valid).sum() / torch.clamp(valid.sum(), min=1.0)
        else:
            raise NotImplementedError(f"CLS_LOSS {loss_cfgs.CLS_LOSS!r}: expected BinaryCrossEntropy or CrossEntropy")
        loss_cls = loss_cls * loss_cfgs.LOSS_WEIGHTS["rcnn_cls_weight"]
        return loss_cls, {"rcnn_loss_cls": loss_cls.item()}

    def get_loss(self, tb_dict: dict | None = None) -> tuple[torch.Tensor, dict]:
        tb_dict = {} if tb_dict is None else tb_dict
        loss_cls, cls_tb = self.get_box_cls_layer_loss(self.forward_ret_dict)
        loss_reg, reg_tb = self.get_box_reg_layer_loss(self.forward_ret_dict)
        rcnn_loss = loss_cls + loss_reg
        tb_dict.update(cls_tb)
        tb_dict.update(reg_tb)
        tb_dict["rcnn_loss"] = rcnn_loss.item()
        return rcnn_loss, tb_dict

    def decode_in_lidar_frame(self, box_preds: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """Codes (N, code_size) relative to RoIs (N, 7+) in their canonical frames -> boxes in the LiDAR frame."""
        local_rois = rois.clone().detach()
        local_rois[:, 0:3] = 0  # the heading residual stays relative to the RoI's heading
        boxes = self.box_coder.decode_torch(box_preds, local_rois)
        xyz = common_utils.rotate_points_along_z(boxes[:, None, 0:3], rois[:, 6]).squeeze(1)
        return torch.cat([xyz + rois[:, 0:3], boxes[:, 3:]], dim=-1)

    def generate_predicted_boxes(
        self, batch_size: int, rois: torch.Tensor, cls_preds: torch.Tensor, box_preds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """rois (B, N, 7), cls_preds (B * N, 1 or C), box_preds (B * N, code_size) -> (B, N, 1 or C), (B, N, 7)."""
        code_size = self.box_coder.code_size
        batch_cls_preds = cls_preds.view(batch_size, -1, cls_preds.shape[-1])
        boxes = self.decode_in_lidar_frame(box_preds.view(-1, code_size), rois.reshape(-1, rois.shape[-1]))
        return batch_cls_preds, boxes.view(batch_size, -1, code_size)
