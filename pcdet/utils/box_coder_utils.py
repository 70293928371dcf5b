"""Box coders: regression targets relative to anchors / points / RoIs, and their inverses.

All coders work on ``(..., 7 + C)`` tensors (any leading shape, any device) and never modify their inputs.
Extra columns past the heading (e.g. velocities) are encoded as plain differences.
"""

from __future__ import annotations

import math

import torch

_MIN_SIZE = 1e-5  # sizes are clamped before log() so degenerate boxes give finite targets


def _split(t: torch.Tensor, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """First ``n`` columns as ``(..., 1)`` tensors, and the remaining columns likewise."""
    cols = list(torch.split(t, 1, dim=-1))
    return cols[:n], cols[n:]


def _clamp_sizes(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat((boxes[..., 0:3], boxes[..., 3:6].clamp_min(_MIN_SIZE), boxes[..., 6:]), dim=-1)


class ResidualCoder:
    """SECOND / PointPillars anchor residuals.

    With anchor diagonal ``d = sqrt(la² + wa²)``: ``((xg - xa) / d, (yg - ya) / d, (zg - za) / ha,
    log(lg / la), log(wg / wa), log(hg / ha), rg - ra)``; with ``encode_angle_by_sincos`` the angle becomes
    ``(cos rg - cos ra, sin rg - sin ra)`` and ``code_size`` grows by one.
    """

    def __init__(self, code_size: int = 7, encode_angle_by_sincos: bool = False, **kwargs):
        self.encode_angle_by_sincos = encode_angle_by_sincos
        self.code_size = code_size + 1 if encode_angle_by_sincos else code_size

    def encode_torch(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``boxes``, ``anchors`` ``(..., 7 + C)`` → encodings ``(..., code_size)``."""
        (xa, ya, za, la, wa, ha, ra), extra_a = _split(_clamp_sizes(anchors), 7)
        (xg, yg, zg, lg, wg, hg, rg), extra_g = _split(_clamp_sizes(boxes), 7)
        diagonal = torch.sqrt(la**2 + wa**2)
        if self.encode_angle_by_sincos:
            angle = [torch.cos(rg) - torch.cos(ra), torch.sin(rg) - torch.sin(ra)]
        else:
            angle = [rg - ra]
        return torch.cat(
            [
                (xg - xa) / diagonal,
                (yg - ya) / diagonal,
                (zg - za) / ha,
                torch.log(lg / la),
                torch.log(wg / wa),
                torch.log(hg / ha),
                *angle,
                *[g - a for g, a in zip(extra_g, extra_a)],
            ],
            dim=-1,
        )

    def decode_torch(self, box_encodings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_torch`: encodings ``(..., code_size)`` + anchors → boxes ``(..., 7 + C)``."""
        (xa, ya, za, la, wa, ha, ra), extra_a = _split(anchors, 7)
        n_main = 8 if self.encode_angle_by_sincos else 7
        main, extra_t = _split(box_encodings, n_main)
        xt, yt, zt, lt, wt, ht = main[:6]
        diagonal = torch.sqrt(la**2 + wa**2)
        if self.encode_angle_by_sincos:
            rg = torch.atan2(main[7] + torch.sin(ra), main[6] + torch.cos(ra))
        else:
            rg = main[6] + ra
        return torch.cat(
            [
                xt * diagonal + xa,
                yt * diagonal + ya,
                zt * ha + za,
                torch.exp(lt) * la,
                torch.exp(wt) * wa,
                torch.exp(ht) * ha,
                rg,
                *[t + a for t, a in zip(extra_t, extra_a)],
            ],
            dim=-1,
        )


def _decode_legacy(box_encodings: torch.Tensor, anchors: torch.Tensor, angle_sign: float) -> torch.Tensor:
    """Legacy layout ``(x, y, z, w, l, h, r)``: the width residual is column 3, the length residual column 4."""
    (xa, ya, za, la, wa, ha, ra), extra_a = _split(anchors, 7)
    (xt, yt, zt, wt, lt, ht, rt), extra_t = _split(box_encodings, 7)
    diagonal = torch.sqrt(la**2 + wa**2)
    return torch.cat(
        [
            xt * diagonal + xa,
            yt * diagonal + ya,
            zt * ha + za,
            torch.exp(lt) * la,
            torch.exp(wt) * wa,
            torch.exp(ht) * ha,
            ra + angle_sign * rt,
            *[t + a for t, a in zip(extra_t, extra_a)],
        ],
        dim=-1,
    )


class PreviousResidualDecoder:
    """Decoder for models trained with the old ``(x, y, z, w, l, h, r)`` residual order; heading ``ra + rt``."""

    def __init__(self, code_size: int = 7, **kwargs):
        self.code_size = code_size

    @staticmethod
    def decode_torch(box_encodings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return _decode_legacy(box_encodings, anchors, angle_sign=1.0)


class PreviousResidualRoIDecoder:
    """As :class:`PreviousResidualDecoder` but for RoI refinement, where the heading residual is ``ra - rt``."""

    def __init__(self, code_size: int = 7, **kwargs):
        self.code_size = code_size

    @staticmethod
    def decode_torch(box_encodings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return _decode_legacy(box_encodings, anchors, angle_sign=-1.0)


class PointResidualCoder:
    """Point-based residuals (PointRCNN): centre offsets from a point, heading as ``(cos, sin)``; ``code_size`` 8.

    With ``use_mean_size`` the offsets and log sizes are relative to the class mean size (``mean_size``, one
    ``(l, w, h)`` per class, classes 1-based), otherwise they are absolute offsets and log sizes.
    """

    def __init__(self, code_size: int = 8, use_mean_size: bool = True, **kwargs):
        self.code_size = code_size
        self.use_mean_size = use_mean_size
        if use_mean_size:
            self.mean_size = torch.tensor(kwargs["mean_size"], dtype=torch.float32)
            if not bool((self.mean_size > 0).all()):
                raise ValueError(f"PointResidualCoder: mean_size must be positive, got {kwargs['mean_size']}")

    def _anchor_sizes(self, classes: torch.Tensor, like: torch.Tensor) -> list[torch.Tensor]:
        if classes.numel() > 0 and (int(classes.max()) > self.mean_size.shape[0] or int(classes.min()) < 1):
            raise ValueError(f"class labels must lie in 1..{self.mean_size.shape[0]}")
        sizes = self.mean_size.to(device=like.device, dtype=like.dtype)[classes.long() - 1]
        return list(torch.split(sizes, 1, dim=-1))

    def encode_torch(
        self, gt_boxes: torch.Tensor, points: torch.Tensor, gt_classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``gt_boxes (N, 7 + C)``, ``points (N, 3)``, ``gt_classes (N)`` 1-based → ``(N, 8 + C)``."""
        (xg, yg, zg, lg, wg, hg, rg), extra_g = _split(_clamp_sizes(gt_boxes), 7)
        xa, ya, za = torch.split(points, 1, dim=-1)
        if self.use_mean_size:
            la, wa, ha = self._anchor_sizes(gt_classes, gt_boxes)
            diagonal = torch.sqrt(la**2 + wa**2)
            centre = [(xg - xa) / diagonal, (yg - ya) / diagonal, (zg - za) / ha]
            sizes = [torch.log(lg / la), torch.log(wg / wa), torch.log(hg / ha)]
        else:
            centre = [xg - xa, yg - ya, zg - za]
            sizes = [torch.log(lg), torch.log(wg), torch.log(hg)]
        return torch.cat([*centre, *sizes, torch.cos(rg), torch.sin(rg), *extra_g], dim=-1)

    def decode_torch(
        self, box_encodings: torch.Tensor, points: torch.Tensor, pred_classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``box_encodings (N, 8 + C)``, ``points (N, 3)``, ``pred_classes (N)`` 1-based → boxes ``(N, 7 + C)``."""
        (xt, yt, zt, lt, wt, ht, cos_t, sin_t), extra_t = _split(box_encodings, 8)
        xa, ya, za = torch.split(points, 1, dim=-1)
        if self.use_mean_size:
            la, wa, ha = self._anchor_sizes(pred_classes, box_encodings)
            diagonal = torch.sqrt(la**2 + wa**2)
            centre = [xt * diagonal + xa, yt * diagonal + ya, zt * ha + za]
            sizes = [torch.exp(lt) * la, torch.exp(wt) * wa, torch.exp(ht) * ha]
        else:
            centre = [xt + xa, yt + ya, zt + za]
            sizes = [torch.exp(lt), torch.exp(wt), torch.exp(ht)]
        return torch.cat([*centre, *sizes, torch.atan2(sin_t, cos_t), *extra_t], dim=-1)


class PointBinResidualCoder(PointResidualCoder):
    """Point-based residuals with a bin-based heading: ``angle_bin_num`` equal bins over ``[0, 2pi)``, the first
    centred on 0. Code: the 6 centre/size residuals of :class:`PointResidualCoder`, a one-hot of the heading's bin
    (``angle_bin_num``; the head predicts logits there), and the residual from each bin's centre in units of the bin
    width, in ``[-0.5, 0.5)`` (``angle_bin_num``; only the gt bin's slot is non-zero); ``code_size = 6 + 2 * bins``.
    Decoding takes the highest-scoring bin and its residual; headings come back in ``[-pi, pi)``.
    """

    def __init__(self, code_size: int = 30, use_mean_size: bool = True, angle_bin_num: int = 12, **kwargs):
        super().__init__(code_size=6 + 2 * angle_bin_num, use_mean_size=use_mean_size, **kwargs)
        if angle_bin_num < 1:
            raise ValueError(f"PointBinResidualCoder: angle_bin_num must be >= 1, got {angle_bin_num}")
        self.angle_bin_num = angle_bin_num
        self.bin_width = 2 * math.pi / angle_bin_num

    def encode_angle_torch(self, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 1) headings -> bin index (..., 1) long and residual (..., 1) in bin widths."""
        shifted = torch.remainder(angle + self.bin_width / 2, 2 * math.pi)  # bin k covers [k - 1/2, k + 1/2) widths
        bin_id = torch.floor(shifted / self.bin_width).clamp(max=self.angle_bin_num - 1)
        residual = shifted / self.bin_width - bin_id - 0.5
        return bin_id.long(), residual

    def decode_angle_torch(self, bin_id: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        angle = (bin_id.to(residual.dtype) + residual) * self.bin_width
        return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi

    def encode_torch(
        self, gt_boxes: torch.Tensor, points: torch.Tensor, gt_classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``gt_boxes (N, 7 + C)``, ``points (N, 3)``, ``gt_classes (N)`` 1-based -> ``(N, 6 + 2 * bins + C)``."""
        point_code = super().encode_torch(gt_boxes, points, gt_classes)
        bin_id, residual = self.encode_angle_torch(gt_boxes[..., 6:7])
        one_hot = torch.zeros(*bin_id.shape[:-1], self.angle_bin_num, dtype=gt_boxes.dtype, device=gt_boxes.device)
        one_hot.scatter_(-1, bin_id, 1.0)
        return torch.cat([point_code[..., 0:6], one_hot, one_hot * residual, point_code[..., 8:]], dim=-1)

    def decode_torch(
        self, box_encodings: torch.Tensor, points: torch.Tensor, pred_classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``box_encodings (N, 6 + 2 * bins + C)`` -> boxes ``(N, 7 + C)``."""
        bins = self.angle_bin_num
        bin_id = box_encodings[..., 6 : 6 + bins].argmax(dim=-1, keepdim=True)
        residual = box_encodings[..., 6 + bins : 6 + 2 * bins].gather(-1, bin_id)
        heading = self.decode_angle_torch(bin_id, residual)
        # The parent decodes (cos, sin) columns: give it the heading's, then take its centre, sizes and extras.
        sincos = torch.cat([torch.cos(heading), torch.sin(heading)], dim=-1)
        point_code = torch.cat([box_encodings[..., 0:6], sincos, box_encodings[..., 6 + 2 * bins :]], dim=-1)
        boxes = super().decode_torch(point_code, points, pred_classes)
        return torch.cat([boxes[..., 0:6], heading, boxes[..., 7:]], dim=-1)
