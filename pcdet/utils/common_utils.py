"""Small helpers shared by every layer: tensor/numpy bridging, angles, logging, seeding, distributed info."""

from __future__ import annotations

import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def check_numpy_to_torch(x: Any) -> tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)`` so callers can hand back the type they were given."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x).float(), True
    return x, False


def limit_period(val, offset: float = 0.5, period: float = np.pi):
    """Wrap ``val`` into ``[-offset * period, (1 - offset) * period)``; numpy or torch."""
    val, is_numpy = check_numpy_to_torch(val)
    ans = val - torch.floor(val / period + offset) * period
    return ans.numpy() if is_numpy else ans


def rotate_points_along_z(points, angle):
    """Rotate ``points (B, N, 3 + C)`` counter-clockwise about z by ``angle (B,)`` radians."""
    points, is_numpy = check_numpy_to_torch(points)
    angle, _ = check_numpy_to_torch(angle)
    cosa, sina = torch.cos(angle), torch.sin(angle)
    zeros, ones = angle.new_zeros(points.shape[0]), angle.new_ones(points.shape[0])
    rot = torch.stack((cosa, sina, zeros, -sina, cosa, zeros, zeros, zeros, ones), dim=1).view(-1, 3, 3).float()
    rotated = torch.matmul(points[:, :, 0:3], rot)
    rotated = torch.cat((rotated, points[:, :, 3:]), dim=-1)
    return rotated.numpy() if is_numpy else rotated


def mask_points_by_range(points: np.ndarray, limit_range) -> np.ndarray:
    """Boolean mask of points inside the x/y extent of ``limit_range`` (z is not checked, as OpenPCDet)."""
    return (
        (points[:, 0] >= limit_range[0])
        & (points[:, 0] <= limit_range[3])
        & (points[:, 1] >= limit_range[1])
        & (points[:, 1] <= limit_range[4])
    )


def get_voxel_centers(voxel_coords: torch.Tensor, downsample_times, voxel_size, point_cloud_range) -> torch.Tensor:
    """Centres (x, y, z) of voxels given as ``(N, 3) [z, y, x]`` indices on a grid downsampled ``downsample_times``."""
    assert voxel_coords.shape[1] == 3
    centers = voxel_coords[:, [2, 1, 0]].float()
    size = torch.tensor(voxel_size, device=centers.device).float() * downsample_times
    origin = torch.tensor(point_cloud_range[0:3], device=centers.device).float()
    return (centers + 0.5) * size + origin


def drop_info_with_name(info: dict, name: str) -> dict:
    """Copy of an ``annos`` dict without the objects called ``name`` (e.g. DontCare)."""
    keep = [i for i, x in enumerate(info["name"]) if x != name]
    return {key: info[key][keep] for key in info}


def keep_arrays_by_name(gt_names, used_classes) -> np.ndarray:
    return np.array([i for i, x in enumerate(gt_names) if x in used_classes], dtype=np.int64)


def create_logger(log_file: str | os.PathLike | None = None, rank: int = 0, log_level=logging.INFO) -> logging.Logger:
    """Console (+ optional file) logger; non-zero ranks only log errors so output is not duplicated."""
    logger = logging.getLogger("pcdet")
    logger.setLevel(log_level if rank == 0 else logging.ERROR)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s  %(levelname)5s  %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(formatter)
    logger.addHandler(console)
    if log_file is not None and rank == 0:
        file_handler = logging.FileHandler(filename=str(log_file))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def worker_init_fn(worker_id: int, seed: int = 666) -> None:
    """Give each data-loader worker its own reproducible numpy/random stream."""
    if seed is not None:
        random.seed(seed + worker_id)
        np.random.seed(seed + worker_id)
        torch.manual_seed(seed + worker_id)


def get_dist_info(return_gpu_per_machine: bool = False):
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    if return_gpu_per_machine:
        return rank, world_size, max(torch.cuda.device_count(), 1)
    return rank, world_size


def merge_results_dist(result_part: list, size: int, tmpdir: str | os.PathLike | None = None) -> list | None:
    """Gather per-rank result lists on rank 0, restoring the sampler's interleaved order, trimmed to ``size``.

    ``tmpdir`` is accepted for OpenPCDet compatibility; results travel through ``all_gather_object`` instead.
    """
    rank, world_size = get_dist_info()
    if world_size == 1:
        return list(result_part)[:size]
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, list(result_part))
    if rank != 0:
        return None
    ordered = []
    for items in zip(*gathered, strict=False):
        ordered.extend(items)
    # Ranks may hold one item more than others; zip stops at the shortest, so append the tails.
    shortest = min(len(g) for g in gathered)
    for g in gathered:
        ordered.extend(g[shortest:])
    return ordered[:size]


class LoggerPicklingMixin:
    """For objects holding ``self.logger`` that DataLoader workers receive by pickling: loggers (their handlers hold
    locks and streams) are dropped on the way and replaced by the ``pcdet`` logger on arrival."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["logger"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        state["logger"] = logging.getLogger("pcdet")
        self.__dict__.update(state)


class AverageMeter:
    """Running average of a scalar, as printed in training logs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def dump_pickle(obj: Any, path: str | os.PathLike) -> None:
    """Pickle ``obj`` atomically (temp file + fsync + rename): a reader never sees half a file."""
    from .checkpoint_io import atomic_write_bytes

    atomic_write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), Path(path))
