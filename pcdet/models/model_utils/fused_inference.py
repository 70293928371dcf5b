"""Opt-in eval-time fast paths (batch-norm folded into the preceding layer, channels-last BEV maps).

Training and the default eval forward are untouched (bit for bit); a module takes its fused path only when asked.
``enable_fused_inference(model)`` switches the modules that have a fused path
(PillarVFE, PointPillarScatter, BaseBEVBackbone, AnchorHeadSingle) to it; each uses it only in eval mode with
autograd off, so calling ``model.train()`` or enabling gradients falls back to the reference path. The fused
results equal the reference up to float32 round-off (folded weights, a different summation order).

The tools (``test.py``, ``demo.py``, ``eval_utils``) evaluate through ``fused_inference_scope``, which sets the
flags for the evaluation only and restores them afterwards, so a model that trains again is never left fused.
A KD teacher (``kd/teacher.py``) is switched once when it is built, unless ``KD.TEACHER.FUSED_INFERENCE`` is false:
it only ever runs in eval mode under ``no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def enable_fused_inference(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Set ``fused_inference`` on every sub-module that has a fused eval path; returns ``model``."""
    for module in model.modules():
        if hasattr(module, "fused_inference"):
            module.fused_inference = enabled
    return model


@contextmanager
def fused_inference_scope(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``enable_fused_inference(model, enabled)`` for the ``with`` block; every module's previous flag comes back
    afterwards, also when the block raises (training after an evaluation must see the flags it had)."""
    previous = [(m, m.fused_inference) for m in model.modules() if hasattr(m, "fused_inference")]
    enable_fused_inference(model, enabled)
    try:
        yield model
    finally:
        for module, flag in previous:
            module.fused_inference = flag


def fused_active(module: nn.Module) -> bool:
    """Whether ``module`` should take its fused path for the current call."""
    return module.fused_inference and not module.training and not torch.is_grad_enabled()


def fold_batchnorm(
    weight: torch.Tensor, norm: nn.BatchNorm1d | nn.BatchNorm2d, out_dim: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight', bias)`` with ``norm(layer(x)) == layer'(x) + bias`` for a bias-free linear / conv layer whose
    output channels run along ``out_dim`` of ``weight`` (0 for Linear and Conv2d, 1 for ConvTranspose2d)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    return weight * scale.view(shape), norm.bias - norm.running_mean * scale


class FoldCache:
    """Recomputes a fold only when one of its source tensors was replaced or changed in place (``_version``), so
    loading a checkpoint after enabling the fused path is noticed and an unchanged model pays nothing per frame."""

    def __init__(self) -> None:
        self._sources: list[torch.Tensor] = []  # held, so that a replaced tensor's id cannot be reused
        self._versions: list[int] = []
        self._value = None

    def get(self, sources: list[torch.Tensor], compute: Callable[[], Any]) -> Any:
        versions = [t._version for t in sources]
        same = len(sources) == len(self._sources) and all(a is b for a, b in zip(sources, self._sources))
        if not same or versions != self._versions:
            with torch.no_grad():
                self._value = compute()
            self._sources, self._versions = list(sources), versions
        return self._value


def _mkldnn_op(name: str) -> Callable | None:
    """One of oneDNN's convolutions with a fused element-wise op (what torch.compile emits on CPU), where this
    torch build has it; None sends the caller to the plain op + in-place ReLU."""
    try:
        return getattr(torch.ops.mkldnn, name) if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_CONV_RELU = _mkldnn_op("_convolution_pointwise")
_DECONV_RELU = _mkldnn_op("_convolution_transpose_pointwise")


@dataclass
class FoldedConvReLU:
    """``relu(norm(conv(x)))`` of an eval-mode ``Conv2d`` / ``ConvTranspose2d`` (bias-free) + ``BatchNorm2d`` +
    ``ReLU`` as one biased convolution: the batch-norm folded into the weights, the ReLU applied by oneDNN inside
    the convolution on CPU (one pass less over the output map, which for the upsampling deblocks is the largest
    map of the backbone), else in place right after it."""

    weight: torch.Tensor  # channels-last: oneDNN then reads it without a reorder per call
    bias: torch.Tensor
    transposed: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int] = (0, 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        on_cpu = x.device.type == "cpu"
        if self.transposed:
            if _DECONV_RELU is not None and on_cpu:
                return _DECONV_RELU(
                    x, self.weight, self.bias, self.padding, self.output_padding, self.stride, (1, 1), 1, "relu", [], ""
                )
            y = F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)
            return F.relu_(y)
        if _CONV_RELU is not None and on_cpu:
            return _CONV_RELU(x, self.weight, self.bias, self.padding, self.stride, (1, 1), 1, "relu", [], "")
        return F.relu_(F.conv2d(x, self.weight, self.bias, self.stride, self.padding))


def fold_conv_bn_relu(
    conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d, extra_padding: int = 0
) -> FoldedConvReLU:
    """The folded form of ``conv -> norm -> ReLU``; ``extra_padding`` is a ``ZeroPad2d`` just before a ``Conv2d``
    (the same zeros as the conv's own padding). A 1x1 stride-1 transposed conv becomes the equal 1x1 conv, which
    oneDNN runs ~2x faster than the transposed form."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    if conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError("fold_conv_bn_relu: a bias-free, ungrouped, undilated convolution is expected")
    if transposed and extra_padding:
        raise ValueError("fold_conv_bn_relu: a ZeroPad2d before a transposed conv is not its padding")
    weight, bias = fold_batchnorm(conv.weight, norm, out_dim=1 if transposed else 0)
    output_padding = tuple(conv.output_padding) if transposed else (0, 0)
    if transposed and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0):
        weight, transposed = weight.transpose(0, 1), False
    padding = (conv.padding[0] + extra_padding, conv.padding[1] + extra_padding)
    return FoldedConvReLU(
        weight.contiguous(memory_format=torch.channels_last),
        bias.contiguous(),
        transposed,
        tuple(conv.stride),
        padding,
        output_padding,
    )
