"""Score filtering + NMS used by every detector's post-processing (OpenPCDet's ``model_nms_utils`` interface)."""

from __future__ import annotations

import torch

from ...ops.iou3d_nms import iou3d_nms_utils

# NMS_TYPE (config value) -> NMS function; each returns (kept indices in descending score order, scores or None).
NMS_FUNCTIONS = {
    "nms_gpu": iou3d_nms_utils.nms_gpu,
    "nms_normal_gpu": iou3d_nms_utils.nms_normal_gpu,
}


def _nms_top_k(scores: torch.Tensor, box_preds: torch.Tensor, nms_config, score_thresh: float | None) -> torch.Tensor:
    """Indices into ``scores`` of the boxes kept by NMS among the ``NMS_PRE_MAXSIZE`` best of those scoring at least
    ``score_thresh``, at most ``NMS_POST_MAXSIZE``.

    Only the top candidates' boxes are gathered: gathering every box above the threshold first (all 321k anchors
    of the KITTI grid when an untrained head scores them alike) cost more than the NMS itself.
    """
    if nms_config.NMS_TYPE not in NMS_FUNCTIONS:
        raise KeyError(f"unknown NMS_TYPE {nms_config.NMS_TYPE!r}; available: {sorted(NMS_FUNCTIONS)}")
    if score_thresh is not None:
        # The same ascending indices as arange()[mask], without materialising the arange (~2 ms at 321k anchors).
        candidates = torch.nonzero(scores >= score_thresh).squeeze(1)
    else:
        candidates = torch.arange(scores.shape[0], device=scores.device)
    if candidates.shape[0] == 0:
        return candidates
    top_scores, order = torch.topk(scores[candidates], k=min(nms_config.NMS_PRE_MAXSIZE, candidates.shape[0]))
    top = candidates[order]
    keep, _ = NMS_FUNCTIONS[nms_config.NMS_TYPE](box_preds[top][:, 0:7], top_scores, nms_config.NMS_THRESH)
    return top[keep[: nms_config.NMS_POST_MAXSIZE]]


def class_agnostic_nms(
    box_scores: torch.Tensor, box_preds: torch.Tensor, nms_config, score_thresh: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One NMS over all boxes regardless of class. Returns ``(selected indices into box_scores, their scores)``."""
    selected = _nms_top_k(box_scores, box_preds, nms_config, score_thresh)
    return selected, box_scores[selected]


def multi_classes_nms(
    cls_scores: torch.Tensor, box_preds: torch.Tensor, nms_config, score_thresh: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A separate NMS per class column of ``cls_scores (N, C)``.

    Returns ``(scores, labels, boxes)`` of the kept boxes, class by class; labels are 0-based column indices.
    """
    scores, labels, boxes = [], [], []
    for k in range(cls_scores.shape[1]):
        class_scores = cls_scores[:, k]
        selected = _nms_top_k(class_scores, box_preds, nms_config, score_thresh)
        scores.append(class_scores[selected])
        labels.append(torch.full_like(selected, k))
        boxes.append(box_preds[selected])
    return torch.cat(scores, dim=0), torch.cat(labels, dim=0), torch.cat(boxes, dim=0)


def _per_class(value, k: int):
    """A config value given once for all classes, or as a list indexed by class."""
    return value[k] if isinstance(value, (list, tuple)) else value


def class_specific_nms(
    box_scores: torch.Tensor, box_preds: torch.Tensor, box_labels: torch.Tensor, nms_config, score_thresh=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A separate NMS per label value of ``box_labels (N)`` (0-based); ``NMS_THRESH``, ``NMS_PRE_MAXSIZE``,
    ``NMS_POST_MAXSIZE`` and ``score_thresh`` may each be one value or a list indexed by label. Returns
    ``(selected indices, their scores)``, label by label; the NMS is the rotated BEV one (``nms_gpu``)."""
    selected = []
    for k in torch.unique(box_labels).tolist():
        candidates = torch.nonzero(box_labels == k)[:, 0]
        thresh = _per_class(score_thresh, k)
        if thresh is not None:
            candidates = candidates[box_scores[candidates] > thresh]
        if candidates.numel() == 0:
            continue
        keep, _ = iou3d_nms_utils.nms_gpu(
            box_preds[candidates][:, 0:7],
            box_scores[candidates],
            _per_class(nms_config.NMS_THRESH, k),
            pre_maxsize=_per_class(nms_config.NMS_PRE_MAXSIZE, k),
        )
        selected.append(candidates[keep[: _per_class(nms_config.NMS_POST_MAXSIZE, k)]])
    selected = torch.cat(selected) if selected else box_labels.new_zeros((0,), dtype=torch.long)
    return selected, box_scores[selected]


def multihead_nms(
    cls_preds: list[torch.Tensor],
    label_mappings: list[torch.Tensor],
    box_preds: torch.Tensor,
    post_process_cfg,
    normalized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample of a multi-head anchor head: ``cls_preds`` one ``(N_k, C_k)`` per head (logits unless
    ``normalized``), the heads' anchors consecutive in ``box_preds (N, code)``, ``label_mappings`` the heads' 1-based
    labels. Each head gets its own NMS (per class with ``MULTI_CLASSES_NMS``, else over its best class; OpenPCDet
    has the per-class path only). Returns ``(scores, 1-based labels, boxes)`` of the kept boxes, head by head."""
    nms_config, score_thresh = post_process_cfg.NMS_CONFIG, post_process_cfg.SCORE_THRESH
    scores, labels, boxes = [], [], []
    start = 0
    for head_cls, mapping in zip(cls_preds, label_mappings):
        head_boxes = box_preds[start : start + head_cls.shape[0]]
        start += head_cls.shape[0]
        if not normalized:
            head_cls = torch.sigmoid(head_cls)
        if nms_config.MULTI_CLASSES_NMS:
            head_scores, head_labels, head_kept = multi_classes_nms(head_cls, head_boxes, nms_config, score_thresh)
        else:
            best, best_labels = torch.max(head_cls, dim=-1)
            selected, head_scores = class_agnostic_nms(best, head_boxes, nms_config, score_thresh)
            head_labels, head_kept = best_labels[selected], head_boxes[selected]
        scores.append(head_scores)
        labels.append(mapping.to(head_labels.device)[head_labels])
        boxes.append(head_kept)
    return torch.cat(scores), torch.cat(labels), torch.cat(boxes)
