"""What a KD run measures about itself, every ``KD.DIAGNOSE_EVERY`` training steps (logged as ``kd/...`` scalars).

Gradients: for the detection loss and for each weighted KD term, the gradient over the student's own parameters
(adapters excluded): its norm, its norm relative to the detection gradient, and its cosine with the detection
gradient. A KD term whose ratio is ~0 does nothing; one whose cosine is negative pulls against detection.
Cost: one extra backward pass per term (through the graph the term reaches) at the diagnosed steps only.
"""

from __future__ import annotations

import torch

from ...ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_gpu


def _flat_gradient(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def gradient_report(det_loss: torch.Tensor, terms: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict:
    """``{'grad/det_norm', 'grad/<tag>_norm', 'grad/<tag>_ratio', 'grad/<tag>_cos_det'}`` for the terms that have a
    graph (a constant term, e.g. a loss on an empty batch, is skipped)."""
    params = [p for p in params if p.requires_grad]
    det = _flat_gradient(det_loss, params)
    det_norm = det.norm()
    report = {"grad/det_norm": float(det_norm)}
    for tag, term in terms.items():
        if not term.requires_grad:
            continue
        grad = _flat_gradient(term, params)
        norm = grad.norm()
        report[f"grad/{tag}_norm"] = float(norm)
        report[f"grad/{tag}_ratio"] = float(norm / det_norm.clamp_min(1e-12))
        report[f"grad/{tag}_cos_det"] = float((grad @ det) / (norm * det_norm).clamp_min(1e-12))
    return report


def weighted_share(weights: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of the total weight that falls on ``mask``."""
    return float((weights * mask.to(weights.dtype)).sum() / weights.sum().clamp_min(1e-12))


def effective_count(weights: torch.Tensor) -> float:
    """(Σw)² / Σw²: how many equally weighted items the weights amount to (N for uniform, 1 for one-hot)."""
    return float(weights.sum().pow(2) / weights.pow(2).sum().clamp_min(1e-12))


def response_stats(prefix: str, responses: torch.Tensor) -> dict:
    """Share of exact zeros (dead ReLU outputs) and the spread of an adapter's outputs: a collapsed adapter shows
    zeros → 1 or std → 0, and then matches its counterpart trivially."""
    values = responses.detach()
    return {f"{prefix}_zero_share": float((values == 0).float().mean()), f"{prefix}_std": float(values.float().std())}


def inside_boxes_bev(positions: torch.Tensor, node_batch: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """``(M,)`` bool: node ``m`` (position ``(M, ≥2)`` in metres, sample ``node_batch[m]``) lies inside one of its
    sample's ``gt_boxes (B, G, ≥7)`` in bird's-eye view (height ignored; zero-size padding rows are no boxes)."""
    inside = torch.zeros(positions.shape[0], dtype=torch.bool, device=positions.device)
    for b in torch.unique(node_batch).tolist():
        boxes = gt_boxes[b, :, :7]
        boxes = boxes[(boxes[:, 3] > 0) & (boxes[:, 4] > 0)].clone()
        if boxes.shape[0] == 0:
            continue
        boxes[:, 2], boxes[:, 5] = 0, 2.0  # every node is put at z = 0, inside each box's height
        rows = torch.nonzero(node_batch == b).squeeze(1)
        xyz = torch.zeros(rows.numel(), 3, dtype=boxes.dtype, device=positions.device)
        xyz[:, :2] = positions[rows, :2].to(boxes.dtype)
        inside[rows] = points_in_boxes_gpu(xyz[None], boxes[None])[0] >= 0
    return inside
