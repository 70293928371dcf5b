"""SECOND / PointPillars anchor target assignment by axis-aligned BEV IoU, class by class."""

from __future__ import annotations

import torch

from ....ops.iou3d_nms import iou3d_nms_utils
from ....utils import box_utils


class AxisAlignedTargetAssigner:
    """Per class: anchors with IoU ≥ ``matched_threshold`` to a gt box are positive, those below
    ``unmatched_threshold`` to every gt are background, the rest are ignored (-1); and each gt's best anchor(s)
    are forced positive. IoU is the BEV IoU of the axis-aligned approximations (``MATCH_HEIGHT``: 3D IoU).
    """

    def __init__(self, model_cfg, class_names, box_coder, match_height: bool = False):
        anchor_generator_cfg = model_cfg.ANCHOR_GENERATOR_CONFIG
        anchor_target_cfg = model_cfg.TARGET_ASSIGNER_CONFIG
        if model_cfg.get("USE_MULTIHEAD", False):
            raise NotImplementedError("AxisAlignedTargetAssigner: USE_MULTIHEAD (AnchorHeadMulti) is not supported")
        self.box_coder = box_coder
        self.match_height = match_height
        self.class_names = list(class_names)
        self.anchor_class_names = [cfg["class_name"] for cfg in anchor_generator_cfg]
        unknown = [name for name in self.anchor_class_names if name not in self.class_names]
        if unknown:
            raise ValueError(f"anchor classes {unknown} are not in CLASS_NAMES {self.class_names}")
        self.pos_fraction = anchor_target_cfg.POS_FRACTION if anchor_target_cfg.POS_FRACTION >= 0 else None
        self.sample_size = anchor_target_cfg.SAMPLE_SIZE
        self.norm_by_num_examples = anchor_target_cfg.NORM_BY_NUM_EXAMPLES
        self.matched_thresholds = {cfg["class_name"]: cfg["matched_threshold"] for cfg in anchor_generator_cfg}
        self.unmatched_thresholds = {cfg["class_name"]: cfg["unmatched_threshold"] for cfg in anchor_generator_cfg}

    def assign_targets(self, all_anchors: list[torch.Tensor], gt_boxes_with_classes: torch.Tensor) -> dict:
        """``all_anchors``: per class ``(nz, ny, nx, num_size, num_rot, 7)``; ``gt_boxes_with_classes (B, M, 8)``
        zero-padded, label 1-based in the last column.

        Returns ``box_cls_labels (B, A)`` int32 (class, 0 background, -1 ignored), ``box_reg_targets (B, A, code)``,
        ``reg_weights (B, A)``, with anchors in the head's order (z, y, x, class, size, rotation).
        """
        cls_labels, bbox_targets, reg_weights = [], [], []
        for sample in gt_boxes_with_classes:
            # Collation pads with all-zero rows at the end: drop them.
            real_rows = torch.nonzero((sample != 0).any(dim=1))
            num_gt = int(real_rows.max()) + 1 if real_rows.numel() > 0 else 0
            cur_gt = sample[:num_gt, :-1]
            cur_classes = sample[:num_gt, -1].int()

            per_class = []
            for class_name, anchors in zip(self.anchor_class_names, all_anchors):
                mask = cur_classes == self.class_names.index(class_name) + 1
                feature_map_size = anchors.shape[:3]
                target = self.assign_targets_single(
                    anchors.reshape(-1, anchors.shape[-1]),
                    cur_gt[mask],
                    gt_classes=cur_classes[mask],
                    matched_threshold=self.matched_thresholds[class_name],
                    unmatched_threshold=self.unmatched_thresholds[class_name],
                )
                per_class.append((feature_map_size, target))

            # Interleave the classes per location, as the anchors are laid out (z, y, x, class, ...).
            code_size = self.box_coder.code_size
            cls_labels.append(torch.cat([t["box_cls_labels"].view(*f, -1) for f, t in per_class], dim=-1).view(-1))
            bbox_targets.append(
                torch.cat([t["box_reg_targets"].view(*f, -1, code_size) for f, t in per_class], dim=-2).view(
                    -1, code_size
                )
            )
            reg_weights.append(torch.cat([t["reg_weights"].view(*f, -1) for f, t in per_class], dim=-1).view(-1))
        return {
            "box_cls_labels": torch.stack(cls_labels, dim=0),
            "box_reg_targets": torch.stack(bbox_targets, dim=0),
            "reg_weights": torch.stack(reg_weights, dim=0),
        }

    def _overlaps(self, anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        if self.match_height:
            return iou3d_nms_utils.boxes_iou3d_gpu(anchors[:, 0:7], gt_boxes[:, 0:7])
        return box_utils.boxes3d_nearest_bev_iou(anchors[:, 0:7], gt_boxes[:, 0:7])

    def assign_targets_single(
        self,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_classes: torch.Tensor,
        matched_threshold: float = 0.6,
        unmatched_threshold: float = 0.45,
    ) -> dict:
        """Targets of one class's anchors ``(A, 7)`` against that class's gt boxes ``(G, 7)``."""
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        device = anchors.device
        labels = torch.full((num_anchors,), -1, dtype=torch.int32, device=device)
        gt_classes = gt_classes.to(torch.int32)

        if num_gt > 0 and num_anchors > 0:
            overlap = self._overlaps(anchors, gt_boxes)  # (A, G)
            anchor_to_gt_max, anchor_to_gt_argmax = overlap.max(dim=1)
            gt_to_anchor_max = overlap.max(dim=0)[0]
            # A gt that touches no anchor at all forces nothing (else every anchor would tie at IoU 0).
            gt_to_anchor_max = torch.where(
                gt_to_anchor_max == 0, torch.full_like(gt_to_anchor_max, -1), gt_to_anchor_max
            )
            # Forced anchors: those that reach some gt's best IoU (ties included). Each takes its own best gt.
            forced = (overlap == gt_to_anchor_max[None, :]).any(dim=1)
            positive = forced | (anchor_to_gt_max >= matched_threshold)
            background = anchor_to_gt_max < unmatched_threshold
            matched_classes = gt_classes[anchor_to_gt_argmax]
            labels = torch.where(positive, matched_classes, labels)
            if self.pos_fraction is None:
                # Background wins over ignore; forced matches win over background.
                labels = torch.where(background & ~forced, torch.zeros_like(labels), labels)
            else:
                labels = self._subsample(labels, background & ~positive)
        else:
            anchor_to_gt_argmax = torch.zeros((num_anchors,), dtype=torch.long, device=device)
            if self.pos_fraction is None:
                labels.zero_()
            else:
                labels = self._subsample(labels, torch.ones_like(labels, dtype=torch.bool))

        fg = labels > 0
        bbox_targets = anchors.new_zeros((num_anchors, self.box_coder.code_size))
        if num_gt > 0 and bool(fg.any()):
            bbox_targets[fg] = self.box_coder.encode_torch(gt_boxes[anchor_to_gt_argmax[fg]], anchors[fg])

        reg_weights = anchors.new_zeros((num_anchors,))
        if self.norm_by_num_examples:
            num_examples = max(float((labels >= 0).sum()), 1.0)
            reg_weights[fg] = 1.0 / num_examples
        else:
            reg_weights[fg] = 1.0
        return {"box_cls_labels": labels, "box_reg_targets": bbox_targets, "reg_weights": reg_weights}

    def _subsample(self, labels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """Keep at most ``POS_FRACTION · SAMPLE_SIZE`` random positives and fill the sample with random background;
        anchors left out are ignored (-1)."""
        labels = labels.clone()
        fg_inds = torch.nonzero(labels > 0)[:, 0]
        max_fg = int(self.pos_fraction * self.sample_size)
        if fg_inds.numel() > max_fg:
            dropped = fg_inds[torch.randperm(fg_inds.numel(), device=labels.device)[: fg_inds.numel() - max_fg]]
            labels[dropped] = -1
        num_bg = self.sample_size - int((labels > 0).sum())
        bg_inds = torch.nonzero(background)[:, 0]
        if bg_inds.numel() > num_bg:
            bg_inds = bg_inds[torch.randperm(bg_inds.numel(), device=labels.device)[:num_bg]]
        labels[bg_inds] = 0
        return labels
