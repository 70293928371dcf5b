"""Detection losses with OpenPCDet's definitions and call signatures.

Anchor losses return unreduced per-anchor (per-class / per-code) values; the heads normalise and sum. Loss modules
hold no parameters and no persistent buffers, so attaching them to a head never changes its ``state_dict``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import box_utils


def _broadcast_anchor_weights(weights: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Per-anchor weights ``(B, A)`` (or ``(A,)`` for an unbatched loss) gain a trailing axis to scale each column."""
    if weights.dim() == loss.dim() - 1:
        weights = weights.unsqueeze(-1)
    if weights.dim() != loss.dim():
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not match a loss of shape {tuple(loss.shape)}")
    return weights


class SigmoidFocalClassificationLoss(nn.Module):
    """Focal loss on sigmoid logits: ``alpha_t * (1 - p_t) ** gamma * BCE(logits, target)``, per anchor and class."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    @staticmethod
    def sigmoid_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Numerically stable ``BCE(sigmoid(input), target)``: ``max(x, 0) - x * t + log(1 + exp(-|x|))``."""
        return input.clamp(min=0) - input * target + torch.log1p(torch.exp(-input.abs()))

    def forward(self, input: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``input`` logits ``(B, A, C)``, ``target`` one-hot ``(B, A, C)``, ``weights (B, A)`` → ``(B, A, C)``."""
        prob = torch.sigmoid(input)
        alpha_t = target * self.alpha + (1 - target) * (1 - self.alpha)
        one_minus_pt = target * (1 - prob) + (1 - target) * prob
        loss = alpha_t * one_minus_pt.pow(self.gamma) * self.sigmoid_cross_entropy_with_logits(input, target)
        return loss * _broadcast_anchor_weights(weights, loss)


def _code_weighted_diff(module: nn.Module, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # A NaN target means "no target for this code": compare the prediction with itself (zero loss, zero gradient).
    target = torch.where(torch.isnan(target), input, target)
    diff = input - target
    if module.code_weights is not None:
        diff = diff * module.code_weights.to(diff.dtype)
    return diff


def _register_code_weights(module: nn.Module, code_weights) -> None:
    # Non-persistent: follows .to(device) but never appears in a state_dict (OpenPCDet's heads have no such key).
    weights = None if code_weights is None else torch.as_tensor(np.asarray(code_weights, dtype=np.float32))
    module.register_buffer("code_weights", weights, persistent=False)


def _apply_anchor_weights(loss: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return loss
    if weights.shape[0] != loss.shape[0] or weights.shape[1] != loss.shape[1]:
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not match a loss of shape {tuple(loss.shape)}")
    return loss * weights.unsqueeze(-1)


class WeightedSmoothL1Loss(nn.Module):
    """Smooth-L1 (Huber with transition ``beta``) on code-weighted residuals, weighted per anchor."""

    def __init__(self, beta: float = 1.0 / 9.0, code_weights=None):
        super().__init__()
        self.beta = beta
        _register_code_weights(self, code_weights)

    @staticmethod
    def smooth_l1_loss(diff: torch.Tensor, beta: float) -> torch.Tensor:
        """``0.5 * d² / beta`` for ``|d| < beta``, else ``|d| - 0.5 * beta``; plain ``|d|`` when ``beta`` ≈ 0."""
        abs_diff = diff.abs()
        if beta < 1e-5:
            return abs_diff
        return torch.where(abs_diff < beta, 0.5 * abs_diff**2 / beta, abs_diff - 0.5 * beta)

    def forward(self, input: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``input``, ``target`` ``(B, A, code)``, ``weights (B, A)`` → ``(B, A, code)``."""
        loss = self.smooth_l1_loss(_code_weighted_diff(self, input, target), self.beta)
        return _apply_anchor_weights(loss, weights)


class WeightedL1Loss(nn.Module):
    """L1 on code-weighted residuals, weighted per anchor."""

    def __init__(self, code_weights=None):
        super().__init__()
        _register_code_weights(self, code_weights)

    def forward(self, input: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``input``, ``target`` ``(B, A, code)``, ``weights (B, A)`` → ``(B, A, code)``."""
        return _apply_anchor_weights(_code_weighted_diff(self, input, target).abs(), weights)


class WeightedCrossEntropyLoss(nn.Module):
    """Softmax cross-entropy against the argmax of a one-hot target, weighted per anchor (direction classifier)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``input`` logits ``(B, A, C)``, ``target`` one-hot ``(B, A, C)``, ``weights (B, A)`` → ``(B, A)``."""
        loss = F.cross_entropy(input.permute(0, 2, 1), target.argmax(dim=-1), reduction="none")
        return loss * weights


def get_corner_loss_lidar(pred_bbox3d: torch.Tensor, gt_bbox3d: torch.Tensor) -> torch.Tensor:
    """Mean smooth-L1 (beta 1) of the 8 corner distances, against the ground truth or its 180°-flipped twin.

    ``pred_bbox3d``, ``gt_bbox3d`` ``(N, 7)`` → ``(N,)``. Taking the nearer of the two corner sets per corner makes
    the loss blind to the heading's direction, which the direction classifier handles separately.
    """
    if pred_bbox3d.shape[0] != gt_bbox3d.shape[0]:
        raise ValueError("pred_bbox3d and gt_bbox3d must have the same number of boxes")
    gt_flipped = gt_bbox3d.clone()
    gt_flipped[:, 6] += np.pi
    pred_corners = box_utils.boxes_to_corners_3d(pred_bbox3d)
    dist = torch.norm(pred_corners - box_utils.boxes_to_corners_3d(gt_bbox3d), dim=2)
    dist_flipped = torch.norm(pred_corners - box_utils.boxes_to_corners_3d(gt_flipped), dim=2)
    corner_dist = torch.min(dist, dist_flipped)
    return WeightedSmoothL1Loss.smooth_l1_loss(corner_dist, beta=1.0).mean(dim=1)


def neg_loss_cornernet(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """CornerNet/CenterNet penalty-reduced focal loss on heatmaps ``(B, C, H, W)`` of probabilities.

    Positives are cells with ``gt == 1``: ``-(1 - p)² log p``; the rest: ``-(1 - gt)⁴ p² log(1 - p)``; the sum is
    divided by the number of positives (when there are any). ``mask (B, H, W)`` zeroes cells out.
    """
    pos = gt.eq(1).float()
    neg = gt.lt(1).float()
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - gt) ** 4 * neg
    if mask is not None:
        cell_mask = mask[:, None, :, :].float()
        pos_loss = pos_loss * cell_mask
        neg_loss = neg_loss * cell_mask
    num_pos = pos.sum()
    if num_pos == 0:
        return -neg_loss.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


class FocalLossCenterNet(nn.Module):
    """Heatmap focal loss of CenterPoint heads (see :func:`neg_loss_cornernet`)."""

    def forward(self, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return neg_loss_cornernet(out, target, mask=mask)


def _transpose_and_gather_feat(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """``feat (B, C, H, W)`` sampled at flat cell indices ``ind (B, K)`` (``y * W + x``) → ``(B, K, C)``."""
    batch, channels = feat.shape[0], feat.shape[1]
    flat = feat.permute(0, 2, 3, 1).reshape(batch, -1, channels)
    return flat.gather(1, ind.long().unsqueeze(-1).expand(-1, -1, channels))


def _reg_loss(regr: torch.Tensor, gt_regr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked L1 per code: ``regr``, ``gt_regr`` ``(B, K, C)``, ``mask (B, K)`` → ``(C,)`` over the object count.

    NaN targets are masked out of the sum (they still count in the normaliser, as upstream).
    """
    num = mask.float().sum()
    valid = mask.unsqueeze(2).expand_as(gt_regr).float() * (~torch.isnan(gt_regr)).float()
    diff = (regr * valid - torch.nan_to_num(gt_regr) * valid).abs()
    return diff.sum(dim=(0, 1)) / torch.clamp_min(num, 1.0)


class RegLossCenterNet(nn.Module):
    """Regression loss of CenterPoint heads at the object centres."""

    def forward(
        self,
        output: torch.Tensor,
        mask: torch.Tensor,
        ind: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``output (B, C, H, W)`` (or already gathered ``(B, K, C)`` when ``ind`` is None), ``mask (B, K)``,
        ``ind (B, K)``, ``target (B, K, C)`` → ``(C,)``."""
        pred = output if ind is None else _transpose_and_gather_feat(output, ind)
        return _reg_loss(pred, target, mask)
