"""nuScenes data side on the synthetic nuScenes-layout set: the devkit loads it, infos / sweeps / gt database in
OpenPCDet's format, CBGS, batches, the devkit's evaluation round trip and bad input."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.nuscenes import nuscenes_utils
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset, create_nuscenes_infos
from pcdet.datasets.nuscenes.synthetic_batch import (
    SYNTHETIC_DATASET_CFG,
    prepare_synthetic_nuscenes,
    synthetic_nuscenes_batch,
    synthetic_nuscenes_dataset,
)
from pcdet.datasets.synthetic.generate_nuscenes import TABLES
from pcdet.utils.checkpoint_io import safe_pickle_load

if importlib.util.find_spec("nuscenes") is None and not os.environ.get("CI"):
    # CI installs the devkit (scripts/setup_env.sh), so there a missing devkit fails these tests instead.
    pytest.skip(nuscenes_utils.DEVKIT_MISSING, allow_module_level=True)

CLASSES = list(nuscenes_utils.DETECTION_CLASSES)
VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepare_synthetic_nuscenes(tmp_path_factory.mktemp("synthetic_nuscenes"))


def _infos(root, split: str) -> list[dict]:
    return safe_pickle_load(root / VERSION / f"nuscenes_infos_10sweeps_{split}.pkl")


def test_devkit_reads_the_synthetic_layout(root):
    from nuscenes import NuScenes

    nusc = NuScenes(version=VERSION, dataroot=str(root / VERSION), verbose=False)
    assert {t: len(getattr(nusc, t)) > 0 for t in TABLES} == {t: True for t in TABLES}
    assert {s["name"] for s in nusc.scene} == {"scene-0061", "scene-0103"}  # one mini_train, one mini_val scene
    sample = nusc.sample[1]
    path, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    assert len(points) > 10000 and len(boxes) == len(sample["anns"]) > 0
    assert set(np.unique(points[:, 4])) <= set(range(32))  # ring index of a 32-beam sensor
    assert points[:, 3].max() > 1.0  # intensity on nuScenes' 0-255 scale
    moving = [nusc.box_velocity(t) for t in sample["anns"]]
    assert max(np.hypot(v[0], v[1]) for v in moving if np.isfinite(v[0])) > 2.0


def test_infos_in_openpcdet_format(root):
    train, val = _infos(root, "train"), _infos(root, "val")
    assert len(train) == 2 and len(val) == 2
    info = val[1]
    keys = {"lidar_path", "token", "sweeps", "ref_from_car", "car_from_global", "timestamp", "gt_boxes"}
    keys |= {"gt_boxes_velocity", "gt_names", "gt_boxes_token", "num_lidar_pts", "num_radar_pts"}
    assert keys <= set(info)
    assert info["gt_boxes"].shape[1] == 9 and len(info["gt_names"]) == len(info["gt_boxes"])
    assert (info["num_lidar_pts"] > 0).all() and set(info["gt_names"]) <= set(CLASSES)
    assert set(CLASSES) <= {n for i in val for n in i["gt_names"]}  # every class is in the val scene
    sweeps = info["sweeps"]
    assert len(sweeps) == 9 and all(s["transform_matrix"].shape == (4, 4) for s in sweeps)
    lags = [s["time_lag"] for s in sweeps]
    assert np.allclose(lags, 0.05 * np.arange(1, 10), atol=1e-6)  # 20 Hz sweeps, newest first
    first = val[0]["sweeps"]  # the scene's first key frame still has 9 real (lead-in) sweeps
    assert all(s["transform_matrix"] is not None for s in first)


def test_sweeps_show_the_motion_the_velocity_says(root):
    """Points of a moving object in a sweep τ seconds old lie in its box moved back by velocity · τ (the
    transform_matrix takes the ego motion out)."""
    from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu

    dataset = synthetic_nuscenes_dataset(root)
    index = 1
    info = dataset.infos[index]
    points = dataset.get_lidar_with_sweeps(index)
    assert points.shape[1] == 5 and np.isclose(points[:, 4].max(), 0.45, atol=1e-4)
    travel = 0.45 * np.hypot(info["gt_boxes"][:, 7], info["gt_boxes"][:, 8]) - info["gt_boxes"][:, 3]
    k = int(np.argmax(np.where(info["num_lidar_pts"] > 30, travel, -np.inf)))
    assert travel[k] > 0  # moved more than its own length in the sweep's 0.45 s
    old = points[np.isclose(points[:, 4], 0.45, atol=1e-4)]
    box = info["gt_boxes"][k : k + 1, 0:7].copy()
    moved = box.copy()
    moved[0, 0:2] -= info["gt_boxes"][k, 7:9] * 0.45
    inside_moved = points_in_boxes_cpu(old[:, 0:3], moved).sum()
    inside_still = points_in_boxes_cpu(old[:, 0:3], box).sum()
    assert inside_moved > 10 and inside_moved > 2 * inside_still


def test_fewer_sweeps_take_the_newest_and_more_than_the_infos_hold_is_an_error(root):
    dataset = synthetic_nuscenes_dataset(root)
    lags = np.unique(dataset.get_lidar_with_sweeps(1, max_sweeps=3)[:, 4])
    assert np.allclose(lags, [0.0, 0.05, 0.10], atol=1e-4)
    with pytest.raises(ValueError, match="MAX_SWEEPS=11"):
        dataset.get_lidar_with_sweeps(1, max_sweeps=11)


def test_gt_database_has_velocity_and_sweep_points(root):
    db = safe_pickle_load(root / VERSION / "nuscenes_dbinfos_10sweeps_withvelo.pkl")
    entry = db["car"][0]
    assert entry["box3d_lidar"].shape == (9,)
    pts = np.fromfile(root / VERSION / entry["path"], dtype=np.float32).reshape(-1, 5)
    assert len(pts) == entry["num_points_in_gt"] and (pts[:, 4] >= 0).all()


def test_cbgs_balances_classes(root):
    cfg = cfg_from_yaml_file(SYNTHETIC_DATASET_CFG, EasyDict())
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.BALANCED_RESAMPLING = False
    plain = synthetic_nuscenes_dataset(root, dataset_cfg=plain_cfg, training=True)
    np.random.seed(0)
    balanced = synthetic_nuscenes_dataset(root, dataset_cfg=cfg, training=True)
    per_class = [sum(c in set(i["gt_names"]) for i in plain.infos) for c in CLASSES if any(
        c in set(i["gt_names"]) for i in plain.infos)]  # fmt: skip
    assert len(balanced.infos) == (sum(per_class) // len(per_class)) * len(per_class)


def test_batch_for_detectors(root):
    batch = synthetic_nuscenes_batch(root, batch_size=2, training=True)
    assert batch["batch_size"] == 2 and batch["points"].shape[1] == 6
    assert batch["gt_boxes"].shape[0] == 2 and batch["gt_boxes"].shape[2] == 10
    assert not np.isnan(batch["gt_boxes"]).any()
    assert batch["voxels"].shape[1:] == (10, 5) and batch["voxel_coords"].shape[1] == 4
    assert [m["token"] for m in batch["metadata"]] and len(batch["frame_id"]) == 2


def test_ground_truth_as_detections_scores_perfectly(root, tmp_path):
    dataset = synthetic_nuscenes_dataset(root)
    det_annos = []
    for info in dataset.infos:
        boxes = np.nan_to_num(info["gt_boxes"])
        det_annos.append({"name": info["gt_names"], "score": np.linspace(0.9, 0.5, len(boxes)), "boxes_lidar": boxes,
                          "metadata": {"token": info["token"]}})  # fmt: skip
    result_str, result = dataset.evaluation(det_annos, CLASSES, output_path=tmp_path)
    assert result["mAP"] == pytest.approx(1.0) and result["NDS"] == pytest.approx(1.0)
    for err in ("mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert result[err] == pytest.approx(0.0, abs=1e-6), err
    assert all(result[f"{c}_AP"] == pytest.approx(1.0) for c in CLASSES)
    assert "mAP: 1.0000  NDS: 1.0000" in result_str
    summary = json.loads((tmp_path / "metrics_summary.json").read_text())  # written by the devkit itself
    assert summary["nd_score"] == pytest.approx(1.0)
    submitted = json.loads((tmp_path / "results_nusc.json").read_text())
    assert submitted["meta"]["use_lidar"] and set(submitted["results"]) == {i["token"] for i in dataset.infos}

    det_annos[0]["boxes_lidar"] = det_annos[0]["boxes_lidar"] + np.array([0.6, 0, 0, 0, 0, 0, 0, 0, 0])
    _, shifted = dataset.evaluation(det_annos, CLASSES, output_path=tmp_path / "shifted")
    assert 0.0 < shifted["mATE"] < 0.6 and shifted["NDS"] < 1.0

    empty = [{"name": np.array([]), "score": np.zeros(0), "boxes_lidar": np.zeros((0, 9)), "metadata": a["metadata"]}
             for a in det_annos]  # fmt: skip
    _, nothing = dataset.evaluation(empty, CLASSES, output_path=tmp_path / "empty")
    assert nothing["mAP"] == 0.0 and nothing["NDS"] == 0.0


def test_missing_sweep_file_names_it(root, tmp_path):
    copy_root = tmp_path / "data"
    shutil.copytree(root, copy_root)
    dataset = synthetic_nuscenes_dataset(copy_root)
    sweep = dataset.infos[0]["sweeps"][3]
    (copy_root / VERSION / sweep["lidar_path"]).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(sweep["lidar_path"])) as err:
        dataset[0]
    assert sweep["sample_data_token"] in str(err.value) and dataset.infos[0]["token"] in str(err.value)


def test_dangling_sample_data_token_is_named(root, tmp_path):
    copy_root = tmp_path / "data"
    shutil.copytree(root / VERSION, copy_root / VERSION, ignore=shutil.ignore_patterns("gt_database*"))
    table = copy_root / VERSION / VERSION / "sample_data.json"
    rows = json.loads(table.read_text())
    victim = next(r for r in rows if not r["is_key_frame"] and r["prev"])
    victim["prev"] = "0123456789abcdef0123456789abcdef"
    table.write_text(json.dumps(rows))
    with pytest.raises(nuscenes_utils.NuScenesTokenError, match="0123456789abcdef0123456789abcdef") as err:
        create_nuscenes_infos(VERSION, copy_root, copy_root)
    assert victim["token"] in str(err.value) and "sample_data.json" in str(err.value)


def test_absent_version_folder_is_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="v1.0-trainval"):
        create_nuscenes_infos("v1.0-trainval", root, tmp_path)


def test_scene_without_lidar_files_is_skipped_and_counted(root, tmp_path, caplog):
    copy_root = tmp_path / "data"
    shutil.copytree(root / VERSION, copy_root / VERSION, ignore=shutil.ignore_patterns("gt_database*"))
    val = _infos(root, "val")
    (copy_root / VERSION / val[0]["lidar_path"]).unlink()  # the val scene's first key frame
    create_nuscenes_infos(VERSION, copy_root, copy_root, logger=logging.getLogger("test_nuscenes"))
    assert "1 of 2 scenes skipped" in caplog.text
    assert len(_infos(copy_root, "val")) == 0 and len(_infos(copy_root, "train")) == 2


def test_shared_memory_is_refused_clearly(root):
    cfg = cfg_from_yaml_file(SYNTHETIC_DATASET_CFG, EasyDict())
    cfg.USE_SHARED_MEMORY = True
    with pytest.raises(NotImplementedError, match="USE_SHARED_MEMORY"):
        synthetic_nuscenes_dataset(root, dataset_cfg=cfg, training=True)


def test_dataset_registered():
    from pcdet.datasets import __all__ as registry

    assert registry["NuScenesDataset"] is NuScenesDataset


def test_dangling_token_in_the_devkit_index_is_named(root, tmp_path):
    """A key frame whose calibrated_sensor token points nowhere breaks the devkit's own reverse index."""
    copy_root = tmp_path / "data"
    shutil.copytree(root / VERSION / VERSION, copy_root / VERSION / VERSION)
    with pytest.raises(nuscenes_utils.NuScenesLayoutError, match="map mask"):  # the devkit's own assert, wrapped
        nuscenes_utils.load_nuscenes(VERSION, copy_root / VERSION)
    shutil.copytree(root / VERSION / "maps", copy_root / VERSION / "maps")
    table = copy_root / VERSION / VERSION / "sample_data.json"
    rows = json.loads(table.read_text())
    rows[0]["calibrated_sensor_token"] = "feedfeedfeedfeedfeedfeedfeedfeed"
    table.write_text(json.dumps(rows))
    with pytest.raises(nuscenes_utils.NuScenesTokenError, match="feedfeedfeedfeedfeedfeedfeedfeed"):
        nuscenes_utils.load_nuscenes(VERSION, copy_root / VERSION)


