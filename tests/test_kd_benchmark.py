"""The KD benchmark's protocol: the scheduler, the splits, and that nothing but the test report opens the test set."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "benchmarks"))

import data_formats  # noqa: E402
import kd_benchmark  # noqa: E402
import kd_runs  # noqa: E402
from stage_runner import Job, run_jobs  # noqa: E402

PILLARS = kd_runs.FAMILIES["pointpillar"]


def test_run_jobs_orders_by_dependency_and_runs_side_by_side():
    events, lock = [], threading.Lock()

    def work(name, seconds=0.2):
        def fn():
            with lock:
                events.append(("start", name, time.perf_counter()))
            time.sleep(seconds)
            with lock:
                events.append(("end", name, time.perf_counter()))
            return name.upper()

        return fn

    jobs = [Job("b", work("b"), after=("a",)), Job("a", work("a")), Job("c", work("c"))]
    done = run_jobs(jobs, parallel=2)
    assert {name: job.result for name, job in done.items()} == {"a": "A", "b": "B", "c": "C"}
    at = {(kind, name): t for kind, name, t in events}
    assert at[("start", "b")] >= at[("end", "a")]  # b waits for a
    assert at[("start", "c")] < at[("end", "a")]  # c runs beside a
    with pytest.raises(ValueError, match="unknown"):
        run_jobs([Job("x", work("x"), after=("nope",))], parallel=1)


def test_core_rows_take_every_seed_and_studies_the_study_seeds():
    args = kd_benchmark.parse_args(["--seeds", "1", "2", "0"])
    assert args.study_seeds == [1]  # default: the first seed
    core = {name for name in args.runs if all(kd_benchmark.seeded(name, s, args) for s in (0, 1, 2))}
    assert core == set(PILLARS.core)
    assert kd_benchmark.seeded("16x", 1, args) and not kd_benchmark.seeded("16x", 2, args)
    assert not kd_benchmark.seeded("4x", 5, args)  # not a seed of this invocation at all
    args = kd_benchmark.parse_args(["--seeds", "0", "1", "--study_seeds", "0", "1"])
    assert all(kd_benchmark.seeded("ld_only", s, args) for s in (0, 1))
    with pytest.raises(SystemExit):  # a study seed without its core rows would have no teacher
        kd_benchmark.parse_args(["--seeds", "0", "--study_seeds", "3"])
    # More seeds for the claim's rows only (the paired std asked for them), the rest of the core on three.
    args = kd_benchmark.parse_args(["--seeds", "1", "2", "0", "3", "4", "--core_seeds", "1", "2", "0"])
    on_seed_4 = {name for name in args.runs if kd_benchmark.seeded(name, 4, args)}
    assert on_seed_4 == set(PILLARS.claim) == {"teacher", "4x", "pd_frozen"}
    assert kd_benchmark.seeded("fitnet", 0, args) and not kd_benchmark.seeded("fitnet", 3, args)
    with pytest.raises(SystemExit):
        kd_benchmark.parse_args(["--seeds", "0", "--core_seeds", "0", "1"])


def test_weight_screens_are_dev_only_and_not_default():
    screens = set(PILLARS.screens)
    assert {"fitnet_cal", "sp_caldiv10", "agkd_calmul10", "sp_caldiv100"} <= screens
    assert not screens & set(kd_benchmark.parse_args([]).runs)
    assert kd_benchmark.parse_args(["--split", "dev", "--runs", "fitnet_cal"]).runs == ["fitnet_cal"]
    with pytest.raises(SystemExit):
        kd_benchmark.parse_args(["--split", "test", "--runs", "4x", "fitnet_cal"])
    for _, train_cfg, _, _ in PILLARS.screens.values():  # each screen config exists
        assert (REPO / "tools" / "cfgs" / "kitti_models" / train_cfg).is_file()


def test_each_family_has_its_configs_tag_and_page():
    for family in kd_runs.FAMILIES.values():
        cfg_dir = REPO / "tools" / "cfgs" / data_formats.FORMATS[family.data_format].cfg_dir
        assert "teacher" in family.core and set(family.core) <= set(family.runs)
        for _, train_cfg, eval_cfg, distilled in family.runs.values():
            assert (cfg_dir / train_cfg).is_file() and (cfg_dir / eval_cfg).is_file()
            assert distilled == (train_cfg != eval_cfg)  # a KD config trains, its plain student evaluates
    args = kd_benchmark.parse_args(["--detector", "second", "--seeds", "1"])
    assert args.extra_tag == "bench_second" and Path(args.report).name == "BENCHMARK_SECOND.md"
    assert "pd_frozen" in args.runs and "at" not in args.runs
    assert Path(kd_benchmark.parse_args(["--split", "dev"]).report).name == "BENCHMARK_DEV.md"
    with pytest.raises(SystemExit):  # a PointPillars-only row asked of PointRCNN
        kd_benchmark.parse_args(["--detector", "pointrcnn", "--runs", "at"])
    args = kd_benchmark.parse_args(["--detector", "centerpoint", "--seeds", "1"])
    assert args.format.name == "nuscenes" and args.epochs == 1 and args.train_frames == 400
    assert Path(args.data_root).name == "synthetic_bench_nuscenes"
    assert Path(args.report).name == "BENCHMARK_CENTERPOINT.md"
    with pytest.raises(SystemExit):  # real KITTI has no nuScenes family
        kd_benchmark.parse_args(["--detector", "pp_multihead", "--dataset", "kitti"])


def test_plan_lists_every_core_row_before_the_studies():
    args = kd_benchmark.parse_args(["--seeds", "1", "2", "0"])
    names = [job.name for job in kd_benchmark.plan(args, PILLARS.runs, None, Path("unused"), "test")]
    tiers = [kd_benchmark.tier(name.split("/")[0], PILLARS) for name in names]
    assert tiers == sorted(tiers) and set(tiers) == {0, 1, 2}  # claim rows, the other core rows, studies
    assert len(names) == 3 * len(PILLARS.core) + len(PILLARS.runs) - len(PILLARS.core)


def test_run_jobs_stops_scheduling_after_a_failure():
    ran = []

    def boom():
        raise RuntimeError("stage failed")

    jobs = [Job("bad", boom), Job("later", lambda: ran.append("later"), after=("bad",))]
    with pytest.raises(RuntimeError, match="stage failed"):
        run_jobs(jobs, parallel=2)
    assert ran == []


def _frame_hashes(data_dir: Path, split: str) -> dict[str, str]:
    ids = (data_dir / "ImageSets" / f"{split}.txt").read_text().split()
    return {i: hashlib.sha256((data_dir / "training" / "velodyne" / f"{i}.bin").read_bytes()).hexdigest() for i in ids}


@pytest.mark.slow
def test_dev_runs_never_open_the_test_split_and_splits_are_disjoint(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "kd_benchmark.py"), "--split", "dev", "--runs", "4x"]
    cmd += ["--seeds", "0", "--train_frames", "6", "--dev_frames", "4", "--test_frames", "4", "--epochs", "1"]
    cmd += ["--batch_size", "2", "--workers", "0", "--parallel", "2", "--data_root", str(data)]
    cmd += ["--output_root", str(out), "--report", str(tmp_path / "dev.md")]
    dev = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert dev.returncode == 0, dev.stdout[-3000:] + dev.stderr[-3000:]
    assert not (data / "test").exists()  # the dev study never generated, let alone read, the test set
    report = (tmp_path / "dev.md").read_text()
    assert "dev split" in report and "| 4x student | 1 | 1.22 |" in report

    # The test report reuses the trained runs (no retraining) and evaluates them on the separate test set.
    test_cmd = [c if c != "dev" else "test" for c in cmd[:-1]] + [str(tmp_path / "test.md")]
    test = subprocess.run(test_cmd, capture_output=True, text=True, timeout=600)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert "train.py --cfg_file" not in test.stdout  # every training stage was skipped
    assert test.stdout.count(f"DATA_CONFIG.DATA_PATH {data / 'test'}") == 2  # teacher + 4x, on test only
    train, dev_frames = _frame_hashes(data / "trainval", "train"), _frame_hashes(data / "trainval", "val")
    test_frames = _frame_hashes(data / "test", "val")
    assert len(train) == 6 and len(dev_frames) == 4 and len(test_frames) == 4
    assert set(train).isdisjoint(dev_frames)
    assert len(set(train.values()) | set(dev_frames.values()) | set(test_frames.values())) == 14

    # The machine is lost (output/ gone): the committed results record still holds the rows, nothing runs again.
    shutil.rmtree(out)
    again = subprocess.run(test_cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "train.py --cfg_file" not in again.stdout and "test.py --cfg_file" not in again.stdout
    assert "| 4x student | 1 | 1.22 |" in (tmp_path / "test.md").read_text()
    assert (tmp_path / "test.results.json").is_file() and (tmp_path / "dev.results.json").is_file()


KITTI_REAL = REPO.parent / "shared" / "data" / "kitti_real"


@pytest.mark.slow
@pytest.mark.skipif(not KITTI_REAL.is_dir(), reason="shared KITTI sample frames not available")
def test_kitti_protocol_runs_the_papers_configs_on_real_frames(tmp_path):
    from test_kitti_data import _link_kitti

    from pcdet.datasets.kitti.kitti_dataset import main as kitti_infos

    kitti = _link_kitti(tmp_path)
    kitti_infos(
        ["create_kitti_infos", str(REPO / "tools/cfgs/dataset_configs/kitti_dataset.yaml")]
        + ["--data_path", str(kitti), "--workers", "1"]
    )
    cmd = [sys.executable, str(REPO / "benchmarks" / "kd_benchmark.py"), "--dataset", "kitti", "--runs"]
    cmd += ["pointdistiller", "--seeds", "0", "--epochs", "1", "--batch_size", "3", "--workers", "0", "--parallel", "2"]
    cmd += ["--data_root", str(kitti), "--output_root", str(tmp_path / "out"), "--report", str(tmp_path / "kitti.md")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for cfg in ("pointpillar.yaml", "pointpillar_kd.yaml"):
        assert f"train.py --cfg_file cfgs/kitti_models/{cfg}" in run.stdout
    report = (tmp_path / "kitti.md").read_text()
    assert (
        "KITTI at" in report
        and "| 4x + PointDistiller | 1 | 1.22 |" in report
        and "| PointPillars teacher | 1 | 4.83 |" in report
    )
    refused = subprocess.run(cmd + ["--split", "dev"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no dev split" in refused.stderr


@pytest.mark.slow
def test_nuscenes_protocol_data_is_split_by_the_devkit_and_reused(tmp_path):
    pytest.importorskip("nuscenes")
    import pickle

    fmt, root = data_formats.FORMATS["nuscenes"], tmp_path / "bench"
    sizes = data_formats.Sizes(train=4, dev=2, test=2, samples_per_scene=2)
    teacher = kd_runs.FAMILIES["pp_multihead"].runs["teacher"][1]
    trainval, test, meta = fmt.prepare(root, sizes, teacher, with_test=False)
    assert test is None and not (root / "test").exists()  # a dev-split run never makes the test set
    trainval, test, meta = fmt.prepare(root, sizes, teacher, with_test=True)
    assert meta == fmt.data_meta(trainval) and meta["scenes"] == 3 and meta["val_scenes"] == 1

    def infos(data_dir: Path, split: str) -> list[dict]:
        return pickle.loads((data_dir / fmt.version / f"nuscenes_infos_10sweeps_{split}.pkl").read_bytes())

    train, dev, held_out = infos(trainval, "train"), infos(trainval, "val"), infos(test, "val")
    assert (len(train), len(dev), len(held_out), len(infos(test, "train"))) == (4, 2, 2, 0)
    tokens = [info["token"] for info in train + dev + held_out]
    assert len(set(tokens)) == 8  # no frame in two splits
    clouds = {(d / fmt.version / i["lidar_path"]).read_bytes() for d, s in ((trainval, train + dev), (test, held_out))
              for i in s}  # fmt: skip
    assert len(clouds) == 8
    assert fmt.set_cfgs(test) == ["DATA_CONFIG.DATA_PATH", str(test), "DATA_CONFIG.VERSION", "v1.0-trainval"]

    stamp = (trainval / fmt.version / "bench_ready.json").stat().st_mtime_ns
    fmt.prepare(root, sizes, teacher, with_test=True)  # the same sizes: nothing regenerated
    assert (trainval / fmt.version / "bench_ready.json").stat().st_mtime_ns == stamp
    fmt.prepare(root, data_formats.Sizes(2, 2, 2, 2), teacher, with_test=False)  # other sizes: made anew
    assert len(infos(trainval, "train")) == 2 and fmt.data_meta(trainval)["scenes"] == 2
    with pytest.raises(SystemExit, match="multiple of 2"):
        fmt.prepare(root, data_formats.Sizes(3, 2, 2, 2), teacher, with_test=False)


def test_nuscenes_table_columns_are_keys_the_devkit_summary_gives():
    from pcdet.datasets.nuscenes import nuscenes_eval, nuscenes_utils

    pytest.importorskip("nuscenes")
    from nuscenes.eval.common.config import config_factory

    empty = nuscenes_eval._empty_submission_summary(config_factory(nuscenes_eval.EVAL_CONFIG))
    empty["mean_ap"], empty["nd_score"] = 0.25, 0.5
    empty["mean_dist_aps"]["car"] = 0.75
    _, flat = nuscenes_eval.format_metrics(empty, list(nuscenes_utils.DETECTION_CLASSES))
    row = data_formats.NUSCENES_METRICS.row(flat)
    assert set(row) == set(data_formats.NUSCENES_METRICS.columns)
    assert (row["mAP"], row["NDS"], row["car_AP"], row["pedestrian_AP"], row["mATE"]) == (25.0, 50.0, 75.0, 0.0, 1.0)
