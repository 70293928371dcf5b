"""SECOND / PointPillars anchor target assignment by axis-aligned BEV IoU, class by class."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ....ops.iou3d_nms import iou3d_nms_utils
from ....utils import box_utils


class AlignedAnchorIndex(NamedTuple):
    """An anchor set's axis-aligned BEV boxes sorted by x1, for the sparse overlap search. Anchors are fixed, so
    the assigner builds this once per set rather than once per sample and class."""

    bev: torch.Tensor  # (A, 4): x1, y1, x2, y2
    order: torch.Tensor  # (A,): anchor indices by increasing x1
    x1_sorted: torch.Tensor  # (A,)
    max_width: float  # largest x2 - x1 of the set

    @classmethod
    def build(cls, anchors: torch.Tensor) -> AlignedAnchorIndex:
        bev = box_utils.boxes3d_lidar_to_aligned_bev_boxes(anchors[:, 0:7])
        x1_sorted, order = torch.sort(bev[:, 0], stable=True)
        max_width = float((bev[:, 2] - bev[:, 0]).max()) if bev.shape[0] > 0 else 0.0
        return cls(bev, order, x1_sorted, max_width)


def aligned_bev_iou_pairs(
    index: AlignedAnchorIndex, gt_boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse ``box_utils.boxes3d_nearest_bev_iou(anchors, gt_boxes)``: ``(anchor_idx, gt_idx, iou)`` of the pairs
    with IoU > 0 (every other entry of the dense matrix is 0), each IoU bit-identical to the dense entry.

    An anchor can overlap a gt in x only if ``gt_x1 - max_width < x1 < gt_x2``: a contiguous run of the x1-sorted
    anchors (found by binary search; the lower bound has slack for round-off). The exact overlap test and the IoU
    itself then run on that run only: about (gt width + anchor width) / (x extent) of the anchors per gt.
    """
    device = gt_boxes.device
    gt_bev = box_utils.boxes3d_lidar_to_aligned_bev_boxes(gt_boxes[:, 0:7])
    keys = index.x1_sorted.dtype
    slack = 1e-3 * (1.0 + index.max_width)
    lower = (gt_bev[:, 0] - index.max_width - slack).to(keys).contiguous()
    lo = torch.searchsorted(index.x1_sorted, lower, side="left")
    hi = torch.searchsorted(index.x1_sorted, gt_bev[:, 2].to(keys).contiguous(), side="left")
    counts = (hi - lo).clamp(min=0)
    gt_idx = torch.repeat_interleave(torch.arange(gt_bev.shape[0], device=device), counts)
    run_start = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(gt_idx.shape[0], device=device) - run_start[gt_idx]  # 0..count-1 within each run
    anchor_idx = index.order[lo[gt_idx] + position]

    a, g = index.bev[anchor_idx], gt_bev[gt_idx]
    # Positive intersection ⇔ both strict overlaps (a positive float difference never rounds to 0).
    overlaps = (a[:, 0] < g[:, 2]) & (a[:, 2] > g[:, 0]) & (a[:, 1] < g[:, 3]) & (a[:, 3] > g[:, 1])
    anchor_idx, gt_idx, a, g = anchor_idx[overlaps], gt_idx[overlaps], a[overlaps], g[overlaps]
    # The float operations of box_utils.boxes_iou_normal, in its order.
    x_min = torch.max(a[:, 0], g[:, 0])
    x_max = torch.min(a[:, 2], g[:, 2])
    y_min = torch.max(a[:, 1], g[:, 1])
    y_max = torch.min(a[:, 3], g[:, 3])
    inter = (x_max - x_min).clamp(min=0) * (y_max - y_min).clamp(min=0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    iou = inter / torch.clamp(area_a + area_b - inter, min=1e-6)
    positive = iou > 0  # an underflowed product is 0 in the dense matrix too
    return anchor_idx[positive], gt_idx[positive], iou[positive]


class AxisAlignedTargetAssigner:
    """Per class: anchors with IoU ≥ ``matched_threshold`` to a gt box are positive, those below
    ``unmatched_threshold`` to every gt are background, the rest are ignored (-1); and each gt's best anchor(s)
    are forced positive. IoU is the BEV IoU of the axis-aligned approximations (``MATCH_HEIGHT``: 3D IoU).

    Only anchor/gt pairs with IoU > 0 matter (an anchor touching no gt is background), so the BEV overlaps are
    computed sparsely; the result equals the dense formulation's, ties included.
    """

    def __init__(self, model_cfg, class_names, box_coder, match_height: bool = False):
        anchor_generator_cfg = model_cfg.ANCHOR_GENERATOR_CONFIG
        anchor_target_cfg = model_cfg.TARGET_ASSIGNER_CONFIG
        # Multi-head layout (AnchorHeadMulti): class after class, each in (size, rotation, z, y, x) order.
        self.use_multihead = model_cfg.get("USE_MULTIHEAD", False)
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
        # Per anchor set: (the anchors tensor it was built from, its index); rebuilt when the head hands in another
        # tensor (e.g. the anchors moved to another device).
        self._anchor_indices: dict[int, tuple[torch.Tensor, AlignedAnchorIndex]] = {}

    def _flatten(self, anchors: torch.Tensor) -> torch.Tensor:
        """One set's ``(nz, ny, nx, num_size, num_rot, code)`` anchors as rows in the head's order."""
        if self.use_multihead:
            anchors = anchors.permute(3, 4, 0, 1, 2, 5)
        return anchors.reshape(-1, anchors.shape[-1])

    def _anchor_index(self, set_id: int, anchors: torch.Tensor) -> AlignedAnchorIndex:
        cached = self._anchor_indices.get(set_id)
        if cached is None or cached[0] is not anchors:
            cached = (anchors, AlignedAnchorIndex.build(self._flatten(anchors)))
            self._anchor_indices[set_id] = cached
        return cached[1]

    def assign_targets(self, all_anchors: list[torch.Tensor], gt_boxes_with_classes: torch.Tensor) -> dict:
        """``all_anchors``: per class ``(nz, ny, nx, num_size, num_rot, 7)``; ``gt_boxes_with_classes (B, M, 8)``
        zero-padded, label 1-based in the last column.

        Returns ``box_cls_labels (B, A)`` int32 (class, 0 background, -1 ignored), ``box_reg_targets (B, A, code)``,
        ``reg_weights (B, A)``, with anchors in the head's order (z, y, x, class, size, rotation; multi-head:
        class after class, each size, rotation, z, y, x).
        """
        indices = [None if self.match_height else self._anchor_index(k, a) for k, a in enumerate(all_anchors)]
        cls_labels, bbox_targets, reg_weights = [], [], []
        for sample in gt_boxes_with_classes:
            # Collation pads with all-zero rows at the end: drop them.
            real_rows = torch.nonzero((sample != 0).any(dim=1))
            num_gt = int(real_rows.max()) + 1 if real_rows.numel() > 0 else 0
            cur_gt = sample[:num_gt, :-1]
            cur_classes = sample[:num_gt, -1].int()

            per_class = []
            for class_name, anchors, index in zip(self.anchor_class_names, all_anchors, indices):
                mask = cur_classes == self.class_names.index(class_name) + 1
                feature_map_size = anchors.shape[:3]
                target = self.assign_targets_single(
                    self._flatten(anchors),
                    cur_gt[mask],
                    gt_classes=cur_classes[mask],
                    matched_threshold=self.matched_thresholds[class_name],
                    unmatched_threshold=self.unmatched_thresholds[class_name],
                    anchor_index=index,
                )
                per_class.append((feature_map_size, target))

            code_size = self.box_coder.code_size
            if self.use_multihead:
                cls_labels.append(torch.cat([t["box_cls_labels"] for _, t in per_class]))
                bbox_targets.append(torch.cat([t["box_reg_targets"] for _, t in per_class]))
                reg_weights.append(torch.cat([t["reg_weights"] for _, t in per_class]))
                continue
            # Interleave the classes per location, as the anchors are laid out (z, y, x, class, ...).
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

    def _overlap_pairs(
        self, anchors: torch.Tensor, gt_boxes: torch.Tensor, anchor_index: AlignedAnchorIndex | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(anchor_idx, gt_idx, iou)`` of the pairs with IoU > 0."""
        if self.match_height:
            overlap = iou3d_nms_utils.boxes_iou3d_gpu(anchors[:, 0:7], gt_boxes[:, 0:7])
            anchor_idx, gt_idx = torch.nonzero(overlap > 0, as_tuple=True)
            return anchor_idx, gt_idx, overlap[anchor_idx, gt_idx]
        if anchor_index is None:
            anchor_index = AlignedAnchorIndex.build(anchors)
        return aligned_bev_iou_pairs(anchor_index, gt_boxes)

    def assign_targets_single(
        self,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_classes: torch.Tensor,
        matched_threshold: float = 0.6,
        unmatched_threshold: float = 0.45,
        anchor_index: AlignedAnchorIndex | None = None,
    ) -> dict:
        """Targets of one class's anchors ``(A, 7)`` against that class's gt boxes ``(G, 7)``; ``anchor_index``:
        the anchors' prebuilt :class:`AlignedAnchorIndex` (built here when not given)."""
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        device = anchors.device
        labels = torch.full((num_anchors,), -1, dtype=torch.int32, device=device)
        gt_classes = gt_classes.to(torch.int32)

        if num_gt > 0 and num_anchors > 0:
            pair_anchor, pair_gt, iou = self._overlap_pairs(anchors, gt_boxes, anchor_index)
            # Row/column maxima of the dense IoU matrix, whose other entries are 0.
            anchor_to_gt_max = iou.new_zeros(num_anchors).scatter_reduce(0, pair_anchor, iou, "amax")
            gt_to_anchor_max = iou.new_zeros(num_gt).scatter_reduce(0, pair_gt, iou, "amax")
            # Argmax as torch.max gives it: the first (lowest) gt among the row's maxima; 0 for a row of zeros.
            best = iou == anchor_to_gt_max[pair_anchor]
            anchor_to_gt_argmax = torch.full((num_anchors,), num_gt, dtype=torch.long, device=device)
            anchor_to_gt_argmax.scatter_reduce_(0, pair_anchor[best], pair_gt[best], "amin")
            anchor_to_gt_argmax.masked_fill_(anchor_to_gt_argmax == num_gt, 0)
            # Forced anchors: those that reach some gt's best IoU (ties included); a gt that touches no anchor has
            # no pairs and forces nothing. Each forced anchor takes its own best gt.
            forced = torch.zeros(num_anchors, dtype=torch.bool, device=device)
            forced[pair_anchor[iou == gt_to_anchor_max[pair_gt]]] = True
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
