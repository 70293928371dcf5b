"""Evaluate one checkpoint, or every checkpoint of a run as it appears (``--eval_all``).

    cd tools && python test.py --cfg_file cfgs/kitti_models/pointpillar.yaml --ckpt .../ckpt/checkpoint_epoch_80.pth
    bash scripts/dist_test.sh 2 --cfg_file ... --eval_all

Writes ``output/<EXP_GROUP_PATH>/<TAG>/<extra_tag>/eval/epoch_N/<split>/<eval_tag>/result.pkl`` and logs the
KITTI table. A KD config evaluates its student (the ``KD`` block is ignored): a distilled checkpoint is a plain one.
Evaluation runs the fused eval path (batch-norm folded, fused kernels; equal up to float round-off);
``--no_fused_inference`` runs the reference forward instead.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path

import _init_path  # noqa: F401  (repo root on sys.path)
import torch
from eval_utils.eval_utils import eval_single_ckpt, repeat_eval_ckpt
from train_utils.dist_launch import finish_distributed, init_distributed
from train_utils.experiment import (
    ToolError,
    add_fused_inference_flag,
    add_run_args,
    experiment_output_dir,
    load_experiment_config,
    log_run_header,
)

from pcdet.config import cfg
from pcdet.datasets import build_dataloader
from pcdet.models import build_network, default_device
from pcdet.utils import common_utils
from pcdet.utils.cli import run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a 3D detector (OpenPCDet-compatible)")
    add_run_args(parser)
    parser.add_argument("--ckpt", type=str, default=None, help="checkpoint to evaluate")
    parser.add_argument("--pretrained_model", type=str, default=None, help="weights loaded over --ckpt")
    parser.add_argument("--max_waiting_mins", type=int, default=30, help="--eval_all: wait this long for new ckpts")
    parser.add_argument("--start_epoch", type=int, default=0, help="--eval_all: first epoch to evaluate")
    parser.add_argument("--eval_tag", type=str, default="default", help="evaluation sub-directory")
    parser.add_argument("--eval_all", action="store_true", default=False, help="evaluate every checkpoint")
    parser.add_argument("--ckpt_dir", type=str, default=None, help="--eval_all: checkpoint directory")
    parser.add_argument("--save_to_file", action="store_true", default=False, help="write KITTI .txt predictions")
    parser.add_argument("--infer_time", action="store_true", default=False, help="report ms per frame")
    add_fused_inference_flag(parser, "evaluate")
    parser.add_argument(
        "--output_root", type=str, default=None, help="replaces <repo>/output as the root of the output layout"
    )
    parser.add_argument("--debug", action="store_true", help="full tracebacks on the console for input errors")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return parser


def parse_config(argv: list[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.eval_all and args.ckpt is None:
        parser.error("--ckpt is required unless --eval_all is given")
    load_experiment_config(args.cfg_file, args.set_cfgs, cfg)
    return args, cfg


def checkpoint_epoch_id(ckpt: str | None) -> str:
    """The epoch in a checkpoint's file name (last number in it), ``no_number`` when there is none."""
    numbers = re.findall(r"\d+", Path(ckpt).name) if ckpt else []
    return numbers[-1] if numbers else "no_number"


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse_config(argv)
    dist_test, world_size, rank = init_distributed(args.launcher, args.tcp_port, args.local_rank, args.dist_timeout)
    cfg.LOCAL_RANK = rank
    if args.batch_size is None:
        args.batch_size = cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU
    else:
        if args.batch_size % world_size != 0:
            raise ToolError(f"--batch_size {args.batch_size} must be divisible by the {world_size} processes")
        args.batch_size //= world_size

    output_dir = experiment_output_dir(cfg, args.extra_tag, args.output_root)
    split = cfg.DATA_CONFIG.DATA_SPLIT["test"]
    epoch_id = checkpoint_epoch_id(args.ckpt)
    if args.eval_all:
        eval_output_dir = output_dir / "eval" / "eval_all_default"
    else:
        eval_output_dir = output_dir / "eval" / f"epoch_{epoch_id}" / split
    eval_output_dir = eval_output_dir / args.eval_tag
    eval_output_dir.mkdir(parents=True, exist_ok=True)
    log_file = eval_output_dir / f"log_eval_{datetime.datetime.now():%Y%m%d-%H%M%S}.txt"
    logger = common_utils.create_logger(log_file, rank=rank)

    log_run_header(logger, args, cfg, world_size if dist_test else 1)

    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir is not None else output_dir / "ckpt"
    test_set, test_loader, _ = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG,
        class_names=cfg.CLASS_NAMES,
        batch_size=args.batch_size,
        dist=dist_test,
        workers=args.workers,
        logger=logger,
        training=False,
    )
    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=test_set)
    model.to(default_device())
    with torch.no_grad():
        if args.eval_all:
            # Nothing to evaluate is an error here (exit 2): a sweep that did nothing must not look like success.
            repeat_eval_ckpt(
                cfg, model, test_loader, args, eval_output_dir, logger, ckpt_dir, dist_test, nothing_is_error=True
            )
        else:
            eval_single_ckpt(cfg, model, test_loader, args, eval_output_dir, logger, epoch_id, dist_test=dist_test)
    if dist_test:
        finish_distributed()


if __name__ == "__main__":
    run_tool(main, sys.argv[1:])
