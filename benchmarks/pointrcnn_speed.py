"""CPU training and inference speed of PointRCNN (teacher and students) on the synthetic set, per stage.

Run from the repository root (one torch thread; data through each config's own pipeline, loader workers 0):

    .venv/bin/python benchmarks/pointrcnn_speed.py --data_path data/synthetic_kitti
    .venv/bin/python benchmarks/pointrcnn_speed.py --cfg cfgs/kitti_models/pointrcnn_synthetic.yaml --iters 5

Training step = forward (both stages, targets, losses) + backward + gradient clipping + adam_onecycle step.
Inference = eval forward with post-processing, per frame. Reported: medians over ``--iters`` after one warm-up, of
wall time and of this thread's CPU time (what a shared machine distorts least), data loading excluded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from train_speed import Bench, load_cfg  # noqa: E402

from pcdet.models import load_data_to_gpu  # noqa: E402

DEFAULT_CFGS = [
    "cfgs/kitti_models/pointrcnn_synthetic.yaml",
    "cfgs/kitti_models/pointrcnn_8x_synthetic.yaml",
    "cfgs/kitti_models/pointrcnn_16x_synthetic.yaml",
]


def timed(fn) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - start, time.thread_time() - start_cpu


def measure(bench: Bench, iters: int) -> dict:
    def train_step(batch: dict) -> None:
        bench.model.train()
        bench.optimizer.zero_grad(set_to_none=True)
        loss, _, _ = bench.model_func(bench.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bench.model.parameters(), bench.cfg.OPTIMIZATION.GRAD_NORM_CLIP)
        bench.optimizer.step()

    @torch.no_grad()
    def infer_step(batch: dict) -> None:
        bench.model.eval()
        bench.model(load_data_to_gpu(batch, device="cpu"))

    train = [timed(lambda b=bench._next(training=True): train_step(b)) for _ in range(iters + 1)][1:]
    infer = [timed(lambda b=bench._next(training=False): infer_step(b)) for _ in range(iters + 1)][1:]
    return {
        "train_wall": statistics.median(t[0] for t in train),
        "train_cpu": statistics.median(t[1] for t in train),
        "infer_wall": statistics.median(t[0] for t in infer) / bench.batch_size,
        "infer_cpu": statistics.median(t[1] for t in infer) / bench.batch_size,
        "params": sum(p.numel() for p in bench.model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="+", default=DEFAULT_CFGS, help="configs, relative to tools/")
    parser.add_argument("--data_path", type=Path, default=ROOT.parent / "data" / "synthetic_kitti")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, batch {args.batch_size}, median of {args.iters} after 1 warm-up")
    print("| config | params | train step wall s (CPU s) | inference per frame wall s (CPU s) |")
    print("|---|---:|---:|---:|")
    for cfg_file in args.cfg:
        bench = Bench(load_cfg(cfg_file, args.data_path.resolve()), args.batch_size, workers=0)
        r = measure(bench, args.iters)
        print(f"| {Path(cfg_file).stem} | {r['params']:,} | {r['train_wall']:.2f} ({r['train_cpu']:.2f}) "
              f"| {r['infer_wall']:.2f} ({r['infer_cpu']:.2f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
