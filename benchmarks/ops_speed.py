"""CPU timings of the geometry ops: dense rotated BEV IoU and rotated NMS on a crowded detector-like scene.

Run: ``.venv/bin/python benchmarks/ops_speed.py [--threads N] [--repeat R]``. Prints one line per case
(median wall and thread-CPU time over ``repeat`` runs after one warm-up) and a markdown table for
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pcdet.ops.iou3d_nms import iou3d_nms_utils


def random_boxes(rng: np.random.Generator, n: int) -> torch.Tensor:
    """Boxes spread over the KITTI PointPillars range with car/pedestrian-like sizes and any heading."""
    return torch.from_numpy(
        np.concatenate(
            [
                rng.uniform([0, -39.68, -3], [69.12, 39.68, 1], (n, 3)),
                rng.uniform([0.5, 0.5, 1.0], [4.5, 2.0, 2.0], (n, 3)),
                rng.uniform(-np.pi, np.pi, (n, 1)),
            ],
            axis=1,
        )
    ).float()


def crowded_scene(rng: np.random.Generator, n: int, num_objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` candidates jittered around ``num_objects`` cars, as a dense head emits before NMS."""
    objects = np.concatenate(
        [
            rng.uniform([0, -39.68, -2], [69.12, 39.68, 0], (num_objects, 3)),
            np.tile([3.9, 1.6, 1.56], (num_objects, 1)),
            rng.uniform(-np.pi, np.pi, (num_objects, 1)),
        ],
        axis=1,
    )
    boxes = objects[rng.integers(0, num_objects, n)]
    boxes[:, 0:2] += rng.normal(0, 0.6, (n, 2))
    boxes[:, 3:6] *= rng.uniform(0.85, 1.15, (n, 3))
    boxes[:, 6] += rng.normal(0, 0.2, n)
    return torch.from_numpy(boxes).float(), torch.from_numpy(rng.random(n)).float()


def median_seconds(fn, repeat: int) -> tuple[float, float]:
    """Median wall and thread-CPU seconds (CPU time does not count other processes holding the core)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def vectorised_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """nms_gpu's blocked tensor formulation (its CUDA path), run on the CPU: the former CPU path, for comparison."""
    order = iou3d_nms_utils._sort_candidates(scores, None)
    kept = iou3d_nms_utils._blocked_greedy_nms(boxes[order], thresh, iou3d_nms_utils._rotated_suppression)
    return order[kept]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    rows = []
    boxes_a, boxes_b = random_boxes(rng, 500), random_boxes(rng, 500)
    seconds = median_seconds(lambda: iou3d_nms_utils.boxes_iou_bev(boxes_a, boxes_b), args.repeat)
    rows.append(("boxes_iou_bev 500×500, random boxes over the KITTI range", seconds, ""))
    crowd, _ = crowded_scene(rng, 500, 30)
    seconds = median_seconds(lambda: iou3d_nms_utils.boxes_iou_bev(crowd, crowd), args.repeat)
    overlapping = int((iou3d_nms_utils.boxes_iou_bev(crowd, crowd) > 0).sum())
    rows.append(("boxes_iou_bev 500×500, 30 crowded objects", seconds, f"{overlapping} pairs with IoU > 0"))
    boxes, scores = crowded_scene(rng, 4096, 30)
    for thresh in (0.01, 0.1, 0.7):
        keep = iou3d_nms_utils.nms_gpu(boxes, scores, thresh)[0]
        seconds = median_seconds(lambda t=thresh: iou3d_nms_utils.nms_gpu(boxes, scores, t), args.repeat)
        rows.append((f"nms_gpu 4096 boxes / 30 objects, IoU thresh {thresh}", seconds, f"{len(keep)} kept"))
        assert vectorised_nms(boxes, scores, thresh).tolist() == keep.tolist()
        seconds = median_seconds(lambda t=thresh: vectorised_nms(boxes, scores, t), args.repeat)
        rows.append(
            (f"  the same, vectorised formulation (CUDA path) on CPU, IoU thresh {thresh}", seconds, "same kept")
        )
    keep = iou3d_nms_utils.nms_normal_gpu(boxes, scores, 0.5)[0]
    seconds = median_seconds(lambda: iou3d_nms_utils.nms_normal_gpu(boxes, scores, 0.5), args.repeat)
    rows.append(("nms_normal_gpu 4096 boxes / 30 objects, IoU thresh 0.5", seconds, f"{len(keep)} kept"))

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeat}")
    print("| case | wall (ms) | CPU (ms) | note |\n|---|---:|---:|---|")
    for name, (wall, cpu), note in rows:
        print(f"| {name} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | {note} |")


if __name__ == "__main__":
    main()
