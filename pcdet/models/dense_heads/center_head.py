"""CenterPoint's head (Yin et al., CVPR 2021): a shared conv, then per class group ("task") one heatmap and the
box regressions at object centres; targets, losses and decoding live in ``model_utils.centernet_utils``."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ...utils import loss_utils
from ..model_utils import centernet_utils, model_nms_utils

# Heatmap prior: the last conv's bias starts every cell at foreground probability sigmoid(-2.19) ≈ 0.1.
HEATMAP_INIT_BIAS = -2.19


class SeparateHead(nn.Module):
    """One sub-network per output (``sep_head_dict``: name → ``out_channels``, ``num_conv``): ``num_conv − 1`` ×
    [3×3 conv → BN → ReLU], then a 3×3 conv to the output. Registered under the output's name, in dict order."""

    def __init__(self, input_channels: int, sep_head_dict: dict, init_bias: float = HEATMAP_INIT_BIAS, use_bias=False):
        super().__init__()
        self.head_names = list(sep_head_dict)
        for name, spec in sep_head_dict.items():
            layers: list[nn.Module] = [
                nn.Sequential(
                    nn.Conv2d(input_channels, input_channels, 3, padding=1, bias=use_bias),
                    nn.BatchNorm2d(input_channels),
                    nn.ReLU(),
                )
                for _ in range(int(spec["num_conv"]) - 1)
            ]
            layers.append(nn.Conv2d(input_channels, int(spec["out_channels"]), 3, padding=1, bias=True))
            tower = nn.Sequential(*layers)
            if name == "hm":
                nn.init.constant_(tower[-1].bias, init_bias)
            else:
                for module in tower.modules():
                    if isinstance(module, nn.Conv2d):
                        nn.init.kaiming_normal_(module.weight)
                        if module.bias is not None:
                            nn.init.zeros_(module.bias)
            self.add_module(name, tower)

    def forward(self, x: torch.Tensor) -> dict:
        return {name: getattr(self, name)(x) for name in self.head_names}


