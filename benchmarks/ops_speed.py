"""CPU timings of the geometry ops: dense rotated BEV IoU and rotated NMS on a crowded detector-like scene, and
RoIPointPool3d at PointRCNN's sizes.

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
from pcdet.ops.roipoint_pool3d.roipoint_pool3d_utils import roipoint_pool3d


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


def pooling_scene(
    rng: np.random.Generator, num_points: int, num_rois: int, channels: int, batch: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points (half of them around 20 cars), per-point features and RoIs jittered around the cars, per sample."""
    cars, _ = crowded_scene(rng, 20 * batch, 20 * batch)
    cars = cars.view(batch, 20, 7)
    near = (
        cars[:, rng.integers(0, 20, num_points // 2), 0:3]
        + torch.from_numpy(rng.normal(0, 1.0, (batch, num_points // 2, 3))).float()
    )
    spread = random_boxes(rng, batch * (num_points - num_points // 2))[:, 0:3].view(batch, -1, 3)
    points = torch.cat([near, spread], dim=1)
    features = torch.from_numpy(rng.normal(size=(batch, num_points, channels))).float()
    rois = cars[:, rng.integers(0, 20, num_rois)].clone()
    rois[..., 0:2] += torch.from_numpy(rng.normal(0, 0.5, (batch, num_rois, 2))).float()
    return points, features, rois


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

    for points, rois, sampled, label in ((16384, 128, 512, "pointrcnn.yaml training"),
                                         (16384, 100, 512, "pointrcnn.yaml test"),
                                         (4096, 32, 128, "pointrcnn_synthetic.yaml training")):  # fmt: skip
        pts, feats, boxes = pooling_scene(rng, points, rois, 130)  # 128 point features + score + depth
        seconds = median_seconds(lambda p=pts, f=feats, b=boxes, k=sampled: roipoint_pool3d(p, f, b, k), args.repeat)
        empty = int(roipoint_pool3d(pts, feats, boxes, sampled)[1].sum())
        rows.append((f"roipoint_pool3d 2 × {rois} RoIs × {sampled} of {points} points, C=130 ({label})", seconds,
                     f"{empty} empty RoIs"))  # fmt: skip

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeat}")
    print("| case | wall (ms) | CPU (ms) | note |\n|---|---:|---:|---|")
    for name, (wall, cpu), note in rows:
        print(f"| {name} | {wall * 1e3:.1f} | {cpu * 1e3:.1f} | {note} |")


if __name__ == "__main__":
    main()
