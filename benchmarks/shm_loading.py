"""Data-loading time with and without ``DATA_CONFIG.USE_SHARED_MEMORY``, same process, alternating frame by frame.

Run from the repository root:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/shm_loading.py --data_path data/synthetic_kitti --frames 100

Two training datasets on the same frames, one reading the ``.bin`` files (warm page cache: every file is read once
before timing) and one reading the shared-memory copies, sampled alternately: the raw read (``get_lidar``) and a
whole training sample (``__getitem__``: read, augmentation, range crop, voxelisation). Prints medians (ms) and the
one-off copy time. A cold page cache (first epoch from a slow disk), where shared memory gains most, is not
measured: dropping the machine's caches would disturb everyone else on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.kitti.kitti_dataset import KittiDataset

ROOT = Path(__file__).resolve().parents[1]


def build(cfg_file: Path, data_path: Path, frames: int, shared: bool) -> KittiDataset:
    cwd = os.getcwd()
    os.chdir(ROOT / "tools")  # _BASE_CONFIG_ paths are relative to tools/
    try:
        cfg = cfg_from_yaml_file(str(cfg_file), EasyDict())
    finally:
        os.chdir(cwd)
    data_cfg = cfg.DATA_CONFIG
    data_cfg.USE_SHARED_MEMORY = shared
    data_cfg.SHARED_MEMORY_FILE_LIMIT = frames
    dataset = KittiDataset(data_cfg, cfg.CLASS_NAMES, training=True, root_path=data_path)
    dataset.kitti_infos = dataset.kitti_infos[:frames]
    return dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, default=ROOT / "tools/cfgs/kitti_models/pointpillar_synthetic.yaml")
    parser.add_argument("--data_path", type=Path, default=ROOT / "data" / "synthetic_kitti")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    disk = build(args.cfg, args.data_path, args.frames, shared=False)
    start = time.perf_counter()
    shm = build(args.cfg, args.data_path, args.frames, shared=True)
    copy_s = time.perf_counter() - start
    ids = [info["point_cloud"]["lidar_idx"] for info in disk.kitti_infos]
    assert shm.shared_points.frames == set(ids)
    for frame_id in ids:  # warm the page cache, and check both paths give the same points
        np.testing.assert_array_equal(disk.get_lidar(frame_id), shm.get_lidar(frame_id))

    # (wall, thread-CPU) seconds; CPU time includes the kernel's copy out of the page cache but not the time other
    # processes hold the core.
    times: dict[str, list[tuple[float, float]]] = {"read disk": [], "read shm": [], "sample disk": [], "sample shm": []}

    def timed(fn) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        return time.perf_counter() - start, time.thread_time() - start_cpu

    for _ in range(args.rounds):
        for index, frame_id in enumerate(ids):
            for name, dataset in (("disk", disk), ("shm", shm)):
                times[f"read {name}"].append(timed(lambda d=dataset, f=frame_id: d.get_lidar(f)))
                np.random.seed(index)  # the same augmentation for both
                times[f"sample {name}"].append(timed(lambda d=dataset, i=index: d[i]))
    shm.shared_points.close()

    size_mb = sum(disk._lidar_file(f).stat().st_size for f in ids) / 2**20
    print(f"{len(ids)} frames ({size_mb:.0f} MiB), copied to shared memory in {copy_s:.2f} s")
    print("| per frame | clock | disk (page cache) ms | shared memory ms | disk / shm |\n|---|---|---:|---:|---:|")
    for what in ("read", "sample"):
        for k, clock in enumerate(("wall", "CPU")):
            d = 1000 * statistics.median(t[k] for t in times[f"{what} disk"])
            s = 1000 * statistics.median(t[k] for t in times[f"{what} shm"])
            print(f"| {what} | {clock} | {d:.2f} | {s:.2f} | {d / s:.2f} |")


if __name__ == "__main__":
    main()
