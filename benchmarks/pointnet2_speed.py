"""Timings of the pointnet2 ops at PointRCNN's sizes (batch 2, 16384 points per frame), on CPU.

Run: ``.venv/bin/python benchmarks/pointnet2_speed.py [--threads 1 2] [--repeat R] [--torch-path]``. Points are real
KITTI frames (``/work/shared/data/kitti_real``, cropped to PointRCNN's range and sampled to 16384) when present,
otherwise a synthetic street-like cloud. Prints the median wall time over ``repeat`` runs after one warm-up, per case
and thread count, as a markdown table. ``--torch-path`` also times the PyTorch formulations (the CUDA path) on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pcdet.ops.pointnet2.pointnet2_batch import pointnet2_utils as pn2

KITTI_VELODYNE = Path("/work/shared/data/kitti_real/training/velodyne")
NUM_POINTS = 16384


def frame_points(rng: np.random.Generator, frame: int) -> np.ndarray:
    """(16384, 3) points in PointRCNN's range [0, -40, -3, 70.4, 40, 1]."""
    path = KITTI_VELODYNE / f"{frame:06d}.bin"
    if path.exists():
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)[:, :3]
        keep = (pts[:, 0] >= 0) & (pts[:, 0] < 70.4) & (np.abs(pts[:, 1]) < 40) & (pts[:, 2] >= -3) & (pts[:, 2] < 1)
        pts = pts[keep]
    else:  # ground dense near the sensor, plus vertical surfaces
        ground_range = 2 + 68 * rng.random(NUM_POINTS) ** 2
        azimuth = rng.uniform(-0.8, 0.8, NUM_POINTS)
        pts = np.stack(
            [ground_range * np.cos(azimuth), ground_range * np.sin(azimuth), rng.normal(-1.6, 0.03, NUM_POINTS)], 1
        )
        walls = rng.random(NUM_POINTS) < 0.3
        pts[walls, 2] = rng.uniform(-1.6, 0.5, walls.sum())
    choice = rng.choice(len(pts), NUM_POINTS, replace=len(pts) < NUM_POINTS)
    return pts[choice].astype(np.float32)


def median_ms(fn, repeat: int) -> tuple[float, float]:
    """Median wall and process CPU (all threads) milliseconds: on a shared machine the wall time includes waiting
    for a core, the CPU time does not."""
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def cases(xyz: torch.Tensor, torch_path: bool) -> list[tuple[str, object]]:
    """(name, zero-argument callable) for each op at the sizes PointRCNN's PointNet2MSG runs it."""
    l1 = pn2.gather_operation(xyz.transpose(1, 2), pn2.farthest_point_sample(xyz, 4096)).transpose(1, 2).contiguous()
    l2 = l1[:, :1024].contiguous()  # the op cost does not depend on which 1024 points
    idx_l0 = pn2.ball_query(0.5, 32, xyz, l1)
    idx_l1 = pn2.ball_query(1.0, 32, l1, l2)
    feats_l0 = torch.randn(2, 4, NUM_POINTS)  # SA1 groups xyz (3) + intensity (1)
    feats_l1 = torch.randn(2, 96, 4096)
    feats_fp0 = torch.randn(2, 256, 4096)
    feats_fp1 = torch.randn(2, 512, 1024)
    dist0, nn0 = pn2.three_nn(xyz, l1)
    w0 = 1 / (dist0 + 1e-8)
    w0 = w0 / w0.sum(-1, keepdim=True)
    r2 = pn2._radius2
    out = [
        ("farthest_point_sample 16384 -> 4096", lambda: pn2.farthest_point_sample(xyz, 4096)),
        ("ball_query r=0.1 nsample=16 (4096 centres in 16384)", lambda: pn2.ball_query(0.1, 16, xyz, l1)),
        ("ball_query r=0.5 nsample=32 (4096 centres in 16384)", lambda: pn2.ball_query(0.5, 32, xyz, l1)),
        ("ball_query r=1.0 nsample=32 (1024 centres in 4096)", lambda: pn2.ball_query(1.0, 32, l1, l2)),
        ("grouping_operation C=4, 16384 -> 4096x32", lambda: pn2.grouping_operation(feats_l0, idx_l0)),
        ("grouping_operation C=96, 4096 -> 1024x32", lambda: pn2.grouping_operation(feats_l1, idx_l1)),
        ("three_nn 16384 <- 4096", lambda: pn2.three_nn(xyz, l1)),
        ("three_interpolate C=256, 4096 -> 16384", lambda: pn2.three_interpolate(feats_fp0, nn0, w0)),
        ("three_nn + three_interpolate C=512, 1024 -> 4096", lambda: fp(l1, l2, feats_fp1)),
    ]
    if torch_path:
        out += [
            ("[torch path] farthest_point_sample 16384 -> 4096", lambda: pn2._fps_torch(xyz, 4096)),
            (
                "[torch path] ball_query r=0.5 nsample=32",
                lambda: pn2._ball_query_torch(r2(0.5, xyz.dtype), 32, xyz, l1),
            ),
            ("[torch path] three_nn 16384 <- 4096", lambda: pn2._three_nn_torch(xyz, l1)),
        ]
    return out


def fp(unknown: torch.Tensor, known: torch.Tensor, known_feats: torch.Tensor) -> torch.Tensor:
    dist, idx = pn2.three_nn(unknown, known)
    recip = 1 / (dist + 1e-8)
    return pn2.three_interpolate(known_feats, idx, recip / recip.sum(-1, keepdim=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--torch-path", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    xyz = torch.from_numpy(np.stack([frame_points(rng, 0), frame_points(rng, 1)]))
    source = "KITTI frames 000000/000001" if (KITTI_VELODYNE / "000000.bin").exists() else "synthetic points"
    results: dict[str, list[tuple[float, float]]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, fn in cases(xyz, args.torch_path):
            wall, cpu = median_ms(fn, args.repeat)
            results.setdefault(name, []).append((wall, cpu))
            print(f"{threads} thread(s)  {name}: wall {wall:.1f} ms, CPU {cpu:.1f} ms", flush=True)
    print(f"\nBatch 2, {source}; median of {args.repeat} runs, wall ms (CPU ms of all threads)\n")
    print("| op | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads) + " |")
    print("|---|" + "---:|" * len(args.threads))
    for name, values in results.items():
        print(f"| {name} | " + " | ".join(f"{wall:.1f} ({cpu:.1f})" for wall, cpu in values) + " |")


if __name__ == "__main__":
    main()
