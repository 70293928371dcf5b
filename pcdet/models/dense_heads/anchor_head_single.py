"""One 1×1-conv anchor head shared by all classes (SECOND, PointPillars)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..model_utils.fused_inference import FoldCache, fused_active
from . import fused_anchor_decode
from .anchor_head_template import AnchorHeadTemplate


class AnchorHeadSingle(AnchorHeadTemplate):
    def __init__(
        self,
        model_cfg,
        input_channels: int,
        num_class: int,
        class_names,
        grid_size,
        point_cloud_range,
        predict_boxes_when_training: bool = True,
        **kwargs,
    ):
        super().__init__(
            model_cfg=model_cfg,
            num_class=num_class,
            class_names=class_names,
            grid_size=grid_size,
            point_cloud_range=point_cloud_range,
            predict_boxes_when_training=predict_boxes_when_training,
        )
        self.num_anchors_per_location = sum(self.num_anchors_per_location)
        a = self.num_anchors_per_location
        self.conv_cls = nn.Conv2d(input_channels, a * self.num_class, kernel_size=1)
        self.conv_box = nn.Conv2d(input_channels, a * self.box_coder.code_size, kernel_size=1)
        # OpenPCDet builds the classifier whenever the key exists, even when it is False; we honour False.
        if self.model_cfg.get("USE_DIRECTION_CLASSIFIER", False):
            self.conv_dir_cls = nn.Conv2d(input_channels, a * self.model_cfg.NUM_DIR_BINS, kernel_size=1)
        else:
            self.conv_dir_cls = None
        self.init_weights()
        self.fused_inference = False  # see model_utils.fused_inference
        self._fused_conv_cache = FoldCache()

    def init_weights(self) -> None:
        # Focal-loss prior: every anchor starts at foreground probability 0.01, so the loss is not swamped early.
        prior = 0.01
        nn.init.constant_(self.conv_cls.bias, -np.log((1 - prior) / prior))
        nn.init.normal_(self.conv_box.weight, mean=0, std=0.001)

    def forward(self, data_dict: dict) -> dict:
        """``spatial_features_2d (B, C, H, W)`` → ``batch_cls_preds``/``batch_box_preds`` (eval, or when asked in
        training); in training the targets are assigned and kept for :meth:`get_loss`."""
        spatial_features_2d = data_dict["spatial_features_2d"]
        if fused_active(self) and spatial_features_2d.device.type == "cpu" and fused_anchor_decode.can_fuse(self):
            return self._fused_forward(data_dict, spatial_features_2d)
        cls_preds = self.conv_cls(spatial_features_2d).permute(0, 2, 3, 1).contiguous()
        box_preds = self.conv_box(spatial_features_2d).permute(0, 2, 3, 1).contiguous()
        self.forward_ret_dict["cls_preds"] = cls_preds
        self.forward_ret_dict["box_preds"] = box_preds
        if self.conv_dir_cls is not None:
            dir_cls_preds = self.conv_dir_cls(spatial_features_2d).permute(0, 2, 3, 1).contiguous()
        else:
            dir_cls_preds = None
        self.forward_ret_dict["dir_cls_preds"] = dir_cls_preds

        if self.training:
            self.forward_ret_dict.update(self.assign_targets(gt_boxes=data_dict["gt_boxes"]))

        if not self.training or self.predict_boxes_when_training:
            batch_cls_preds, batch_box_preds = self.generate_predicted_boxes(
                batch_size=data_dict["batch_size"],
                cls_preds=cls_preds,
                box_preds=box_preds,
                dir_cls_preds=dir_cls_preds,
            )
            data_dict["batch_cls_preds"] = batch_cls_preds
            data_dict["batch_box_preds"] = batch_box_preds
            data_dict["cls_preds_normalized"] = False
        return data_dict

    def _fused_forward(self, data_dict: dict, spatial_features_2d: torch.Tensor) -> dict:
        convs = [c for c in (self.conv_cls, self.conv_box, self.conv_dir_cls) if c is not None]
        sources = [t for c in convs for t in (c.weight, c.bias)]
        weight, bias = self._fused_conv_cache.get(
            sources, lambda: (torch.cat([c.weight for c in convs]), torch.cat([c.bias for c in convs]))
        )
        cls_preds, box_preds, dir_cls_preds, batch_cls_preds, batch_box_preds = fused_anchor_decode.fused_forward(
            self, spatial_features_2d, weight, bias
        )
        self.forward_ret_dict.update(cls_preds=cls_preds, box_preds=box_preds, dir_cls_preds=dir_cls_preds)
        data_dict["batch_cls_preds"] = batch_cls_preds
        data_dict["batch_box_preds"] = batch_box_preds
        data_dict["cls_preds_normalized"] = False
        return data_dict
