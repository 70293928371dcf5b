"""Shared machinery of per-point heads (PointRCNN's stage one): MLP builders, foreground targets from the boxes
that contain each point, the focal classification and box regression losses, box decoding."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops.roiaware_pool3d import roiaware_pool3d_utils
from ...utils import box_utils, loss_utils


def make_fc_layers(fc_cfg: list[int], input_channels: int, output_channels: int) -> nn.Sequential:
    """``Linear(no bias) -> BatchNorm1d -> ReLU`` per width in ``fc_cfg``, then ``Linear`` (with bias) to
    ``output_channels`` (state-dict indices 0, 1, 3, 4, ..., as OpenPCDet)."""
    layers: list[nn.Module] = []
    c_in = input_channels
    for width in fc_cfg:
        layers += [nn.Linear(c_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        c_in = width
    layers.append(nn.Linear(c_in, output_channels, bias=True))
    return nn.Sequential(*layers)


def real_gt_boxes(gt_boxes: torch.Tensor) -> torch.Tensor:
    """One sample's ``(M, 8)`` gt boxes without the all-zero padding rows that collate appends."""
    nonzero = torch.nonzero(gt_boxes.abs().sum(dim=1) > 0)
    return gt_boxes[: int(nonzero.max()) + 1] if nonzero.numel() > 0 else gt_boxes[:0]


