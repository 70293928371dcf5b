"""Overlay the KD self-diagnostics (KD.DIAGNOSE_EVERY, docs/KD.md) of several training runs, one panel per scalar.

    .venv/bin/python benchmarks/kd_diagnostics_plot.py RUN_DIR [RUN_DIR ...] --labels paper frozen --out kd.png

Each RUN_DIR is a train.py output directory (its tensorboard/ is read). Default panels: the PointDistiller term, its
gradient ratio and cosine to the detection gradient, the adapters' dead-output share and spread, and where the RL
weight goes (foreground share, effective number of queries). Missing scalars leave a panel empty for that run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from visual_utils.plot_curves import panel_grid, read_scalars, save_panels  # noqa: E402

DEFAULT_TAGS = [
    "kd/PointDistiller",
    "kd/grad/PointDistiller_ratio",
    "kd/grad/PointDistiller_cos_det",
    "kd/PointDistiller/teacher_adapter_zero_share",
    "kd/PointDistiller/teacher_adapter_std",
    "kd/PointDistiller/student_adapter_std",
    "kd/PointDistiller/rl_fg_weight_share",
    "kd/PointDistiller/node_fg_share",
    "kd/PointDistiller/rl_effective_queries",
]


def plot(run_dirs: list[Path], labels: list[str], tags: list[str], out: Path) -> Path:
    runs = [read_scalars(d) for d in run_dirs]
    fig, axes = panel_grid(len(tags))
    for ax, tag in zip(axes, tags):
        for scalars, label in zip(runs, labels):
            series = scalars.get(f"train/{tag}", {})
            steps = sorted(series)
            ax.plot(steps, [series[s] for s in steps], marker=".", linewidth=1.0, label=label)
        ax.set_title(tag, fontsize=9)
    axes[0].legend(fontsize=8)
    return save_panels(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--labels", nargs="+", default=None)
    parser.add_argument("--tags", nargs="+", default=DEFAULT_TAGS)
    parser.add_argument("--out", type=Path, default=Path("kd_diagnostics.png"))
    args = parser.parse_args(argv)
    labels = args.labels or [d.name for d in args.run_dirs]
    if len(labels) != len(args.run_dirs):
        parser.error("give one label per run directory")
    print(f"wrote {plot(args.run_dirs, labels, args.tags, args.out)}")


if __name__ == "__main__":
    main()
