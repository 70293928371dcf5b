"""A KD training step against a plain student step on the synthetic grid, the way the benchmark trains (CPU).

    python benchmarks/kd_step_cost.py [--kd_cfgs pointpillar_kd_frozen_synthetic ...] [--repeats 6] [--threads 1]

The plain student is ``pointpillar_4x_synthetic.yaml``; each KD config distils the same student from the committed
synthetic teacher (``checkpoints/pointpillar_synthetic_teacher.pth``: the teacher's weights decide what the term's
reweighting selects, so they should be a trained teacher's), its eval forward fused (the default) or the reference
one (``--teacher_paths fused reference`` times both). Batches: the config's batch size from the training
pipeline of ``--data_path`` (augmentation, gt sampling, voxelisation), drawn once and reused, so every step of every
model sees the same inputs. A step is forward + backward + gradient clipping + the config's optimizer step; the
global step advances as in training, so the KD diagnostics run only every ``KD.DIAGNOSE_EVERY`` steps (here: at the
warm-up). Thread-CPU seconds (``time.thread_time``) of interleaved steps after one warm-up each, medians; with one
torch thread that is the whole computation and what a shared box distorts least.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from train_speed import ROOT, build_optimizer, load_cfg

from pcdet.datasets import build_dataloader
from pcdet.models import build_network, load_data_to_gpu, model_fn_decorator
from pcdet.models.kd import build_distiller

TEACHER_CKPT = ROOT / "checkpoints" / "pointpillar_synthetic_teacher.pth"
DEFAULT_KD_CFGS = ["pointpillar_kd_synthetic", "pointpillar_kd_frozen_synthetic", "pointpillar_kd_fitnet_synthetic"]


def _cfg_file(name: str) -> str:
    return f"cfgs/kitti_models/{name}.yaml"


def _batches(cfg, count: int, seed: int) -> tuple:
    """(dataset, ``count`` training batches as CPU tensors: the conversion is outside the timed steps)."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    dataset, loader, _ = build_dataloader(
        cfg.DATA_CONFIG,
        cfg.CLASS_NAMES,
        cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU,
        dist=False,
        workers=0,
        training=True,
        seed=seed,
    )
    iterator = iter(loader)
    return dataset, [load_data_to_gpu(next(iterator), device="cpu") for _ in range(count)]


class Trainee:
    """A model (plain student or distiller) with its optimizer, stepping on a fixed list of batches."""

    def __init__(self, cfg, model: torch.nn.Module):
        self.cfg = cfg
        self.model = model.train()
        self.optimizer = build_optimizer(model, cfg.OPTIMIZATION)
        self.model_func = model_fn_decorator()

    def step(self, batch: dict) -> float:
        start = time.thread_time()
        self.optimizer.zero_grad(set_to_none=True)
        loss, _, _ = self.model_func(self.model, dict(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.OPTIMIZATION.GRAD_NORM_CLIP)
        self.optimizer.step()
        self.model.update_global_step()
        return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kd_cfgs", nargs="+", default=DEFAULT_KD_CFGS, help="KD configs in cfgs/kitti_models/")
    parser.add_argument("--data_path", type=Path, default=ROOT / "data" / "synthetic_bench" / "trainval")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--teacher_paths",
        nargs="+",
        choices=["fused", "reference"],
        default=["fused"],
        help="the teacher's eval forward (KD.TEACHER.FUSED_INFERENCE); both: an A/B in one run",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    student_cfg = load_cfg(_cfg_file("pointpillar_4x_synthetic"), args.data_path)
    dataset, batches = _batches(student_cfg, args.repeats + 1, args.seed)
    trainees = {}
    torch.manual_seed(args.seed)
    trainees["plain 4x student"] = Trainee(
        student_cfg, build_network(student_cfg.MODEL, len(student_cfg.CLASS_NAMES), dataset)
    )
    for name in args.kd_cfgs:
        for path in args.teacher_paths:
            cfg = load_cfg(_cfg_file(name), args.data_path)
            cfg.KD.TEACHER.FUSED_INFERENCE = path == "fused"
            torch.manual_seed(args.seed)
            student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
            label = name if len(args.teacher_paths) == 1 else f"{name}, {path} teacher"
            trainees[label] = Trainee(cfg, build_distiller(cfg, student, dataset, teacher_ckpt=TEACHER_CKPT))

    times: dict[str, list[float]] = {name: [] for name in trainees}
    for trainee in trainees.values():
        trainee.step(batches[0])  # warm-up: numba kernels (compiled or loaded), allocators, diagnostics at step 0
    for batch in batches[1:]:  # interleaved, so a change in machine load hits every model alike
        for name, trainee in trainees.items():
            times[name].append(trainee.step(batch))

    plain = statistics.median(times["plain 4x student"])
    pillars = statistics.median(int(b["voxel_coords"].shape[0]) for b in batches)
    print(
        f"# {torch.get_num_threads()} torch thread(s), batch {student_cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU} of "
        f"{args.data_path} (median {pillars} pillars), thread-CPU s per step, median of {args.repeats}"
    )
    print("| model | step s | × plain | all samples |")
    print("|---|---:|---:|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.3f} | {median / plain:.2f} | {', '.join(f'{t:.2f}' for t in samples)} |")


if __name__ == "__main__":
    main()
