"""Synthetic KITTI-format data set generator.

    python -m pcdet.datasets.synthetic.generate --out data/synthetic_kitti --frames 2000 --seed 0 --workers 2

writes ``training/{velodyne,label_2,calib,image_2,planes}``, ``ImageSets/{train,val,test}.txt`` (test = val ids,
with ``testing/`` holding those frames without labels as hard links) and ``synthetic_meta.json``. Every frame
depends only on (seed, frame index), so the output is the same for any ``--workers``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from . import GENERATOR_VERSION
from .calib import IMAGE_SHAPE, calib_to_text, lidar_to_rect, sample_calib
from .ground import ground_height
from .labels import build_labels, label_text
from .lidar import LidarSpec
from .raycast import angular_bounds
from .render import render_image
from .scene import build_scene
from .sensor import simulate_scan

_SPEC = LidarSpec()


def generate_frame(seed: int, idx: int, with_image: bool = True, label_range: tuple | None = None) -> dict:
    """One frame: ``points`` (N, 4) float32, ``labels`` (list of dicts, see labels.build_labels), ``dontcare``,
    ``calib`` (dict of matrices), ``image`` (H, W, 3) uint8 or None, and the file texts ``label_text``,
    ``calib_text``. ``label_range`` (x_min, y_min, x_max, y_max): see labels.build_labels."""
    base = np.random.default_rng([seed, idx])
    calib_rng, scene_rng, sensor_rng = base.spawn(3)  # independent streams: scene edits don't move the calib
    calib = sample_calib(calib_rng)
    scene = build_scene(scene_rng)
    scan = simulate_scan(scene, _SPEC, sensor_rng)
    counts = np.bincount(scan["object"][scan["object"] >= 0], minlength=len(scene.objects))
    bounds = angular_bounds(scene.prims)
    labels, dontcare = build_labels(scene, calib, bounds, counts, label_range)
    return {
        "frame_id": f"{idx:06d}",
        "points": scan["points"],
        "labels": labels,
        "dontcare": dontcare,
        "calib": calib,
        "image": render_image(scan["points"], calib, scan["object"] < 0) if with_image else None,
        "image_shape": IMAGE_SHAPE,
        "label_text": label_text(labels, dontcare),
        "calib_text": calib_to_text(calib),
        "plane_text": plane_text(road_plane(scene.ground, calib)),
        "scene_kind": scene.kind,
    }


def road_plane(ground: np.ndarray, calib: dict) -> np.ndarray:
    """Least-squares plane (a, b, c, d) of the ground in front of the car, in the rectified camera frame, normal up
    (b < 0): the ``training/planes`` files OpenPCDet's gt sampling reads when USE_ROAD_PLANE is on."""
    gx, gy = np.meshgrid(np.linspace(0.0, 50.0, 26), np.linspace(-20.0, 20.0, 21))
    gx, gy = gx.ravel(), gy.ravel()
    gz = ground_height(ground, gx, gy)
    rect = lidar_to_rect(np.stack([gx, gy, gz], axis=1), calib)
    # y_cam = p x + q z + r  ->  p x - y + q z + r = 0
    design = np.stack([rect[:, 0], rect[:, 2], np.ones(len(rect))], axis=1)
    (p, q, r), *_ = np.linalg.lstsq(design, rect[:, 1], rcond=None)
    plane = np.array([p, -1.0, q, r])
    return plane / np.linalg.norm(plane[:3])


def plane_text(plane: np.ndarray) -> str:
    return "# Matrix\nWIDTH 4\nHEIGHT 1\n" + " ".join(f"{v:.6e}" for v in plane) + "\n"


def _frame_summary(frame: dict) -> dict:
    return {
        "classes": dict(Counter(lb["name"] for lb in frame["labels"])),
        "difficulty": dict(Counter(f"{lb['name']}/{lb['difficulty']}" for lb in frame["labels"])),
        "dontcare": len(frame["dontcare"]),
        "points": len(frame["points"]),
    }


def write_frame(out_dir: Path, seed: int, idx: int, label_range: tuple | None = None) -> dict:
    frame = generate_frame(seed, idx, label_range=label_range)
    root = Path(out_dir) / "training"
    name = frame["frame_id"]
    frame["points"].astype(np.float32).tofile(root / "velodyne" / f"{name}.bin")
    (root / "label_2" / f"{name}.txt").write_text(frame["label_text"])
    (root / "calib" / f"{name}.txt").write_text(frame["calib_text"])
    (root / "planes" / f"{name}.txt").write_text(frame["plane_text"])
    buf = io.BytesIO()
    Image.fromarray(frame["image"]).save(buf, format="PNG", compress_level=1)
    (root / "image_2" / f"{name}.png").write_bytes(buf.getvalue())
    return _frame_summary(frame)


