"""The main job: synthetic KITTI data → teacher → 4x student → 4x student + PointDistiller / + FitNet → table.

    cd tools && python main_job.py            (README's first command runs this after setting up the venv)

Every stage is an ordinary command printed before it runs (``python train.py ...``, ``python test.py ...``), so it
can be copied and re-run by hand. A stage is skipped when it already finished with the same inputs: its key hashes
the resolved config, the data set's metadata, the stage's command line and, for KD stages, the teacher checkpoint.
Results land in ``output/main_job/<extra_tag>/``: ``results.md``/``results.json`` (the table), loss curves and BEV
renderings of teacher, student and KD student on the same validation frame (PNG).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _init_path  # noqa: F401  (repo root on sys.path when pcdet is not installed)
import numpy as np
import torch
from easydict import EasyDict
from train_utils.experiment import experiment_output_dir, load_experiment_config

from pcdet.config import cfg as base_cfg
from pcdet.datasets import build_dataloader
from pcdet.datasets.synthetic import GENERATOR_VERSION
from pcdet.models import build_network, load_data_to_gpu
from pcdet.utils import common_utils
from pcdet.utils.checkpoint_io import atomic_write_bytes

TOOLS_DIR = Path(__file__).resolve().parent
ROOT_DIR = TOOLS_DIR.parent
CLASSES = ("Car", "Pedestrian", "Cyclist")


@dataclass
class Stage:
    """One trained model of the comparison."""

    name: str  # short id used for eval tags and file names
    label: str  # row label in the table
    train_cfg: str  # config train.py trains with
    eval_cfg: str  # config test.py evaluates with (the plain student config for KD runs)
    teacher: str | None = None  # stage whose final checkpoint is the KD teacher
    ckpt: Path | None = field(default=None, init=False)
    run_dir: Path | None = field(default=None, init=False)


STAGES = [
    Stage("teacher", "PointPillars teacher", "pointpillar_synthetic.yaml", "pointpillar_synthetic.yaml"),
    Stage("student", "4x student", "pointpillar_4x_synthetic.yaml", "pointpillar_4x_synthetic.yaml"),
    Stage(
        "pointdistiller",
        "4x + PointDistiller",
        "pointpillar_kd_synthetic.yaml",
        "pointpillar_4x_synthetic.yaml",
        teacher="teacher",
    ),
    Stage("fitnet", "4x + FitNet", "pointpillar_kd_fitnet_synthetic.yaml", "pointpillar_4x_synthetic.yaml", "teacher"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400, help="synthetic frames to generate (half train, half val)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (training uses --fix_random_seed)")
    parser.add_argument("--data_dir", type=str, default=str(ROOT_DIR / "data" / "synthetic_kitti"))
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers for training and testing")
    parser.add_argument("--epochs", type=int, default=None, help="override every config's NUM_EPOCHS")
    parser.add_argument("--batch_size", type=int, default=None, help="override every config's batch size")
    parser.add_argument("--extra_tag", type=str, default="main_job")
    parser.add_argument("--output_root", type=str, default=None, help="replaces <repo>/output")
    parser.add_argument("--fresh", action="store_true", help="ignore finished stages and run everything again")
    return parser.parse_args(argv)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run(cmd: list[str], log_file: Path) -> str:
    """Run a stage command from tools/, echoing it in copyable form; its output is teed into ``log_file``."""
    print(f"\n$ cd tools && {shlex.join(cmd)}", flush=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=TOOLS_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            lines.append(line)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"stage failed (exit {code}): {shlex.join(cmd)}\nlog: {log_file}")
    return "".join(lines)


class StageBook:
    """Which stages finished with which inputs (a JSON file), so a re-run skips them."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.done = {} if fresh or not path.exists() else json.loads(path.read_text())

    def finished(self, name: str, key: str, *artifacts: Path) -> bool:
        return self.done.get(name) == key and all(a.exists() for a in artifacts)

    def mark(self, name: str, key: str) -> None:
        self.done[name] = key
        atomic_write_bytes(json.dumps(self.done, indent=2).encode(), self.path)


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_config(cfg_name: str, set_cfgs: list[str]) -> EasyDict:
    config = copy.deepcopy(base_cfg)
    return load_experiment_config(str(Path("cfgs/kitti_models") / cfg_name), set_cfgs, config)


def prepare_data(args, book: StageBook, point_cloud_range: list[float]) -> dict:
    data_dir = Path(args.data_dir).resolve()
    label_range = [point_cloud_range[0], point_cloud_range[1], point_cloud_range[3], point_cloud_range[4]]
    key = key_of("data", GENERATOR_VERSION, args.frames, args.seed, label_range, str(data_dir))
    infos = data_dir / "kitti_infos_val.pkl"
    if not book.finished("data", key, infos, data_dir / "synthetic_meta.json"):
        py = sys.executable
        generate = [py, "-m", "pcdet.datasets.synthetic.generate", "--out", str(data_dir), "--frames", str(args.frames)]
        generate += ["--seed", str(args.seed), "--workers", "2", "--label_range", *map(str, label_range)]
        run(generate, data_dir / "generate.log")
        infos_cmd = [py, "-m", "pcdet.datasets.kitti.kitti_dataset", "create_kitti_infos"]
        infos_cmd += ["cfgs/dataset_configs/synthetic_kitti_dataset.yaml", "--data_path", str(data_dir)]
        infos_cmd += ["--workers", "2"]
        run(infos_cmd, data_dir / "create_infos.log")
        book.mark("data", key)
    else:
        print(f"[skip] data: {data_dir} is up to date")
    return json.loads((data_dir / "synthetic_meta.json").read_text())


