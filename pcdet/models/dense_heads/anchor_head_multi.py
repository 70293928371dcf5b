"""Anchor head with one sub-head per class group on a shared conv (PointPillars / SECOND multi-head on nuScenes).

Anchors, target assignment (``USE_MULTIHEAD`` layout: class after class, each in size, rotation, y, x order),
box coding and the regression/direction losses are :class:`AnchorHeadTemplate`'s; this module adds the heads,
their output layout and the per-head classification loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .anchor_head_template import AnchorHeadTemplate

_PRIOR = 0.01  # focal-loss prior: every anchor starts at foreground probability 0.01


def _conv_tower(c_in: int, c_mid: int, num_middle: int, c_out: int) -> nn.Sequential:
    """``num_middle`` × [3×3 conv (no bias) → BN → ReLU], then a 3×3 conv with bias to ``c_out``."""
    layers: list[nn.Module] = []
    for _ in range(num_middle):
        layers += [nn.Conv2d(c_in, c_mid, 3, padding=1, bias=False), nn.BatchNorm2d(c_mid), nn.ReLU()]
        c_in = c_mid
    layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
    return nn.Sequential(*layers)


class SingleHead(nn.Module):
    """The convs of one class group. With ``SEPARATE_REG_CONFIG`` (``NUM_MIDDLE_CONV``, ``NUM_MIDDLE_FILTER``,
    ``REG_LIST`` of ``name:channels``) the box code comes from one conv tower per entry (``conv_box.conv_<name>``,
    codes in list order) and the classes from a tower too; otherwise 1×1 convs as AnchorHeadSingle's.

    ``head_label_indices`` (buffer, in OpenPCDet's state dict): the 1-based global labels of the head's classes.
    """

    def __init__(
        self,
        model_cfg,
        input_channels: int,
        num_class: int,
        num_anchors_per_location: int,
        code_size: int,
        head_label_indices: torch.Tensor,
        separate_reg_config=None,
    ):
        super().__init__()
        self.num_class = num_class
        self.num_anchors_per_location = num_anchors_per_location
        self.code_size = code_size
        self.register_buffer("head_label_indices", head_label_indices)
        a = num_anchors_per_location
        if separate_reg_config is not None:
            num_middle = int(separate_reg_config.NUM_MIDDLE_CONV)
            c_mid = int(separate_reg_config.NUM_MIDDLE_FILTER)
            self.conv_box = nn.ModuleDict()
            for entry in separate_reg_config.REG_LIST:
                name, channels = str(entry).split(":")
                self.conv_box[f"conv_{name}"] = _conv_tower(input_channels, c_mid, num_middle, a * int(channels))
            total = sum(int(str(e).split(":")[1]) for e in separate_reg_config.REG_LIST)
            if total != code_size:
                raise ValueError(f"SEPARATE_REG_CONFIG.REG_LIST gives {total} box codes, the box coder {code_size}")
            self.conv_cls = _conv_tower(input_channels, c_mid, num_middle, a * num_class)
        else:
            self.conv_cls = nn.Conv2d(input_channels, a * num_class, kernel_size=1)
            self.conv_box = nn.Conv2d(input_channels, a * code_size, kernel_size=1)
        if model_cfg.get("USE_DIRECTION_CLASSIFIER", False):
            self.conv_dir_cls = nn.Conv2d(input_channels, a * model_cfg.NUM_DIR_BINS, kernel_size=1)
        else:
            self.conv_dir_cls = None
        self.init_weights()

    def init_weights(self) -> None:
        cls_out = self.conv_cls if isinstance(self.conv_cls, nn.Conv2d) else self.conv_cls[-1]
        nn.init.constant_(cls_out.bias, -np.log((1 - _PRIOR) / _PRIOR))
        if isinstance(self.conv_box, nn.ModuleDict):
            for module in self.conv_box.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        else:
            nn.init.normal_(self.conv_box.weight, mean=0, std=0.001)

    def _per_anchor(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """``(B, A·channels, H, W)`` → ``(B, A·H·W, channels)`` in (anchor, y, x) order. The channel block of an
        anchor is taken as OpenPCDet takes it (``view(A, channels)``), also when the separate towers' outputs are
        concatenated: a checkpoint trained with OpenPCDet then decodes identically."""
        b, _, h, w = x.shape
        a = self.num_anchors_per_location
        return x.view(b, a, channels, h, w).permute(0, 1, 3, 4, 2).reshape(b, a * h * w, channels)

    def forward(self, x: torch.Tensor) -> dict:
        if isinstance(self.conv_box, nn.ModuleDict):
            box = torch.cat([conv(x) for conv in self.conv_box.values()], dim=1)
        else:
            box = self.conv_box(x)
        out = {
            "cls_preds": self._per_anchor(self.conv_cls(x), self.num_class),
            "box_preds": self._per_anchor(box, self.code_size),
        }
        if self.conv_dir_cls is not None:
            out["dir_cls_preds"] = self._per_anchor(
                self.conv_dir_cls(x), self.conv_dir_cls.out_channels // self.num_anchors_per_location
            )
        return out


class AnchorHeadMulti(AnchorHeadTemplate):
    """Config (OpenPCDet's keys): ``USE_MULTIHEAD: True``, ``SEPARATE_MULTIHEAD`` (each head scores only its own
    classes), ``SHARED_CONV_NUM_FILTER`` (3×3 conv → BN → ReLU before the heads; none when unset),
    ``RPN_HEAD_CFGS`` (``HEAD_CLS_NAME`` per head), ``SEPARATE_REG_CONFIG``, plus AnchorHeadSingle's keys.

    The heads' classes, in head order, must be the anchor configs' classes in their order: predictions and
    targets are then laid out alike (head after head = class after class). With ``SEPARATE_MULTIHEAD``,
    ``batch_cls_preds`` is a list (one ``(B, N_k, C_k)`` per head) and ``multihead_label_mapping`` gives each
    head's 1-based labels, as OpenPCDet's; ``batch_box_preds (B, N, code)`` covers all heads.
    """

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
        if not self.use_multihead:
            raise ValueError("AnchorHeadMulti needs USE_MULTIHEAD: True (its anchor layout)")
        self.separate_multihead = bool(model_cfg.get("SEPARATE_MULTIHEAD", False))
        shared = model_cfg.get("SHARED_CONV_NUM_FILTER")
        if shared:
            self.shared_conv = nn.Sequential(
                nn.Conv2d(input_channels, shared, 3, padding=1, bias=False),
                nn.BatchNorm2d(shared, eps=1e-3, momentum=0.01),
                nn.ReLU(),
            )
            input_channels = shared
        else:
            self.shared_conv = None
        self.rpn_heads = self._make_heads(input_channels)

    def _make_heads(self, input_channels: int) -> nn.ModuleList:
        anchor_classes = [cfg["class_name"] for cfg in self.model_cfg.ANCHOR_GENERATOR_CONFIG]
        head_classes = [list(cfg["HEAD_CLS_NAME"]) for cfg in self.model_cfg.RPN_HEAD_CFGS]
        if [name for names in head_classes for name in names] != anchor_classes:
            raise ValueError(
                f"AnchorHeadMulti: RPN_HEAD_CFGS classes {head_classes} must list the anchor classes {anchor_classes} "
                "once each, in the same order"
            )
        anchors_per_class = dict(zip(anchor_classes, self.num_anchors_per_location))
        heads = nn.ModuleList()
        for names in head_classes:
            labels = torch.tensor([self.class_names.index(name) + 1 for name in names], dtype=torch.long)
            heads.append(
                SingleHead(
                    self.model_cfg,
                    input_channels,
                    num_class=len(names) if self.separate_multihead else self.num_class,
                    num_anchors_per_location=sum(anchors_per_class[name] for name in names),
                    code_size=self.box_coder.code_size,
                    head_label_indices=labels,
                    separate_reg_config=self.model_cfg.get("SEPARATE_REG_CONFIG"),
                )
            )
        return heads

    def forward(self, data_dict: dict) -> dict:
        """``spatial_features_2d`` → per-head outputs (kept for the loss) and, when predicting, ``batch_cls_preds``
        / ``batch_box_preds`` (+ ``multihead_label_mapping``)."""
        x = data_dict["spatial_features_2d"]
        if self.shared_conv is not None:
            x = self.shared_conv(x)
        outs = [head(x) for head in self.rpn_heads]
        cls_preds = [o["cls_preds"] for o in outs]
        if not self.separate_multihead:
            cls_preds = torch.cat(cls_preds, dim=1)
        box_preds = torch.cat([o["box_preds"] for o in outs], dim=1)
        dir_cls_preds = torch.cat([o["dir_cls_preds"] for o in outs], dim=1) if "dir_cls_preds" in outs[0] else None
        self.forward_ret_dict.update(cls_preds=cls_preds, box_preds=box_preds, dir_cls_preds=dir_cls_preds)

        if self.training:
            self.forward_ret_dict.update(self.assign_targets(gt_boxes=data_dict["gt_boxes"]))
        if not self.training or self.predict_boxes_when_training:
            batch_cls_preds, batch_box_preds = self.generate_predicted_boxes(
                batch_size=data_dict["batch_size"],
                cls_preds=cls_preds,
                box_preds=box_preds,
                dir_cls_preds=dir_cls_preds,
            )
            if isinstance(batch_cls_preds, list):
                data_dict["multihead_label_mapping"] = [head.head_label_indices for head in self.rpn_heads]
            data_dict["batch_cls_preds"] = batch_cls_preds
            data_dict["batch_box_preds"] = batch_box_preds
            data_dict["cls_preds_normalized"] = False
        return data_dict

    def get_cls_layer_loss(self) -> tuple[torch.Tensor, dict]:
        """Focal loss head by head on its anchors and its classes' columns; weights as the single head's (1 per
        cared anchor), normalised by the sample's positives over all heads."""
        cls_preds = self.forward_ret_dict["cls_preds"]
        if not isinstance(cls_preds, list):
            return super().get_cls_layer_loss()
        labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(labels.shape[0])
        positives, negatives = labels > 0, labels == 0
        cls_weights = (positives.float() + negatives.float()) / positives.sum(1, keepdim=True).float().clamp(min=1.0)
        one_hot = torch.zeros(*labels.shape, self.num_class + 1, dtype=cls_preds[0].dtype, device=labels.device)
        one_hot.scatter_(-1, (labels * (labels >= 0).type_as(labels)).unsqueeze(-1).long(), 1.0)
        start = 0
        cls_loss = 0.0
        for head, pred in zip(self.rpn_heads, cls_preds):
            stop = start + pred.shape[1]
            target = one_hot[:, start:stop][..., head.head_label_indices]
            loss = self.cls_loss_func(pred, target, weights=cls_weights[:, start:stop])
            cls_loss = cls_loss + loss.sum() / batch_size
            start = stop
        cls_loss = cls_loss * self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS["cls_weight"]
        return cls_loss, {"rpn_loss_cls": cls_loss.item()}
