"""The KD benchmark's report: the table (mean ± std over seeds), the seed-paired differences to the plain student,
a bar chart, and the dev learning curves. Written by benchmarks/kd_benchmark.py after every finished run."""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from pcdet.utils.checkpoint_io import atomic_write_bytes, safe_load  # noqa: E402

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "global_step")

# The protocol, fixed before any run (docs/BENCHMARK.md starts with it; the script rewrites the page). The data
# and metric bullets are the family's data format's (tools/data_formats.py).
PROTOCOL = """## Protocol

- **Data: three splits from separate generator seeds**, {data}.
- **train** trains every model. **dev** serves every choice: schedules (learning curves), KD weights and options,
  which option configs are reported — `--split dev` and `--curves` write docs/BENCHMARK_DEV.md and
  docs/BENCHMARK_CURVES.md and never generate or open the test set. **test** is opened only by `--split test`,
  whose table is this page (tests/test_kd_benchmark.py checks both).
- **Runs**: seed s trains its own teacher (the table's first row, `--fix_random_seed --seed s`); every seed-s
  student distils from it with the same seed, so a student and its distilled twin see the same data order and their
  difference is paired. Students and teachers have the same schedule (`--epochs`) unless `--teacher_epochs` sets
  the teachers' apart (the short-schedule screen of docs/KD_STUDY.md: students 4 epochs, teachers 16).
- **Tuning budget** (PointPillars; SECOND runs the paper's settings and the frozen-adapter fix found here,
  PointRCNN the paper's, the nuScenes families their configs' settings): every KD method gets a dev screen at the
  4-epoch budget (seed 0) before its test rows: PointDistiller four variants (paper settings, frozen teacher
  adapter, per-sample graphs, BEV features), each baseline its first-guess weight and the weight whose KD gradient
  at iteration 1 equals PointDistiller's, ÷ 10, × 1 and × 10 (`--runs <baseline>_cal <baseline>_caldiv10
  <baseline>_calmul10`, dev only); the best on dev 3D mAP is what the test table runs.
- **Seeds per row**: the claim's rows (teacher, 4x, PointDistiller as chosen on dev) on every `--seeds` (more
  when the paired std asks for it); the rest of the core (PointDistiller's paper setting, the five baselines) on
  `--core_seeds`; 16x, ablations and option studies on `--study_seeds` (default: the first seed).
- **Metric**: {metric}; mean ± sample std over seeds; for distilled runs the seed-paired difference to the
  plain student of the same width, and whether its mean exceeds twice its sample std.
- **Interruption**: every run is an ordinary train.py / test.py call recorded in a stage book; the same command
  resumes (also across sessions) and skips what finished with the same inputs. Each finished row is also kept in
  the page's results record (`<page>.results.json`, committed with the page), so a lost machine loses only the
  unfinished runs (docs/RELIABILITY.md, rows 52-54).
"""


@dataclass
class Context:
    args: object
    runs: dict  # name -> (label, train cfg, eval cfg, distilled)
    split: str
    started: float
    planned: int  # (run, seed) jobs of this invocation
    code: str  # code_version() when the invocation started
    record: object = None  # the kd_record.ResultsRecord the jobs read and fill, if any


CODE_DIRS = ("pcdet", "tools", "benchmarks")


def code_version(repo: Path = REPO) -> str:
    """The checkout's commit, marked when its code (not the docs a report rewrites) differs: what produced a table."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", *CODE_DIRS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (f" with uncommitted changes in {', '.join(CODE_DIRS)}" if changed else "")


def count_parameters(ckpt: str | Path) -> int:
    """Trainable parameters of a checkpoint's model (its state dict without BatchNorm statistics and counters)."""
    state = safe_load(ckpt, map_location="cpu")["model_state"]
    return sum(v.numel() for k, v in state.items() if not k.endswith(_BUFFERS))


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def baseline_of(context: Context, name: str) -> str | None:
    """The plain student a distilled run is paired with (same width), None for the undistilled runs."""
    _, _, eval_cfg, distilled = context.runs[name]
    if not distilled:
        return None
    return next(n for n, (_, train_cfg, _, d) in context.runs.items() if not d and train_cfg == eval_cfg)