class Runner:
    """Runs train.py / test.py stages for one experiment tag, skipping those already done with the same inputs."""

    def __init__(self, args: argparse.Namespace, job_dir: Path, meta: dict, set_cfgs: list[str]) -> None:
        self.args = args
        self.job_dir = job_dir
        self.meta = meta
        self.set_cfgs = set_cfgs
        self.out_root = Path(args.output_root).resolve() if args.output_root else ROOT_DIR / "output"
        self.book = StageBook(job_dir / "stages.json", args.fresh)

    def train(
        self, name: str, cfg_name: str, extra_tag: str, seed: int | None = None, teacher_ckpt: Path | None = None
    ) -> tuple[Path, Path]:
        """Train ``cfg_name`` (unless done) and return ``(final checkpoint, run directory)``."""
        cfg = stage_config(cfg_name, self.set_cfgs)
        epochs = self.args.epochs or cfg.OPTIMIZATION.NUM_EPOCHS
        run_dir = experiment_output_dir(cfg, extra_tag, self.out_root)
        ckpt = run_dir / "ckpt" / f"checkpoint_epoch_{epochs}.pth"
        cmd = [sys.executable, "train.py", "--cfg_file", f"cfgs/kitti_models/{cfg_name}", "--extra_tag", extra_tag]
        cmd += ["--fix_random_seed", "--workers", str(self.args.workers), "--epochs", str(epochs)]
        cmd += ["--skip_eval", "--max_ckpt_save_num", "1"]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        if self.args.batch_size:
            cmd += ["--batch_size", str(self.args.batch_size)]
        if self.args.output_root:
            cmd += ["--output_root", str(self.out_root)]
        teacher_sha = None
        if teacher_ckpt is not None:
            cmd += ["--teacher_ckpt", str(teacher_ckpt)]
            teacher_sha = sha256_file(teacher_ckpt)
        cmd += ["--set", *self.set_cfgs]
        key = key_of("train", cfg, self.meta, cmd[1:], teacher_sha)
        if self.book.finished(f"train/{name}", key, ckpt):
            print(f"[skip] train {name}: {ckpt} is up to date")
            return ckpt, run_dir
        # Changed inputs invalidate old checkpoints: train.py would otherwise resume from them. Same inputs keep
        # them, so a killed main job resumes its interrupted stage.
        previous = self.book.done.get(f"train/{name}", "").removeprefix("running:")
        if previous not in ("", key) and (run_dir / "ckpt").exists():
            for old in (run_dir / "ckpt").glob("*.pth"):
                old.unlink()
        self.book.mark(f"train/{name}", f"running:{key}")
        run(cmd, self.job_dir / "logs" / f"train_{name}.log")
        self.book.mark(f"train/{name}", key)
        return ckpt, run_dir

    def test(self, name: str, cfg_name: str, ckpt: Path) -> dict:
        """Evaluate ``ckpt`` with ``cfg_name`` (unless done): ``{latency_ms, result_dir, metrics}``."""
        cfg = stage_config(cfg_name, self.set_cfgs)
        cmd = [sys.executable, "test.py", "--cfg_file", f"cfgs/kitti_models/{cfg_name}", "--ckpt", str(ckpt)]
        cmd += ["--extra_tag", ckpt.parents[1].name, "--eval_tag", name, "--batch_size", "1"]
        cmd += ["--workers", str(self.args.workers), "--infer_time"]
        if self.args.output_root:
            cmd += ["--output_root", str(self.out_root)]
        cmd += ["--set", *self.set_cfgs]
        key = key_of("test", cfg, self.meta, cmd[1:], sha256_file(ckpt))
        summary_file = self.job_dir / "eval" / f"{name}.json"
        if self.book.finished(f"test/{name}", key, summary_file):
            print(f"[skip] test {name}: {summary_file} is up to date")
        else:
            log = run(cmd, self.job_dir / "logs" / f"test_{name}.log")
            result_dir = Path(re.findall(r"Result is saved to (\S+)", log)[-1])
            metrics = json.loads((result_dir / "result_metrics.json").read_text())
            summary = {"latency_ms": metrics.get("infer_time_ms"), "result_dir": str(result_dir), "metrics": metrics}
            summary_file.parent.mkdir(parents=True, exist_ok=True)
            summary_file.write_text(json.dumps(summary, indent=2))
            self.book.mark(f"test/{name}", key)
        return json.loads(summary_file.read_text())