class PointHeadTemplate(nn.Module):
    def __init__(self, model_cfg, num_class: int):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.build_losses(model_cfg.LOSS_CONFIG)
        self.forward_ret_dict: dict | None = None

    def build_losses(self, losses_cfg) -> None:
        self.add_module("cls_loss_func", loss_utils.SigmoidFocalClassificationLoss(alpha=0.25, gamma=2.0))
        reg_loss_type = losses_cfg.get("LOSS_REG", None)
        if reg_loss_type not in (None, "WeightedSmoothL1Loss"):
            # OpenPCDet's smooth-l1 / l1 options serve heads whose losses take no per-point weights (not built here).
            raise KeyError(f"LOSS_REG {reg_loss_type!r}: only WeightedSmoothL1Loss is supported")
        self.reg_loss_func = loss_utils.WeightedSmoothL1Loss(
            code_weights=losses_cfg.LOSS_WEIGHTS.get("code_weights", None)
        )

    @staticmethod
    def make_fc_layers(fc_cfg: list[int], input_channels: int, output_channels: int) -> nn.Sequential:
        return make_fc_layers(fc_cfg, input_channels, output_channels)

    def assign_stack_targets(
        self,
        points: torch.Tensor,
        gt_boxes: torch.Tensor,
        extend_gt_boxes: torch.Tensor | None = None,
        set_ignore_flag: bool = True,
        ret_box_labels: bool = False,
    ) -> dict:
        """points (N, 4: [b, x, y, z]), gt_boxes (B, M, 8) -> ``point_cls_labels (N)`` (0 background, the gt's
        1-based class inside a box, 1 when class-agnostic; -1 "ignore" for points only inside the enlarged
        ``extend_gt_boxes``) and, with ``ret_box_labels``, ``point_box_labels (N, code_size)`` for foreground."""
        if points.dim() != 2 or points.shape[1] != 4:
            raise ValueError(f"points must be (N, 4: [b, x, y, z]), got {tuple(points.shape)}")
        if gt_boxes.dim() != 3 or gt_boxes.shape[2] != 8:
            raise ValueError(f"gt_boxes must be (B, M, 8), got {tuple(gt_boxes.shape)}")
        if set_ignore_flag and extend_gt_boxes is None:
            raise ValueError("set_ignore_flag needs extend_gt_boxes")
        batch_size = gt_boxes.shape[0]
        bs_idx = points[:, 0]
        point_cls_labels = points.new_zeros(points.shape[0], dtype=torch.long)
        code_size = self.box_coder.code_size if ret_box_labels else 0
        point_box_labels = points.new_zeros((points.shape[0], code_size)) if ret_box_labels else None
        for k in range(batch_size):
            mask = bs_idx == k
            points_single = points[mask][:, 1:4]
            labels_single = point_cls_labels.new_zeros(points_single.shape[0])
            boxes = real_gt_boxes(gt_boxes[k])
            box_idxs = roiaware_pool3d_utils.points_in_boxes_gpu(
                points_single[None], boxes[None, :, 0:7].contiguous()
            ).long()[0]
            fg_flag = box_idxs >= 0
            if set_ignore_flag:
                extend = extend_gt_boxes[k][: boxes.shape[0]]  # padding rows are no longer zero once enlarged
                extend_idxs = roiaware_pool3d_utils.points_in_boxes_gpu(
                    points_single[None], extend[None, :, 0:7].contiguous()
                ).long()[0]
                labels_single[fg_flag ^ (extend_idxs >= 0)] = -1
            gt_of_fg = boxes[box_idxs[fg_flag]]
            labels_single[fg_flag] = 1 if self.num_class == 1 else gt_of_fg[:, -1].long()
            point_cls_labels[mask] = labels_single
            if ret_box_labels and gt_of_fg.shape[0] > 0:
                box_labels_single = point_box_labels.new_zeros((points_single.shape[0], code_size))
                box_labels_single[fg_flag] = self.box_coder.encode_torch(
                    gt_boxes=gt_of_fg[:, :-1], points=points_single[fg_flag], gt_classes=gt_of_fg[:, -1].long()
                )
                point_box_labels[mask] = box_labels_single
        return {"point_cls_labels": point_cls_labels, "point_box_labels": point_box_labels}

    def get_cls_layer_loss(self, tb_dict: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Sigmoid focal loss over foreground and background points (ignored points excluded), normalised by the
        number of foreground points."""
        point_cls_labels = self.forward_ret_dict["point_cls_labels"].view(-1)
        point_cls_preds = self.forward_ret_dict["point_cls_preds"].view(-1, self.num_class)
        positives = point_cls_labels > 0
        cls_weights = ((point_cls_labels == 0) | positives).float()
        cls_weights /= torch.clamp(positives.sum().float(), min=1.0)
        one_hot = point_cls_preds.new_zeros(*point_cls_labels.shape, self.num_class + 1)
        one_hot.scatter_(-1, (point_cls_labels * (point_cls_labels >= 0).long()).unsqueeze(-1), 1.0)
        one_hot = one_hot[..., 1:]  # column 0 is background
        loss = self.cls_loss_func(point_cls_preds, one_hot, weights=cls_weights).sum()
        loss = loss * self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS["point_cls_weight"]
        tb_dict = {} if tb_dict is None else tb_dict
        tb_dict.update({"point_loss_cls": loss.item(), "point_pos_num": int(positives.sum().item())})
        return loss, tb_dict

    def get_box_layer_loss(self, tb_dict: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Weighted smooth-L1 on the box codes of foreground points, normalised by their number."""
        pos_mask = self.forward_ret_dict["point_cls_labels"] > 0
        point_box_labels = self.forward_ret_dict["point_box_labels"]
        point_box_preds = self.forward_ret_dict["point_box_preds"]
        reg_weights = pos_mask.float()
        reg_weights /= torch.clamp(pos_mask.sum().float(), min=1.0)
        loss = self.reg_loss_func(point_box_preds[None], point_box_labels[None], weights=reg_weights[None]).sum()
        loss = loss * self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS["point_box_weight"]
        tb_dict = {} if tb_dict is None else tb_dict
        tb_dict["point_loss_box"] = loss.item()
        return loss, tb_dict

    def generate_predicted_boxes(
        self, points: torch.Tensor, point_cls_preds: torch.Tensor, point_box_preds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (N, 3), logits (N, num_class), codes (N, code_size) -> (logits, boxes (N, 7)) with each box
        decoded for its point's most likely class."""
        pred_classes = point_cls_preds.max(dim=-1)[1]
        boxes = self.box_coder.decode_torch(point_box_preds, points, pred_classes + 1)
        return point_cls_preds, boxes

    @staticmethod
    def enlarged_gt_boxes(gt_boxes: torch.Tensor, extra_width) -> torch.Tensor:
        """(B, M, 8) gt boxes with ``extra_width`` added to dx, dy, dz (the "ignore" margin)."""
        return box_utils.enlarge_box3d(gt_boxes.view(-1, gt_boxes.shape[-1]), extra_width).view(gt_boxes.shape)

    def forward(self, batch_dict: dict) -> dict:
        raise NotImplementedError
