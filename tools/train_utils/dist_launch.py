"""Process-group setup for ``--launcher pytorch`` (torchrun) and ``--launcher slurm``.

The backend follows the device: NCCL when CUDA is available, gloo otherwise, so the same commands run multi-process
on a CPU-only machine.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

# How long a collective waits for a missing peer before raising (a rank that died or hangs). Generous by default:
# rank 0 alone evaluates and saves checkpoints while the others wait in the next collective.
DEFAULT_TIMEOUT_S = 1800.0


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _bind_device(local_rank: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def init_dist_pytorch(
    tcp_port: int, local_rank: int, backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[int, int]:
    """Join the group torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.

    Without torchrun's variables this becomes a one-process group on ``127.0.0.1:tcp_port``. Returns
    ``(world_size, rank)``. A collective that waits longer than ``timeout_s`` for a peer raises instead of hanging.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(tcp_port))
    os.environ.setdefault("RANK", str(local_rank))
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    _bind_device(local_rank)
    dist.init_process_group(
        backend=backend or default_backend(), init_method="env://", timeout=timedelta(seconds=timeout_s)
    )
    return dist.get_world_size(), dist.get_rank()


def _slurm_master_addr(node_list: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", node_list], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"--launcher slurm: cannot resolve the first host of SLURM_NODELIST={node_list!r} with scontrol ({exc}); "
            "set MASTER_ADDR yourself"
        ) from exc
    return out.split()[0]


def init_dist_slurm(
    tcp_port: int, local_rank: int, backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[int, int]:
    """One process per SLURM task (``srun``); rank and world size come from SLURM_PROCID / SLURM_NTASKS."""
    try:
        rank = int(os.environ["SLURM_PROCID"])
        world_size = int(os.environ["SLURM_NTASKS"])
    except KeyError as exc:
        missing = exc.args[0]
        raise RuntimeError(f"--launcher slurm needs {missing} in the environment (start the job with srun)") from exc
    local_rank = int(os.environ.get("SLURM_LOCALID", local_rank))
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = _slurm_master_addr(os.environ["SLURM_NODELIST"])
    os.environ.setdefault("MASTER_PORT", str(tcp_port))
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(local_rank)
    _bind_device(local_rank)
    dist.init_process_group(
        backend=backend or default_backend(), init_method="env://", timeout=timedelta(seconds=timeout_s)
    )
    return dist.get_world_size(), dist.get_rank()


LAUNCHERS: dict[str, Callable[..., tuple[int, int]]] = {"pytorch": init_dist_pytorch, "slurm": init_dist_slurm}


def init_distributed(
    launcher: str, tcp_port: int, local_rank: int, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[bool, int, int]:
    """``(distributed, world_size, rank)`` for ``--launcher``; ``none`` is a single process. ``timeout_s`` bounds
    every collective (``--dist_timeout``)."""
    if launcher == "none":
        return False, 1, 0
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher '{launcher}'; use none, {', '.join(LAUNCHERS)}")
    if not timeout_s > 0:
        raise ValueError(f"--dist_timeout must be a positive number of seconds, got {timeout_s}")
    world_size, rank = LAUNCHERS[launcher](tcp_port, local_rank, timeout_s=timeout_s)
    return True, world_size, rank


def finish_distributed() -> None:
    """Leave the process group together: every rank waits for the others, then destroys its group. A rank that tore
    its gloo group down while rank 0 was still saving a checkpoint once aborted at exit (std::terminate) in CI."""
    dist.barrier()
    dist.destroy_process_group()