def setup(args: argparse.Namespace, job_name: str) -> Runner:
    """Common start of the main job and the benchmark: chdir to tools/, make the data, open the stage book."""
    os.chdir(TOOLS_DIR)
    data_dir = Path(args.data_dir).resolve()
    set_cfgs = ["DATA_CONFIG.DATA_PATH", str(data_dir)]
    out_root = Path(args.output_root).resolve() if args.output_root else ROOT_DIR / "output"
    runner = Runner(args, out_root / job_name / args.extra_tag, {}, set_cfgs)
    teacher_cfg = stage_config(STAGES[0].train_cfg, set_cfgs)
    runner.meta = prepare_data(args, runner.book, list(teacher_cfg.DATA_CONFIG.POINT_CLOUD_RANGE))
    return runner


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    runner = setup(args, "main_job")
    ckpts = {}
    for stage in STAGES:
        teacher = ckpts[stage.teacher] if stage.teacher else None
        stage.ckpt, stage.run_dir = runner.train(stage.name, stage.train_cfg, args.extra_tag, teacher_ckpt=teacher)
        ckpts[stage.name] = stage.ckpt
    results = {stage.name: runner.test(stage.name, stage.eval_cfg, stage.ckpt) for stage in STAGES}
    table = summarise(runner, results)
    print("\n" + table)
    print(f"\nmain job finished in {(time.time() - start) / 60:.1f} min; results in {runner.job_dir}")


def model_row(label: str, metrics: dict, params: int, latency_ms: float | None) -> dict:
    row = {"model": label, "params_M": params / 1e6, "latency_ms": latency_ms}
    for c in CLASSES:
        for m in ("bev", "3d"):
            row[f"{c}_{m}"] = metrics.get(f"{c}_{m}/moderate_R40", float("nan"))
    row["mAP_bev"] = float(np.mean([row[f"{c}_bev"] for c in CLASSES]))
    row["mAP_3d"] = float(np.mean([row[f"{c}_3d"] for c in CLASSES]))
    return row


def summarise(runner: Runner, results: dict) -> str:
    """Count parameters, draw loss curves and BEV predictions on one val frame, write and return the table."""
    from visual_utils.bev_plot import render_bev, save_bev
    from visual_utils.plot_curves import plot_curves, read_scalars

    job_dir = runner.job_dir
    logger = common_utils.create_logger(job_dir / "summary.log")
    eval_cfg = stage_config(STAGES[1].eval_cfg, runner.set_cfgs)
    dataset, _, _ = build_dataloader(
        eval_cfg.DATA_CONFIG, eval_cfg.CLASS_NAMES, batch_size=1, dist=False, workers=0, logger=logger, training=False
    )
    frame = dataset[0]
    rows = []
    for stage in STAGES:
        cfg = stage_config(stage.eval_cfg, runner.set_cfgs)
        model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
        model.load_params_from_file(str(stage.ckpt), logger=logger, to_cpu=True)
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        rows.append(model_row(stage.label, results[stage.name]["metrics"], params, results[stage.name]["latency_ms"]))
        if stage.name in ("teacher", "student", "pointdistiller"):
            batch = dataset.collate_batch([frame])
            load_data_to_gpu(batch)
            with torch.no_grad():
                pred = model(batch)[0][0]
            fig = render_bev(
                frame["points"],
                pred_boxes=pred["pred_boxes"].cpu().numpy(),
                pred_scores=pred["pred_scores"].cpu().numpy(),
                pred_labels=pred["pred_labels"].cpu().numpy(),
                gt_boxes=dataset.kitti_infos[0]["annos"]["gt_boxes_lidar"],
                class_names=list(cfg.CLASS_NAMES),
                point_cloud_range=list(cfg.DATA_CONFIG.POINT_CLOUD_RANGE),
                title=f"{stage.label}: frame {frame['frame_id']}",
            )
            save_bev(fig, job_dir / f"bev_{stage.name}.png")
        try:
            plot_curves(read_scalars(stage.run_dir / "tensorboard"), job_dir / f"loss_{stage.name}.png")
        except (KeyError, FileNotFoundError) as exc:
            logger.warning(f"no loss curve for {stage.name}: {exc}")
    table = format_table(rows, "KITTI-style evaluation on the synthetic val split: moderate, R40 AP")
    (job_dir / "results.md").write_text(table + "\n")
    (job_dir / "results.json").write_text(json.dumps(rows, indent=2))
    return table


def format_table(rows: list[dict], title: str) -> str:
    header = "| model | params (M) | CPU latency (ms/frame) | "
    header += " | ".join(f"{c} BEV | {c} 3D" for c in CLASSES) + " | mAP BEV | mAP 3D |"
    lines = [title, "", header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        latency = f"{r['latency_ms']:.1f}" if r["latency_ms"] is not None else "n/a"
        cells = " | ".join(f"{r[f'{c}_bev']:.2f} | {r[f'{c}_3d']:.2f}" for c in CLASSES)
        lines.append(
            f"| {r['model']} | {r['params_M']:.2f} | {latency} | {cells} | {r['mAP_bev']:.2f} | {r['mAP_3d']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
