"""Evaluation of one checkpoint (``eval_one_epoch``) and of a growing checkpoint directory (``repeat_eval_ckpt``)."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist
import tqdm
from tensorboardX import SummaryWriter
from train_utils.experiment import ToolError

from pcdet.datasets.data_issues import log_data_issue_totals
from pcdet.models import load_data_to_gpu
from pcdet.models.model_utils.fused_inference import fused_inference_scope
from pcdet.utils import common_utils
from pcdet.utils.checkpoint_io import atomic_write_bytes

_CKPT_RE = re.compile(r"^checkpoint_epoch_(\d+)\.pth$")


def _recall_thresholds(cfg) -> list[float]:
    return list(cfg.MODEL.POST_PROCESSING.get("RECALL_THRESH_LIST", []))


def statistics_info(cfg, ret_dict: dict, metric: dict, disp_dict: dict) -> None:
    """Accumulate the detector's per-batch recall counts (``roi_<t>``, ``rcnn_<t>``, ``gt``) into ``metric``."""
    thresholds = _recall_thresholds(cfg)
    for thresh in thresholds:
        metric[f"recall_roi_{thresh}"] += ret_dict.get(f"roi_{thresh}", 0)
        metric[f"recall_rcnn_{thresh}"] += ret_dict.get(f"rcnn_{thresh}", 0)
    metric["gt_num"] += ret_dict.get("gt", 0)
    if thresholds:
        low = thresholds[0]
        disp_dict[f"recall_{low}"] = (
            f"({metric[f'recall_roi_{low}']}, {metric[f'recall_rcnn_{low}']}) / {metric['gt_num']}"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_one_epoch(
    cfg,
    args,
    model: torch.nn.Module,
    dataloader,
    epoch_id,
    logger: logging.Logger,
    dist_test: bool = False,
    result_dir: str | os.PathLike | None = None,
) -> dict:
    """Predict the whole split, save ``result.pkl`` and log recall and the dataset's metrics (KITTI table).

    Under ``dist_test`` each rank predicts its shard of the sampler and rank 0 gathers them back into dataset order,
    every frame exactly once. Returns the metrics (recall and the dataset's result dict) on rank 0, ``{}`` elsewhere.
    ``args`` supplies ``save_to_file`` (KITTI .txt files under ``final_result/data``), ``infer_time`` and
    ``no_fused_inference``. Without the latter the model runs its fused eval path (batch-norm folded into the
    convolutions, fused kernels; equal to the reference forward up to float round-off) for this call only: the
    flags are restored afterwards, so a model that trains again (or serves as a KD teacher) is never left fused.
    """
    result_dir = Path(result_dir if result_dir is not None else ".")
    result_dir.mkdir(parents=True, exist_ok=True)
    save_to_file = bool(getattr(args, "save_to_file", False))
    infer_time = bool(getattr(args, "infer_time", False))
    fused = not bool(getattr(args, "no_fused_inference", False))
    final_output_dir = result_dir / "final_result" / "data" if save_to_file else None
    if final_output_dir is not None:
        final_output_dir.mkdir(parents=True, exist_ok=True)

    metric: dict = {"gt_num": 0}
    for thresh in _recall_thresholds(cfg):
        metric[f"recall_roi_{thresh}"] = 0
        metric[f"recall_rcnn_{thresh}"] = 0

    dataset = dataloader.dataset
    class_names = dataset.class_names
    rank, world_size = common_utils.get_dist_info()
    device = next(model.parameters()).device
    det_annos: list[dict] = []
    forward_ms: list[float] = []
    frames_timed = 0

    issues_before = dataset.data_issues.totals() if hasattr(dataset, "data_issues") else None
    logger.info(f"*************** EPOCH {epoch_id} EVALUATION *****************")
    path_name = "fused eval path" if fused else "reference eval path (--no_fused_inference)"
    logger.info(f"Inference path: {path_name}")
    model.eval()
    pbar = tqdm.tqdm(total=len(dataloader), leave=True, desc="eval", dynamic_ncols=True) if rank == 0 else None
    start = time.time()
    # The bar is closed however the loop ends (an error message then starts on its own line), and the scope gives
    # the model back with the fused-inference flags it came with.
    with fused_inference_scope(model, fused):
        try:
            for i, batch_dict in enumerate(dataloader):
                load_data_to_gpu(batch_dict, device=device)
                _synchronize(device)
                t0 = time.perf_counter()
                with torch.no_grad():
                    pred_dicts, ret_dict = model(batch_dict)
                _synchronize(device)
                # The first batch pays for lazy initialisation (kernels, allocator, folding): left out if not alone.
                if i > 0 or len(dataloader) == 1:
                    forward_ms.append((time.perf_counter() - t0) * 1000.0)
                    frames_timed += batch_dict["batch_size"]
                disp_dict: dict = {}
                statistics_info(cfg, ret_dict, metric, disp_dict)
                det_annos += dataset.generate_prediction_dicts(
                    batch_dict, pred_dicts, class_names, output_path=final_output_dir
                )
                if pbar is not None:
                    if infer_time and frames_timed:
                        disp_dict["infer_time"] = f"{sum(forward_ms) / frames_timed:.1f}ms"
                    pbar.set_postfix(disp_dict)
                    pbar.update()
        finally:
            if pbar is not None:
                pbar.close()

    if dist_test:
        det_annos = common_utils.merge_results_dist(det_annos, len(dataset), tmpdir=result_dir / "tmpdir")
        metrics = common_utils.merge_results_dist([metric], world_size, tmpdir=result_dir / "tmpdir")
        timing = common_utils.merge_results_dist([(sum(forward_ms), frames_timed)], world_size)
    log_data_issue_totals(dataset, logger, "Data issues in this evaluation (frames)", since=issues_before)
    logger.info(f"*************** Performance of EPOCH {epoch_id} *****************")
    elapsed = time.time() - start
    logger.info(f"Generate label finished (sec_per_example: {elapsed / max(len(dataset), 1):.4f} second).")
    if rank != 0:
        return {}

    if dist_test:
        metric = {key: sum(m[key] for m in metrics) for key in metrics[0]}
        total_ms, frames_timed = sum(t[0] for t in timing), sum(t[1] for t in timing)
    else:
        total_ms = sum(forward_ms)
    ret_dict: dict = {}
    if infer_time:
        mean_ms = total_ms / max(frames_timed, 1)
        logger.info(
            f"Inference time: {mean_ms:.2f} ms/frame (mean over {frames_timed} frames, model forward only, {path_name})"
        )
        ret_dict["infer_time_ms"] = mean_ms

    gt_num = metric["gt_num"]
    for thresh in _recall_thresholds(cfg):
        roi = metric[f"recall_roi_{thresh}"] / max(gt_num, 1)
        rcnn = metric[f"recall_rcnn_{thresh}"] / max(gt_num, 1)
        logger.info(f"recall_roi_{thresh}: {roi:f}")
        logger.info(f"recall_rcnn_{thresh}: {rcnn:f}")
        ret_dict[f"recall/roi_{thresh}"] = roi
        ret_dict[f"recall/rcnn_{thresh}"] = rcnn

    total_pred = sum(len(anno["name"]) for anno in det_annos)
    logger.info(
        f"Average predicted number of objects({len(det_annos)} samples): {total_pred / max(1, len(det_annos)):.3f}"
    )
    common_utils.dump_pickle(det_annos, result_dir / "result.pkl")

    result_str, result_dict = dataset.evaluation(
        det_annos,
        class_names,
        eval_metric=cfg.MODEL.POST_PROCESSING.get("EVAL_METRIC", "kitti"),
        output_path=final_output_dir,
    )
    logger.info(result_str)
    ret_dict.update(result_dict)
    # Machine-readable copy of every metric (benchmarks and the main job read it instead of parsing the log).
    metrics_json = json.dumps({k: float(v) for k, v in ret_dict.items() if isinstance(v, (int, float))}, indent=1)
    atomic_write_bytes(metrics_json.encode(), result_dir / "result_metrics.json")
    logger.info(f"Result is saved to {result_dir}")
    logger.info("****************Evaluation done.*****************")
    return ret_dict


# ------------------------------------------------------------------------------------------- checkpoint sweeps
def _evaluated_ids(record_file: Path) -> set[str]:
    if not record_file.is_file():
        return set()
    return {line.strip() for line in record_file.read_text().splitlines() if line.strip()}


def get_no_evaluated_ckpt(
    ckpt_dir: str | os.PathLike, ckpt_record_file: str | os.PathLike, start_epoch: int
) -> tuple[int, Path | None]:
    """The lowest-epoch ``checkpoint_epoch_N.pth`` with N >= ``start_epoch`` not yet listed in the record file,
    as ``(N, path)``; ``(-1, None)`` when there is none."""
    done = _evaluated_ids(Path(ckpt_record_file))
    candidates = []
    for path in Path(ckpt_dir).glob("checkpoint_epoch_*.pth"):
        match = _CKPT_RE.match(path.name)
        if match and int(match.group(1)) >= start_epoch and match.group(1) not in done:
            candidates.append((int(match.group(1)), path))
    return min(candidates) if candidates else (-1, None)


def _broadcast(obj, dist_test: bool):
    """Rank 0's value on every rank: all ranks must agree on which checkpoint to evaluate next."""
    if not dist_test:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _log_metrics(tb_log: SummaryWriter | None, metrics: dict, step: int) -> None:
    if tb_log is None:
        return
    for key, val in metrics.items():
        if isinstance(val, int | float) or (torch.is_tensor(val) and val.numel() == 1):
            tb_log.add_scalar(key, float(val), step)
    tb_log.flush()


def eval_single_ckpt(cfg, model, test_loader, args, eval_output_dir, logger, epoch_id, dist_test: bool = False) -> dict:
    """Load ``args.ckpt`` (strictly; combined non-strictly with ``args.pretrained_model`` when given) and evaluate."""
    pretrained = getattr(args, "pretrained_model", None)
    if pretrained:
        model.load_params_from_file(args.ckpt, logger=logger, to_cpu=dist_test, pre_trained_path=pretrained)
    else:
        model.load_params_strict(args.ckpt, logger=logger, to_cpu=dist_test)
    return eval_one_epoch(cfg, args, model, test_loader, epoch_id, logger, dist_test, result_dir=eval_output_dir)


def repeat_eval_ckpt(
    cfg,
    model,
    test_loader,
    args,
    eval_output_dir,
    logger,
    ckpt_dir,
    dist_test: bool = False,
    poll_seconds: float = 30.0,
    nothing_is_error: bool = False,
) -> list:
    """Evaluate every checkpoint in ``ckpt_dir`` from ``args.start_epoch`` on, in epoch order, as they appear.

    Evaluated epochs are appended to ``eval_list_<split>.txt`` in ``eval_output_dir`` (a restarted sweep skips
    them) and their metrics go to tensorboard at step = epoch. Once nothing is left, new checkpoints are awaited
    for up to ``args.max_waiting_mins`` minutes (0: stop at once). Returns the evaluated epoch ids. A sweep that
    evaluates nothing says why in one line: logged, or raised as ``ToolError`` with ``nothing_is_error``.
    """
    eval_output_dir = Path(eval_output_dir)
    split = cfg.DATA_CONFIG.DATA_SPLIT["test"]
    record_file = eval_output_dir / f"eval_list_{split}.txt"
    rank, _ = common_utils.get_dist_info()
    tb_log = None
    if rank == 0:
        eval_output_dir.mkdir(parents=True, exist_ok=True)
        record_file.touch()
        tb_log = SummaryWriter(log_dir=str(eval_output_dir / f"tensorboard_{split}"))

    evaluated = []
    waited = 0.0
    while True:
        choice = get_no_evaluated_ckpt(ckpt_dir, record_file, args.start_epoch) if rank == 0 else None
        epoch_id, ckpt = _broadcast(choice, dist_test)
        if ckpt is None:
            if waited >= args.max_waiting_mins * 60:
                break
            if rank == 0:
                left = args.max_waiting_mins - waited / 60
                logger.info(
                    f"Wait {poll_seconds:.0f} seconds for the next checkpoint_epoch_*.pth (epoch >= "
                    f"{args.start_epoch}) in {ckpt_dir} ({left:.1f} of {args.max_waiting_mins} min left) ..."
                )
            time.sleep(poll_seconds)
            waited += poll_seconds
            continue
        waited = 0.0
        model.load_params_strict(str(ckpt), logger=logger, to_cpu=dist_test)
        result_dir = eval_output_dir / f"epoch_{epoch_id}" / split
        metrics = eval_one_epoch(cfg, args, model, test_loader, epoch_id, logger, dist_test, result_dir)
        if rank == 0:
            _log_metrics(tb_log, metrics, epoch_id)
            with open(record_file, "a") as f:
                f.write(f"{epoch_id}\n")
            logger.info(f"Epoch {epoch_id} has been evaluated")
        evaluated.append(epoch_id)
    if tb_log is not None:
        tb_log.close()
    if not evaluated:
        message = nothing_to_evaluate(ckpt_dir, record_file, args.start_epoch, args.max_waiting_mins)
        if nothing_is_error:
            raise ToolError(message)
        logger.info(message)
    return evaluated


def nothing_to_evaluate(ckpt_dir: str | os.PathLike, record_file: Path, start_epoch: int, waited_mins: float) -> str:
    """Why a sweep evaluated nothing: no such directory, no epoch checkpoint at all, or all of them excluded."""
    ckpt_dir = Path(ckpt_dir)
    waited = f" (waited {waited_mins} min)" if waited_mins else ""
    if not ckpt_dir.is_dir():
        return f"Nothing evaluated: checkpoint directory {ckpt_dir} does not exist{waited}"
    epochs = sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name)))
    if not epochs:
        return f"Nothing evaluated: no checkpoint_epoch_*.pth in {ckpt_dir}{waited}"
    done = sorted(_evaluated_ids(record_file) & {str(e) for e in epochs}, key=int)
    return (
        f"Nothing evaluated: {ckpt_dir} holds epochs {', '.join(map(str, epochs))}; --start_epoch is {start_epoch}"
        + (f" and {', '.join(done)} are already listed in {record_file}" if done else "")
        + waited
    )
