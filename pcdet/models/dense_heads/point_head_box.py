"""PointRCNN's stage one: foreground segmentation of every point and a box proposal from each (``PointHeadBox``)."""

from __future__ import annotations

import torch

from ...utils import box_coder_utils
from .point_head_template import PointHeadTemplate


class PointHeadBox(PointHeadTemplate):
    """``cls_layers`` (CLS_FC -> num_class logits) and ``box_layers`` (REG_FC -> the box coder's code) on
    ``point_features``. Writes ``point_cls_scores`` (max sigmoid over classes) and, in evaluation or when a second
    stage follows, ``batch_cls_preds``/``batch_box_preds`` per point with ``batch_index``."""

    def __init__(self, num_class: int, input_channels: int, model_cfg, predict_boxes_when_training: bool = False,
                 **kwargs):  # fmt: skip
        super().__init__(model_cfg=model_cfg, num_class=num_class)
        self.predict_boxes_when_training = predict_boxes_when_training
        target_cfg = model_cfg.TARGET_CONFIG
        self.box_coder = getattr(box_coder_utils, target_cfg.BOX_CODER)(**target_cfg.BOX_CODER_CONFIG)
        self.cls_layers = self.make_fc_layers(model_cfg.CLS_FC, input_channels, num_class)
        self.box_layers = self.make_fc_layers(model_cfg.REG_FC, input_channels, self.box_coder.code_size)

    def assign_targets(self, input_dict: dict) -> dict:
        gt_boxes = input_dict["gt_boxes"]
        extend = self.enlarged_gt_boxes(gt_boxes, self.model_cfg.TARGET_CONFIG.GT_EXTRA_WIDTH)
        return self.assign_stack_targets(
            points=input_dict["point_coords"],
            gt_boxes=gt_boxes,
            extend_gt_boxes=extend,
            set_ignore_flag=True,
            ret_box_labels=True,
        )

    def get_loss(self, tb_dict: dict | None = None) -> tuple[torch.Tensor, dict]:
        loss_cls, tb_dict = self.get_cls_layer_loss(tb_dict)
        loss_box, tb_dict = self.get_box_layer_loss(tb_dict)
        return loss_cls + loss_box, tb_dict

    def forward(self, batch_dict: dict) -> dict:
        if self.model_cfg.get("USE_POINT_FEATURES_BEFORE_FUSION", False):
            point_features = batch_dict["point_features_before_fusion"]
        else:
            point_features = batch_dict["point_features"]
        point_cls_preds = self.cls_layers(point_features)  # (N, num_class)
        point_box_preds = self.box_layers(point_features)  # (N, code_size)
        batch_dict["point_cls_scores"] = torch.sigmoid(point_cls_preds).max(dim=-1)[0]
        ret_dict = {"point_cls_preds": point_cls_preds, "point_box_preds": point_box_preds}
        if self.training:
            ret_dict.update(self.assign_targets(batch_dict))
        if not self.training or self.predict_boxes_when_training:
            cls_preds, box_preds = self.generate_predicted_boxes(
                batch_dict["point_coords"][:, 1:4], point_cls_preds, point_box_preds
            )
            batch_dict["batch_cls_preds"] = cls_preds
            batch_dict["batch_box_preds"] = box_preds
            batch_dict["batch_index"] = batch_dict["point_coords"][:, 0]
            batch_dict["cls_preds_normalized"] = False
        self.forward_ret_dict = ret_dict
        return batch_dict
