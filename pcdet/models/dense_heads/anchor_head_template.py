"""Shared machinery of anchor-based dense heads: anchors, target assignment, losses and box decoding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ...utils import box_coder_utils, common_utils, loss_utils
from .target_assigner.anchor_generator import AnchorGenerator
from .target_assigner.axis_aligned_target_assigner import AxisAlignedTargetAssigner

# TARGET_ASSIGNER_CONFIG.NAME -> assigner class.
TARGET_ASSIGNERS = {
    "AxisAlignedTargetAssigner": AxisAlignedTargetAssigner,
}


def generate_anchors(anchor_generator_cfg, grid_size, point_cloud_range, anchor_ndim: int = 7):
    """Anchors per class on the feature map (grid / ``feature_map_stride``), padded with zeros to ``anchor_ndim``."""
    generator = AnchorGenerator(anchor_range=point_cloud_range, anchor_generator_config=anchor_generator_cfg)
    grid_size = np.asarray(grid_size, dtype=np.int64)
    feature_map_size = [grid_size[:2] // cfg["feature_map_stride"] for cfg in anchor_generator_cfg]
    anchors_list, num_anchors_per_location = generator.generate_anchors(feature_map_size)
    if anchor_ndim != 7:
        anchors_list = [torch.cat((a, a.new_zeros((*a.shape[:-1], anchor_ndim - 7))), dim=-1) for a in anchors_list]
    return anchors_list, num_anchors_per_location


class AnchorHeadTemplate(nn.Module):
    def __init__(
        self, model_cfg, num_class: int, class_names, grid_size, point_cloud_range, predict_boxes_when_training
    ):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.class_names = class_names
        self.predict_boxes_when_training = predict_boxes_when_training
        # Multi-head anchor layout: class after class, each (size, rotation, z, y, x) — see flat_anchors.
        self.use_multihead = model_cfg.get("USE_MULTIHEAD", False)

        anchor_target_cfg = model_cfg.TARGET_ASSIGNER_CONFIG
        self.box_coder = getattr(box_coder_utils, anchor_target_cfg.BOX_CODER)(
            num_dir_bins=anchor_target_cfg.get("NUM_DIR_BINS", 6), **anchor_target_cfg.get("BOX_CODER_CONFIG", {})
        )
        anchors, self.num_anchors_per_location = generate_anchors(
            model_cfg.ANCHOR_GENERATOR_CONFIG, grid_size, point_cloud_range, anchor_ndim=self.box_coder.code_size
        )
        # A plain list, not buffers: OpenPCDet's state dict has no anchors. Moved to the features' device on use.
        self.anchors = anchors
        self._flat_anchors_cache: tuple | None = None  # (source tensors, their versions, concatenation)
        self.target_assigner = self.get_target_assigner(anchor_target_cfg)
        self.forward_ret_dict: dict = {}
        self.build_losses(model_cfg.LOSS_CONFIG)

    def get_target_assigner(self, anchor_target_cfg):
        if anchor_target_cfg.NAME not in TARGET_ASSIGNERS:
            raise KeyError(f"unknown target assigner {anchor_target_cfg.NAME!r}; available: {sorted(TARGET_ASSIGNERS)}")
        return TARGET_ASSIGNERS[anchor_target_cfg.NAME](
            model_cfg=self.model_cfg,
            class_names=self.class_names,
            box_coder=self.box_coder,
            match_height=anchor_target_cfg.MATCH_HEIGHT,
        )

    def build_losses(self, losses_cfg) -> None:
        self.add_module("cls_loss_func", loss_utils.SigmoidFocalClassificationLoss(alpha=0.25, gamma=2.0))
        reg_loss_name = losses_cfg.get("REG_LOSS_TYPE") or "WeightedSmoothL1Loss"
        self.add_module(
            "reg_loss_func", getattr(loss_utils, reg_loss_name)(code_weights=losses_cfg.LOSS_WEIGHTS["code_weights"])
        )
        self.add_module("dir_loss_func", loss_utils.WeightedCrossEntropyLoss())

    def anchors_on(self, device: torch.device) -> list[torch.Tensor]:
        if self.anchors[0].device != device:
            self.anchors = [a.to(device) for a in self.anchors]
        return self.anchors

    def flat_anchors(self, device: torch.device) -> torch.Tensor:
        """All anchors ``(A_total, code)`` in prediction order: (z, y, x, class, size, rotation), or with
        ``USE_MULTIHEAD`` class after class, each (size, rotation, z, y, x) (OpenPCDet's multi-head layout).

        Built once and reused while ``self.anchors`` holds the same, unmodified tensors (identity and in-place
        version are checked): concatenating them anew cost ~1 ms per frame on the KITTI grid (321k anchors).
        """
        anchors = self.anchors_on(device)
        versions = [a._version for a in anchors]
        cached = self._flat_anchors_cache
        if (
            cached is None
            or len(cached[0]) != len(anchors)
            or any(a is not b for a, b in zip(cached[0], anchors))
            or cached[1] != versions
        ):
            if self.use_multihead:
                flat = torch.cat([a.permute(3, 4, 0, 1, 2, 5).reshape(-1, a.shape[-1]) for a in anchors])
            else:
                flat = torch.cat(anchors, dim=-3).view(-1, anchors[0].shape[-1])
            cached = self._flat_anchors_cache = (list(anchors), versions, flat)
        return cached[2]

    def assign_targets(self, gt_boxes: torch.Tensor) -> dict:
        """``gt_boxes (B, M, 8)`` → ``box_cls_labels``, ``box_reg_targets``, ``reg_weights``."""
        return self.target_assigner.assign_targets(self.anchors_on(gt_boxes.device), gt_boxes)

    def get_cls_layer_loss(self) -> tuple[torch.Tensor, dict]:
        cls_preds = self.forward_ret_dict["cls_preds"]
        box_cls_labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(cls_preds.shape[0])
        cared = box_cls_labels >= 0
        positives = box_cls_labels > 0
        negatives = box_cls_labels == 0
        # Positives and negatives weigh 1 each (ignored anchors 0), normalised by the sample's positive count.
        pos_normalizer = positives.sum(1, keepdim=True).float().clamp(min=1.0)
        cls_weights = (negatives.float() + positives.float()) / pos_normalizer
        cls_targets = box_cls_labels * cared.type_as(box_cls_labels)
        if self.num_class == 1:
            cls_targets = positives.type_as(box_cls_labels)  # class-agnostic head: every positive is class 1
        one_hot = torch.zeros(*cls_targets.shape, self.num_class + 1, dtype=cls_preds.dtype, device=cls_preds.device)
        one_hot.scatter_(-1, cls_targets.unsqueeze(-1).long(), 1.0)
        one_hot = one_hot[..., 1:]  # column 0 is background: a negative is all-zero
        cls_preds = cls_preds.view(batch_size, -1, self.num_class)
        cls_loss = self.cls_loss_func(cls_preds, one_hot, weights=cls_weights).sum() / batch_size
        cls_loss = cls_loss * self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS["cls_weight"]
        return cls_loss, {"rpn_loss_cls": cls_loss.item()}

    @staticmethod
    def add_sin_difference(boxes1: torch.Tensor, boxes2: torch.Tensor, dim: int = 6):
        """Replace the angles by ``sin(a1)cos(a2)`` / ``cos(a1)sin(a2)``: their difference is ``sin(a1 - a2)``, so the
        loss does not punish a box that is right up to 180°."""
        rad_pred = torch.sin(boxes1[..., dim : dim + 1]) * torch.cos(boxes2[..., dim : dim + 1])
        rad_target = torch.cos(boxes1[..., dim : dim + 1]) * torch.sin(boxes2[..., dim : dim + 1])
        boxes1 = torch.cat([boxes1[..., :dim], rad_pred, boxes1[..., dim + 1 :]], dim=-1)
        boxes2 = torch.cat([boxes2[..., :dim], rad_target, boxes2[..., dim + 1 :]], dim=-1)
        return boxes1, boxes2

    @staticmethod
    def get_direction_target(
        anchors: torch.Tensor,
        reg_targets: torch.Tensor,
        one_hot: bool = True,
        dir_offset: float = 0.0,
        num_bins: int = 2,
    ) -> torch.Tensor:
        """Direction bin of the gt heading (anchor heading + residual): bins of 2π / num_bins from dir_offset."""
        batch_size = reg_targets.shape[0]
        anchors = anchors.view(batch_size, -1, anchors.shape[-1])
        rot_gt = reg_targets[..., 6] + anchors[..., 6]
        offset_rot = common_utils.limit_period(rot_gt - dir_offset, 0, 2 * np.pi)
        dir_cls_targets = torch.floor(offset_rot / (2 * np.pi / num_bins)).long().clamp(min=0, max=num_bins - 1)
        if one_hot:
            dir_cls_targets = torch.nn.functional.one_hot(dir_cls_targets, num_bins).to(anchors.dtype)
        return dir_cls_targets

    def get_box_reg_layer_loss(self) -> tuple[torch.Tensor, dict]:
        box_preds = self.forward_ret_dict["box_preds"]
        box_dir_cls_preds = self.forward_ret_dict.get("dir_cls_preds")
        box_reg_targets = self.forward_ret_dict["box_reg_targets"]
        box_cls_labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(box_preds.shape[0])
        loss_weights = self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS

        positives = box_cls_labels > 0
        reg_weights = positives.float() / positives.sum(1, keepdim=True).float().clamp(min=1.0)
        anchors = self.flat_anchors(box_preds.device)
        anchors = anchors.view(1, -1, anchors.shape[-1]).repeat(batch_size, 1, 1)
        box_preds = box_preds.view(batch_size, -1, self.box_coder.code_size)
        box_preds_sin, reg_targets_sin = box_preds, box_reg_targets
        if not getattr(self.box_coder, "encode_angle_by_sincos", False):
            # (A sin/cos-encoded heading is already periodic: no sin of a difference there.)
            box_preds_sin, reg_targets_sin = self.add_sin_difference(box_preds, box_reg_targets)
        loc_loss = self.reg_loss_func(box_preds_sin, reg_targets_sin, weights=reg_weights).sum() / batch_size
        loc_loss = loc_loss * loss_weights["loc_weight"]
        box_loss = loc_loss
        tb_dict = {"rpn_loss_loc": loc_loss.item()}

        if box_dir_cls_preds is not None:
            num_bins = self.model_cfg.NUM_DIR_BINS
            dir_targets = self.get_direction_target(
                anchors, box_reg_targets, dir_offset=self.model_cfg.DIR_OFFSET, num_bins=num_bins
            )
            dir_logits = box_dir_cls_preds.view(batch_size, -1, num_bins)
            weights = positives.type_as(dir_logits)
            weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
            dir_loss = self.dir_loss_func(dir_logits, dir_targets, weights=weights).sum() / batch_size
            dir_loss = dir_loss * loss_weights["dir_weight"]
            box_loss = box_loss + dir_loss
            tb_dict["rpn_loss_dir"] = dir_loss.item()
        return box_loss, tb_dict

    def get_loss(self) -> tuple[torch.Tensor, dict]:
        cls_loss, tb_dict = self.get_cls_layer_loss()
        box_loss, tb_dict_box = self.get_box_reg_layer_loss()
        tb_dict.update(tb_dict_box)
        rpn_loss = cls_loss + box_loss
        tb_dict["rpn_loss"] = rpn_loss.item()
        return rpn_loss, tb_dict

    def generate_predicted_boxes(
        self,
        batch_size: int,
        cls_preds: torch.Tensor | list[torch.Tensor],
        box_preds: torch.Tensor,
        dir_cls_preds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """Head outputs ``(B, H, W, A·C)`` → ``batch_cls_preds (B, N, num_class)`` logits and decoded
        ``batch_box_preds (B, N, 7)``, N = H·W·A in anchor order. A list of class outputs (one per head of a
        multi-head, ``(B, N_k, C_k)``) stays a list, as OpenPCDet's."""
        anchors = self.flat_anchors(box_preds.device)
        num_anchors = anchors.shape[0]
        batch_anchors = anchors.view(1, num_anchors, -1).expand(batch_size, -1, -1)  # decoding only reads them
        if isinstance(cls_preds, list):
            batch_cls_preds = [c.float() for c in cls_preds]
        else:
            batch_cls_preds = cls_preds.view(batch_size, num_anchors, -1).float()
        batch_box_preds = self.box_coder.decode_torch(box_preds.view(batch_size, num_anchors, -1), batch_anchors)

        if dir_cls_preds is not None:
            # Regression fixes the heading only up to one bin period (π for two bins): fold it into the period
            # that starts at DIR_OFFSET, then add the period of the bin the direction classifier picked.
            dir_offset = self.model_cfg.DIR_OFFSET
            dir_limit_offset = self.model_cfg.DIR_LIMIT_OFFSET
            period = 2 * np.pi / self.model_cfg.NUM_DIR_BINS
            dir_labels = torch.max(dir_cls_preds.view(batch_size, num_anchors, -1), dim=-1)[1]
            dir_rot = common_utils.limit_period(batch_box_preds[..., 6] - dir_offset, dir_limit_offset, period)
            batch_box_preds[..., 6] = dir_rot + dir_offset + period * dir_labels.to(batch_box_preds.dtype)

        if isinstance(self.box_coder, box_coder_utils.PreviousResidualDecoder):
            # Legacy models predict the heading in the old convention.
            batch_box_preds[..., 6] = common_utils.limit_period(
                -(batch_box_preds[..., 6] + np.pi / 2), offset=0.5, period=np.pi * 2
            )
        return batch_cls_preds, batch_box_preds

    def forward(self, **kwargs):
        raise NotImplementedError
