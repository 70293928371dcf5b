"""Speed of the KITTI evaluator on the full label set (7481 frames), all classes, R11 + R40, bbox/bev/3d/aos.

    python benchmarks/kitti_eval_speed.py [--label_path DIR] [--result_path DIR] [--repeat 3]

Three situations, each in a fresh process so that imports and numba are really cold:
* ``compile``: empty numba cache (first run after install / after editing the kernels);
* ``cold``:    numba cache on disk (the usual first call of a new process);
* ``warm``:    a second call in the same process.
Times: ``load`` = reading labels + results, ``eval`` = ``get_official_eval_result`` (Car, Pedestrian, Cyclist).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _child(label_path: str, result_path: str) -> dict:
    t0 = time.perf_counter()
    from pcdet.datasets.kitti.kitti_object_eval_python import eval as kitti_eval
    from pcdet.datasets.kitti.kitti_object_eval_python import kitti_common

    t1 = time.perf_counter()
    gt = kitti_common.get_label_annos(label_path)
    dt = kitti_common.get_label_annos(result_path, num_columns=16)
    t2 = time.perf_counter()
    kitti_eval.get_official_eval_result(gt, dt, [0, 1, 2])
    t3 = time.perf_counter()
    kitti_eval.get_official_eval_result(gt, dt, [0, 1, 2])
    t4 = time.perf_counter()
    return {"frames": len(gt), "import": t1 - t0, "load": t2 - t1, "first_eval": t3 - t2, "second_eval": t4 - t3}


def _run_child(label_path: str, result_path: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--label_path", label_path, "--result_path", result_path],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label_path", default=str(SHARED / "kitti_labels" / "label_2"))
    parser.add_argument("--result_path", default=str(SHARED / "kitti_dets" / "noisy_all"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per situation; the best is reported")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.label_path, args.result_path)))
        return 0

    rows = {"compile": [], "cold": [], "warm": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            first = _run_child(args.label_path, args.result_path, cache)  # empty cache: compiles, fills the cache
            again = _run_child(args.label_path, args.result_path, cache)  # new process, cache on disk
        rows["compile"].append(first["first_eval"])
        rows["cold"].append(again["first_eval"])
        rows["warm"].append(again["second_eval"])
    print(f"labels: {args.label_path} ({again['frames']} frames)\nresults: {args.result_path}")
    print(f"cpu cores available: {len(os.sched_getaffinity(0))}; best of {args.repeat}")
    print(f"import {again['import']:.2f} s, load labels + results {again['load']:.2f} s")
    for name, vals in rows.items():
        print(f"eval {name:8s} {min(vals):6.2f} s   (all: {', '.join(f'{v:.2f}' for v in vals)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
