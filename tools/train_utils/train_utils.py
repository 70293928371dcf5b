"""The training loop and everything checkpoint-shaped: state dicts, atomic saves, pruning, finding what to resume.

Checkpoints are written with ``atomic_torch_save`` (temp file + fsync + rename), so a process killed mid-save leaves
either the previous file set or the new one, never a truncated ``checkpoint_epoch_N.pth``; a stray temp file has a
``.tmp`` suffix that the resume logic never matches. The learning-rate schedule is a pure function of the global
iteration ``it`` stored in every checkpoint, which is therefore all it takes to restore it exactly.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import tqdm
from torch import nn
from torch.nn.utils import clip_grad_norm_

import pcdet
from pcdet.datasets.data_issues import log_data_issue_totals
from pcdet.models.detectors import load_state_dict_strict
from pcdet.utils import common_utils
from pcdet.utils.checkpoint_io import CheckpointError, atomic_torch_save, safe_load

from .optimization import active_scheduler, get_lr, get_momentum

CKPT_PREFIX = "checkpoint_epoch_"
LATEST_NAME = "latest_model.pth"
_CKPT_RE = re.compile(rf"^{CKPT_PREFIX}(\d+)\.pth$")


# --------------------------------------------------------------------------------------------------- checkpoints
def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_state_to_cpu(model_state: dict) -> dict:
    return {key: val.cpu() if torch.is_tensor(val) else val for key, val in model_state.items()}


def checkpoint_state(
    model: nn.Module | None = None, optimizer=None, epoch: int | None = None, it: int | None = None
) -> dict:
    """OpenPCDet's checkpoint dict. A distiller contributes its plain student weights as ``model_state`` (so the
    file is an ordinary detector checkpoint) and its own trainable parts under ``kd_state``."""
    state: dict[str, Any] = {
        "epoch": epoch,
        "it": it,
        "model_state": None,
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "version": f"pcdet+{pcdet.__version__}",
    }
    if model is not None:
        model = unwrap_model(model)
        raw = model.checkpoint_model_state() if hasattr(model, "checkpoint_model_state") else model.state_dict()
        state["model_state"] = model_state_to_cpu(raw)
        if hasattr(model, "extra_checkpoint_state"):
            state["kd_state"] = model.extra_checkpoint_state()
    return state


def save_checkpoint(state: dict, filename: str | os.PathLike = "checkpoint") -> Path:
    """Atomically write ``state`` to ``filename`` (``.pth`` appended when missing, as OpenPCDet callers expect)."""
    path = Path(filename)
    if path.suffix != ".pth":
        path = path.with_name(path.name + ".pth")
    atomic_torch_save(state, path)
    return path


def epoch_of_checkpoint(path: str | os.PathLike) -> int | None:
    """N for ``checkpoint_epoch_N.pth``, None for any other name."""
    match = _CKPT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_epoch_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint_epoch_N.pth`` files, ascending by N."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_file() and epoch_of_checkpoint(p) is not None]
    return sorted(found, key=epoch_of_checkpoint)


def resume_candidates(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Epoch checkpoints and ``latest_model.pth``, newest first (modification time, then epoch)."""
    ckpt_dir = Path(ckpt_dir)
    files = list_epoch_checkpoints(ckpt_dir)
    latest = ckpt_dir / LATEST_NAME
    if latest.is_file():
        files.append(latest)
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, epoch_of_checkpoint(p) or -1), reverse=True)


