"""Connectors: 1×1 conv (+BN) (+ReLU) that map a feature to another width. They train with the student and are
not part of the exported student checkpoint."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn


class Adapter(nn.Sequential):
    """``conv`` (1×1, bias only without BN) → optional ``bn`` → optional ``relu`` on ``(B, C, H, W)`` maps.

    Node features ``(N, C)`` go through :meth:`forward_nodes` (a 1×1 conv over N nodes is the same as over an
    ``(1, C, N, 1)`` map, and BN then normalises over the N nodes).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True, relu: bool = True):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=not norm)
        if norm:
            layers["bn"] = nn.BatchNorm2d(out_channels)
        if relu:
            layers["relu"] = nn.ReLU()
        super().__init__(layers)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward_nodes(self, nodes: torch.Tensor) -> torch.Tensor:
        """``(N, C_in)`` → ``(N, C_out)``."""
        return self(nodes.t().unsqueeze(0).unsqueeze(-1)).squeeze(-1).squeeze(0).t()

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


def batch_norm_stats_update(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Advance ``bn``'s running statistics exactly as its own forward would for a batch of ``count`` values with
    biased batch variance ``var`` (for code that computes the batch statistics itself)."""
    if not (bn.training and bn.track_running_stats):
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