def test_cli_reports_an_absent_version_in_one_line(tmp_path, capsys):
    from pcdet.datasets.nuscenes.nuscenes_dataset import main
    from pcdet.utils.cli import run_tool

    argv = ["--func", "create_nuscenes_infos", "--cfg_file", str(SYNTHETIC_DATASET_CFG), "--version", "v1.0-mini",
            "--data_path", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_tool(main, argv)  # what `python -m pcdet.datasets.nuscenes.nuscenes_dataset ...` runs
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: nuScenes version folder") and "Traceback" not in err


def test_training_skips_a_frame_with_a_missing_sweep_when_asked(root, tmp_path):
    copy_root = tmp_path / "data"
    shutil.copytree(root, copy_root)
    cfg = cfg_from_yaml_file(SYNTHETIC_DATASET_CFG, EasyDict())
    cfg.SKIP_CORRUPT_FRAMES = True
    cfg.BALANCED_RESAMPLING = False
    dataset = synthetic_nuscenes_dataset(copy_root, dataset_cfg=cfg, training=True)
    (copy_root / VERSION / dataset.infos[0]["sweeps"][0]["lidar_path"]).unlink()
    np.random.seed(1)
    sample = dataset[0]  # replaced by a readable frame
    assert sample["frame_id"] != Path(dataset.infos[0]["lidar_path"]).stem
    assert dataset.data_issues.totals()["corrupt_point_cloud"] >= 1


def test_generator_is_deterministic(tmp_path):
    from pcdet.datasets.synthetic.generate_nuscenes import generate_nuscenes

    a = generate_nuscenes(tmp_path / "a", num_scenes=1, num_samples=2, seed=3)
    b = generate_nuscenes(tmp_path / "b", num_scenes=1, num_samples=2, seed=3)
    for name in TABLES:
        assert (a / VERSION / f"{name}.json").read_bytes() == (b / VERSION / f"{name}.json").read_bytes(), name
    files = sorted(p.relative_to(a) for p in a.glob("s*/LIDAR_TOP/*.pcd.bin"))
    assert len(files) == 9 + 10 + 1 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_trainval_scene_names_follow_the_devkits_splits():
    from nuscenes.utils import splits

    from pcdet.datasets.synthetic.generate_nuscenes import MINI_SCENES, scene_names

    names = scene_names("v1.0-trainval", 7, val_scenes=2)
    assert len(set(names)) == 7 and set(names[:2]) <= set(splits.val) and set(names[2:]) <= set(splits.train)
    assert set(scene_names("v1.0-trainval", 3, val_scenes=3)) <= set(splits.val)  # a held-out, all-val set
    assert scene_names("v1.0-mini", 3) == list(MINI_SCENES[:3])  # v1.0-mini keeps its names and order
    for version, scenes, val in (("v1.0-mini", 11, None), ("v1.0-mini", 3, 1), ("v1.0-trainval", 2, 3)):
        with pytest.raises(ValueError):
            scene_names(version, scenes, val)
    with pytest.raises(ValueError, match="version"):
        scene_names("v1.0-test", 2)
