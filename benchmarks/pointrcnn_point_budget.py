"""Points per ground-truth object before and after PointRCNN's ``sample_points`` step, by BEV distance.

Each frame of one split is read by ``KittiDataset`` (``training=False``: no augmentation) with the config's
``DATA_CONFIG``, its ``DATA_PROCESSOR`` cut just before ``sample_points``: the points are the FOV crop plus the range
mask that the network's sampler receives. Boxes: the configured classes with their centre in the range (the
training crop). For every box it counts the points inside (``points_in_boxes_cpu``) before sampling and, for each
budget, the expected count (the sampler keeps every point >= 40 m from the sensor and draws the rest uniformly from
the nearer ones) and the count in one draw of ``DataProcessor.sample_points`` itself (repeats counted).
Prints markdown tables. Run from the repository root, e.g. on a generated synthetic set:

    .venv/bin/python -m pcdet.datasets.synthetic.generate --out /tmp/rcnn_probe/data --frames 200 --seed 1 \\
        --val_fraction 0.5 --label_range 0 -20.48 40.96 20.48
    .venv/bin/python benchmarks/pointrcnn_point_budget.py --data_path /tmp/rcnn_probe/data
    .venv/bin/python benchmarks/pointrcnn_point_budget.py --cfg cfgs/kitti_models/pointrcnn.yaml \\
        --data_path ../shared/data/kitti_real --budgets 4096 16384 --edges 0 10 20 30 41 71
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from easydict import EasyDict

from pcdet.config import ROOT_DIR, cfg_from_yaml_file
from pcdet.datasets.kitti.kitti_dataset import KittiDataset
from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu
from pcdet.utils.box_utils import mask_boxes_outside_range_numpy

FAR_M = 40.0  # DataProcessor.sample_points keeps every point at least this far (3D) from the sensor


def build_dataset(cfg_file: str, data_path: Path, split: str) -> KittiDataset:
    """The config's KITTI dataset in test mode on ``split``, with in-memory infos and no processing from
    ``sample_points`` on."""
    cfg = cfg_from_yaml_file(ROOT_DIR / "tools" / cfg_file, EasyDict())
    data_cfg = cfg.DATA_CONFIG
    names = [p.NAME for p in data_cfg.DATA_PROCESSOR]
    data_cfg.DATA_PROCESSOR = data_cfg.DATA_PROCESSOR[: names.index("sample_points")]
    data_cfg.INFO_PATH.test = []
    dataset = KittiDataset(data_cfg, cfg.CLASS_NAMES, training=False, root_path=data_path)
    dataset.set_split(split)
    dataset.kitti_infos = dataset.get_infos(num_workers=1, count_inside_pts=False)
    return dataset


def expected_in_boxes(points: np.ndarray, inside: np.ndarray, budget: int) -> np.ndarray:
    """Expected points per box (``inside``: ``(M, N)`` membership) after ``sample_points`` to ``budget``."""
    total = len(points)
    far = np.linalg.norm(points[:, 0:3], axis=1) >= FAR_M
    if budget >= total or budget <= far.sum():  # repeats, or a uniform draw over all points
        return inside.sum(axis=1) * budget / total
    near_rate = (budget - far.sum()) / (total - far.sum())
    return inside[:, far].sum(axis=1) + inside[:, ~far].sum(axis=1) * near_rate


def measure(dataset: KittiDataset, budgets: list[int]) -> tuple[list[dict], list[dict]]:
    """Per box: class, BEV distance, points before, expected and drawn per budget. Per frame: points, far points."""
    boxes_out, frames_out = [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        points = sample["points"]
        boxes = sample["gt_boxes"]
        boxes = boxes[mask_boxes_outside_range_numpy(boxes, dataset.point_cloud_range)]
        frames_out.append({"points": len(points), "far": int((np.linalg.norm(points[:, 0:3], axis=1) >= FAR_M).sum())})
        inside = points_in_boxes_cpu(points[:, 0:3], boxes[:, 0:7]).astype(bool)
        rows = [
            {"cls": dataset.class_names[int(b[7]) - 1], "dist": float(np.hypot(b[0], b[1])), "before": int(n)}
            for b, n in zip(boxes, inside.sum(axis=1))
        ]
        for budget in budgets:
            sampled = dataset.data_processor.sample_points({"points": points}, EasyDict(NUM_POINTS={"test": budget}))
            drawn = points_in_boxes_cpu(sampled["points"][:, 0:3], boxes[:, 0:7]).sum(axis=1)
            for row, exp, got in zip(rows, expected_in_boxes(points, inside, budget), drawn):
                row[budget] = (float(exp), int(got))
        boxes_out.extend(rows)
    return boxes_out, frames_out


def bin_label(dist: float, edges: list[float]) -> str:
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= dist < hi:
            return f"{lo:g}-{hi:g} m"
    return f">= {edges[-1]:g} m"


def box_tables(rows: list[dict], budgets: list[int], edges: list[float], classes: list[str]) -> str:
    """One markdown table per class: boxes, median points before / expected / drawn, share with < 5 points."""
    out = []
    header = ["distance", "boxes", "median before", "< 5 before"]
    for b in budgets:
        header += [f"median {b} (exp / drawn)", f"< 5 at {b}"]
    order = [bin_label(lo, edges) for lo in edges[:-1]] + [bin_label(edges[-1], edges)]
    for cls in classes:
        groups = defaultdict(list)
        for row in rows:
            if row["cls"] == cls:
                groups[bin_label(row["dist"], edges)].append(row)
        out += [f"**{cls}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label in (g for g in order if g in groups):
            group = groups[label]
            before = np.array([r["before"] for r in group])
            cells = [label, str(len(group)), f"{np.median(before):g}", f"{(before < 5).mean():.2f}"]
            for b in budgets:
                exp = np.array([r[b][0] for r in group])
                got = np.array([r[b][1] for r in group])
                cells += [f"{np.median(exp):.1f} / {np.median(got):g}", f"{(got < 5).mean():.2f}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def frame_table(frames: list[dict], budgets: list[int]) -> str:
    """Median points in range per frame, points >= 40 m, and the share of the points each budget keeps."""
    total = np.array([f["points"] for f in frames])
    far = np.array([f["far"] for f in frames])
    header = ["frames", "median points in range", "median points >= 40 m"] + [f"share kept at {b}" for b in budgets]
    cells = [str(len(frames)), f"{np.median(total):g}", f"{np.median(far):g}"]
    cells += [f"{np.median(np.minimum(b / total, 1.0)):.3f}" for b in budgets]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default="cfgs/kitti_models/pointrcnn_synthetic.yaml", help="relative to tools/")
    parser.add_argument("--data_path", type=Path, required=True, help="KITTI-layout directory")
    parser.add_argument("--split", default="train", help="ImageSets split to read (never the test split)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--edges", type=float, nargs="+", default=[0, 10, 20, 30, 41], help="BEV distance bins, m")
    parser.add_argument("--seed", type=int, default=0, help="numpy seed of the sampler's draws")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    np.random.seed(args.seed)
    dataset = build_dataset(args.cfg, args.data_path.resolve(), args.split)
    rows, frames = measure(dataset, args.budgets)
    print(f"{args.cfg} on {args.data_path} ({args.split} split)\n")
    print(frame_table(frames, args.budgets) + "\n")
    print(box_tables(rows, args.budgets, args.edges, dataset.class_names))


if __name__ == "__main__":
    main()
