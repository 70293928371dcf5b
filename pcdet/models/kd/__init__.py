"""Knowledge distillation for pcdet detectors (PointDistiller and baselines), driven by a config's ``KD`` block.

``build_distiller(cfg, student, dataset, teacher_ckpt=None, logger=None)`` is what tools/train.py calls when the
config has a ``KD`` block; the schema is documented in docs/KD.md.
"""

from __future__ import annotations

import logging
import os

import torch.nn as nn

from .distiller import Distiller
from .errors import KDConfigError
from .feature_matching import VoxelGrid
from .losses import LOSSES, build_kd_losses
from .teacher import build_teacher

__all__ = ["LOSSES", "Distiller", "KDConfigError", "build_distiller"]


def build_distiller(
    cfg: dict,
    student: nn.Module,
    dataset,
    teacher_ckpt: str | os.PathLike | None = None,
    logger: logging.Logger | None = None,
) -> Distiller:
    """Wrap ``student`` (built from ``cfg.MODEL``) for training with ``cfg.KD``; ``cfg`` is the whole experiment
    config (KD, CLASS_NAMES, DATA_CONFIG). ``teacher_ckpt`` (train.py's --teacher_ckpt) overrides KD.TEACHER.CKPT.
    The distiller is moved to the student's device and its plan is logged."""
    logger = logger or logging.getLogger("pcdet")
    kd_cfg = cfg.get("KD")
    if not kd_cfg:
        raise KDConfigError("the config has no KD block (KD: {TEACHER: {CFG_FILE, CKPT}, LOSSES: [...]})")
    teacher = build_teacher(kd_cfg, cfg, dataset, teacher_ckpt=teacher_ckpt, logger=logger)
    losses = build_kd_losses(kd_cfg.get("LOSSES"), student, teacher.model)
    distiller = Distiller(
        student,
        teacher,
        losses,
        loss_cfgs=kd_cfg.get("LOSSES"),
        student_grid=VoxelGrid.from_data_config(cfg.DATA_CONFIG),
        logger=logger,
        diagnose_every=int(kd_cfg.get("DIAGNOSE_EVERY", 50)),
    )
    device = next(student.parameters()).device
    distiller.to(device)
    logger.info(distiller.describe())
    return distiller
