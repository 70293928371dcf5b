"""What the main job and the KD benchmark share: data stages, train.py / test.py stages that are skipped when done with
the same inputs, and a scheduler that runs independent stages side by side.

A stage is an ordinary command (printed in copyable form). Its key hashes the resolved config, the data set's
metadata, the command line and, for KD stages, the teacher checkpoint's sha256; the stage book (a JSON file) records
the key of every finished stage, so a re-run skips it and a killed run resumes its interrupted stage (train.py
resumes from its newest checkpoint).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import _init_path  # noqa: F401  (repo root on sys.path when pcdet is not installed)
from easydict import EasyDict
from tqdm import tqdm
from train_utils.experiment import experiment_output_dir, load_experiment_config

from pcdet.config import cfg as base_cfg
from pcdet.datasets.synthetic import GENERATOR_VERSION
from pcdet.utils.checkpoint_io import atomic_write_bytes, file_sha256

TOOLS_DIR = Path(__file__).resolve().parent
ROOT_DIR = TOOLS_DIR.parent


def key_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Where a train.py / test.py output line says how far it is: tqdm bars ("epochs:  25%|..| 4/16", "train: ..| 51/200",
# "eval: ..| 10/500") and the logger's "Train: epoch 5/16 [51/200]" lines.
_BAR = re.compile(r"\b(epochs|train|eval)\b[^|\n]*\|[^|\n]*\|\s*(\d+)/(\d+)")
_TRAIN_LINE = re.compile(r"Train: epoch (\d+)/(\d+) \[(\d+)/(\d+)\]")


class StageProgress:
    """Fraction done of a quiet stage, read from its output, shown as one tqdm bar of the scheduler's process."""

    def __init__(self, label: str, position: int) -> None:
        self.bar = tqdm(total=1000, desc=label, position=position, leave=True, dynamic_ncols=True)
        self.epoch = [0, 1]  # done, total

    def feed(self, line: str) -> None:
        done = None
        if m := _TRAIN_LINE.search(line):
            epoch, epochs, it, its = map(int, m.groups())
            done = (epoch - 1 + it / its) / epochs
        elif m := _BAR.search(line):
            kind, it, total = m.group(1), int(m.group(2)), max(int(m.group(3)), 1)
            if kind == "epochs":
                self.epoch = [it, total]
                done = it / total
            else:
                done = (self.epoch[0] + it / total) / self.epoch[1] if kind == "train" else it / total
        if done is not None:
            self.bar.n = min(1000, int(done * 1000))
            self.bar.refresh()

    def close(self) -> None:
        self.bar.n = 1000
        self.bar.close()


def run(
    cmd: list[str], log_file: Path, echo: bool = True, env: dict | None = None, progress: StageProgress | None = None
) -> str:
    """Run a command from tools/, announcing it in copyable form; its output goes to ``log_file`` (and, with
    ``echo``, to stdout as it comes; stages that run side by side stay quiet, show ``progress`` and are read from
    their logs)."""
    tqdm.write(f"\n$ cd tools && {shlex.join(cmd)}" + ("" if echo else f"   (log: {log_file})"))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=TOOLS_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
            elif progress is not None:
                progress.feed(line)
            log.write(line)
            lines.append(line)
        code = proc.wait()
    if progress is not None:
        progress.close()
    if code != 0:
        tail = "" if echo else "".join(lines[-15:])
        raise SystemExit(f"{tail}stage failed (exit {code}): {shlex.join(cmd)}\nlog: {log_file}")
    return "".join(lines)


