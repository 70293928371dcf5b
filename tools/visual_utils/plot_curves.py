"""Plot a training run's loss terms (and learning rate) against the iteration, one panel per scalar.

    python visual_utils/plot_curves.py ../output/kitti_models/pointpillar/default [--out curves.png]
    python visual_utils/plot_curves.py ../output/.../train_20240101-120000.log

A run directory is read from its ``tensorboard/`` event files (no tensorboard installation needed: the records are
decoded with tensorboardX's protobuf classes); a ``.log`` file from the ``Train:`` lines that ``train.py`` writes
by default (not with ``--use_tqdm_to_record``). When a run was resumed, the scalars of the later file win for
repeated iterations.
"""

from __future__ import annotations

import argparse
import re
import struct
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Scalars = dict[str, dict[int, float]]  # tag -> {step: value}

_LOG_STEP = re.compile(r"\bAcc_iter (\d+)\b")
_LOG_LR = re.compile(r"\bLR ([-+0-9.eE]+)")
_LOG_LOSS = re.compile(r"\bLoss ([-+0-9.eE]+|nan|inf)")
_LOG_TERM = re.compile(r"(?<![\w/])([A-Za-z_][\w/]*)=([-+0-9.eE]+|nan|inf)(?=\s|$)")


def _event_records(path: Path):
    """Payloads of a TFRecord file (length, length-crc, payload, payload-crc); a truncated tail is ignored."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            break  # the writer was killed mid-record
        yield data[start:end]
        pos = end + 4


def read_event_file(path: str | Path, into: Scalars | None = None) -> Scalars:
    """Scalar summaries of one ``events.out.tfevents.*`` file."""
    from tensorboardX.proto import event_pb2

    scalars: Scalars = {} if into is None else into
    for payload in _event_records(Path(path)):
        event = event_pb2.Event.FromString(payload)
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":
                scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    return scalars


def read_tensorboard_scalars(run_dir: str | Path) -> Scalars:
    """Scalars of every event file under ``run_dir`` (its ``tensorboard/`` when present), oldest file first."""
    run_dir = Path(run_dir)
    root = run_dir / "tensorboard" if (run_dir / "tensorboard").is_dir() else run_dir
    files = sorted(root.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    if not files:
        raise FileNotFoundError(f"no tensorboard event files under {root}")
    scalars: Scalars = {}
    for path in files:
        read_event_file(path, into=scalars)
    return scalars


def read_log_scalars(log_file: str | Path) -> Scalars:
    """Scalars of the ``Train:`` lines of a training log (``train/loss``, ``meta_data/learning_rate`` and every
    ``name=value`` loss term as ``train/name``), keyed by ``Acc_iter``."""
    scalars: Scalars = {}
    for line in Path(log_file).read_text(errors="replace").splitlines():
        if "Train:" not in line:
            continue
        step_match = _LOG_STEP.search(line)
        if step_match is None:
            continue
        step = int(step_match.group(1))
        for regex, tag in ((_LOG_LOSS, "train/loss"), (_LOG_LR, "meta_data/learning_rate")):
            match = regex.search(line)
            if match:
                scalars.setdefault(tag, {})[step] = float(match.group(1))
        for name, value in _LOG_TERM.findall(line):
            scalars.setdefault(f"train/{name}", {})[step] = float(value)
    if not scalars:
        raise ValueError(f"no 'Train:' lines with Acc_iter in {log_file} (was it written with --use_tqdm_to_record?)")
    return scalars


def read_scalars(source: str | Path) -> Scalars:
    source = Path(source)
    if source.is_file() and source.name.startswith("events.out.tfevents."):
        return read_event_file(source)
    if source.is_file():
        return read_log_scalars(source)
    return read_tensorboard_scalars(source)


def plot_curves(scalars: Scalars, out_file: str | Path, tags: list[str] | None = None) -> Path:
    """One panel per tag (default: every ``train/*`` term, then the learning rate), value against iteration."""
    if tags is None:
        tags = sorted(t for t in scalars if t.startswith("train/"))
        tags += [t for t in ("meta_data/learning_rate",) if t in scalars]
    missing = [t for t in tags if t not in scalars]
    if missing or not tags:
        raise KeyError(f"no scalars for {missing or 'any tag'}; available: {', '.join(sorted(scalars))}")
    fig, axes = panel_grid(len(tags))
    for ax, tag in zip(axes, tags):
        steps = sorted(scalars[tag])
        ax.plot(steps, [scalars[tag][s] for s in steps], linewidth=1.0)
        ax.set_title(tag, fontsize=9)
    return save_panels(fig, out_file)


def panel_grid(count: int):
    """A figure of ``count`` small panels (3 per row) against the iteration; returns (figure, the used axes)."""
    cols = min(3, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:count]


def save_panels(fig, out_file: str | Path) -> Path:
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Plot loss curves of a training run")
    parser.add_argument("source", help="run directory, tensorboard event file or train_*.log")
    parser.add_argument("--out", default=None, help="PNG to write (default: <run dir>/loss_curves.png)")
    parser.add_argument("--tags", nargs="+", default=None, help="scalars to plot (default: train/* and the LR)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "loss_curves.png"
    written = plot_curves(read_scalars(source), out, args.tags)
    print(f"wrote {written}")
    return written


if __name__ == "__main__":
    main()