def _worker(args: tuple) -> dict:
    return write_frame(*args)


def _link_testing(out: Path, ids: list[int]) -> None:
    """testing/ = the test split's frames without labels (hard links into training/, copies where links fail),
    so that tools reading the test split from testing/ as in KITTI work unchanged."""
    for sub, ext in (("velodyne", "bin"), ("calib", "txt"), ("image_2", "png"), ("planes", "txt")):
        (out / "testing" / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            src = out / "training" / sub / f"{i:06d}.{ext}"
            dst = out / "testing" / sub / f"{i:06d}.{ext}"
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)


def split_ids(num_frames: int, seed: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic random train/val split of frame indices."""
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(num_frames)
    n_val = int(round(num_frames * val_fraction))
    val = sorted(int(i) for i in order[:n_val])
    train = sorted(int(i) for i in order[n_val:])
    return train, val


def generate_dataset(
    out_dir: str | Path,
    num_frames: int,
    seed: int,
    val_fraction: float = 0.5,
    workers: int = 1,
    progress: bool = True,
    label_range: tuple | None = None,
) -> Path:
    """Write a KITTI-layout data set to ``out_dir`` and return its path (``label_range``: see build_labels)."""
    out = Path(out_dir)
    for sub in ("velodyne", "label_2", "calib", "image_2", "planes"):
        (out / "training" / sub).mkdir(parents=True, exist_ok=True)
    (out / "ImageSets").mkdir(parents=True, exist_ok=True)

    tasks = [(out, seed, i, label_range) for i in range(num_frames)]
    start = time.perf_counter()
    summaries: list[dict] = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but keep the generator usable without it

        def tqdm(it, **_):
            return it

    if workers <= 1:
        for t in tqdm(tasks, desc="synthetic frames", disable=not progress):
            summaries.append(_worker(t))
    else:
        # fork keeps the compiled numba kernels of the parent; frames are independent so order does not matter
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        generate_frame(seed, 0, with_image=False)  # compile / load the numba cache once before forking
        with ctx.Pool(workers) as pool:
            it = pool.imap(_worker, tasks, chunksize=4)
            for s in tqdm(it, total=len(tasks), desc="synthetic frames", disable=not progress):
                summaries.append(s)
    elapsed = time.perf_counter() - start

    train, val = split_ids(num_frames, seed, val_fraction)
    (out / "ImageSets" / "train.txt").write_text("".join(f"{i:06d}\n" for i in train))
    (out / "ImageSets" / "val.txt").write_text("".join(f"{i:06d}\n" for i in val))
    (out / "ImageSets" / "test.txt").write_text("".join(f"{i:06d}\n" for i in val))
    _link_testing(out, val)

    classes: Counter = Counter()
    difficulty: Counter = Counter()
    for s in summaries:
        classes.update(s["classes"])
        difficulty.update(s["difficulty"])
    meta = {
        "generator": "pcdet.datasets.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "frames": num_frames,
        "val_fraction": val_fraction,
        "label_range": list(label_range) if label_range is not None else None,
        "num_train": len(train),
        "num_val": len(val),
        "image_shape": list(IMAGE_SHAPE),
        "lidar": {
            "beams": len(_SPEC.elevations),
            "elevation_deg": [round(float(np.rad2deg(e)), 3) for e in _SPEC.elevations[[0, -1]]],
            "azimuth_steps": _SPEC.num_cols,
            "min_range": _SPEC.min_range,
            "max_range": _SPEC.max_range,
            "range_noise": _SPEC.range_noise,
        },
        "label_counts": dict(sorted(classes.items())),
        "difficulty_counts": dict(sorted(difficulty.items())),
        "dontcare_count": int(sum(s["dontcare"] for s in summaries)),
        "mean_points_per_frame": float(np.mean([s["points"] for s in summaries])) if summaries else 0.0,
    }
    (out / "synthetic_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if progress:
        print(f"wrote {num_frames} frames to {out} in {elapsed:.1f} s ({num_frames / max(elapsed, 1e-9):.1f} frames/s)")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic KITTI-format LiDAR data set")
    parser.add_argument("--out", required=True, help="output directory (KITTI layout)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val_fraction", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--label_range",
        type=float,
        nargs=4,
        metavar=("X_MIN", "Y_MIN", "X_MAX", "Y_MAX"),
        help="LiDAR BEV extent to label; objects outside become DontCare (match your detector's range)",
    )
    args = parser.parse_args(argv)
    label_range = tuple(args.label_range) if args.label_range else None
    generate_dataset(args.out, args.frames, args.seed, args.val_fraction, args.workers, label_range=label_range)


if __name__ == "__main__":
    main()
