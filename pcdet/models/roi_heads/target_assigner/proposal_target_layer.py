"""RoI sampling for a second stage (OpenPCDet's ``ProposalTargetLayer``, ``TARGET_CONFIG`` keys).

Per sample, every proposal is matched to the gt box of its class (``SAMPLE_ROI_BY_EACH_CLASS``) or of any class
with the highest 3D IoU; then exactly ``ROI_PER_IMAGE`` RoIs are drawn:

- foreground: IoU >= min(REG_FG_THRESH, CLS_FG_THRESH), at most ``round(FG_RATIO * ROI_PER_IMAGE)`` of them, drawn
  without replacement;
- background, the rest: "hard" (CLS_BG_THRESH_LO <= IoU < REG_FG_THRESH) and "easy" (IoU < CLS_BG_THRESH_LO),
  ``int(HARD_BG_RATIO * n)`` hard ones when both kinds exist, drawn with replacement;
- no background at all: ``ROI_PER_IMAGE`` foreground RoIs drawn with replacement; no foreground: all background.

Classification labels (``CLS_SCORE_TYPE``): ``cls`` -> 1 above CLS_FG_THRESH, 0 below CLS_BG_THRESH, -1 (ignored)
in between; ``roi_iou`` -> linear from 0 at CLS_BG_THRESH to 1 at CLS_FG_THRESH; ``raw_roi_iou`` -> the IoU.
``reg_valid_mask`` marks RoIs with IoU > REG_FG_THRESH.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ....ops.iou3d_nms import iou3d_nms_utils
from ...dense_heads.point_head_template import real_gt_boxes


def _draw(pool: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` entries of ``pool`` drawn uniformly with replacement."""
    return pool[torch.randint(0, pool.numel(), (count,), device=pool.device)]


def sample_bg_inds(hard_bg_inds: torch.Tensor, easy_bg_inds: torch.Tensor, num: int, hard_bg_ratio: float):
    """``num`` background RoIs: ``int(num * hard_bg_ratio)`` hard (fewer if fewer exist) and easy for the rest when
    both kinds exist, else all of the kind there is."""
    if hard_bg_inds.numel() > 0 and easy_bg_inds.numel() > 0:
        num_hard = min(int(num * hard_bg_ratio), hard_bg_inds.numel())
        return torch.cat([_draw(hard_bg_inds, num_hard), _draw(easy_bg_inds, num - num_hard)])
    if hard_bg_inds.numel() > 0:
        return _draw(hard_bg_inds, num)
    if easy_bg_inds.numel() > 0:
        return _draw(easy_bg_inds, num)
    raise ValueError("no background RoI to sample from")