def remove_stale_temp_files(ckpt_dir: str | os.PathLike, logger: logging.Logger | None = None) -> list[Path]:
    """Delete temp files an interrupted atomic save left behind (``.<name>.pth.<random>.tmp``)."""
    ckpt_dir = Path(ckpt_dir)
    removed = []
    if ckpt_dir.is_dir():
        for path in ckpt_dir.glob(".*.pth.*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed and logger is not None:
        logger.info(f"Removed {len(removed)} unfinished checkpoint temp file(s) from an interrupted save")
    return removed


def prune_checkpoints(ckpt_dir: str | os.PathLike, max_ckpt_save_num: int) -> list[Path]:
    """Keep the ``max_ckpt_save_num`` highest-epoch checkpoints; return the removed ones."""
    ckpts = list_epoch_checkpoints(ckpt_dir)
    excess = ckpts[: max(len(ckpts) - max(max_ckpt_save_num, 1), 0)]
    for path in excess:
        path.unlink(missing_ok=True)
    return excess


def load_training_checkpoint(
    model: nn.Module, optimizer, filename: str | os.PathLike, logger: logging.Logger | None = None
) -> tuple[int, int]:
    """Restore model (strictly), distiller extras and optimizer from ``filename``; returns ``(it, epoch)``.

    For a distiller the weights go into ``model.student``. Raises ``CheckpointError`` for an unreadable file and
    ``RuntimeError`` (naming the keys) for weights that do not fit the model.
    """
    logger = logger or logging.getLogger("pcdet")
    model = unwrap_model(model)
    checkpoint = safe_load(filename, map_location="cpu")
    if not isinstance(checkpoint, dict) or checkpoint.get("model_state") is None:
        raise CheckpointError(f"{filename} holds no 'model_state'; it is not a training checkpoint")
    target = model.student if hasattr(model, "student") else model
    load_state_dict_strict(target, checkpoint["model_state"], source=str(filename))
    if hasattr(model, "load_extra_checkpoint_state"):
        if "kd_state" in checkpoint:
            model.load_extra_checkpoint_state(checkpoint["kd_state"])
        else:
            logger.warning(f"{filename} has no 'kd_state': distillation adapters start from their initialisation")
    if optimizer is not None:
        if checkpoint.get("optimizer_state") is not None:
            optimizer.load_state_dict(checkpoint["optimizer_state"])
        else:
            logger.warning(f"{filename} has no optimizer state: the optimizer starts fresh")
    epoch = int(checkpoint.get("epoch") if checkpoint.get("epoch") is not None else -1)
    it = int(checkpoint.get("it") if checkpoint.get("it") is not None else 0)
    logger.info(f"Resumed from {filename} (epoch {epoch}, iteration {it}, saved by {checkpoint.get('version', '?')})")
    return it, epoch


def resume_from_dir(
    model: nn.Module, optimizer, ckpt_dir: str | os.PathLike, logger: logging.Logger | None = None
) -> tuple[int, int, Path | None]:
    """Resume from the newest readable checkpoint in ``ckpt_dir``: ``(it, epoch, path)``, or ``(0, 0, None)``.

    An unreadable (truncated, corrupt) file is skipped with a warning and the next older one is tried; a readable
    checkpoint whose weights do not fit the model is an error (the config changed), not something to skip.
    """
    logger = logger or logging.getLogger("pcdet")
    for path in resume_candidates(ckpt_dir):
        try:
            it, epoch = load_training_checkpoint(model, optimizer, path, logger=logger)
        except CheckpointError as exc:
            logger.warning(f"Skipping unreadable checkpoint: {exc}")
            continue
        return it, max(epoch, 0), path
    return 0, 0, None


class LatestModelSaver:
    """Time-based ``latest_model.pth`` saves, at most one per ``interval_s`` seconds."""

    def __init__(self, ckpt_dir: str | os.PathLike | None, interval_s: float) -> None:
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.interval_s = interval_s
        self.last_save = time.time()

    def maybe_save(self, model: nn.Module, optimizer, epoch: int, it: int) -> bool:
        if self.ckpt_dir is None or time.time() - self.last_save < self.interval_s:
            return False
        save_checkpoint(checkpoint_state(model, optimizer, epoch, it), self.ckpt_dir / LATEST_NAME)
        self.last_save = time.time()
        return True


# ------------------------------------------------------------------------------------------------ training loop
def _scalar(value: Any) -> float:
    return float(value.item() if torch.is_tensor(value) else value)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_one_epoch(
    model: nn.Module,
    optimizer,
    dataloader_iter: Iterator,
    model_func: Callable,
    lr_scheduler,
    accumulated_iter: int,
    optim_cfg,
    rank: int,
    num_iters: int,
    *,
    lr_warmup_scheduler=None,
    tb_log=None,
    scaler: torch.amp.GradScaler | None = None,
    logger: logging.Logger | None = None,
    use_logger_to_record: bool = False,
    logger_iter_interval: int = 50,
    cur_epoch: int = 0,
    total_epochs: int = 1,
    latest_saver: LatestModelSaver | None = None,
    show_gpu_stat: bool = False,
    leave_pbar: bool = False,
) -> int:
    """Run ``num_iters`` iterations; returns the updated global iteration count."""
    logger = logger or logging.getLogger("pcdet")
    use_amp = scaler is not None
    pbar = None
    if rank == 0 and not use_logger_to_record:
        pbar = tqdm.tqdm(total=num_iters, leave=leave_pbar, desc="train", dynamic_ncols=True)
    loss_meter, data_meter, step_meter = (common_utils.AverageMeter() for _ in range(3))
    epoch_start = end = time.time()

    try:  # the bar is closed however the loop ends: an error message then starts on its own line
        for cur_it in range(num_iters):
            batch = next(dataloader_iter)
            data_time = time.time() - end

            active_scheduler(accumulated_iter, lr_scheduler, lr_warmup_scheduler).step(accumulated_iter)
            cur_lr, cur_mom = get_lr(optimizer), get_momentum(optimizer)

            model.train()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                loss, tb_dict, disp_dict = model_func(model, batch)
            if use_amp:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                grad_norm = clip_grad_norm_(model.parameters(), optim_cfg.GRAD_NORM_CLIP)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                grad_norm = clip_grad_norm_(model.parameters(), optim_cfg.GRAD_NORM_CLIP)
                optimizer.step()
            accumulated_iter += 1

            loss_value = _scalar(loss)
            step_time = time.time() - end - data_time
            end = time.time()
            loss_meter.update(loss_value)
            data_meter.update(data_time)
            step_meter.update(step_time)
            tb_scalars = {key: _scalar(val) for key, val in tb_dict.items()}

            if rank == 0:
                if tb_log is not None:
                    tb_log.add_scalar("train/loss", loss_value, accumulated_iter)
                    tb_log.add_scalar("meta_data/learning_rate", cur_lr, accumulated_iter)
                    if cur_mom is not None:
                        tb_log.add_scalar("meta_data/momentum", cur_mom, accumulated_iter)
                    tb_log.add_scalar("meta_data/grad_norm", _scalar(grad_norm), accumulated_iter)
                    for key, val in tb_scalars.items():
                        tb_log.add_scalar(f"train/{key}", val, accumulated_iter)
                if pbar is not None:
                    disp_dict.update({"loss": f"{loss_value:.4f}", "lr": f"{cur_lr:.3e}"})
                    pbar.set_postfix(disp_dict)
                    pbar.update()
                elif cur_it % max(logger_iter_interval, 1) == 0 or cur_it == num_iters - 1:
                    elapsed = end - epoch_start
                    eta = elapsed / (cur_it + 1) * (num_iters - cur_it - 1)
                    gpu = ""
                    if show_gpu_stat and torch.cuda.is_available():
                        gpu = f" GPU mem {torch.cuda.max_memory_allocated() / 2**30:.2f}G"
                    terms = " ".join(f"{key}={val:.5g}" for key, val in tb_scalars.items())
                    logger.info(
                        f"Train: epoch {cur_epoch + 1}/{total_epochs} [{cur_it + 1}/{num_iters}] "
                        f"Acc_iter {accumulated_iter} LR {cur_lr:.4e} Loss {loss_value:.4f} ({loss_meter.avg:.4f}) "
                        f"Time data {data_meter.avg:.2f}s step {step_meter.avg:.2f}s "
                        f"ETA {_format_eta(eta)}{gpu} {terms}"
                    )
                if latest_saver is not None and latest_saver.maybe_save(model, optimizer, cur_epoch, accumulated_iter):
                    logger.info(f"Saved {LATEST_NAME} at iteration {accumulated_iter}")
            if not math.isfinite(loss_value):
                logger.warning(f"Non-finite loss {loss_value} at iteration {accumulated_iter}")

    finally:
        if pbar is not None:
            pbar.close()
    return accumulated_iter


def train_model(
    model: nn.Module,
    optimizer,
    train_loader,
    model_func: Callable,
    lr_scheduler,
    optim_cfg,
    start_epoch: int,
    total_epochs: int,
    start_iter: int,
    rank: int,
    tb_log,
    ckpt_save_dir: str | os.PathLike,
    train_sampler=None,
    lr_warmup_scheduler=None,
    ckpt_save_interval: int = 1,
    max_ckpt_save_num: int = 50,
    merge_all_iters_to_one_epoch: bool = False,
    use_amp: bool = False,
    use_logger_to_record: bool = False,
    logger: logging.Logger | None = None,
    logger_iter_interval: int = 50,
    ckpt_save_time_interval: float = 300,
    show_gpu_stat: bool = False,
    epoch_seed: int | None = None,
) -> int:
    """Train epochs ``start_epoch .. total_epochs - 1`` from global iteration ``start_iter``; returns the final one.

    A run resumed from a mid-epoch ``latest_model.pth`` finishes that epoch with the iterations it still owes, so
    epoch boundaries, checkpoint names and the LR schedule line up with an uninterrupted run. With ``epoch_seed``
    every epoch starts by seeding the RNGs with ``epoch_seed + epoch``: the shuffle order and the augmentation of
    epoch ``e`` then do not depend on whether the run was resumed.
    """
    logger = logger or logging.getLogger("pcdet")
    ckpt_save_dir = Path(ckpt_save_dir)
    total_it_each_epoch = len(train_loader)
    if merge_all_iters_to_one_epoch:
        total_it_each_epoch = len(train_loader) // max(total_epochs, 1)
    scaler = torch.amp.GradScaler("cuda", init_scale=optim_cfg.get("LOSS_SCALE_FP16", 2.0**16)) if use_amp else None
    latest_saver = LatestModelSaver(ckpt_save_dir if rank == 0 else None, ckpt_save_time_interval)
    accumulated_iter = start_iter
    dataloader_iter = iter(train_loader) if merge_all_iters_to_one_epoch else None

    epochs = range(start_epoch, total_epochs)
    show_bars = rank == 0 and not use_logger_to_record and len(epochs) > 0
    ebar = tqdm.tqdm(total=len(epochs), desc="epochs", dynamic_ncols=True) if show_bars else None
    try:
        for cur_epoch in epochs:
            done = min(max(accumulated_iter - cur_epoch * total_it_each_epoch, 0), total_it_each_epoch)
            if train_sampler is not None:
                train_sampler.set_epoch(cur_epoch)
            if epoch_seed is not None:
                common_utils.set_random_seed(epoch_seed + cur_epoch)
            if not merge_all_iters_to_one_epoch:
                dataloader_iter = iter(train_loader)
            accumulated_iter = train_one_epoch(
                model,
                optimizer,
                dataloader_iter,
                model_func,
                lr_scheduler,
                accumulated_iter,
                optim_cfg,
                rank,
                total_it_each_epoch - done,
                lr_warmup_scheduler=lr_warmup_scheduler,
                tb_log=tb_log,
                scaler=scaler,
                logger=logger,
                use_logger_to_record=use_logger_to_record,
                logger_iter_interval=logger_iter_interval,
                cur_epoch=cur_epoch,
                total_epochs=total_epochs,
                latest_saver=latest_saver,
                show_gpu_stat=show_gpu_stat,
                leave_pbar=cur_epoch + 1 == total_epochs,
            )
            trained_epoch = cur_epoch + 1
            log_data_issue_totals(train_loader.dataset, logger, f"Data issues up to epoch {trained_epoch} (frames)")
            # The last epoch is always saved: the evaluation after training needs it.
            if rank == 0 and (trained_epoch % max(ckpt_save_interval, 1) == 0 or trained_epoch == total_epochs):
                path = save_checkpoint(
                    checkpoint_state(model, optimizer, trained_epoch, accumulated_iter),
                    ckpt_save_dir / f"{CKPT_PREFIX}{trained_epoch}",
                )
                removed = prune_checkpoints(ckpt_save_dir, max_ckpt_save_num)
                logger.info(
                    f"Saved {path.name}" + (f"; removed {', '.join(p.name for p in removed)}" if removed else "")
                )
            if ebar is not None:
                ebar.update()
    finally:
        if ebar is not None:
            ebar.close()
    return accumulated_iter
