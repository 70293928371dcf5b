"""Optimizers and LR schedules selected by ``OPTIMIZATION.OPTIMIZER`` in the config (OpenPCDet's names)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from .fastai_optim import OptimWrapper
from .learning_schedules_fastai import CosineWarmupLR, IterationScheduler, OneCycle, StepDecayLR

__all__ = [
    "OPTIMIZERS",
    "OptimWrapper",
    "active_scheduler",
    "build_optimizer",
    "build_scheduler",
    "get_lr",
    "get_momentum",
]


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    # A distillation teacher is frozen (requires_grad False) and must not reach the optimizer.
    return [p for p in model.parameters() if p.requires_grad]


def _adam(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(_trainable(model), lr=optim_cfg.LR, weight_decay=optim_cfg.WEIGHT_DECAY)


def _sgd(model: nn.Module, optim_cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        _trainable(model), lr=optim_cfg.LR, weight_decay=optim_cfg.WEIGHT_DECAY, momentum=optim_cfg.MOMENTUM
    )


def _adam_onecycle(model: nn.Module, optim_cfg) -> OptimWrapper:
    adam = partial(torch.optim.Adam, betas=(0.9, 0.99))
    return OptimWrapper.create(adam, optim_cfg.LR, model, wd=optim_cfg.WEIGHT_DECAY, true_wd=True, bn_wd=True)


OPTIMIZERS: dict[str, Callable] = {"adam": _adam, "sgd": _sgd, "adam_onecycle": _adam_onecycle}


def build_optimizer(model: nn.Module, optim_cfg):
    """The optimizer named by ``optim_cfg.OPTIMIZER`` over the model's trainable parameters."""
    name = optim_cfg.OPTIMIZER
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown OPTIMIZATION.OPTIMIZER '{name}'; available: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name](model, optim_cfg)


def build_scheduler(
    optimizer, total_iters_each_epoch: int, total_epochs: int, last_epoch: int, optim_cfg
) -> tuple[IterationScheduler, IterationScheduler | None]:
    """``(lr_scheduler, lr_warmup_scheduler)`` for the optimizer built from the same ``optim_cfg``.

    Schedules are indexed by global iteration. ``last_epoch`` is, as for torch schedulers, the index of the last
    iteration already trained (``-1`` for a fresh run, ``it - 1`` when resuming at checkpoint iteration ``it``); the
    optimizer is left holding the values of the next iteration. The training loop then calls ``step(it)`` before
    every iteration, using the warmup scheduler while ``it < lr_warmup_scheduler.total_step``.
    """
    total_steps = total_iters_each_epoch * total_epochs
    if optim_cfg.OPTIMIZER == "adam_onecycle":
        lr_scheduler = OneCycle(
            optimizer,
            total_steps,
            optim_cfg.LR,
            list(optim_cfg.MOMS),
            optim_cfg.DIV_FACTOR,
            optim_cfg.PCT_START,
            last_it=last_epoch,
        )
        return lr_scheduler, None

    decay_iters = [int(epoch * total_iters_each_epoch) for epoch in optim_cfg.DECAY_STEP_LIST]
    lr_scheduler = StepDecayLR(
        optimizer, optim_cfg.LR, decay_iters, optim_cfg.LR_DECAY, optim_cfg.LR_CLIP, last_it=last_epoch
    )
    lr_warmup_scheduler = None
    if optim_cfg.get("LR_WARMUP", False):
        warmup_steps = int(optim_cfg.WARMUP_EPOCH * total_iters_each_epoch)
        lr_warmup_scheduler = CosineWarmupLR(
            optimizer,
            total_step=warmup_steps,
            base_lr=optim_cfg.LR,
            eta_min=optim_cfg.LR / optim_cfg.DIV_FACTOR,
            last_it=last_epoch,
        )
        # Both constructors set the optimizer; the one in charge of the next iteration must win.
        active_scheduler(last_epoch + 1, lr_scheduler, lr_warmup_scheduler).step(last_epoch + 1)
    return lr_scheduler, lr_warmup_scheduler


def active_scheduler(
    it: int, lr_scheduler: IterationScheduler, lr_warmup_scheduler: IterationScheduler | None
) -> IterationScheduler:
    """The scheduler that owns global iteration ``it``: warmup for its first ``total_step`` iterations."""
    if lr_warmup_scheduler is not None and it < lr_warmup_scheduler.total_step:
        return lr_warmup_scheduler
    return lr_scheduler


def get_lr(optimizer) -> float:
    return float(optimizer.lr if isinstance(optimizer, OptimWrapper) else optimizer.param_groups[0]["lr"])


def get_momentum(optimizer) -> float | None:
    """Adam's beta1 or SGD's momentum (what the one-cycle policy cycles); None for optimizers without one."""
    if isinstance(optimizer, OptimWrapper):
        return optimizer.mom
    group = optimizer.param_groups[0]
    if "betas" in group:
        return float(group["betas"][0])
    return float(group["momentum"]) if "momentum" in group else None
