"""Train a detector, or distil a student when the config has a ``KD`` block.

    cd tools && python train.py --cfg_file cfgs/kitti_models/pointpillar.yaml
    bash scripts/dist_train.sh 2 --cfg_file cfgs/kitti_models/pointpillar.yaml

Output: ``output/<EXP_GROUP_PATH>/<TAG>/<extra_tag>/{ckpt/, tensorboard/, eval/, train_<time>.log}``. Without
``--ckpt`` a run resumes from the newest readable checkpoint in its ``ckpt/``; after training the last
``--num_epochs_to_eval`` checkpoints are evaluated on the test split, on the fused eval path unless
``--no_fused_inference`` (training itself never runs it; the evaluation restores the model's flags afterwards).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
from pathlib import Path

import _init_path  # noqa: F401  (repo root on sys.path)
import torch
from eval_utils.eval_utils import repeat_eval_ckpt
from tensorboardX import SummaryWriter
from train_utils.dist_launch import finish_distributed, init_distributed
from train_utils.experiment import (
    ToolError,
    add_fused_inference_flag,
    add_run_args,
    experiment_output_dir,
    load_experiment_config,
    log_run_header,
)
from train_utils.optimization import build_optimizer, build_scheduler
from train_utils.train_utils import (
    load_training_checkpoint,
    remove_stale_temp_files,
    resume_from_dir,
    train_model,
    unwrap_model,
)

from pcdet.config import cfg
from pcdet.datasets import build_dataloader
from pcdet.models import build_network, default_device, model_fn_decorator
from pcdet.utils import common_utils
from pcdet.utils.cli import run_tool

SEED = 666


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a 3D detector (OpenPCDet-compatible)")
    add_run_args(parser)
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the config's)")
    parser.add_argument("--ckpt", type=str, default=None, help="resume from this checkpoint")
    parser.add_argument("--pretrained_model", type=str, default=None, help="initialise from these weights")
    parser.add_argument("--sync_bn", action="store_true", default=False, help="SyncBatchNorm (CUDA)")
    parser.add_argument("--fix_random_seed", action="store_true", default=False)
    parser.add_argument(
        "--seed", type=int, default=SEED, help="base seed with --fix_random_seed (OpenPCDet's 666); benchmarks vary it"
    )
    parser.add_argument("--ckpt_save_interval", type=int, default=1, help="save a checkpoint every N epochs")
    parser.add_argument("--max_ckpt_save_num", type=int, default=30, help="keep this many epoch checkpoints")
    parser.add_argument("--merge_all_iters_to_one_epoch", action="store_true", default=False)
    parser.add_argument("--max_waiting_mins", type=int, default=0, help="post-training evaluation: wait for ckpts")
    parser.add_argument("--start_epoch", type=int, default=0)
    parser.add_argument("--num_epochs_to_eval", type=int, default=0, help="evaluate the last N epochs after training")
    parser.add_argument(
        "--skip_eval", action="store_true", default=False, help="no evaluation after training (test.py runs separately)"
    )
    parser.add_argument("--save_to_file", action="store_true", default=False, help="write KITTI .txt predictions")
    add_fused_inference_flag(parser, "post-training evaluation")
    parser.add_argument(
        "--use_tqdm_to_record",
        action="store_true",
        default=False,
        help="progress bars instead of the 'Train:' loss/LR lines in the log (OpenPCDet's meaning)",
    )
    parser.add_argument("--logger_iter_interval", type=int, default=50, help="iterations between log lines")
    parser.add_argument("--ckpt_save_time_interval", type=int, default=300, help="seconds between latest_model saves")
    parser.add_argument("--wo_gpu_stat", action="store_true", help="leave GPU memory out of the log lines")
    parser.add_argument("--use_amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--teacher_ckpt", type=str, default=None, help="KD: teacher checkpoint (overrides the config)")
    parser.add_argument(
        "--output_root", type=str, default=None, help="replaces <repo>/output as the root of the output layout"
    )
    parser.add_argument("--debug", action="store_true", help="full tracebacks on the console for input errors")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return parser


def parse_config(argv: list[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    load_experiment_config(args.cfg_file, args.set_cfgs, cfg)
    return args, cfg


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse_config(argv)
    dist_train, world_size, rank = init_distributed(args.launcher, args.tcp_port, args.local_rank, args.dist_timeout)
    cfg.LOCAL_RANK = rank

    if args.batch_size is None:
        args.batch_size = cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU
    else:
        if args.batch_size % world_size != 0:
            raise ToolError(f"--batch_size {args.batch_size} must be divisible by the {world_size} processes")
        args.batch_size //= world_size
    args.epochs = cfg.OPTIMIZATION.NUM_EPOCHS if args.epochs is None else args.epochs
    if args.fix_random_seed:
        common_utils.set_random_seed(args.seed + rank)

    output_dir = experiment_output_dir(cfg, args.extra_tag, args.output_root)
    ckpt_dir = output_dir / "ckpt"
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log_file = output_dir / f"train_{datetime.datetime.now():%Y%m%d-%H%M%S}.log"
    logger = common_utils.create_logger(log_file, rank=rank)

    log_run_header(logger, args, cfg, world_size if dist_train else 1)
    if rank == 0:
        shutil.copy(args.cfg_file, output_dir / Path(args.cfg_file).name)

    device = default_device()
    use_amp = args.use_amp and device.type == "cuda"
    if args.use_amp and not use_amp:
        logger.warning("--use_amp needs CUDA; training in fp32 on CPU")
    tb_log = SummaryWriter(log_dir=str(output_dir / "tensorboard")) if rank == 0 else None

    train_set, train_loader, train_sampler = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG,
        class_names=cfg.CLASS_NAMES,
        batch_size=args.batch_size,
        dist=dist_train,
        workers=args.workers,
        seed=args.seed if args.fix_random_seed else None,
        logger=logger,
        training=True,
        merge_all_iters_to_one_epoch=args.merge_all_iters_to_one_epoch,
        total_epochs=args.epochs,
    )
    if len(train_loader) == 0:
        raise ToolError("the training split is empty: check DATA_CONFIG.DATA_PATH and the info files")

    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=train_set)
    if cfg.get("KD"):
        from pcdet.models.kd import build_distiller

        model = build_distiller(cfg, student=model, dataset=train_set, teacher_ckpt=args.teacher_ckpt, logger=logger)
    elif args.teacher_ckpt:
        raise ToolError("--teacher_ckpt is only meaningful with a config that has a KD block")
    if args.sync_bn:
        if device.type == "cuda" and dist_train:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.info("--sync_bn: not applicable (needs several CUDA processes); using plain BatchNorm")
    model.to(device)

    optimizer = build_optimizer(model, cfg.OPTIMIZATION)
    student = model.student if hasattr(model, "student") else model
    if args.pretrained_model is not None:
        student.load_params_from_file(args.pretrained_model, logger=logger, to_cpu=dist_train)

    if rank == 0:
        remove_stale_temp_files(ckpt_dir, logger)
    if args.ckpt is not None:
        start_iter, start_epoch = load_training_checkpoint(model, optimizer, args.ckpt, logger=logger)
        start_epoch, resumed = max(start_epoch, 0), args.ckpt
    else:
        start_iter, start_epoch, resumed = resume_from_dir(model, optimizer, ckpt_dir, logger=logger)
        if resumed is None:
            logger.info(f"No checkpoint in {ckpt_dir}: training from scratch")
    if start_epoch >= args.epochs:
        logger.info(
            f"Nothing to train: {resumed} is at epoch {start_epoch} and --epochs is {args.epochs} "
            "(raise --epochs to continue, or use another --extra_tag to start a new run)"
        )

    model.train()  # before DDP wraps it; a distiller keeps its teacher in eval mode
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"----------- Model {cfg.MODEL.NAME} created, trainable params: {n_trainable} -----------")
    logger.info(model)
    if dist_train:
        device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    total_iters_each_epoch = len(train_loader)
    if args.merge_all_iters_to_one_epoch:
        total_iters_each_epoch = len(train_loader) // max(args.epochs, 1)
    lr_scheduler, lr_warmup_scheduler = build_scheduler(
        optimizer,
        total_iters_each_epoch=total_iters_each_epoch,
        total_epochs=args.epochs,
        last_epoch=start_iter - 1,
        optim_cfg=cfg.OPTIMIZATION,
    )

    logger.info(f"********** Start training {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag}) **********")
    train_model(
        model,
        optimizer,
        train_loader,
        model_func=model_fn_decorator(),
        lr_scheduler=lr_scheduler,
        optim_cfg=cfg.OPTIMIZATION,
        start_epoch=start_epoch,
        total_epochs=args.epochs,
        start_iter=start_iter,
        rank=rank,
        tb_log=tb_log,
        ckpt_save_dir=ckpt_dir,
        train_sampler=train_sampler,
        lr_warmup_scheduler=lr_warmup_scheduler,
        ckpt_save_interval=args.ckpt_save_interval,
        max_ckpt_save_num=args.max_ckpt_save_num,
        merge_all_iters_to_one_epoch=args.merge_all_iters_to_one_epoch,
        use_amp=use_amp,
        use_logger_to_record=not args.use_tqdm_to_record,
        logger=logger,
        logger_iter_interval=args.logger_iter_interval,
        ckpt_save_time_interval=args.ckpt_save_time_interval,
        show_gpu_stat=not args.wo_gpu_stat,
        epoch_seed=args.seed + rank if args.fix_random_seed else None,
    )
    if tb_log is not None:
        tb_log.close()
    logger.info(f"********** End training {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag}) **********")

    if args.skip_eval:
        if dist_train:
            finish_distributed()
        return
    # A distilled run is evaluated as what it ships: the plain student detector.
    eval_model = unwrap_model(model)
    eval_model = eval_model.student if hasattr(eval_model, "student") else eval_model
    test_set, test_loader, _ = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG,
        class_names=cfg.CLASS_NAMES,
        batch_size=args.batch_size,
        dist=dist_train,
        workers=args.workers,
        logger=logger,
        training=False,
    )
    args.start_epoch = max(args.epochs - args.num_epochs_to_eval, 0)
    logger.info(f"********** Start evaluation {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag}) **********")
    repeat_eval_ckpt(
        cfg, eval_model, test_loader, args, output_dir / "eval" / "eval_with_train", logger, ckpt_dir, dist_train
    )
    logger.info(f"********** End evaluation {cfg.EXP_GROUP_PATH}/{cfg.TAG}({args.extra_tag}) **********")
    if dist_train:
        finish_distributed()


if __name__ == "__main__":
    run_tool(main, sys.argv[1:])
