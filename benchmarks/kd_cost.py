"""Cost of a PointDistiller training step vs a plain student step and the teacher's forward, in one run (CPU).

    python benchmarks/kd_cost.py [--batch_size 2] [--repeats 5] [--threads N]

Full KITTI range: teacher cfgs/kitti_models/pointpillar.yaml (random weights: cost does not depend on them), student
pointpillar_4x.yaml, the KD config pointpillar_kd.yaml (N = 6000 per batch, K = 128, RL τ = 0.01). The batch: the real
KITTI frames in ../shared/data/kitti_real (FOV points in range, shuffled, voxelised with the training caps, real
labels). Interleaved repeats after one warm-up; medians.
* student step: forward + backward + Adam step of the plain student;
* teacher forward: the teacher's full network (all modules, no post-processing) under no_grad;
* KD step: the distiller's forward (teacher run as far as the losses need + student + KD loss) + backward + step
  (the global step advances, so the KD diagnostics run only at the warm-up step, as in training).
Goal: KD step ≤ 1.10 × (student step + teacher forward). Also timed: the parts of the KD overhead, and the
PointDistiller loss (forward + backward, kNN included) under its graph options.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO.parent / "shared" / "data" / "kitti_real" / "training"
CFG_DIR = REPO / "tools" / "cfgs" / "kitti_models"


def load_batch(cfg: EasyDict, batch_size: int) -> dict:
    from pcdet.datasets.kitti.kitti_dataset import KittiDataset
    from pcdet.models.kd.feature_matching import VoxelGrid
    from pcdet.utils import box_utils, calibration_kitti, common_utils, object3d_kitti

    rng = np.random.default_rng(0)
    pc_range = np.asarray(cfg.DATA_CONFIG.POINT_CLOUD_RANGE, np.float32)
    points, boxes = [], []
    for b in range(batch_size):
        idx = f"{b:06d}"
        pts = np.fromfile(FRAMES / "velodyne" / f"{idx}.bin", dtype=np.float32).reshape(-1, 4)
        calib = calibration_kitti.Calibration(FRAMES / "calib" / f"{idx}.txt")
        width, height = Image.open(FRAMES / "image_2" / f"{idx}.png").size
        pts = pts[KittiDataset.get_fov_flag(calib.lidar_to_rect(pts[:, :3]), (height, width), calib)]
        pts = pts[common_utils.mask_points_by_range(pts, pc_range)]
        pts = pts[rng.permutation(len(pts))]
        points.append(np.concatenate([np.full((len(pts), 1), b, np.float32), pts], axis=1))
        objs = [
            o
            for o in object3d_kitti.get_objects_from_label(FRAMES / "label_2" / f"{idx}.txt")
            if o.cls_type in cfg.CLASS_NAMES
        ]
        cam = np.array([[*o.loc, o.l, o.h, o.w, o.ry] for o in objs], np.float32).reshape(-1, 7)
        labels = np.array([cfg.CLASS_NAMES.index(o.cls_type) + 1 for o in objs], np.float32)
        boxes.append(np.concatenate([box_utils.boxes3d_kitti_camera_to_lidar(cam, calib), labels[:, None]], axis=1))
    gt = np.zeros((batch_size, max(len(x) for x in boxes), 8), np.float32)
    for b, box in enumerate(boxes):
        gt[b, : len(box)] = box
    points = torch.from_numpy(np.concatenate(points))
    voxels = VoxelGrid.from_data_config(cfg.DATA_CONFIG).voxelize(points, batch_size, training=True)
    return {"points": points, "batch_size": batch_size, "gt_boxes": torch.from_numpy(gt), **voxels}


def _load(name: str) -> EasyDict:
    from pcdet.config import cfg_from_yaml_file

    return cfg_from_yaml_file(CFG_DIR / f"{name}.yaml", EasyDict())


def _dataset(cfg: EasyDict):
    from types import SimpleNamespace

    from pcdet.models.kd.feature_matching import VoxelGrid

    grid = VoxelGrid.from_data_config(cfg.DATA_CONFIG)
    return grid.network_geometry(cfg.CLASS_NAMES, SimpleNamespace(num_point_features=4))


def _train_step(model, optimizer, batch: dict) -> None:
    ret, _, _ = model(dict(batch))
    optimizer.zero_grad(set_to_none=True)
    ret["loss"].backward()
    optimizer.step()
    # as the training loop does: the distiller runs its diagnostics every KD.DIAGNOSE_EVERY steps, so a global step
    # stuck at 0 would time them on every repeat
    model.update_global_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if not FRAMES.is_dir():
        sys.exit(f"needs the real KITTI frames in {FRAMES}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from pcdet.models import build_network
    from pcdet.models.kd import build_distiller
    from pcdet.models.kd.losses import KDBatch
    from pcdet.models.kd.teacher import run_teacher
    from pcdet.utils.checkpoint_io import atomic_torch_save

    torch.manual_seed(0)
    kd_cfg = _load("pointpillar_kd")
    teacher_cfg = _load("pointpillar")
    dataset = _dataset(kd_cfg)
    teacher = build_network(teacher_cfg.MODEL, 3, _dataset(teacher_cfg))
    student = build_network(kd_cfg.MODEL, 3, dataset)
    plain_student = copy.deepcopy(student)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "teacher.pth"
        atomic_torch_save({"model_state": teacher.state_dict()}, ckpt)
        distiller = build_distiller(kd_cfg, student, dataset, teacher_ckpt=ckpt)
    teacher = distiller.teacher
    batch = load_batch(kd_cfg, args.batch_size)

    plain_student.train()
    distiller.train()
    plain_opt = torch.optim.Adam(plain_student.parameters(), lr=1e-4)
    kd_opt = torch.optim.Adam([p for p in distiller.parameters() if p.requires_grad], lr=1e-4)
    all_modules = {"vfe", "map_to_bev_module", "backbone_2d", "dense_head"}

    def teacher_forward():
        run_teacher(teacher, dict(batch), set(), all_modules)

    timers = {
        "student step": lambda: _train_step(plain_student, plain_opt, batch),
        "teacher forward": teacher_forward,
        "KD step": lambda: _train_step(distiller, kd_opt, batch),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in timers}
    for fn in timers.values():
        fn()  # warm-up: allocators and caches
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits all three alike
        for name, fn in timers.items():
            times[name] += _timed(fn, 1)
    med = {name: _median(v) for name, v in times.items()}

    # Parts of the KD overhead, on the same batch.
    pd = distiller.kd_losses["PointDistiller"]
    keys = {"pillar_features"}
    student_dict = dict(batch)
    for module in student.module_list[:1]:  # the student's VFE: its pillar features, with grad
        student_dict = module(student_dict)
    teacher_dict = run_teacher(teacher, dict(batch), keys, set())
    kd_batch = KDBatch(student_dict, teacher_dict, student, teacher)

    def loss_time(loss_module) -> float:
        # retain_graph: every repeat back-propagates into the same student VFE graph
        return _median(_timed(lambda: loss_module(kd_batch).backward(retain_graph=True), 3))

    partial_teacher = _timed(lambda: run_teacher(teacher, dict(batch), keys, set()), 3)
    parts = {
        "teacher until pillar_features": _median(partial_teacher),
        "PointDistiller loss fwd+bwd (paper setting)": loss_time(pd),
    }
    variants = {
        "RL off (every edge formed)": {"RL": False},
        "GRAPH sample": {"GRAPH": "sample"},
        "CANDIDATES queries": {"CANDIDATES": "queries"},
        "GRAPH sample + CANDIDATES queries": {"GRAPH": "sample", "CANDIDATES": "queries"},
    }
    for label, change in variants.items():
        variant = type(pd)({**kd_cfg.KD.LOSSES[0], **change}, student, teacher)
        parts[f"PointDistiller loss, {label}"] = loss_time(variant)

    n_pillars = int(batch["voxel_coords"].shape[0])
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; batch {args.batch_size} real KITTI frames, {n_pillars} pillars; "
        f"median of {args.repeats}"
    )
    print("| | wall s (median) | CPU s (median) | all wall samples |")
    print("|---|---:|---:|---|")
    for name, (wall, cpu) in med.items():
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {', '.join(f'{w:.2f}' for w, _ in times[name])} |")
    for column, label in ((0, "wall"), (1, "CPU")):
        base = med["student step"][column] + med["teacher forward"][column]
        print(
            f"{label}: KD / (student step + teacher forward) = {med['KD step'][column] / base:.3f} (goal <= 1.10); "
            f"KD step - student step = {med['KD step'][column] - med['student step'][column]:.3f} s"
        )
    print("| part of the KD overhead | wall s | CPU s |")
    print("|---|---:|---:|")
    for name, (wall, cpu) in parts.items():
        print(f"| {name} | {wall:.3f} | {cpu:.3f} |")


def _timed(fn, repeats: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per call. CPU time (all threads of this process) is what a shared box distorts least:
    other jobs stretch the wall clock while this process waits, not its CPU seconds."""
    samples = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - wall, time.process_time() - cpu))
    return samples


def _median(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


if __name__ == "__main__":
    main()