def _rows(context: Context, results: dict, name: str) -> dict[int, dict]:
    """seed -> metric row of the finished evaluations of run ``name``."""
    metrics, rows = context.args.format.metrics, {}
    for job_name, result in results.items():
        run, seed = job_name.split("/")
        if run == name:
            rows[int(seed.removeprefix("seed"))] = metrics.row(result["summary"]["metrics"]) | {
                "latency_ms": result["summary"].get("latency_ms"),
                "params": result["params"],
            }
    return rows


def paired(context: Context, results: dict, name: str, metric: str) -> list[float]:
    """Seed-paired differences ``run − its plain student`` (seeds where both finished)."""
    base = baseline_of(context, name)
    if base is None:
        return []
    mine, theirs = _rows(context, results, name), _rows(context, results, base)
    return [mine[s][metric] - theirs[s][metric] for s in sorted(mine) if s in theirs]


def verdict(diffs: list[float]) -> str:
    """Whether the mean paired gain exceeds 2 sample std of the paired differences (needs >= 2 seeds)."""
    if len(diffs) < 2:
        return "n/a (1 seed)" if diffs else "–"
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    return "yes" if mean > 2 * std and mean > 0 else "no"


def bar_chart(context: Context, results: dict, out_file: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in context.runs if _rows(context, results, n)]
    if not names:
        return None
    metrics = context.args.format.metrics
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.5), sharey=True)
    for ax, metric, title in zip(axes, metrics.primary, metrics.titles):
        values = [[r[metric] for r in _rows(context, results, n).values()] for n in names]
        means = [statistics.mean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        colours = ["tab:gray" if baseline_of(context, n) is None else "tab:blue" for n in names]
        ax.barh(range(len(names)), means, xerr=stds, color=colours, capsize=3)
        for i, (m, v) in enumerate(zip(means, values)):
            ax.text(m, i, f" {m:.1f} (n={len(v)})", va="center", fontsize=8)
        ax.set_title(f"{title}, {context.split} split (mean ± std over seeds)")
        ax.set_xlabel(metrics.axis)
    axes[0].set_yticks(range(len(names)), [context.runs[n][0] for n in names])
    axes[0].invert_yaxis()
    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return out_file


def default_report(args) -> Path:
    """Where a benchmark writes its table unless ``--report`` says otherwise: the family's page (BENCHMARK.md for
    PointPillars), with _DEV for the dev split and _KITTI for real KITTI."""
    stem = args.family.report.removesuffix(".md")
    if args.dataset != "synthetic":
        return REPO / "docs" / f"{stem}_KITTI.md"
    return REPO / "docs" / (f"{stem}_DEV.md" if args.split == "dev" else f"{stem}.md")


def _command(args) -> str:
    parts = ["benchmarks/kd_benchmark.py", "--dataset", args.dataset, "--split", args.split]
    if args.detector != "pointpillar":
        parts += ["--detector", args.detector]
    keys = [
        "runs",
        "seeds",
        "core_seeds",
        "study_seeds",
        "epochs",
        "teacher_epochs",
        "train_frames",
        "dev_frames",
        "test_frames",
        "parallel",
    ]
    if args.format.name == "nuscenes":
        keys.insert(-1, "samples_per_scene")
    keys += ["extra_tag", "teacher_tag"]
    for key in keys:
        value = getattr(args, key)
        parts += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    report = Path(args.report)
    if report != default_report(args):  # a reproduced run must rewrite the same page
        parts += ["--report", str(report.relative_to(REPO)) if report.is_relative_to(REPO) else str(report)]
    return ".venv/bin/python " + shlex.join(parts)


def _data_line(args, iters: int) -> str:
    if args.dataset == "kitti":
        return (
            f"Data: KITTI at {args.data_root}, trained on its train split, the table on its val split (the paper's "
            f"protocol and configs). Schedule: {args.epochs} epochs for teachers and students."
        )
    if args.format.name == "nuscenes":  # CBGS resampling sets an epoch's length: train.py's log has it
        scenes, schedule = f" in scenes of {args.samples_per_scene} key frames", "class-balanced (CBGS) epochs"
    else:
        scenes, schedule = "", f"epochs ({iters} iterations at batch {args.batch_size or 4})"
    return (
        f"Data: synthetic {args.format.label}, train {args.train_frames} frames + dev {args.dev_frames} "
        f"(generator seed 1), test {args.test_frames} (seed 2){scenes}. Schedule: students {args.epochs} "
        f"{schedule}, teachers {args.teacher_epochs}; the rest as in tools/cfgs/{args.format.cfg_dir}/*_synthetic.yaml."
    )


def _provenance(context: Context, results: dict, out_file: Path) -> list[str]:
    """Where the rows come from: the code versions that produced them, the results record, and any distilled row
    whose teacher checkpoint is not the one its seed's teacher row now holds (the teacher was trained again)."""
    codes: dict[str, int] = {}
    for result in results.values():
        code = result.get("code", context.code)
        codes[code] = codes.get(code, 0) + 1
    lines = ["Code: " + "; ".join(f"{code} ({n} runs)" for code, n in sorted(codes.items())) + "."]
    recorded = sorted(name for name, result in results.items() if result.get("from_record"))
    if context.record is not None:
        where = os.path.relpath(context.record.path, out_file.parent)
        lines.append(
            f"Every finished run is kept in the results record [{context.record.path.name}]({where}) (commit it with "
            f"this page): the same command, on any machine, takes its rows as done. {len(recorded)} of these rows "
            "come from it, finished by an earlier invocation."
        )
    stale = []
    for name, result in sorted(results.items()):
        teacher = results.get(f"teacher/{name.split('/')[1]}")
        if result.get("teacher_sha256") and teacher and teacher.get("ckpt_sha256") != result["teacher_sha256"]:
            stale.append(name)
    if stale:
        lines.append(
            f"Distilled from an earlier checkpoint of their seed's teacher (it was trained again, to other bits): "
            f"{', '.join(stale)}."
        )
    return lines


def write_report(context: Context, results: dict, out_file: Path) -> str:
    args = context.args
    metrics = args.format.metrics
    first, second = (metrics.columns[m] for m in metrics.primary)
    wall = (time.time() - context.started) / 60
    total = context.planned
    chart = bar_chart(context, results, out_file.parent / "images" / "benchmark" / f"{out_file.stem.lower()}.png")
    iters = math.ceil(args.train_frames / (args.batch_size or 4)) * args.epochs
    lines = [
        f"# KD benchmark, {context.runs['teacher'][0].removesuffix(' teacher')} — {context.split} split "
        "(written by benchmarks/kd_benchmark.py)",
        "",
        f"Status: {len(results)} of {total} runs evaluated. Reproduce / resume: `{_command(args)}`",
        "",
        "What the dev-split experiments found, and why, is in [KD_STUDY.md](KD_STUDY.md).",
        "",
        PROTOCOL.format(data=args.format.data, metric=metrics.protocol),
        "## Results",
        "",
        f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {args.parallel} runs "
        f"side by side; code of this invocation: {context.code}; its wall time {wall:.0f} min. "
        f"{_data_line(args, iters)} Seed s: teacher trained with seed s, the seed-s students distil from it.",
        "",
        *(line for part in _provenance(context, results, out_file) for line in (part, "")),
        f"{metrics.describe} on the **{context.split}** split, mean ± sample std over the seeds a row holds. "
        "Latency: test.py --infer_time, batch 1, measured while another run shared the CPU (indicative only).",
        "",
        "| run | seeds | params (M) | latency (ms) | " + " | ".join(metrics.columns.values()) + " |",
        "|---|---|---|---|" + "---|" * len(metrics.columns),
    ]
    for name in ["teacher", *(n for n in args.runs if n != "teacher")]:
        rows = _rows(context, results, name)
        if not rows:
            lines.append(f"| {context.runs[name][0]} | 0 | | | " + " | ".join("–" for _ in metrics.columns) + " |")
            continue
        params = next(iter(rows.values()))["params"] / 1e6
        latencies = [r["latency_ms"] for r in rows.values() if r["latency_ms"] is not None]
        latency = f"{statistics.median(latencies):.1f}" if latencies else "n/a"
        cells = " | ".join(mean_std([r[m] for r in rows.values()]) for m in metrics.columns)
        lines.append(f"| {context.runs[name][0]} | {len(rows)} | {params:.2f} | {latency} | {cells} |")
    lines += [
        "",
        "Seed-paired differences to the plain student of the same width (same seed: same teacher, same data order), "
        f"mean ± sample std; 'gain > 2 std' asks whether the mean {first} gain exceeds twice that std.",
        "",
        f"| run | vs | seeds | Δ {first} | Δ {second} | gain > 2 std ({first}) |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.runs:
        base = baseline_of(context, name)
        if base is None:
            continue
        d3, dbev = (paired(context, results, name, metric) for metric in metrics.primary)
        lines.append(
            f"| {context.runs[name][0]} | {context.runs[base][0]} | {len(d3)} | {mean_std(d3)} | {mean_std(dbev)} "
            f"| {verdict(d3)} |"
        )
    if chart is not None:
        lines += ["", f"![mean ± std per run]({os.path.relpath(chart, out_file.parent)})"]
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(text.encode(), out_file)
    return text


def write_curves(context: Context, curves: dict, out_file: Path) -> Path:
    """Dev learning curves: the two headline metrics (KITTI: moderate 3D / BEV mAP) and the table's third column of
    each kept epoch checkpoint (table + PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = context.args.format.metrics
    third = list(metrics.columns)[2]
    series: dict[str, dict[int, list[dict]]] = {}
    for job_name, result in curves.items():
        _, name, _seed, _ = job_name.split("/")
        series.setdefault(name, {}).setdefault(result["epoch"], []).append(metrics.row(result["metrics"]))
    iters_per_epoch = math.ceil(context.args.train_frames / (context.args.batch_size or 4))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines = [
        "# Learning curves on the dev split (written by benchmarks/kd_benchmark.py --split dev --curves)",
        "",
        f"Each point: an epoch checkpoint of one {context.args.epochs}-epoch run ({iters_per_epoch} iterations per "
        "epoch), evaluated on dev; mean over seeds. The schedule is one-cycle, so a mid-run checkpoint is not what a "
        "shorter schedule would reach: the curve shows where training stops paying, not the best short schedule.",
        "",
        f"| run | epoch | iterations | seeds | {' | '.join(metrics.columns[m] for m in (*metrics.primary, third))} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_epoch in series.items():
        epochs = sorted(by_epoch)
        for ax, metric in zip(axes, metrics.primary):
            ax.plot(
                [e * iters_per_epoch for e in epochs],
                [statistics.mean(r[metric] for r in by_epoch[e]) for e in epochs],
                marker="o",
                label=context.runs[name][0],
            )
        for e in epochs:
            rows = by_epoch[e]
            cells = " | ".join(mean_std([r[m] for r in rows]) for m in (*metrics.primary, third))
            lines.append(f"| {context.runs[name][0]} | {e} | {e * iters_per_epoch} | {len(rows)} | {cells} |")
    for ax, title in zip(axes, (f"{t} (dev)" for t in metrics.titles)):
        ax.set_title(title)
        ax.set_xlabel("training iterations")
        ax.grid(alpha=0.3)
        ax.legend()
    png = out_file.parent / "images" / "benchmark" / "learning_curves_dev.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    lines += ["", f"![learning curves]({os.path.relpath(png, out_file.parent)})"]
    atomic_write_bytes(("\n".join(lines) + "\n").encode(), out_file)
    return out_file
