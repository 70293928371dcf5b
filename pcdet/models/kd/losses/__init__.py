"""Registry of distillation losses (NAME in the KD config → class) and the builder of a config's loss list."""

from __future__ import annotations

import torch.nn as nn

from ..errors import KDConfigError
from .base import KDBatch, KDLoss, get_feature
from .feature_losses import AttentionGuidedKD, AttentionTransfer, FitNet, SimilarityPreserving
from .point_distiller import PointDistiller
from .response import CenterHeatmapKD, ResponseKD

LOSSES: dict[str, type[KDLoss]] = {
    "PointDistiller": PointDistiller,
    "FitNet": FitNet,
    "AttentionTransfer": AttentionTransfer,
    "SimilarityPreserving": SimilarityPreserving,
    "ResponseKD": ResponseKD,
    "CenterHeatmapKD": CenterHeatmapKD,
    "AttentionGuidedKD": AttentionGuidedKD,
}

__all__ = ["LOSSES", "KDBatch", "KDLoss", "build_kd_losses", "get_feature"]


def build_kd_losses(loss_cfgs: list, student_model: nn.Module, teacher_model: nn.Module) -> nn.ModuleDict:
    """One module per entry of ``KD.LOSSES``, keyed by its TAG (default: its NAME); tags must be unique."""
    if not loss_cfgs:
        raise KDConfigError("KD.LOSSES is empty: list at least one loss (known: " + ", ".join(LOSSES) + ")")
    losses = nn.ModuleDict()
    for loss_cfg in loss_cfgs:
        name = loss_cfg.get("NAME")
        if name not in LOSSES:
            raise KDConfigError(f"unknown KD loss NAME '{name}' (known: {', '.join(LOSSES)})")
        tag = str(loss_cfg.get("TAG", name))
        if tag in losses:
            raise KDConfigError(f"two KD losses are tagged '{tag}': give one of them a distinct TAG")
        losses[tag] = LOSSES[name](loss_cfg, student_model, teacher_model)
    return losses