class StageBook:
    """Which stages finished with which inputs (a JSON file), so a re-run skips them. Thread-safe."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.done = {} if fresh or not path.exists() else json.loads(path.read_text())
        self._lock = threading.Lock()

    def finished(self, name: str, key: str, *artifacts: Path) -> bool:
        return self.done.get(name) == key and all(a.exists() for a in artifacts)

    def mark(self, name: str, key: str) -> None:
        with self._lock:
            self.done[name] = key
            atomic_write_bytes(json.dumps(self.done, indent=2).encode(), self.path)


def stage_config(cfg_name: str, set_cfgs: list[str], cfg_dir: str = "kitti_models") -> EasyDict:
    config = copy.deepcopy(base_cfg)
    return load_experiment_config(str(Path("cfgs") / cfg_dir / cfg_name), set_cfgs, config)


@dataclass(frozen=True)
class DataSpec:
    """One generated synthetic data set: ``frames`` frames of generator seed ``seed``, ``val_fraction`` of them in
    the val split (1.0: a held-out set that is all evaluation)."""

    path: Path
    frames: int
    seed: int
    val_fraction: float = 0.5


# The protocol's data (docs/BENCHMARK.md): train + dev in one directory (generator seed 1, disjoint frame ids), test
# in another (generator seed 2), all frames of which are evaluation frames. The main job and the benchmark share them.
TRAINVAL_SEED, TEST_SEED = 1, 2


def protocol_data(root: Path, train_frames: int, dev_frames: int, test_frames: int) -> dict[str, DataSpec]:
    trainval = train_frames + dev_frames
    return {
        "trainval": DataSpec(root / "trainval", trainval, TRAINVAL_SEED, val_fraction=dev_frames / trainval),
        "test": DataSpec(root / "test", test_frames, TEST_SEED, val_fraction=1.0),
    }


def prepare_data(spec: DataSpec, point_cloud_range: list[float], workers: int = 2) -> dict:
    """Generate the frames and their infos unless the directory already holds exactly this data set (its
    ``synthetic_meta.json`` records generator version, seed, frame count, split and label range); returns the meta."""
    data_dir = spec.path.resolve()
    label_range = [float(v) for v in (*point_cloud_range[0:2], *point_cloud_range[3:5])]
    want = {
        "generator_version": GENERATOR_VERSION,
        "seed": spec.seed,
        "frames": spec.frames,
        "val_fraction": spec.val_fraction,
        "label_range": label_range,
    }
    meta_file, infos_done = data_dir / "synthetic_meta.json", data_dir / "kitti_infos_test.pkl"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if infos_done.exists() and all(meta.get(k) == v for k, v in want.items()):
        tqdm.write(f"[skip] data: {data_dir} holds these {spec.frames} frames (seed {spec.seed})")
        return meta
    py = sys.executable
    generate = [py, "-m", "pcdet.datasets.synthetic.generate", "--out", str(data_dir), "--frames", str(spec.frames)]
    generate += ["--seed", str(spec.seed), "--val_fraction", str(spec.val_fraction), "--workers", str(workers)]
    generate += ["--label_range", *map(str, label_range)]
    infos_done.unlink(missing_ok=True)  # written last by create_kitti_infos: its presence marks a finished set
    run(generate, data_dir / "generate.log")
    infos_cmd = [py, "-m", "pcdet.datasets.kitti.kitti_dataset", "create_kitti_infos"]
    infos_cmd += ["cfgs/dataset_configs/synthetic_kitti_dataset.yaml", "--data_path", str(data_dir)]
    infos_cmd += ["--workers", str(workers)]
    run(infos_cmd, data_dir / "create_infos.log")
    return json.loads(meta_file.read_text())


class Runner:
    """Runs train.py / test.py stages for one job directory, skipping those already done with the same inputs.

    Training always reads ``DATA_CONFIG.DATA_PATH`` = ``train_data`` (its train split); ``test`` evaluates on the
    val split of the data directory it is given. ``threads`` (torch/OpenMP threads per stage process) and ``echo``
    are set by whoever schedules the stages (side by side: one thread each, quiet). ``data_format`` (a name of
    ``data_formats.FORMATS``) says where the configs live and how a stage points one at a data directory.
    """

    def __init__(
        self,
        args,
        job_dir: Path,
        train_data: Path,
        meta: dict,
        threads: int | None = None,
        data_format: str = "kitti",
    ) -> None:
        from data_formats import FORMATS  # it builds on this module

        self.args = args
        self.job_dir = job_dir
        self.train_data = train_data.resolve()
        self.meta = meta
        self.format = FORMATS[data_format]
        self.set_cfgs = self.format.set_cfgs(self.train_data)
        self.out_root = Path(args.output_root).resolve() if args.output_root else ROOT_DIR / "output"
        self.book = StageBook(job_dir / "stages.json", args.fresh)
        self.threads = threads
        self.echo = True  # False: stages run side by side; each shows one progress bar (show_progress) instead
        self.show_progress = False
        self._free_rows = list(range(16))
        self._rows_lock = threading.Lock()

    def _run(self, cmd: list[str], log_file: Path, label: str) -> str:
        row, progress = None, None
        if not self.echo and self.show_progress:
            with self._rows_lock:
                row = self._free_rows.pop(0)
            progress = StageProgress(label, row)
        try:
            return run(cmd, log_file, echo=self.echo, env=self._env(), progress=progress)
        finally:
            if row is not None:
                with self._rows_lock:
                    self._free_rows.insert(0, row)

    def _env(self) -> dict | None:
        if self.threads is None:
            return None
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}

    def train(
        self,
        name: str,
        cfg_name: str,
        extra_tag: str,
        seed: int | None = None,
        teacher_ckpt: Path | None = None,
        epochs: int | None = None,
        keep_ckpts: int = 1,
    ) -> tuple[Path, Path]:
        """Train ``cfg_name`` (unless done) and return ``(final checkpoint, run directory)``; ``keep_ckpts`` epoch
        checkpoints are kept (learning curves evaluate them)."""
        cfg = stage_config(cfg_name, self.set_cfgs, self.format.cfg_dir)
        epochs = epochs or self.args.epochs or cfg.OPTIMIZATION.NUM_EPOCHS
        run_dir = experiment_output_dir(cfg, extra_tag, self.out_root)
        ckpt = run_dir / "ckpt" / f"checkpoint_epoch_{epochs}.pth"
        cfg_file = f"cfgs/{self.format.cfg_dir}/{cfg_name}"
        cmd = [sys.executable, "train.py", "--cfg_file", cfg_file, "--extra_tag", extra_tag]
        cmd += ["--fix_random_seed", "--workers", str(self.args.workers), "--epochs", str(epochs)]
        cmd += ["--skip_eval", "--max_ckpt_save_num", str(keep_ckpts)]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        if self.args.batch_size:
            cmd += ["--batch_size", str(self.args.batch_size)]
        if self.args.output_root:
            cmd += ["--output_root", str(self.out_root)]
        teacher_sha = None
        if teacher_ckpt is not None:
            cmd += ["--teacher_ckpt", str(teacher_ckpt)]
            teacher_sha = file_sha256(teacher_ckpt)
        cmd += ["--set", *self.set_cfgs]
        key = key_of("train", cfg, self.meta, cmd[1:], teacher_sha)
        if self.book.finished(f"train/{name}", key, ckpt):
            tqdm.write(f"[skip] train {name}: {ckpt} is up to date")
            return ckpt, run_dir
        # Changed inputs invalidate old checkpoints: train.py would otherwise resume from them. Same inputs keep
        # them, so a killed job resumes its interrupted stage.
        previous = self.book.done.get(f"train/{name}", "").removeprefix("running:")
        if previous not in ("", key) and (run_dir / "ckpt").exists():
            for old in (run_dir / "ckpt").glob("*.pth"):
                old.unlink()
        self.book.mark(f"train/{name}", f"running:{key}")
        log_name = name.replace("/", "_")
        self._run(cmd, self.job_dir / "logs" / f"train_{log_name}.log", f"train {name}")
        self.book.mark(f"train/{name}", key)
        return ckpt, run_dir

    def test(self, name: str, cfg_name: str, ckpt: Path, data_dir: Path | None = None) -> dict:
        """Evaluate ``ckpt`` with ``cfg_name`` on the val split of ``data_dir`` (default: the training data's) unless
        done: ``{latency_ms, result_dir, metrics}``."""
        data_dir = (data_dir or self.train_data).resolve()
        set_cfgs = self.format.set_cfgs(data_dir)
        cfg = stage_config(cfg_name, set_cfgs, self.format.cfg_dir)
        cmd = [sys.executable, "test.py", "--cfg_file", f"cfgs/{self.format.cfg_dir}/{cfg_name}", "--ckpt", str(ckpt)]
        cmd += ["--extra_tag", ckpt.parents[1].name, "--eval_tag", name.replace("/", "_"), "--batch_size", "1"]
        cmd += ["--workers", str(self.args.workers), "--infer_time"]
        if self.args.output_root:
            cmd += ["--output_root", str(self.out_root)]
        cmd += ["--set", *set_cfgs]
        key = key_of("test", cfg, self.format.data_meta(data_dir), cmd[1:], file_sha256(ckpt))
        summary_file = self.job_dir / "eval" / f"{name}.json"
        if self.book.finished(f"test/{name}", key, summary_file):
            tqdm.write(f"[skip] test {name}: {summary_file} is up to date")
        else:
            log = self._run(cmd, self.job_dir / "logs" / f"test_{name.replace('/', '_')}.log", f"test {name}")
            marker = "Result is saved to "
            result_dir = Path([line for line in log.splitlines() if marker in line][-1].split(marker)[-1].strip())
            metrics = json.loads((result_dir / "result_metrics.json").read_text())
            summary = {"latency_ms": metrics.get("infer_time_ms"), "result_dir": str(result_dir), "metrics": metrics}
            summary_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(json.dumps(summary, indent=2).encode(), summary_file)
            self.book.mark(f"test/{name}", key)
        return json.loads(summary_file.read_text())


@dataclass
class Job:
    """A unit of scheduled work: ``fn`` runs once every job named in ``after`` has finished."""

    name: str
    fn: Callable[[], object]
    after: tuple[str, ...] = ()
    result: object = field(default=None, init=False)


def run_jobs(jobs: list[Job], parallel: int, on_done: Callable[[Job], None] | None = None) -> dict[str, Job]:
    """Run ``jobs`` respecting ``after``, at most ``parallel`` at a time, in list order among the ready ones.

    A failing job stops the scheduling of new ones; the running ones finish, then its error is raised.
    """
    by_name = {job.name: job for job in jobs}
    unknown = {dep for job in jobs for dep in job.after if dep not in by_name}
    if unknown:
        raise ValueError(f"jobs depend on unknown jobs: {sorted(unknown)}")
    pending, done = list(jobs), set()
    running: dict[Future, Job] = {}
    error: BaseException | None = None
    start = time.time()
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        while pending or running:
            while error is None and len(running) < parallel:
                ready = next((j for j in pending if all(d in done for d in j.after)), None)
                if ready is None:
                    break
                pending.remove(ready)
                tqdm.write(f"[start] {ready.name}")
                running[pool.submit(ready.fn)] = ready
            if not running:
                if pending and error is None:
                    raise ValueError(f"jobs can never start (circular after?): {[j.name for j in pending]}")
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                exc = future.exception()
                if exc is not None:
                    error = error or exc
                    tqdm.write(f"[failed] {job.name}: {exc}")
                    continue
                job.result = future.result()
                done.add(job.name)
                tqdm.write(f"[done] {job.name} ({len(done)}/{len(jobs)}, {(time.time() - start) / 60:.1f} min)")
                if on_done is not None:
                    on_done(job)
    if error is not None:
        raise error
    return by_name


CLASSES = ("Car", "Pedestrian", "Cyclist")


def metric_row(metrics: dict) -> dict:
    """KITTI moderate R40 AP per class (BEV, 3D) and their 3-class means, from test.py's result_metrics.json."""
    row = {f"{c}_{m}": metrics.get(f"{c}_{m}/moderate_R40", float("nan")) for c in CLASSES for m in ("bev", "3d")}
    row["mAP_bev"] = sum(row[f"{c}_bev"] for c in CLASSES) / len(CLASSES)
    row["mAP_3d"] = sum(row[f"{c}_3d"] for c in CLASSES) / len(CLASSES)
    return row
