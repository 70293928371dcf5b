"""What train.py, test.py and demo.py share: loading the experiment config and laying out its output directory.
Their input errors become one ``error: ...`` line through :func:`pcdet.utils.cli.run_tool`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from easydict import EasyDict

from pcdet.config import cfg_from_list, cfg_from_yaml_file, log_config_to_file
from pcdet.utils.cli import InputError

from .dist_launch import DEFAULT_TIMEOUT_S


class ToolError(InputError, RuntimeError):
    """A run that cannot do what it was asked (nothing to evaluate, flags that do not fit together)."""


def default_workers() -> int:
    """``--workers`` default: OpenPCDet's 4, but never more processes than the machine has cores."""
    return min(4, os.cpu_count() or 1)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The arguments train.py and test.py share: the experiment and its data loading, then how it is launched
    (single process, torchrun or slurm), each as OpenPCDet's tools spell it."""
    parser.add_argument("--cfg_file", type=str, required=True, help="experiment config")
    parser.add_argument("--batch_size", type=int, default=None, help="total batch size over all processes")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="data-loader workers per process (default: min(4, cores))",
    )
    parser.add_argument("--extra_tag", type=str, default="default", help="experiment sub-directory")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--tcp_port", type=int, default=18888, help="rendezvous port when not set by torchrun")
    parser.add_argument(
        "--dist_timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds a collective waits for a lost peer"
    )
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=0)


def add_fused_inference_flag(parser: argparse.ArgumentParser, what: str = "inference") -> None:
    """``--no_fused_inference``: the one switch back to the reference eval forward, worded alike in every tool."""
    parser.add_argument(
        "--no_fused_inference",
        action="store_true",
        default=False,
        help=f"{what} on the reference eval forward. By default it runs the fused eval path "
        "(batch-norm folded into the convolutions, conv+ReLU fused, one-pass PFN and box decoding where a module "
        "has one): faster, equal up to float round-off, enabled only for the evaluation",
    )


def exp_group_path(cfg_file: str | os.PathLike) -> str:
    """The config's directory below ``cfgs/`` (``cfgs/kitti_models/x.yaml`` → ``kitti_models``).

    A config outside any ``cfgs/`` directory is grouped by the name of the directory that holds it.
    """
    parts = Path(os.path.abspath(cfg_file)).parts[:-1]
    if "cfgs" in parts:
        last = len(parts) - 1 - parts[::-1].index("cfgs")
        return "/".join(parts[last + 1 :])
    return parts[-1] if parts else ""


def load_experiment_config(cfg_file: str, set_cfgs: list[str] | None, config: EasyDict) -> EasyDict:
    """Load ``cfg_file`` into ``config``, name the experiment (``TAG``, ``EXP_GROUP_PATH``), apply ``--set``."""
    cfg_from_yaml_file(cfg_file, config)
    config.TAG = Path(cfg_file).stem
    config.EXP_GROUP_PATH = exp_group_path(cfg_file)
    if set_cfgs:
        cfg_from_list(set_cfgs, config)
    return config


def experiment_output_dir(config: EasyDict, extra_tag: str, output_root: str | os.PathLike | None = None) -> Path:
    """``<output_root>/<EXP_GROUP_PATH>/<TAG>/<extra_tag>``, with ``output_root`` defaulting to ``ROOT_DIR/output``."""
    root = Path(output_root) if output_root is not None else Path(config.ROOT_DIR) / "output"
    return root / config.EXP_GROUP_PATH / config.TAG / extra_tag


def log_run_header(logger: logging.Logger, args, config: EasyDict, world_size: int) -> None:
    """What every train/test log starts with: the command, devices, arguments and the full config."""
    logger.info("**********************Start logging**********************")
    logger.info("Command: " + " ".join([sys.executable, *sys.argv]))
    logger.info(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'ALL')}")
    if world_size > 1:
        logger.info(f"Total batch size: {world_size * args.batch_size} ({world_size} processes)")
    for key, val in vars(args).items():
        logger.info(f"{key:<24} {val}")
    log_config_to_file(config, logger=logger)