class CenterHead(nn.Module):
    """Config (OpenPCDet's keys): ``CLASS_NAMES_EACH_HEAD``, ``SHARED_CONV_CHANNEL``, ``USE_BIAS_BEFORE_NORM``,
    ``NUM_HM_CONV``, ``SEPARATE_HEAD_CFG {HEAD_ORDER, HEAD_DICT}``, ``TARGET_ASSIGNER_CONFIG {FEATURE_MAP_STRIDE,
    NUM_MAX_OBJS, GAUSSIAN_OVERLAP, MIN_RADIUS}``, ``LOSS_CONFIG.LOSS_WEIGHTS {cls_weight, loc_weight,
    code_weights}``, ``POST_PROCESSING {SCORE_THRESH, POST_CENTER_LIMIT_RANGE, MAX_OBJ_PER_SAMPLE, NMS_CONFIG}``.

    ``NMS_CONFIG.NMS_TYPE``: ``nms_gpu`` / ``nms_normal_gpu`` (one class-agnostic NMS per head, OpenPCDet's
    configs), ``class_specific_nms`` (per class; values may be per-class lists), or ``circle_nms`` (centre distance,
    ``MIN_RADIUS``: one value or one per head, in m² as CenterPoint's — OpenPCDet leaves this one unimplemented).

    Reads ``spatial_features_2d``; writes ``center_head_preds`` (per head a dict of raw maps ``(B, C, H, W)``, the
    heatmap as logits under ``hm``: what response distillation reads) and, when predicting, ``final_box_dicts``.
    """

    def __init__(
        self,
        model_cfg,
        input_channels: int,
        num_class: int,
        class_names,
        grid_size,
        point_cloud_range,
        voxel_size,
        predict_boxes_when_training: bool = False,
        **kwargs,
    ):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.grid_size = grid_size
        self.point_cloud_range = point_cloud_range
        self.voxel_size = voxel_size
        self.feature_map_stride = int(model_cfg.TARGET_ASSIGNER_CONFIG.get("FEATURE_MAP_STRIDE"))
        self.predict_boxes_when_training = predict_boxes_when_training
        if predict_boxes_when_training:
            raise NotImplementedError("CenterHead: predicting boxes in training (two-stage refinement) is not built")

        self.class_names = list(class_names)
        self.class_names_each_head = [list(names) for names in model_cfg.CLASS_NAMES_EACH_HEAD]
        unknown = [n for names in self.class_names_each_head for n in names if n not in self.class_names]
        if unknown:
            raise ValueError(f"CenterHead: CLASS_NAMES_EACH_HEAD has {unknown}, not in CLASS_NAMES {self.class_names}")
        # Per head: the global (0-based) class index of each of its classes.
        self.class_id_mapping_each_head = [
            torch.tensor([self.class_names.index(n) for n in names]) for names in self.class_names_each_head
        ]
        if sum(len(names) for names in self.class_names_each_head) != len(self.class_names):
            raise ValueError("CenterHead: CLASS_NAMES_EACH_HEAD must list every class of CLASS_NAMES once")

        channels = int(model_cfg.SHARED_CONV_CHANNEL)
        use_bias = bool(model_cfg.get("USE_BIAS_BEFORE_NORM", False))
        self.shared_conv = nn.Sequential(
            nn.Conv2d(input_channels, channels, 3, padding=1, bias=use_bias), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.separate_head_cfg = model_cfg.SEPARATE_HEAD_CFG
        self.heads_list = nn.ModuleList()
        for names in self.class_names_each_head:
            head_dict = copy.deepcopy(dict(self.separate_head_cfg.HEAD_DICT))
            head_dict["hm"] = {"out_channels": len(names), "num_conv": model_cfg.NUM_HM_CONV}
            self.heads_list.append(SeparateHead(channels, head_dict, HEATMAP_INIT_BIAS, use_bias))

        self.hm_loss_func = loss_utils.FocalLossCenterNet()
        self.reg_loss_func = loss_utils.RegLossCenterNet()
        self.forward_ret_dict: dict = {}

    # ------------------------------------------------------------------ targets
    def assign_targets(self, gt_boxes: torch.Tensor, feature_map_size) -> dict:
        """``gt_boxes (B, M, 7 + E + 1)`` (label 1-based, zero rows are padding) → per head lists ``heatmaps (B, C,
        H, W)``, ``target_boxes (B, K, 8 + E)``, ``inds (B, K)``, ``masks (B, K)``; ``feature_map_size`` (H, W)."""
        cfg = self.model_cfg.TARGET_ASSIGNER_CONFIG
        width_height = (int(feature_map_size[1]), int(feature_map_size[0]))
        out = {"heatmaps": [], "target_boxes": [], "inds": [], "masks": []}
        for mapping in self.class_id_mapping_each_head:
            # Global label (1-based) → label within this head (1-based); 0 for other heads' classes and padding.
            to_head = gt_boxes.new_zeros(len(self.class_names) + 1, dtype=torch.long)
            to_head[mapping.to(gt_boxes.device) + 1] = torch.arange(1, len(mapping) + 1, device=gt_boxes.device)
            per_sample = []
            for sample in gt_boxes:
                head_labels = to_head[sample[:, -1].long().clamp(0, len(self.class_names))]
                boxes = sample[head_labels > 0].clone()
                boxes[:, -1] = head_labels[head_labels > 0].to(boxes.dtype)
                per_sample.append(
                    centernet_utils.assign_center_targets(
                        boxes,
                        num_classes=len(mapping),
                        feature_map_size=width_height,
                        point_cloud_range=self.point_cloud_range,
                        voxel_size=self.voxel_size,
                        feature_map_stride=self.feature_map_stride,
                        num_max_objs=cfg.NUM_MAX_OBJS,
                        gaussian_overlap=cfg.GAUSSIAN_OVERLAP,
                        min_radius=cfg.MIN_RADIUS,
                    )
                )
            for key, name in (("heatmaps", "heatmap"), ("target_boxes", "target_boxes"), ("inds", "inds")):
                out[key].append(torch.stack([t[name] for t in per_sample]))
            out["masks"].append(torch.stack([t["mask"] for t in per_sample]))
        return out

    # ------------------------------------------------------------------ forward / loss
    def forward(self, data_dict: dict) -> dict:
        x = self.shared_conv(data_dict["spatial_features_2d"])
        pred_dicts = [head(x) for head in self.heads_list]
        self.forward_ret_dict["pred_dicts"] = pred_dicts
        data_dict["center_head_preds"] = pred_dicts
        if self.training:
            self.forward_ret_dict["target_dicts"] = self.assign_targets(data_dict["gt_boxes"], x.shape[2:])
        else:
            data_dict["final_box_dicts"] = self.generate_predicted_boxes(data_dict["batch_size"], pred_dicts)
        return data_dict

    def get_loss(self) -> tuple[torch.Tensor, dict]:
        """Σ over heads of ``cls_weight`` · heatmap focal loss + ``loc_weight`` · Σ_codes code_weight · L1 at the
        object centres (codes in ``HEAD_ORDER``)."""
        weights = self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS
        targets = self.forward_ret_dict["target_dicts"]
        tb_dict: dict = {}
        loss = 0.0
        for idx, preds in enumerate(self.forward_ret_dict["pred_dicts"]):
            # Clamped so that log(p) and log(1 − p) stay finite.
            heatmap = torch.clamp(torch.sigmoid(preds["hm"]), min=1e-4, max=1 - 1e-4)
            hm_loss = self.hm_loss_func(heatmap, targets["heatmaps"][idx]) * weights["cls_weight"]
            pred_boxes = torch.cat([preds[name] for name in self.separate_head_cfg.HEAD_ORDER], dim=1)
            reg_loss = self.reg_loss_func(
                pred_boxes, targets["masks"][idx], targets["inds"][idx], targets["target_boxes"][idx]
            )
            loc_loss = (reg_loss * reg_loss.new_tensor(weights["code_weights"])).sum() * weights["loc_weight"]
            loss = loss + hm_loss + loc_loss
            tb_dict[f"hm_loss_head_{idx}"] = hm_loss.item()
            tb_dict[f"loc_loss_head_{idx}"] = loc_loss.item()
        tb_dict["rpn_loss"] = loss.item()
        return loss, tb_dict

    # ------------------------------------------------------------------ decoding
    def _select(self, head_idx: int, boxes: dict, nms_config) -> torch.Tensor:
        """Indices of one head's decoded boxes that survive its NMS."""
        nms_type = nms_config.NMS_TYPE
        if nms_type == "circle_nms":
            radius = nms_config.MIN_RADIUS
            radius = radius[head_idx] if isinstance(radius, (list, tuple)) else radius
            return centernet_utils.circle_nms(
                boxes["pred_boxes"][:, 0:2], boxes["pred_scores"], float(radius), nms_config.NMS_POST_MAXSIZE
            )
        if nms_type == "class_specific_nms":
            selected, _ = model_nms_utils.class_specific_nms(
                boxes["pred_scores"],
                boxes["pred_boxes"],
                boxes["pred_labels"],
                nms_config,
                score_thresh=nms_config.get("SCORE_THRESH"),
            )
            return selected
        selected, _ = model_nms_utils.class_agnostic_nms(boxes["pred_scores"], boxes["pred_boxes"], nms_config)
        return selected

    def generate_predicted_boxes(self, batch_size: int, pred_dicts: list[dict]) -> list[dict]:
        """Per sample ``pred_boxes (M, 7 [+2])``, ``pred_scores (M)``, ``pred_labels (M)`` 1-based, head after head."""
        post_cfg = self.model_cfg.POST_PROCESSING
        results: list[dict] = [{"pred_boxes": [], "pred_scores": [], "pred_labels": []} for _ in range(batch_size)]
        for idx, preds in enumerate(pred_dicts):
            decoded = centernet_utils.decode_bbox_from_heatmap(
                heatmap=torch.sigmoid(preds["hm"]),
                rot_cos=preds["rot"][:, 0:1],
                rot_sin=preds["rot"][:, 1:2],
                center=preds["center"],
                center_z=preds["center_z"],
                dim=torch.exp(preds["dim"]),
                vel=preds.get("vel") if "vel" in self.separate_head_cfg.HEAD_ORDER else None,
                point_cloud_range=self.point_cloud_range,
                voxel_size=self.voxel_size,
                feature_map_stride=self.feature_map_stride,
                K=post_cfg.MAX_OBJ_PER_SAMPLE,
                score_thresh=post_cfg.SCORE_THRESH,
                post_center_limit_range=post_cfg.POST_CENTER_LIMIT_RANGE,
            )
            mapping = self.class_id_mapping_each_head[idx].to(preds["hm"].device)
            for k, boxes in enumerate(decoded):
                boxes["pred_labels"] = mapping[boxes["pred_labels"]]
                selected = self._select(idx, boxes, post_cfg.NMS_CONFIG)
                for key in results[k]:
                    results[k][key].append(boxes[key][selected])
        for result in results:
            for key in result:
                result[key] = torch.cat(result[key], dim=0)
            result["pred_labels"] = result["pred_labels"] + 1
        return results
