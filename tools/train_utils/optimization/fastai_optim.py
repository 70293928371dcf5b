"""Adam with *true* (decoupled) weight decay, laid out like OpenPCDet's ``adam_onecycle`` optimizer.

The parameters are split into two torch param groups: those of normalisation layers and all others (the layout
OpenPCDet checkpoints carry in ``optimizer_state``, so their optimizer state loads here and ours there). Before each
Adam step every trainable parameter is shrunk by ``lr * wd`` (normalisation parameters too when ``bn_wd``) and Adam
itself runs with ``weight_decay = 0`` — decay that does not pass through Adam's adaptive scaling (Loshchilov & Hutter).

The schedulers drive the optimizer through the ``lr`` and ``mom`` properties (``mom`` is Adam's beta1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def split_norm_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters as ``(others, normalisation)``, each in module registration order.

    Frozen parameters (``requires_grad`` False, e.g. a distillation teacher) are left out entirely, so they are
    neither updated nor decayed.
    """
    others: list[nn.Parameter] = []
    norms: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        target = norms if isinstance(module, NORM_TYPES) else others
        for param in module.parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:  # a shared parameter is optimised once
                seen.add(id(param))
                target.append(param)
    return others, norms


class OptimWrapper:
    """A torch optimizer plus decoupled weight decay, with scalar ``lr``/``mom``/``wd`` knobs for the schedulers."""

    def __init__(self, opt: torch.optim.Optimizer, wd: float, true_wd: bool = True, bn_wd: bool = True) -> None:
        if len(opt.param_groups) != 2:
            raise ValueError("OptimWrapper expects two param groups: (non-normalisation, normalisation)")
        self.opt = opt
        self.true_wd = true_wd
        self.bn_wd = bn_wd
        self.wd = wd
        if true_wd:
            for group in opt.param_groups:
                group["weight_decay"] = 0.0

    @classmethod
    def create(
        cls,
        opt_func: Callable[..., torch.optim.Optimizer],
        lr: float,
        model: nn.Module,
        wd: float = 0.0,
        true_wd: bool = True,
        bn_wd: bool = True,
    ) -> OptimWrapper:
        others, norms = split_norm_params(model)
        opt = opt_func([{"params": others, "lr": lr}, {"params": norms, "lr": lr}])
        return cls(opt, wd=wd, true_wd=true_wd, bn_wd=bn_wd)

    # ------------------------------------------------------------------ scalar knobs
    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = float(value)

    @property
    def mom(self) -> float:
        group = self.opt.param_groups[0]
        return float(group["betas"][0] if "betas" in group else group["momentum"])

    @mom.setter
    def mom(self, value: float) -> None:
        for group in self.opt.param_groups:
            if "betas" in group:
                group["betas"] = (float(value), float(group["betas"][1]))
            else:
                group["momentum"] = float(value)

    @property
    def wd(self) -> float:
        return self._wd

    @wd.setter
    def wd(self, value: float) -> None:
        self._wd = float(value)
        if not self.true_wd:  # classic L2 decay lives inside the torch optimizer (normalisation groups per bn_wd)
            self.opt.param_groups[0]["weight_decay"] = self._wd
            self.opt.param_groups[1]["weight_decay"] = self._wd if self.bn_wd else 0.0

    # ------------------------------------------------------------------ torch optimizer interface
    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups

    @property
    def state(self) -> dict:
        return self.opt.state

    def parameters(self) -> Iterable[nn.Parameter]:
        for group in self.opt.param_groups:
            yield from group["params"]

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        if self.true_wd and self._wd != 0.0:
            decayed = self.opt.param_groups if self.bn_wd else self.opt.param_groups[:1]
            for group in decayed:
                for param in group["params"]:
                    param.mul_(1.0 - group["lr"] * self._wd)
        return self.opt.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.opt.load_state_dict(state_dict)
        for group in self.opt.param_groups:
            # OpenPCDet pickles numpy scalars here; keep our groups plain Python numbers.
            group["lr"] = float(group["lr"])
            if "betas" in group:
                group["betas"] = tuple(float(b) for b in group["betas"])
        self.wd = self._wd  # a loaded state may carry another decay setting; ours is the configured one
        if self.true_wd:
            for group in self.opt.param_groups:
                group["weight_decay"] = 0.0

    def __repr__(self) -> str:
        return f"OptimWrapper(true_wd={self.true_wd}, bn_wd={self.bn_wd}, wd={self._wd}, opt={self.opt!r})"