def max_iou_with_same_class(
    rois: torch.Tensor, roi_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best 3D IoU of each RoI (N, 7) with a gt box (M, 7) of its own label, and that box's index (0, IoU 0, when
    the class has no gt box)."""
    max_overlaps = rois.new_zeros(rois.shape[0])
    gt_assignment = roi_labels.new_zeros(rois.shape[0], dtype=torch.long)
    for k in torch.unique(gt_labels).tolist():
        roi_mask = roi_labels == k
        gt_ids = torch.nonzero(gt_labels == k).view(-1)
        if roi_mask.any():
            iou3d = iou3d_nms_utils.boxes_iou3d_gpu(rois[roi_mask][:, 0:7], gt_boxes[gt_ids][:, 0:7])
            best, arg = torch.max(iou3d, dim=1)
            max_overlaps[roi_mask] = best.to(max_overlaps.dtype)
            gt_assignment[roi_mask] = gt_ids[arg]
    return max_overlaps, gt_assignment


class ProposalTargetLayer(nn.Module):
    def __init__(self, roi_sampler_cfg):
        super().__init__()
        self.roi_sampler_cfg = roi_sampler_cfg

    def forward(self, batch_dict: dict) -> dict:
        """Reads ``rois (B, num_rois, 7)``, ``roi_scores``, ``roi_labels`` (1-based), ``gt_boxes (B, M, 8)``.
        Returns ``rois``, ``gt_of_rois (B, R, 8)``, ``gt_iou_of_rois``, ``roi_scores``, ``roi_labels``,
        ``reg_valid_mask`` and ``rcnn_cls_labels``, each with R = ROI_PER_IMAGE RoIs per sample."""
        cfg = self.roi_sampler_cfg
        rois, gt_of_rois, ious, roi_scores, roi_labels = self.sample_rois_for_rcnn(batch_dict)
        reg_valid_mask = (ious > cfg.REG_FG_THRESH).long()
        fg_thresh, bg_thresh = cfg.CLS_FG_THRESH, cfg.CLS_BG_THRESH
        if cfg.CLS_SCORE_TYPE == "cls":
            cls_labels = (ious > fg_thresh).long()
            cls_labels[(ious > bg_thresh) & (ious < fg_thresh)] = -1
        elif cfg.CLS_SCORE_TYPE == "roi_iou":
            fg_mask, bg_mask = ious > fg_thresh, ious < bg_thresh
            cls_labels = fg_mask.float()
            between = ~(fg_mask | bg_mask)
            cls_labels[between] = (ious[between] - bg_thresh) / (fg_thresh - bg_thresh)
        elif cfg.CLS_SCORE_TYPE == "raw_roi_iou":
            cls_labels = ious
        else:
            raise KeyError(f"CLS_SCORE_TYPE {cfg.CLS_SCORE_TYPE!r}: expected cls, roi_iou or raw_roi_iou")
        return {
            "rois": rois,
            "gt_of_rois": gt_of_rois,
            "gt_iou_of_rois": ious,
            "roi_scores": roi_scores,
            "roi_labels": roi_labels,
            "reg_valid_mask": reg_valid_mask,
            "rcnn_cls_labels": cls_labels,
        }

    def sample_rois_for_rcnn(self, batch_dict: dict):
        cfg = self.roi_sampler_cfg
        batch_size = batch_dict["batch_size"]
        rois, roi_scores, roi_labels = batch_dict["rois"], batch_dict["roi_scores"], batch_dict["roi_labels"]
        gt_boxes = batch_dict["gt_boxes"]
        per_image = cfg.ROI_PER_IMAGE
        batch_rois = rois.new_zeros(batch_size, per_image, rois.shape[-1])
        batch_gt_of_rois = rois.new_zeros(batch_size, per_image, gt_boxes.shape[-1])
        batch_ious = rois.new_zeros(batch_size, per_image)
        batch_scores = rois.new_zeros(batch_size, per_image)
        batch_labels = rois.new_zeros((batch_size, per_image), dtype=torch.long)
        for index in range(batch_size):
            cur_roi, cur_labels = rois[index], roi_labels[index]
            cur_gt = real_gt_boxes(gt_boxes[index])
            if cur_gt.shape[0] == 0:  # a scene without objects: one all-zero box that nothing overlaps
                cur_gt = gt_boxes.new_zeros(1, gt_boxes.shape[-1])
            if cfg.get("SAMPLE_ROI_BY_EACH_CLASS", False):
                max_overlaps, gt_assignment = max_iou_with_same_class(
                    cur_roi, cur_labels, cur_gt[:, 0:7], cur_gt[:, -1].long()
                )
            else:
                iou3d = iou3d_nms_utils.boxes_iou3d_gpu(cur_roi[:, 0:7], cur_gt[:, 0:7])
                max_overlaps, gt_assignment = torch.max(iou3d, dim=1)
            sampled = self.subsample_rois(max_overlaps)
            batch_rois[index] = cur_roi[sampled]
            batch_labels[index] = cur_labels[sampled]
            batch_ious[index] = max_overlaps[sampled]
            batch_scores[index] = roi_scores[index][sampled]
            batch_gt_of_rois[index] = cur_gt[gt_assignment[sampled]]
        return batch_rois, batch_gt_of_rois, batch_ious, batch_scores, batch_labels

    def subsample_rois(self, max_overlaps: torch.Tensor) -> torch.Tensor:
        """Indices of ``ROI_PER_IMAGE`` RoIs: foreground first, then background (see the module docstring)."""
        cfg = self.roi_sampler_cfg
        if max_overlaps.numel() == 0:
            raise ValueError("ProposalTargetLayer got no RoI to sample (NMS_CONFIG.TRAIN.NMS_POST_MAXSIZE is 0?)")
        per_image = cfg.ROI_PER_IMAGE
        fg_per_image = int(round(cfg.FG_RATIO * per_image))
        fg_thresh = min(cfg.REG_FG_THRESH, cfg.CLS_FG_THRESH)
        fg_inds = torch.nonzero(max_overlaps >= fg_thresh).view(-1)
        easy_bg_inds = torch.nonzero(max_overlaps < cfg.CLS_BG_THRESH_LO).view(-1)
        hard_bg_inds = torch.nonzero((max_overlaps < cfg.REG_FG_THRESH) & (max_overlaps >= cfg.CLS_BG_THRESH_LO))
        hard_bg_inds = hard_bg_inds.view(-1)
        num_bg = hard_bg_inds.numel() + easy_bg_inds.numel()
        if fg_inds.numel() > 0 and num_bg > 0:
            num_fg = min(fg_per_image, fg_inds.numel())
            fg_inds = fg_inds[torch.randperm(fg_inds.numel(), device=fg_inds.device)[:num_fg]]
            bg_inds = sample_bg_inds(hard_bg_inds, easy_bg_inds, per_image - num_fg, cfg.HARD_BG_RATIO)
        elif fg_inds.numel() > 0:
            fg_inds, bg_inds = _draw(fg_inds, per_image), fg_inds[:0]
        else:
            bg_inds = sample_bg_inds(hard_bg_inds, easy_bg_inds, per_image, cfg.HARD_BG_RATIO)
        return torch.cat([fg_inds, bg_inds])
