"""Batch-1 inference latency of the PointPillars teacher against its 4x student, timed interleaved.

Run from the repository root (both grids, both candidate regimes, 2 rounds over 6 frames):

    OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/infer_latency.py
    .venv/bin/python benchmarks/infer_latency.py --grid synthetic --regime busy --profile 3

A frame is timed from its network-ready tensors to the prediction dicts (VFE, scatter, BEV backbone, dense head,
box decoding, score threshold, NMS), as ``tools/eval_utils`` times it. The teacher and the student run
alternately on the same frame, so a busy machine slows both alike and the ratio of their medians stays
comparable. Two clocks: wall time, and the CPU time of the calling thread (``time.thread_time``), which with one
torch thread is all the work and does not count the time other processes hold the core — on a shared machine it
is the steadier measure of the latency an idle core would give. Data loading (reading the ``.bin``, range crop,
voxelisation) is timed separately, per frame.

Grids: ``kitti`` = pointpillar.yaml / pointpillar_4x.yaml (432 x 496 pillars) on the real KITTI frames in
``../shared/data/kitti_real`` when present, else on the synthetic frames; ``synthetic`` =
pointpillar_synthetic.yaml / pointpillar_4x_synthetic.yaml (128 x 128) on synthetic frames.

Regimes (random weights, fixed seed): ``busy`` sets the classifier bias to 0, so every anchor scores ~0.5 and the
full ``NMS_PRE_MAXSIZE`` (4096) candidates reach NMS (the worst case); ``prior`` keeps the 0.01 prior bias, so no
box passes the score threshold (the network alone, plus decoding).

Paths: ``reference`` is the eval forward of ``--no_fused_inference``; ``fused`` is the same model after
``model_utils.fused_inference.enable_fused_inference`` (batch-norm folded, channels-last BEV maps, a numba PFN and
box decoder; what test.py / demo.py run by default). ``fused_plain_deconv`` is ``fused`` with the transposed deblocks
as a plain transposed conv followed by an in-place ReLU instead of oneDNN's deconv with the ReLU fused (the A/B of
that one change). All models of the chosen paths run interleaved frame by frame, so the paths share a run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import os
import pstats
import statistics
import time
from pathlib import Path

import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.dataset import DatasetTemplate
from pcdet.models import build_network, load_data_to_gpu
from pcdet.models.model_utils import fused_inference
from pcdet.models.model_utils.fused_inference import enable_fused_inference
from pcdet.utils.point_cloud_io import load_points_bin

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["reference", "fused", "fused_plain_deconv"]
GRIDS = {
    "kitti": ("cfgs/kitti_models/pointpillar.yaml", "cfgs/kitti_models/pointpillar_4x.yaml"),
    "synthetic": ("cfgs/kitti_models/pointpillar_synthetic.yaml", "cfgs/kitti_models/pointpillar_4x_synthetic.yaml"),
}
REAL_KITTI = ROOT.parent / "shared" / "data" / "kitti_real" / "training" / "velodyne"


def load_cfg(cfg_file: str) -> EasyDict:
    cwd = os.getcwd()
    os.chdir(ROOT / "tools")  # _BASE_CONFIG_ paths are relative to tools/
    try:
        return cfg_from_yaml_file(cfg_file, EasyDict())
    finally:
        os.chdir(cwd)


def frame_files(grid: str, synthetic_root: Path, kitti_root: Path, count: int) -> list[Path]:
    if grid == "kitti" and kitti_root.is_dir():
        files = sorted(kitti_root.glob("*.bin"))
    else:
        files = sorted((synthetic_root / "training" / "velodyne").glob("*.bin"))
    if not files:
        raise SystemExit(f"no frames for the {grid} grid (looked in {kitti_root} and {synthetic_root})")
    return files[:count]


def prepare_batches(cfg: EasyDict, files: list[Path]) -> tuple[DatasetTemplate, list[dict], list[float]]:
    """Each frame through the config's test-time pipeline (range crop, voxelisation) into a batch of one."""
    dataset = DatasetTemplate(dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, training=False)
    batches, load_s = [], []
    for path in files:
        start = time.perf_counter()
        sample = dataset.prepare_data({"points": load_points_bin(path, num_features=4), "frame_id": path.stem})
        batches.append(dataset.collate_batch([sample]))
        load_s.append(time.perf_counter() - start)
    return dataset, batches, load_s


def build_model(cfg: EasyDict, dataset: DatasetTemplate, regime: str, path: str = "reference") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset).eval()
    if regime == "busy":
        with torch.no_grad():
            model.dense_head.conv_cls.bias.zero_()
    return enable_fused_inference(model, path.startswith("fused"))


@contextlib.contextmanager
def deconv_relu_op(path: str):
    """For ``fused_plain_deconv``, hide oneDNN's fused deconv + ReLU for the call, so that the folded transposed
    deblocks fall back to ``conv_transpose2d`` + ``relu_`` (the form before that change); other paths unchanged."""
    saved = fused_inference._DECONV_RELU
    if path == "fused_plain_deconv":
        fused_inference._DECONV_RELU = None
    try:
        yield
    finally:
        fused_inference._DECONV_RELU = saved


@torch.no_grad()
def run(model: torch.nn.Module, batch: dict) -> tuple[float, float, list[dict]]:
    """Wall and thread-CPU seconds from network-ready tensors to prediction dicts, and the predictions."""
    batch = load_data_to_gpu(copy.copy(batch), device="cpu")
    start, start_cpu = time.perf_counter(), time.thread_time()
    pred_dicts, _ = model(batch)
    return time.perf_counter() - start, time.thread_time() - start_cpu, pred_dicts


