"""Optimizers and LR schedules of tools/train_utils/optimization (OpenPCDet's adam / sgd / adam_onecycle)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from train_utils.optimization import (  # noqa: E402
    OptimWrapper,
    active_scheduler,
    build_optimizer,
    build_scheduler,
    get_lr,
    get_momentum,
)
from train_utils.optimization.learning_schedules_fastai import OneCycle  # noqa: E402


def onecycle_cfg(**overrides) -> EasyDict:
    cfg = EasyDict(
        OPTIMIZER="adam_onecycle",
        LR=0.003,
        WEIGHT_DECAY=0.01,
        MOMENTUM=0.9,
        MOMS=[0.95, 0.85],
        PCT_START=0.4,
        DIV_FACTOR=10,
        DECAY_STEP_LIST=[35, 45],
        LR_DECAY=0.1,
        LR_CLIP=1e-7,
        LR_WARMUP=False,
        WARMUP_EPOCH=1,
        GRAD_NORM_CLIP=10,
    )
    cfg.update(overrides)
    return cfg


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 1)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        y = self.bn(self.conv(x)).mean(dim=(2, 3))
        return self.head(y + self.frozen(y))


# ------------------------------------------------------------------------------------------------ one-cycle curve
@pytest.mark.parametrize(
    "it, lr, mom",
    [
        (0, 0.0003, 0.95),  # start: LR / DIV_FACTOR, MOMS[0]
        (20, (0.0003 + 0.003) / 2, 0.90),  # half-way up: cosine midpoint
        (40, 0.003, 0.85),  # peak at PCT_START * total
        (70, (0.003 + 0.0003 / 1e4) / 2, 0.90),  # half-way down
        (100, 0.0003 / 1e4, 0.95),  # end: LR / DIV_FACTOR / 1e4, back to MOMS[0]
    ],
)
def test_onecycle_lr_and_momentum_at_known_iterations(it, lr, mom):
    optimizer = build_optimizer(Net(), onecycle_cfg())
    scheduler, warmup = build_scheduler(optimizer, 10, 10, -1, onecycle_cfg())
    assert warmup is None and isinstance(scheduler, OneCycle)
    scheduler.step(it)
    assert get_lr(optimizer) == pytest.approx(lr, rel=1e-9)
    assert get_momentum(optimizer) == pytest.approx(mom, rel=1e-9)
    # Adam's beta1 is the cycled momentum in every param group; beta2 stays 0.99.
    for group in optimizer.param_groups:
        assert group["betas"] == pytest.approx((mom, 0.99))
        assert group["lr"] == pytest.approx(lr)


def test_onecycle_quarter_points_follow_the_cosine():
    optimizer = build_optimizer(Net(), onecycle_cfg())
    scheduler, _ = build_scheduler(optimizer, 10, 10, -1, onecycle_cfg())
    scheduler.step(10)  # a quarter of the warm phase: low + (high - low) * (1 - cos(pi / 4)) / 2
    assert get_lr(optimizer) == pytest.approx(0.0003 + 0.0027 * (1 - math.cos(math.pi / 4)) / 2)
    lrs = [scheduler.lr_at(i) for i in range(101)]
    assert all(a < b for a, b in zip(lrs[:40], lrs[1:41]))
    assert all(a > b for a, b in zip(lrs[40:100], lrs[41:101]))


def test_scheduler_starts_at_the_iteration_after_last_epoch():
    optimizer = build_optimizer(Net(), onecycle_cfg())
    build_scheduler(optimizer, 10, 10, 39, onecycle_cfg())  # resumed after 40 iterations
    assert get_lr(optimizer) == pytest.approx(0.003)
    assert get_momentum(optimizer) == pytest.approx(0.85)


# ------------------------------------------------------------------------------------------------ step decay + warmup
def test_step_decay_with_clip():
    cfg = onecycle_cfg(OPTIMIZER="adam", LR=0.01, DECAY_STEP_LIST=[2, 4], LR_DECAY=0.1, LR_CLIP=5e-4)
    optimizer = build_optimizer(Net(), cfg)
    assert isinstance(optimizer, torch.optim.Adam)
    scheduler, warmup = build_scheduler(optimizer, 10, 6, -1, cfg)
    assert warmup is None
    expected = {0: 0.01, 19: 0.01, 20: 0.001, 39: 0.001, 40: 5e-4, 59: 5e-4}
    for it, lr in expected.items():
        scheduler.step(it)
        assert get_lr(optimizer) == pytest.approx(lr), it


def test_cosine_warmup_then_step_decay():
    cfg = onecycle_cfg(OPTIMIZER="sgd", LR=0.02, DECAY_STEP_LIST=[3], LR_WARMUP=True, WARMUP_EPOCH=1)
    optimizer = build_optimizer(Net(), cfg)
    scheduler, warmup = build_scheduler(optimizer, 10, 5, -1, cfg)
    assert get_lr(optimizer) == pytest.approx(0.002)  # eta_min = LR / DIV_FACTOR before the first step
    expected = {0: 0.002, 5: (0.002 + 0.02) / 2, 9: 0.002 + 0.018 * (1 - math.cos(math.pi * 0.9)) / 2, 10: 0.02}
    for it, lr in expected.items():
        active_scheduler(it, scheduler, warmup).step(it)
        assert get_lr(optimizer) == pytest.approx(lr), it
    assert get_momentum(optimizer) == pytest.approx(0.9)  # SGD momentum untouched by the LR schedule


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown OPTIMIZATION.OPTIMIZER 'adamw'.*adam_onecycle"):
        build_optimizer(Net(), onecycle_cfg(OPTIMIZER="adamw"))


# ------------------------------------------------------------------------------------------------ true weight decay
def test_onecycle_param_groups_split_norm_layers_and_skip_frozen():
    model = Net()
    optimizer = build_optimizer(model, onecycle_cfg())
    assert isinstance(optimizer, OptimWrapper)
    others, norms = (group["params"] for group in optimizer.param_groups)
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(norms) == ids(model.bn.parameters())
    assert ids(others) == ids([*model.conv.parameters(), *model.head.parameters()])
    assert not ids(model.frozen.parameters()) & ids(optimizer.parameters())
    assert all(group["weight_decay"] == 0.0 for group in optimizer.param_groups)  # decay is applied outside Adam


def test_true_weight_decay_is_decoupled_from_adam():
    """With a zero gradient Adam moves nothing, so a step is exactly p * (1 - lr * wd), BN weights included;
    L2 decay inside Adam (the plain 'adam' optimizer) instead takes a full normalised step of size ~lr."""
    cfg = onecycle_cfg(WEIGHT_DECAY=0.1)
    model = Net()
    with torch.no_grad():
        model.bn.weight.fill_(2.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg)
    optimizer.lr = 0.5
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1.0 if name.startswith("frozen") else 1 - 0.5 * 0.1
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=0, atol=1e-7)

    plain = Net()
    with torch.no_grad():
        plain.bn.weight.fill_(2.0)
    adam = build_optimizer(plain, onecycle_cfg(OPTIMIZER="adam", LR=0.5, WEIGHT_DECAY=0.1))
    for p in plain.parameters():
        p.grad = torch.zeros_like(p)
    adam.step()
    torch.testing.assert_close(plain.bn.weight.detach(), torch.full((3,), 1.5), rtol=0, atol=1e-5)  # 2 - lr


def test_loads_openpcdet_optimizer_state_with_numpy_scalars(tmp_path):
    from pcdet.utils.checkpoint_io import safe_load

    model = Net()
    optimizer = build_optimizer(model, onecycle_cfg())
    loss = model(torch.randn(2, 2, 4, 4)).sum()
    loss.backward()
    optimizer.step()
    state = optimizer.state_dict()
    for group in state["param_groups"]:  # what OpenPCDet's fastai wrapper pickles
        group["betas"] = (np.float64(0.9123), np.float64(0.99))
        group["lr"] = np.float64(0.0021)
    torch.save({"optimizer_state": state}, tmp_path / "ckpt.pth")

    fresh = build_optimizer(Net(), onecycle_cfg())
    fresh.load_state_dict(safe_load(tmp_path / "ckpt.pth")["optimizer_state"])
    group = fresh.param_groups[0]
    assert type(group["betas"][0]) is float and group["betas"] == (0.9123, 0.99)
    assert type(group["lr"]) is float and fresh.lr == pytest.approx(0.0021)
    assert fresh.wd == 0.01 and all(g["weight_decay"] == 0.0 for g in fresh.param_groups)
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_wrong_group_layout_is_rejected():
    with pytest.raises(ValueError, match="two param groups"):
        OptimWrapper(torch.optim.Adam(Net().parameters()), wd=0.01)


# ------------------------------------------------------------------------------------------------ resume equivalence
def _train(model, optimizer, scheduler, start, stop, data):
    lrs = []
    for it in range(start, stop):
        scheduler.step(it)
        lrs.append((get_lr(optimizer), get_momentum(optimizer)))
        optimizer.zero_grad()
        x, y = data[it]
        nn.functional.mse_loss(model(x).squeeze(1), y).backward()
        optimizer.step()
    return lrs


@pytest.mark.parametrize("name", ["adam_onecycle", "adam", "sgd"])
def test_resumed_schedule_and_optimizer_equal_an_uninterrupted_run(name):
    cfg = onecycle_cfg(OPTIMIZER=name, LR=0.01, DECAY_STEP_LIST=[1, 2], LR_WARMUP=name == "sgd")
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 2, 3, 3, generator=gen), torch.randn(4, generator=gen)) for _ in range(12)]

    torch.manual_seed(1)
    ref = Net()
    ref_opt = build_optimizer(ref, cfg)
    ref_sched, ref_warm = build_scheduler(ref_opt, 4, 3, -1, cfg)
    ref_lrs = _train(ref, ref_opt, _Combined(ref_sched, ref_warm), 0, 12, data)

    torch.manual_seed(1)
    first = Net()
    first_opt = build_optimizer(first, cfg)
    first_sched, first_warm = build_scheduler(first_opt, 4, 3, -1, cfg)
    lrs = _train(first, first_opt, _Combined(first_sched, first_warm), 0, 5, data)
    saved = {"model_state": first.state_dict(), "optimizer_state": first_opt.state_dict(), "it": 5}

    torch.manual_seed(99)  # a different init: everything must come from the checkpoint
    resumed = Net()
    resumed.load_state_dict(saved["model_state"])
    resumed_opt = build_optimizer(resumed, cfg)
    resumed_opt.load_state_dict(saved["optimizer_state"])
    resumed_sched, resumed_warm = build_scheduler(resumed_opt, 4, 3, saved["it"] - 1, cfg)
    assert (get_lr(resumed_opt), get_momentum(resumed_opt)) == pytest.approx(ref_lrs[5])
    lrs += _train(resumed, resumed_opt, _Combined(resumed_sched, resumed_warm), 5, 12, data)

    assert lrs == ref_lrs
    for (name_a, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name_a)
    for a, b in zip(ref_opt.state_dict()["state"].values(), resumed_opt.state_dict()["state"].values()):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


class _Combined:
    """Drive warmup and main schedule the way train_one_epoch does."""

    def __init__(self, main, warmup) -> None:
        self.main, self.warmup = main, warmup

    def step(self, it: int) -> None:
        active_scheduler(it, self.main, self.warmup).step(it)
