"""CPU training and inference speed of PointPillars (teacher and 4x student), plus a profile of a training step.

Run from the repository root:

    .venv/bin/python benchmarks/train_speed.py                      # all three configs, batch 4
    .venv/bin/python benchmarks/train_speed.py --profile 8          # + cProfile: top functions by own time
    .venv/bin/python benchmarks/train_speed.py --workers 0 1 2 --threads 1 2   # loader workers x torch threads

Data: frames of the synthetic KITTI-format set (``data/synthetic_kitti``, with infos and gt database), read through
each config's own dataset pipeline. ``pointpillar.yaml`` is KITTI's config: its DATA_PATH is pointed at the
synthetic set, so batches get KITTI's full range (69.12 x 79.36 m, a 432 x 496 pillar grid), FOV cropping, gt
sampling and 16000/40000 voxel caps.

Training iteration = data (augmentation, voxelisation, collation, as the loader delivers it) + forward + target
assignment + losses + backward + gradient clipping + the config's optimizer step (adam_onecycle, built by the tools'
``build_optimizer``). Inference = eval-mode forward with post-processing (sigmoid, score threshold, rotated NMS) on
the test split, with the classifier bias set to 0 so that NMS gets its full ``NMS_PRE_MAXSIZE`` candidates per frame
(the random-weight model's 0.01 prior would pass no box). Medians over ``--iters`` iterations after ``--warmup``.

Compute is reported as wall time and as this thread's CPU time (``time.thread_time``). On a machine other jobs keep
busy, wall time measures the scheduler's share, not the work: at ``nice 19`` beside two ``nice 0`` trainers on two
cores a step gets a few per cent of a core and takes ~30 times its CPU time. With one torch thread the CPU time is
the whole computation (spconv's CPU kernels run on the calling thread) and is the comparable figure.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # the tools' optimizer factory (train_utils), as train.py builds it

from train_utils.optimization import build_optimizer  # noqa: E402

from pcdet.config import cfg_from_yaml_file  # noqa: E402
from pcdet.datasets import build_dataloader  # noqa: E402
from pcdet.models import build_network, load_data_to_gpu, model_fn_decorator  # noqa: E402

DEFAULT_CFGS = [
    "cfgs/kitti_models/pointpillar.yaml",
    "cfgs/kitti_models/pointpillar_synthetic.yaml",
    "cfgs/kitti_models/pointpillar_4x_synthetic.yaml",
]


def load_cfg(cfg_file: str, data_path: Path) -> EasyDict:
    cwd = os.getcwd()
    os.chdir(ROOT / "tools")  # _BASE_CONFIG_ paths are relative to tools/, as for the tools
    try:
        cfg = cfg_from_yaml_file(cfg_file, EasyDict())
    finally:
        os.chdir(cwd)
    cfg.DATA_CONFIG.DATA_PATH = str(data_path)
    return cfg


class Bench:
    """One config: its dataset, model and optimizer; timed training and inference loops."""

    def __init__(self, cfg: EasyDict, batch_size: int, workers: int, seed: int = 0):
        self.cfg = cfg
        self.batch_size = batch_size
        self.workers = workers
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.train_set, self.train_loader, _ = build_dataloader(
            cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size, dist=False, workers=workers, training=True, seed=seed
        )
        self.test_set, self.test_loader, _ = build_dataloader(
            cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size, dist=False, workers=workers, training=False
        )
        self.model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), self.train_set)
        self.optimizer = build_optimizer(self.model, cfg.OPTIMIZATION)
        self.model_func = model_fn_decorator()
        self._train_iter = None
        self._test_iter = None

    @property
    def grid(self) -> str:
        nx, ny, _ = (int(v) for v in self.train_set.grid_size)
        return f"{nx}x{ny}"

    def _next(self, training: bool) -> dict:
        name, loader = ("_train_iter", self.train_loader) if training else ("_test_iter", self.test_loader)
        iterator = getattr(self, name)
        try:
            return next(iterator) if iterator is not None else self._restart(name, loader)
        except StopIteration:
            return self._restart(name, loader)

    def _restart(self, name: str, loader) -> dict:
        iterator = iter(loader)
        setattr(self, name, iterator)
        return next(iterator)

    def train_step(self) -> tuple[float, float, float]:
        """One training iteration; returns (seconds waiting for data, seconds of compute, CPU seconds of compute)."""
        start = time.perf_counter()
        batch = self._next(training=True)
        loaded, loaded_cpu = time.perf_counter(), time.thread_time()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, _, _ = self.model_func(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.OPTIMIZATION.GRAD_NORM_CLIP)
        self.optimizer.step()
        return loaded - start, time.perf_counter() - loaded, time.thread_time() - loaded_cpu

    @torch.no_grad()
    def busy_post_processing(self) -> None:
        """Classifier bias 0: every anchor scores about 0.5, so each frame sends the full ``NMS_PRE_MAXSIZE``
        candidates through rotated NMS (an untrained head's 0.01 prior would leave post-processing nothing to do)."""
        self.model.dense_head.conv_cls.bias.zero_()

    @torch.no_grad()
    def infer_step(self) -> tuple[float, float, float, int]:
        """One inference batch; returns (seconds waiting for data, seconds of compute, CPU seconds of compute,
        frames)."""
        start = time.perf_counter()
        batch = self._next(training=False)
        loaded, loaded_cpu = time.perf_counter(), time.thread_time()
        self.model.eval()
        load_data_to_gpu(batch, device="cpu")
        pred_dicts, _ = self.model(batch)
        assert len(pred_dicts) == batch["batch_size"]
        return loaded - start, time.perf_counter() - loaded, time.thread_time() - loaded_cpu, int(batch["batch_size"])


def median_times(step, warmup: int, iters: int) -> list[tuple]:
    for _ in range(warmup):
        step()
    return [step() for _ in range(iters)]


def summarize(name: str, bench: Bench, train: list, infer: list) -> dict:
    data_t = statistics.median(t[0] for t in train)
    comp_t = statistics.median(t[1] for t in train)
    total_t = statistics.median(t[0] + t[1] for t in train)
    i_data = statistics.median(t[0] for t in infer)
    i_comp = statistics.median(t[1] for t in infer)
    i_total = statistics.median(t[0] + t[1] for t in infer)
    frames = infer[0][3]
    return {
        "config": name,
        "grid": bench.grid,
        "params": sum(p.numel() for p in bench.model.parameters()),
        "train_it_s": 1.0 / total_t,
        "train_data_s": data_t,
        "train_compute_s": comp_t,
        "train_cpu_s": statistics.median(t[2] for t in train),
        "infer_fps": frames / i_total,
        "infer_data_s": i_data,
        "infer_compute_s": i_comp,
        "infer_cpu_s": statistics.median(t[2] for t in infer),
    }


def print_profile(profile: cProfile.Profile, top: int) -> None:
    """Top functions by own time; pcdet's Python functions are marked so a Python-level hot spot stands out."""
    stats = pstats.Stats(profile)
    total = sum(v[2] for v in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    print(f"\nTop {top} functions by own time (total {total:.2f} s):")
    print("| own time (s) | share | calls | function |\n|---:|---:|---:|---|")
    for (filename, line, func), (_, ncalls, tottime, _, _) in rows:
        if filename == "~":
            where = func  # a C function / torch operator
        else:
            short = filename.split("/site-packages/")[-1].replace(str(ROOT) + "/", "")
            where = f"{func} ({short}:{line})"
        print(f"| {tottime:.3f} | {tottime / total:.1%} | {ncalls} | `{where}` |")
    own_pcdet = sum(v[2] for k, v in stats.stats.items() if "/pcdet/" in k[0])
    print(f"\nPython-level own time in pcdet/ functions: {own_pcdet:.2f} s ({own_pcdet / total:.1%} of the total)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", nargs="+", default=DEFAULT_CFGS, help="configs, relative to tools/")
    parser.add_argument("--data_path", type=Path, default=ROOT / "data" / "synthetic_kitti")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="torch threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="DataLoader workers")
    parser.add_argument("--profile", type=int, default=0, help="profile this many train/infer steps (first cfg)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if not (args.data_path / "kitti_infos_train.pkl").is_file():
        raise SystemExit(f"{args.data_path} has no infos: generate the synthetic set and run create_kitti_infos")

    results = []
    for cfg_file in args.cfg:
        cfg = load_cfg(cfg_file, args.data_path)
        for workers in args.workers:
            for threads in args.threads:
                torch.set_num_threads(threads)
                bench = Bench(cfg, args.batch_size, workers)
                train = median_times(bench.train_step, args.warmup, args.iters)
                bench.busy_post_processing()
                infer = median_times(bench.infer_step, args.warmup, args.iters)
                row = summarize(Path(cfg_file).stem, bench, train, infer)
                row.update(threads=threads, workers=workers)
                results.append(row)
                print(
                    f"{row['config']} ({row['grid']}, {row['params'] / 1e6:.2f} M params) threads={threads} "
                    f"workers={workers}: train {row['train_it_s']:.3f} it/s (data {row['train_data_s']:.2f} s + "
                    f"compute {row['train_compute_s']:.2f} s, CPU {row['train_cpu_s']:.2f} s), inference "
                    f"{row['infer_fps']:.2f} frames/s (data {row['infer_data_s']:.2f} s + compute "
                    f"{row['infer_compute_s']:.2f} s, CPU {row['infer_cpu_s']:.2f} s per batch)",
                    flush=True,
                )
                del bench

    print(f"\ntorch {torch.__version__}, batch {args.batch_size}, median of {args.iters} after {args.warmup} warm-up")
    print(
        "| config | grid | threads | workers | train it/s | data s/it | compute s/it | compute CPU s/it "
        "| infer frames/s | infer CPU s/batch |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['config']} | {r['grid']} | {r['threads']} | {r['workers']} | {r['train_it_s']:.3f} | "
            f"{r['train_data_s']:.2f} | {r['train_compute_s']:.2f} | {r['train_cpu_s']:.2f} | {r['infer_fps']:.2f} | "
            f"{r['infer_cpu_s']:.2f} |"
        )

    if args.profile > 0:
        torch.set_num_threads(args.threads[0])
        bench = Bench(load_cfg(args.cfg[0], args.data_path), args.batch_size, workers=0)
        for what, step in (("training steps", bench.train_step), ("inference batches", bench.infer_step)):
            if step == bench.infer_step:
                bench.busy_post_processing()
            step()
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.profile):
                step()
            profile.disable()
            print(
                f"\nProfile: {args.profile} {what} of {Path(args.cfg[0]).stem}, batch {args.batch_size}, workers 0 "
                f"(data loading included), {args.threads[0]} thread(s)"
            )
            print_profile(profile, args.top)


if __name__ == "__main__":
    main()