@torch.no_grad()
def stage_times(model: torch.nn.Module, batch: dict) -> dict[str, float]:
    """Thread-CPU seconds per module and for post-processing (the calls of ``SingleStageDetector.forward`` in eval)."""
    batch = load_data_to_gpu(copy.copy(batch), device="cpu")
    times = {}
    for module in model.module_list:
        start = time.thread_time()
        batch = module(batch)
        times[type(module).__name__] = time.thread_time() - start
    start = time.thread_time()
    model.post_processing(batch)
    times["post_processing"] = time.thread_time() - start
    return times


def bench_grid(grid: str, regime: str, args: argparse.Namespace) -> dict:
    teacher_cfg, student_cfg = (load_cfg(c) for c in GRIDS[grid])
    files = frame_files(grid, args.synthetic_root, args.kitti_root, args.frames)
    dataset, batches, load_s = prepare_batches(teacher_cfg, files)
    models, path_of = {}, {}
    for path in args.paths:
        models[f"{path}_teacher"] = build_model(teacher_cfg, dataset, regime, path)
        models[f"{path}_student"] = build_model(student_cfg, dataset, regime, path)
        path_of[f"{path}_teacher"] = path_of[f"{path}_student"] = path
    for name, model in models.items():  # warm-up: lazy initialisation, allocator, numba kernels
        with deconv_relu_op(path_of[name]):
            run(model, batches[0])
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    stages: dict[str, list[dict]] = {name: [] for name in models}
    candidates = 0
    for _ in range(args.rounds):
        for batch in batches:
            for name, model in models.items():
                with deconv_relu_op(path_of[name]):
                    seconds, cpu_seconds, preds = run(model, batch)
                    wall[name].append(seconds)
                    cpu[name].append(cpu_seconds)
                    if args.stages:
                        stages[name].append(stage_times(model, batch))
            candidates = max(candidates, len(preds[0]["pred_scores"]))
    row = {"grid": grid, "regime": regime, "frames": len(files), "load_ms": 1000 * statistics.median(load_s)}
    for name in models:
        row[f"{name}_ms"] = 1000 * statistics.median(wall[name])
        row[f"{name}_cpu_ms"] = 1000 * statistics.median(cpu[name])
        if args.stages:
            row[f"{name}_stages"] = {k: 1000 * statistics.median(s[k] for s in stages[name]) for k in stages[name][0]}
    for path in args.paths:
        row[f"{path}_ratio"] = row[f"{path}_teacher_ms"] / row[f"{path}_student_ms"]
        row[f"{path}_cpu_ratio"] = row[f"{path}_teacher_cpu_ms"] / row[f"{path}_student_cpu_ms"]
    row["kept"] = candidates
    if args.profile:
        with deconv_relu_op(args.paths[-1]):
            profile_student(models[f"{args.paths[-1]}_student"], batches, args.profile)
    return row


def profile_student(model: torch.nn.Module, batches: list[dict], frames: int) -> None:
    profile = cProfile.Profile()
    profile.enable()
    for batch in batches[:frames]:
        run(model, batch)
    profile.disable()
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--regime", nargs="+", default=["busy", "prior"], choices=["busy", "prior"])
    parser.add_argument("--synthetic_root", type=Path, default=ROOT / "data" / "synthetic_kitti")
    parser.add_argument("--kitti_root", type=Path, default=REAL_KITTI, help="velodyne/ of real KITTI frames")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--stages", action="store_true", help="also time each module (one more pass per frame)")
    parser.add_argument("--profile", type=int, default=0, help="cProfile the (last path's) student on this many frames")
    parser.add_argument("--paths", nargs="+", default=["reference", "fused"], choices=PATHS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for grid in args.grid:
        for regime in args.regime:
            row = bench_grid(grid, regime, args)
            rows.append(row)
            for path in args.paths:
                print(
                    f"{grid}/{regime}/{path}: wall teacher {row[f'{path}_teacher_ms']:.1f} / student "
                    f"{row[f'{path}_student_ms']:.1f} ms = {row[f'{path}_ratio']:.2f}x; CPU "
                    f"{row[f'{path}_teacher_cpu_ms']:.1f} / {row[f'{path}_student_cpu_ms']:.1f} ms = "
                    f"{row[f'{path}_cpu_ratio']:.2f}x (max kept {row['kept']}, data {row['load_ms']:.1f} ms/frame)",
                    flush=True,
                )
            for name in models_of(args) if args.stages else ():
                parts = ", ".join(f"{k} {v:.1f}" for k, v in row[f"{name}_stages"].items())
                print(f"    {name} stages (CPU ms): {parts}")

    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), batch 1, medians over {args.rounds} rounds")
    print(
        "| grid | regime | path | teacher ms (wall / CPU) | student ms (wall / CPU) | ratio wall | ratio CPU | "
        "data ms/frame |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        for p in args.paths:
            print(
                f"| {r['grid']} | {r['regime']} | {p} | {r[f'{p}_teacher_ms']:.1f} / {r[f'{p}_teacher_cpu_ms']:.1f} | "
                f"{r[f'{p}_student_ms']:.1f} / {r[f'{p}_student_cpu_ms']:.1f} | {r[f'{p}_ratio']:.2f} | "
                f"{r[f'{p}_cpu_ratio']:.2f} | {r['load_ms']:.1f} |"
            )


def models_of(args: argparse.Namespace) -> list[str]:
    return [f"{path}_{role}" for path in args.paths for role in ("teacher", "student")]


if __name__ == "__main__":
    main()
