"""The data formats the staged runs (KD benchmark) train and evaluate on: where a format's configs live, how its
synthetic protocol data is made, what a stage passes to point a config at a data directory, and which metrics a
table shows. One registry (``FORMATS``) so a benchmark family only names its format.

KITTI: the synthetic KITTI-format set of ``pcdet.datasets.synthetic.generate`` + ``create_kitti_infos``; KITTI
moderate R40 AP. nuScenes: the synthetic nuScenes-layout set of ``pcdet.datasets.synthetic.generate_nuscenes`` in
``v1.0-trainval`` (its scene names put each scene in the devkit's train or val split) + ``create_nuscenes_infos``;
nuscenes-devkit's DetectionEval (mAP, NDS, TP errors), reported ×100 for mAP, NDS and AP as papers do.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import stage_runner
from tqdm import tqdm

from pcdet.datasets.nuscenes import nuscenes_eval
from pcdet.datasets.synthetic import GENERATOR_VERSION
from pcdet.utils.checkpoint_io import atomic_write_bytes


@dataclass(frozen=True)
class MetricSet:
    """The columns of a benchmark table (metric key → header), in order; ``primary`` are the two headline metrics
    (the paired differences, the bar chart) with their chart titles; ``row`` maps test.py's result_metrics.json to
    the keys."""

    columns: dict[str, str]
    primary: tuple[str, str]
    titles: tuple[str, str]
    axis: str
    describe: str
    protocol: str  # the Metric bullet of the report's protocol
    row: Callable[[dict], dict]


KITTI_METRICS = MetricSet(
    columns={"mAP_3d": "mAP 3D", "mAP_bev": "mAP BEV"}
    | {f"{c}_{m}": f"{c[:3]} {m.upper()}" for c in stage_runner.CLASSES for m in ("3d", "bev")},
    primary=("mAP_3d", "mAP_bev"),
    titles=("moderate 3D mAP", "moderate BEV mAP"),
    axis="AP (R40)",
    describe="KITTI moderate R40 AP",
    protocol="KITTI moderate R40 AP (the official-devkit-equivalent evaluator), BEV and 3D, per class and the "
    "3-class mean",
    row=stage_runner.metric_row,
)

NUSCENES_CLASSES = ("car", "pedestrian", "bicycle", "traffic_cone")  # the table's per-class columns (of 10)
NUSCENES_ERRORS = tuple(nuscenes_eval.TP_ERRORS.values())  # mATE ... mAAE, as format_metrics names them


def nuscenes_metric_row(metrics: dict) -> dict:
    """mAP, NDS and per-class AP ×100, TP errors as the devkit gives them, from test.py's result_metrics.json."""
    nan = float("nan")
    row = {key: 100.0 * metrics.get(key, nan) for key in ("mAP", "NDS")}
    row |= {f"{c}_AP": 100.0 * metrics.get(f"{c}_AP", nan) for c in NUSCENES_CLASSES}
    return row | {err: metrics.get(err, nan) for err in NUSCENES_ERRORS}


NUSCENES_METRICS = MetricSet(
    columns={"mAP": "mAP", "NDS": "NDS"}
    | {f"{c}_AP": f"{c.replace('traffic_', '')} AP" for c in NUSCENES_CLASSES}
    | {err: err for err in NUSCENES_ERRORS},
    primary=("mAP", "NDS"),
    titles=("nuScenes mAP", "nuScenes NDS"),
    axis="×100",
    describe="nuscenes-devkit DetectionEval (detection_cvpr_2019): mAP, NDS and per-class AP ×100, TP errors",
    protocol="nuscenes-devkit's own DetectionEval (detection_cvpr_2019) on the val scenes: mAP and NDS over the "
    "ten classes, per-class AP (four shown), the mean TP errors",
    row=nuscenes_metric_row,
)


@dataclass(frozen=True)
class Sizes:
    """Frames of the protocol's three splits; nuScenes makes them of scenes of ``samples_per_scene`` key frames."""

    train: int
    dev: int
    test: int
    samples_per_scene: int = 10


class DataFormat:
    name: str
    label: str  # how a report names the synthetic data's format
    cfg_dir: str  # under tools/cfgs/
    metrics: MetricSet
    default_root: str  # the protocol data's folder under the repository
    sizes: Sizes  # the protocol's defaults
    data: str  # the Data bullet of the report's protocol

    def set_cfgs(self, data_dir: Path) -> list[str]:
        """``--set`` arguments that point a config of this format at ``data_dir``."""
        return ["DATA_CONFIG.DATA_PATH", str(data_dir)]

    def data_meta(self, data_dir: Path) -> dict:
        """What identifies the data in ``data_dir`` (part of every stage key that reads it)."""
        meta_file = data_dir / "synthetic_meta.json"
        return json.loads(meta_file.read_text()) if meta_file.exists() else {}

    def prepare(self, root: Path, sizes: Sizes, teacher_cfg: str, with_test: bool) -> tuple[Path, Path | None, dict]:
        """(trainval directory, test directory or None, the trainval data's meta), generating what is missing."""
        raise NotImplementedError


