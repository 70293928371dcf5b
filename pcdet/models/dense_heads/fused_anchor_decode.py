"""Eval-time fast path of AnchorHeadSingle: the three 1×1 convolutions as one, and box decoding as one numba pass.

``batch_box_preds`` for every anchor stays part of the output (KD response losses and OpenPCDet-style
post-processing read it); what changes is the cost of producing it. ``ResidualCoder.decode_torch`` followed by
the direction-bin fold runs ~15 tensor operations over all anchors (321k on the KITTI grid, ~22 ms per frame);
here each anchor is decoded once, reading its residuals, anchor and direction logits in one go. The arithmetic is
the reference's, in float32, so results agree up to round-off (``exp``, ``sqrt`` of a different library).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...utils import box_coder_utils
from ...utils.numba_utils import njit_cached


@njit_cached
def _decode(
    head_out: np.ndarray,
    anchors: np.ndarray,
    box_start: int,
    dir_start: int,
    bins: int,
    dir_offset: np.float32,
    dir_limit_offset: np.float32,
    period: np.float32,
    out: np.ndarray,
) -> None:
    """``head_out (B, H·W, channels)``: per location, the 7 residuals of anchor ``a`` at ``box_start + 7a`` and
    (``dir_start >= 0``) its direction logits at ``dir_start + bins·a``; ``anchors (N, 7)`` with ``N = H·W·A`` in
    the same order → ``out (B, N, 7)``."""
    batch, locations, _ = head_out.shape
    per_location = anchors.shape[0] // locations
    for b in range(batch):
        for loc in range(locations):
            for a in range(per_location):
                n = loc * per_location + a
                r = box_start + 7 * a
                xa, ya, za = anchors[n, 0], anchors[n, 1], anchors[n, 2]
                la, wa, ha = anchors[n, 3], anchors[n, 4], anchors[n, 5]
                diagonal = np.float32(math.sqrt(la * la + wa * wa))
                out[b, n, 0] = head_out[b, loc, r] * diagonal + xa
                out[b, n, 1] = head_out[b, loc, r + 1] * diagonal + ya
                out[b, n, 2] = head_out[b, loc, r + 2] * ha + za
                out[b, n, 3] = np.float32(math.exp(head_out[b, loc, r + 3])) * la
                out[b, n, 4] = np.float32(math.exp(head_out[b, loc, r + 4])) * wa
                out[b, n, 5] = np.float32(math.exp(head_out[b, loc, r + 5])) * ha
                heading = head_out[b, loc, r + 6] + anchors[n, 6]
                if dir_start >= 0:
                    d = dir_start + bins * a
                    label = 0
                    for k in range(1, bins):
                        if head_out[b, loc, d + k] > head_out[b, loc, d + label]:  # the first maximum, as torch
                            label = k
                    shifted = heading - dir_offset
                    shifted = shifted - np.float32(math.floor(shifted / period + dir_limit_offset)) * period
                    heading = shifted + dir_offset + period * np.float32(label)
                out[b, n, 6] = heading


def can_fuse(head: nn.Module) -> bool:
    """The configurations the kernel covers: a 7-value ResidualCoder (no sin/cos angle), float32 on the CPU."""
    coder = head.box_coder
    return type(coder) is box_coder_utils.ResidualCoder and coder.code_size == 7 and not coder.encode_angle_by_sincos


def fused_forward(
    head: nn.Module, features: torch.Tensor, fused_weight: torch.Tensor, fused_bias: torch.Tensor
) -> tuple:
    """``(cls_preds, box_preds, dir_cls_preds, batch_cls_preds, batch_box_preds)`` as the reference forward makes
    them; ``fused_weight``/``fused_bias`` are conv_cls, conv_box (and conv_dir_cls) stacked along the outputs.
    ``box_preds`` and ``dir_cls_preds`` are views into the one convolution output (same values and shapes, not
    contiguous): the decoder reads them in place instead of copying them out first."""
    batch_size, _, height, width = features.shape
    # With a channels-last input the permuted output is already contiguous: no transposed copy.
    out = F.conv2d(features, fused_weight, fused_bias).permute(0, 2, 3, 1)
    num_cls, num_box = head.conv_cls.out_channels, head.conv_box.out_channels
    use_dir = head.conv_dir_cls is not None
    cls_preds = out[..., :num_cls].contiguous()
    box_preds = out[..., num_cls : num_cls + num_box]
    dir_cls_preds = out[..., num_cls + num_box :] if use_dir else None

    anchors = head.flat_anchors(box_preds.device).contiguous()
    num_anchors = anchors.shape[0]
    batch_box_preds = torch.empty((batch_size, num_anchors, 7), dtype=out.dtype)
    cfg = head.model_cfg
    bins = cfg.NUM_DIR_BINS if use_dir else 1
    _decode(
        out.reshape(batch_size, height * width, -1).numpy(),
        anchors.numpy(),
        num_cls,
        num_cls + num_box if use_dir else -1,
        bins,
        np.float32(cfg.get("DIR_OFFSET", 0.0)),
        np.float32(cfg.get("DIR_LIMIT_OFFSET", 0.0)),
        np.float32(2 * np.pi / bins),
        batch_box_preds.numpy(),
    )
    batch_cls_preds = cls_preds.view(batch_size, num_anchors, -1).float()
    return cls_preds, box_preds, dir_cls_preds, batch_cls_preds, batch_box_preds
