"""Opt-in eval-time fast paths (batch-norm folded into the preceding layer, channels-last BEV maps).

Training and the default eval forward are untouched: a KD teacher runs in eval mode inside a training step and its
outputs must stay bit-identical. ``enable_fused_inference(model)`` switches the modules that have a fused path
(PillarVFE, PointPillarScatter, BaseBEVBackbone, AnchorHeadSingle) to it; each uses it only in eval mode with
autograd off, so calling ``model.train()`` or enabling gradients falls back to the reference path. The fused
results equal the reference up to float32 round-off (folded weights, a different summation order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


def enable_fused_inference(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Set ``fused_inference`` on every sub-module that has a fused eval path; returns ``model``."""
    for module in model.modules():
        if hasattr(module, "fused_inference"):
            module.fused_inference = enabled
    return model


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