class KittiFormat(DataFormat):
    name, label, cfg_dir, metrics = "kitti", "KITTI-format", "kitti_models", KITTI_METRICS
    default_root, sizes = "data/synthetic_bench", Sizes(800, 200, 500)
    data = (
        "synthetic KITTI-format (docs/SYNTHETIC.md), labelled in the detectors' BEV range. "
        "`data/synthetic_bench/trainval`: generator seed 1, train + dev frames with disjoint ids; "
        "`data/synthetic_bench/test`: generator seed 2, every frame an evaluation frame"
    )

    def prepare(self, root: Path, sizes: Sizes, teacher_cfg: str, with_test: bool) -> tuple[Path, Path | None, dict]:
        specs = stage_runner.protocol_data(root, sizes.train, sizes.dev, sizes.test)
        pc_range = list(stage_runner.stage_config(teacher_cfg, []).DATA_CONFIG.POINT_CLOUD_RANGE)
        meta = stage_runner.prepare_data(specs["trainval"], pc_range)
        if with_test:
            stage_runner.prepare_data(specs["test"], pc_range)
        return specs["trainval"].path, specs["test"].path if with_test else None, meta


class NuScenesFormat(DataFormat):
    name, label, cfg_dir, metrics = "nuscenes", "nuScenes-layout", "nuscenes_models", NUSCENES_METRICS
    default_root, sizes = "data/synthetic_bench_nuscenes", Sizes(400, 100, 250)
    version = "v1.0-trainval"
    data = (
        "synthetic nuScenes layout (docs/SYNTHETIC.md: 32 beams, 10 sweeps per key frame, moving objects, all ten "
        "classes), v1.0-trainval scene names, so the devkit's train / val splits apply. "
        "`data/synthetic_bench_nuscenes/trainval`: generator seed 1, train scenes + dev (val) scenes; "
        "`data/synthetic_bench_nuscenes/test`: generator seed 2, val scenes only, every frame an evaluation frame"
    )

    def set_cfgs(self, data_dir: Path) -> list[str]:
        return ["DATA_CONFIG.DATA_PATH", str(data_dir), "DATA_CONFIG.VERSION", self.version]

    def data_meta(self, data_dir: Path) -> dict:
        ready = data_dir / self.version / "bench_ready.json"
        return json.loads(ready.read_text()) if ready.exists() else {}

    def prepare(self, root: Path, sizes: Sizes, teacher_cfg: str, with_test: bool) -> tuple[Path, Path | None, dict]:
        per_scene = sizes.samples_per_scene
        for split, frames in (("train", sizes.train), ("dev", sizes.dev), ("test", sizes.test)):
            if frames <= 0 or frames % per_scene:
                raise SystemExit(f"error: --{split}_frames {frames} is not a positive multiple of {per_scene}")
        trainval, test = root / "trainval", root / "test"
        scenes = (sizes.train + sizes.dev) // per_scene
        meta = self._prepare_one(trainval, stage_runner.TRAINVAL_SEED, scenes, sizes.dev // per_scene, per_scene)
        if with_test:
            self._prepare_one(test, stage_runner.TEST_SEED, sizes.test // per_scene, sizes.test // per_scene, per_scene)
        return trainval, test if with_test else None, meta

    def _prepare_one(self, data_dir: Path, seed: int, scenes: int, val_scenes: int, per_scene: int) -> dict:
        """Generate ``scenes`` scenes (``val_scenes`` of them val) and their infos + gt database, unless
        ``<version>/bench_ready.json`` (written last) says this directory holds exactly them."""
        out = data_dir.resolve() / self.version
        want = {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "scenes": scenes,
            "val_scenes": val_scenes,
            "samples_per_scene": per_scene,
        }
        ready = out / "bench_ready.json"
        if ready.exists() and json.loads(ready.read_text()) == want:
            tqdm.write(f"[skip] data: {out} holds these {scenes} scenes (seed {seed})")
            return want
        if out.exists():  # another size or seed: its sweeps and infos must not mix with these
            shutil.rmtree(out)
        py = sys.executable
        generate = [py, "-m", "pcdet.datasets.synthetic.generate_nuscenes", "--out", str(out), "--version"]
        generate += [self.version, "--scenes", str(scenes), "--val_scenes", str(val_scenes)]
        generate += ["--samples", str(per_scene), "--seed", str(seed)]
        out.mkdir(parents=True)
        stage_runner.run(generate, out / "generate.log")
        infos = [py, "-m", "pcdet.datasets.nuscenes.nuscenes_dataset", "--func", "create_nuscenes_infos"]
        infos += ["--cfg_file", "cfgs/dataset_configs/synthetic_nuscenes_dataset.yaml", "--version", self.version]
        infos += ["--data_path", str(data_dir.resolve())]
        stage_runner.run(infos, out / "create_infos.log")
        atomic_write_bytes(json.dumps(want, indent=1).encode(), ready)
        return want


FORMATS: dict[str, DataFormat] = {fmt.name: fmt for fmt in (KittiFormat(), NuScenesFormat())}
