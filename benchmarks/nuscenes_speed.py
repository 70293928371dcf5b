"""CPU speed of the nuScenes detectors (teachers and students) on the synthetic nuScenes set.

Run from the repository root:

    .venv/bin/python benchmarks/nuscenes_speed.py --data_path /tmp/synthetic_nuscenes   # generated when absent

Every model gets its synthetic twin's data pipeline and grid (``cbgs_pp_multihead_synthetic.yaml``: 256 x 256
pillars; ``cbgs_voxel0075_res3d_centerpoint_synthetic.yaml``: 512 x 512 x 40 voxels), so teachers and students
see the same batches. Training step = forward + targets + losses + backward (no optimizer, data loading outside);
inference = eval forward with post-processing, per frame. Medians after one warm-up; wall seconds and this
thread's CPU seconds (the comparable figure on a shared machine, with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from easydict import EasyDict

from pcdet.config import ROOT_DIR, cfg_from_yaml_file
from pcdet.datasets.nuscenes.synthetic_batch import prepare_synthetic_nuscenes, synthetic_nuscenes_dataset
from pcdet.models import build_network, load_data_to_gpu

CFG_DIR = ROOT_DIR / "tools" / "cfgs" / "nuscenes_models"
# (model config, the synthetic config whose data and grid it runs on)
MODELS = [
    ("cbgs_pp_multihead", "cbgs_pp_multihead_synthetic"),
    ("cbgs_pp_multihead_2x", "cbgs_pp_multihead_synthetic"),
    ("cbgs_pp_multihead_4x", "cbgs_pp_multihead_synthetic"),
    ("cbgs_voxel0075_res3d_centerpoint", "cbgs_voxel0075_res3d_centerpoint_synthetic"),
    ("cbgs_voxel0075_res3d_centerpoint_4x", "cbgs_voxel0075_res3d_centerpoint_synthetic"),
]


def model_on_synthetic(name: str, synthetic: str) -> EasyDict:
    """``name``'s network with ``synthetic``'s data config, BN momentum and CenterHead limits."""
    cfg = cfg_from_yaml_file(CFG_DIR / f"{name}.yaml", EasyDict())
    twin = cfg_from_yaml_file(CFG_DIR / f"{synthetic}.yaml", EasyDict())
    cfg.DATA_CONFIG = twin.DATA_CONFIG
    cfg.MODEL.BN_MOMENTUM = twin.MODEL.BN_MOMENTUM
    if "POST_PROCESSING" in twin.MODEL.DENSE_HEAD:
        cfg.MODEL.DENSE_HEAD.POST_PROCESSING = twin.MODEL.DENSE_HEAD.POST_PROCESSING
    return cfg


def timed(fn, iters: int) -> tuple[float, float]:
    """Median (wall s, thread-CPU s) of ``fn()`` over ``iters`` runs after one warm-up."""
    wall, cpu = [], []
    for _ in range(iters + 1):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.thread_time() - c)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


def measure(name: str, synthetic: str, root: Path, batch_size: int, iters: int) -> str:
    cfg = model_on_synthetic(name, synthetic)
    train_set = synthetic_nuscenes_dataset(root, cfg.DATA_CONFIG, cfg.CLASS_NAMES, training=True)
    test_set = synthetic_nuscenes_dataset(root, cfg.DATA_CONFIG, cfg.CLASS_NAMES, training=False)
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), train_set)
    # A batch larger than the small set's split repeats its frames (the same point counts per frame).
    train_batch = load_data_to_gpu(
        train_set.collate_batch([train_set[i % len(train_set)] for i in range(batch_size)]), "cpu"
    )
    test_batch = load_data_to_gpu(
        test_set.collate_batch([test_set[i % len(test_set)] for i in range(batch_size)]), "cpu"
    )

    def train_step() -> None:
        model.train()
        model.zero_grad()
        ret, _, _ = model(dict(train_batch))
        ret["loss"].backward()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(dict(test_batch))

    train_wall, train_cpu = timed(train_step, iters)
    infer_wall, infer_cpu = timed(infer, iters)
    params = sum(p.numel() for p in model.parameters())
    return (
        f"| {name} | {params:,} | {train_batch['voxels'].shape[0]} | {train_wall:.1f} ({train_cpu:.1f}) | "
        f"{infer_wall / batch_size:.2f} ({infer_cpu / batch_size:.2f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", type=Path, default=ROOT_DIR / "data" / "synthetic_nuscenes_speed")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=[m for m, _ in MODELS], help="model configs (stems)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = prepare_synthetic_nuscenes(args.data_path)
    print("| config | params | voxels (batch) | train step wall s (CPU s) | inference per frame wall s (CPU s) |")
    print("|---|---:|---:|---:|---:|")
    for name, synthetic in MODELS:
        if name in args.models:
            print(measure(name, synthetic, root, args.batch_size, args.iters), flush=True)


if __name__ == "__main__":
    main()
