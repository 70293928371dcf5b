"""Learning-rate / momentum schedules as pure functions of the global iteration.

Every scheduler here is driven by ``step(it)`` with the number of iterations already trained, and holds no other
state: resuming at iteration ``it`` reproduces exactly the learning rate and momentum an uninterrupted run has at
that iteration (the checkpoint's ``it`` is the whole scheduler state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .fastai_optim import OptimWrapper


def annealing_cos(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from ``start`` (pct = 0) to ``end`` (pct = 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _set_lr(optimizer, lr: float) -> None:
    if isinstance(optimizer, OptimWrapper):
        optimizer.lr = lr
        return
    for group in optimizer.param_groups:
        group["lr"] = lr


def _set_mom(optimizer, mom: float) -> None:
    if isinstance(optimizer, OptimWrapper):
        optimizer.mom = mom
        return
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (mom, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = mom


class IterationScheduler:
    """Base: ``lr_at(it)`` (and optionally ``mom_at(it)``) define the schedule; ``step(it)`` applies it."""

    def __init__(self, optimizer, last_it: int = -1) -> None:
        self.optimizer = optimizer
        self.last_it = last_it
        self.step(last_it + 1)  # the optimizer holds the value for the next iteration to run

    def lr_at(self, it: int) -> float:
        raise NotImplementedError

    def mom_at(self, it: int) -> float | None:
        return None

    def step(self, it: int) -> None:
        """Set the optimizer's learning rate (and momentum) for global iteration ``it`` (0-based)."""
        self.last_it = it
        _set_lr(self.optimizer, self.lr_at(it))
        mom = self.mom_at(it)
        if mom is not None:
            _set_mom(self.optimizer, mom)


class OneCycle(IterationScheduler):
    """fastai's one-cycle policy over ``total_step`` iterations.

    LR rises from ``lr_max / div_factor`` to ``lr_max`` by cosine over the first ``pct_start`` of the run, then falls
    by cosine to ``lr_max / div_factor / 1e4``; momentum moves the opposite way, ``moms[0] -> moms[1] -> moms[0]``.
    The phase boundary is ``int(total_step * pct_start)``, as in OpenPCDet.
    """

    def __init__(
        self,
        optimizer,
        total_step: int,
        lr_max: float,
        moms: Sequence[float],
        div_factor: float,
        pct_start: float,
        last_it: int = -1,
    ) -> None:
        if total_step < 1:
            raise ValueError(f"OneCycle needs at least one iteration, got total_step={total_step}")
        self.total_step = int(total_step)
        self.lr_max = float(lr_max)
        self.moms = (float(moms[0]), float(moms[1]))
        self.lr_low = self.lr_max / float(div_factor)
        self.lr_final = self.lr_low / 1e4
        self.boundary = int(self.total_step * pct_start)
        super().__init__(optimizer, last_it)

    def _phase(self, it: int) -> tuple[int, float]:
        """(phase index, fraction of that phase done) for iteration ``it``, clamped to the run."""
        if it < self.boundary:
            return 0, max(it, 0) / self.boundary
        return 1, min((it - self.boundary) / max(self.total_step - self.boundary, 1), 1.0)

    def lr_at(self, it: int) -> float:
        phase, pct = self._phase(it)
        if phase == 0:
            return annealing_cos(self.lr_low, self.lr_max, pct)
        return annealing_cos(self.lr_max, self.lr_final, pct)

    def mom_at(self, it: int) -> float:
        phase, pct = self._phase(it)
        if phase == 0:
            return annealing_cos(self.moms[0], self.moms[1], pct)
        return annealing_cos(self.moms[1], self.moms[0], pct)


class StepDecayLR(IterationScheduler):
    """``base_lr`` times ``lr_decay`` for every decay iteration passed, never below ``lr_clip``."""

    def __init__(
        self, optimizer, base_lr: float, decay_iters: Sequence[int], lr_decay: float, lr_clip: float, last_it: int = -1
    ) -> None:
        self.base_lr = float(base_lr)
        self.decay_iters = sorted(int(x) for x in decay_iters)
        self.lr_decay = float(lr_decay)
        self.lr_clip = float(lr_clip)
        super().__init__(optimizer, last_it)

    def lr_at(self, it: int) -> float:
        passed = sum(1 for d in self.decay_iters if it >= d)
        return max(self.base_lr * self.lr_decay**passed, self.lr_clip)


class CosineWarmupLR(IterationScheduler):
    """Cosine ramp from ``eta_min`` (iteration 0) to ``base_lr`` (iteration ``total_step``)."""

    def __init__(self, optimizer, total_step: int, base_lr: float, eta_min: float, last_it: int = -1) -> None:
        self.total_step = max(int(total_step), 1)
        self.base_lr = float(base_lr)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_it)

    def lr_at(self, it: int) -> float:
        pct = min(max(it, 0) / self.total_step, 1.0)
        return annealing_cos(self.eta_min, self.base_lr, pct)
