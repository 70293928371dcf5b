"""The KD benchmark on the synthetic set: teacher, 4x/16x students, every KD loss, ablations; mean ± std over seeds.

    .venv/bin/python benchmarks/kd_benchmark.py                       # full protocol, 3 seeds -> docs/BENCHMARK.md
    .venv/bin/python benchmarks/kd_benchmark.py --runs teacher 4x pointdistiller --seeds 0

Every run is an ordinary ``train.py`` / ``test.py`` call (printed before it starts), made through the main job's
runner, so finished runs are skipped when the script is started again (it can be interrupted and resumed). Seed s
trains its own teacher, and the seed-s students distil from it. The table is rewritten after every finished run,
with the number of seeds each row holds. Accuracy is KITTI moderate R40 AP on the synthetic val split, which is
never used for any choice (configs are fixed before the run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import main_job  # noqa: E402  (tools/ is not a package; the runner lives there)

# name -> (row label, train config, eval config, distilled from the teacher?)
RUNS = {
    "teacher": ("PointPillars teacher", "pointpillar_synthetic.yaml", "pointpillar_synthetic.yaml", False),
    "4x": ("4x student", "pointpillar_4x_synthetic.yaml", "pointpillar_4x_synthetic.yaml", False),
    "16x": ("16x student", "pointpillar_16x_synthetic.yaml", "pointpillar_16x_synthetic.yaml", False),
    "pointdistiller": ("4x + PointDistiller", "pointpillar_kd_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "pointdistiller_16x": (
        "16x + PointDistiller",
        "pointpillar_kd_16x_synthetic.yaml",
        "pointpillar_16x_synthetic.yaml",
        True,
    ),
    "fitnet": ("4x + FitNet", "pointpillar_kd_fitnet_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "at": ("4x + Attention Transfer", "pointpillar_kd_at_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "sp": ("4x + Similarity-Preserving", "pointpillar_kd_sp_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "response": ("4x + response KD", "pointpillar_kd_response_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "agkd": ("4x + attention-guided KD", "pointpillar_kd_agkd_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "ld_only": ("4x + PD, LD only", "pointpillar_kd_ld_only_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "rl_only": ("4x + PD, RL only", "pointpillar_kd_rl_only_synthetic.yaml", "pointpillar_4x_synthetic.yaml", True),
    "zscore": (
        "4x + PD, z-score, tau 1",
        "pointpillar_kd_zscore_synthetic.yaml",
        "pointpillar_4x_synthetic.yaml",
        True,
    ),
    "max_tau01": (
        "4x + PD, max-norm, tau 0.1",
        "pointpillar_kd_max_tau01_synthetic.yaml",
        "pointpillar_4x_synthetic.yaml",
        True,
    ),
}
METRICS = ("mAP_bev", "mAP_3d", "Car_3d", "Pedestrian_3d", "Cyclist_3d")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="data set seed (one data set for every run)")
    parser.add_argument("--data_dir", type=str, default=str(REPO / "data" / "synthetic_kitti"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--extra_tag", type=str, default="kd_benchmark")
    parser.add_argument("--output_root", type=str, default=None)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--report", type=str, default=str(REPO / "docs" / "BENCHMARK.md"))
    return parser.parse_args(argv)


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def write_report(args, results: dict, wall_s: float) -> str:
    lines = [
        "# KD benchmark (synthetic KITTI-format data, CPU)",
        "",
        "Reproduce: `.venv/bin/python benchmarks/kd_benchmark.py "
        + " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in _cli(args).items())
        + "`",
        "",
        f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads = cores; "
        f"wall time so far {wall_s / 60:.0f} min. Data: {args.frames} synthetic frames (seed {args.seed}), half "
        "train / half val; schedule and all other settings as in tools/cfgs/kitti_models/*_synthetic.yaml.",
        "",
        "KITTI moderate R40 AP on the val split, mean ± std (sample std) over the seeds a row holds.",
        "",
        "| run | seeds | mAP BEV | mAP 3D | Car 3D | Pedestrian 3D | Cyclist 3D |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.runs:
        rows = [results[(name, s)] for s in args.seeds if (name, s) in results]
        cells = " | ".join(mean_std([r[m] for r in rows]) for m in METRICS)
        lines.append(f"| {RUNS[name][0]} | {len(rows)} | {cells} |")
    text = "\n".join(lines) + "\n"
    Path(args.report).write_text(text)
    return text


def _cli(args) -> dict:
    keys = ("runs", "seeds", "frames", "seed", "epochs", "batch_size")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    runner = main_job.setup(args, "kd_benchmark")
    results: dict = {}
    raw_file = runner.job_dir / "results.json"
    for seed in args.seeds:
        tag = f"{args.extra_tag}_seed{seed}"
        teacher_ckpt = None
        # The teacher trains first (also when not reported): the distilled runs of this seed need it.
        for name in ["teacher", *(r for r in args.runs if r != "teacher")]:
            label, train_cfg, eval_cfg, distilled = RUNS[name]
            teacher = teacher_ckpt if distilled else None
            ckpt, _ = runner.train(f"{name}/seed{seed}", train_cfg, tag, seed=seed, teacher_ckpt=teacher)
            if name == "teacher":
                teacher_ckpt = ckpt
            summary = runner.test(f"{name}/seed{seed}", eval_cfg, ckpt)
            row = main_job.model_row(label, summary["metrics"], 0, summary["latency_ms"])
            results[(name, seed)] = row
            raw_file.write_text(json.dumps({f"{k[0]}/seed{k[1]}": v for k, v in results.items()}, indent=2))
            write_report(args, results, time.time() - start)
    print(write_report(args, results, time.time() - start))


if __name__ == "__main__":
    main()
