"""Bad data during training and evaluation, safe loading of data pickles, atomic info/result files, config errors.

Each test is a row of docs/RELIABILITY.md. The bad frames are injected into a copy of the tiny synthetic data set:
an empty .bin, NaN/inf points, points only outside POINT_CLOUD_RANGE, a frame without boxes, an object of an
unknown class, a frame without its image, and a .bin whose size is not a whole number of points.
"""

import copy
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, REPO, TOOLS, tiny_dataset, write_tiny_config  # noqa: E402
from train_utils.experiment import load_experiment_config  # noqa: E402

from pcdet.config import ConfigError  # noqa: E402
from pcdet.datasets import build_dataloader  # noqa: E402
from pcdet.datasets.data_issues import DataIssues, log_data_issue_totals  # noqa: E402
from pcdet.datasets.kitti.kitti_dataset import KittiDataset  # noqa: E402
from pcdet.models import build_network, load_data_to_gpu  # noqa: E402
from pcdet.utils import common_utils  # noqa: E402
from pcdet.utils.checkpoint_io import CheckpointError, safe_load, safe_pickle_load  # noqa: E402
from pcdet.utils.point_cloud_io import PointCloudError, load_points_bin  # noqa: E402

CLASSES = ["Car", "Pedestrian", "Cyclist"]
BAD_TRAIN = {
    "900000": "empty_point_cloud",
    "900001": "non_finite_points",
    "900002": "no_points_in_range",
    "900003": "no_boxes",
    "900004": "unknown_class",
    "900005": "missing_image",
    "900006": "corrupt_point_cloud",
}
BAD_VAL = {"910000": "empty_point_cloud", "910001": "non_finite_points", "910002": "no_points_in_range"}

BAD_CFG = """
_BASE_CONFIG_: {tiny}
DATA_CONFIG:
    DATA_PATH: {data}
    GET_ITEM_LIST: ['points', 'images']
    SKIP_CORRUPT_FRAMES: True
"""


# --------------------------------------------------------------------------------------------------- the data set
def _add_frame(root: Path, infos: list, template: dict, frame: str, points: bytes, image: bool = True) -> dict:
    info = copy.deepcopy(template)
    info["point_cloud"]["lidar_idx"] = frame
    info["image"]["image_idx"] = frame
    (root / "training" / "velodyne" / f"{frame}.bin").write_bytes(points)
    # Samples read their calib/<id>.txt (the infos' copy is not used): the frame gets its template's.
    template_calib = root / "training" / "calib" / f"{template['point_cloud']['lidar_idx']}.txt"
    shutil.copy(template_calib, root / "training" / "calib" / f"{frame}.txt")
    if image:
        source = root / "training" / "image_2" / f"{template['image']['image_idx']}.png"
        shutil.copy(source, root / "training" / "image_2" / f"{frame}.png")
    infos.append(info)
    return info


def _bad_points(root: Path, template: dict, case: str) -> bytes:
    good = load_points_bin(root / "training" / "velodyne" / f"{template['point_cloud']['lidar_idx']}.bin")
    if case == "empty_point_cloud":
        return b""
    if case == "non_finite_points":
        bad = good.copy()
        bad[:40, 3] = np.nan  # intensity: xyz stay valid, so the FOV filter keeps these rows
        bad[40:60, 3] = np.inf
        bad[60:70, 0] = np.nan
        return bad.tobytes()
    if case == "no_points_in_range":  # ahead of the camera (inside the image) but beyond x_max = 25.6 m
        far = np.zeros((200, 4), dtype=np.float32)
        far[:, 0] = np.linspace(40, 60, 200)
        far[:, 2] = -1.0
        return far.tobytes()
    if case == "corrupt_point_cloud":
        return good.tobytes()[:1000]
    return good.tobytes()


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, config) of the tiny set plus the bad frames above; the config opts in to SKIP_CORRUPT_FRAMES."""
    base = tmp_path_factory.mktemp("bad")
    root = base / "data"
    shutil.copytree(tiny_dataset(), root)
    train = safe_pickle_load(root / "kitti_infos_train.pkl")
    val = safe_pickle_load(root / "kitti_infos_val.pkl")
    for frame, case in BAD_TRAIN.items():
        info = _add_frame(root, train, train[0], frame, _bad_points(root, train[0], case), case != "missing_image")
        annos = info["annos"]
        if case == "no_boxes":
            info["annos"] = {key: val[:0] for key, val in annos.items()}
        elif case == "unknown_class":
            annos["name"][0] = "Bus"
    for frame, case in BAD_VAL.items():
        _add_frame(root, val, val[0], frame, _bad_points(root, val[0], case))
    common_utils.dump_pickle(train, root / "kitti_infos_train.pkl")
    common_utils.dump_pickle(val, root / "kitti_infos_val.pkl")
    tiny = write_tiny_config(base, epochs=1, name="tiny_base.yaml")
    cfg_file = tiny.parent / "tiny_bad.yaml"
    cfg_file.write_text(BAD_CFG.format(tiny=tiny, data=root))
    return root, cfg_file


def _cfg(cfg_file: Path, **data_overrides) -> EasyDict:
    cfg = load_experiment_config(str(cfg_file), None, EasyDict({"ROOT_DIR": REPO, "LOCAL_RANK": 0}))
    cfg.DATA_CONFIG.update(data_overrides)
    return cfg


def _dataset(cfg_file: Path, training: bool, **data_overrides) -> KittiDataset:
    cfg = _cfg(cfg_file, **data_overrides)
    return KittiDataset(cfg.DATA_CONFIG, CLASSES, training=training)


def _index(ds: KittiDataset, frame: str) -> int:
    return [info["point_cloud"]["lidar_idx"] for info in ds.kitti_infos].index(frame)


def _issue_lines(text: str, case: str) -> list[str]:
    return [line for line in text.splitlines() if f"Data issue '{case}'" in line]


# ------------------------------------------------------------------------------------------------ bad frames
def test_points_with_nan_or_inf_are_dropped_and_counted(bad_root, caplog):
    _, cfg_file = bad_root
    ds = _dataset(cfg_file, training=False)
    points = np.array([[5, 0, -1, 0.5]] * 10, dtype=np.float32)
    points[:, 0] += np.arange(10)  # ten pillars
    points[2, 0], points[5, 2], points[7, 3] = np.nan, np.inf, -np.inf
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        sample = ds.prepare_data({"points": points, "frame_id": "f"})
    assert len(sample["points"]) == 7 and np.isfinite(sample["points"]).all()
    assert len(sample["voxels"]) == 7 and np.isfinite(sample["voxels"]).all()
    assert ds.data_issues.totals()["non_finite_points"] == 1
    assert "Data issue 'non_finite_points' in frame f: NaN/inf points dropped (3 of 10)" in caplog.text

    # the injected frame (NaN/inf intensities and x) through the KITTI reader: same, for every voxel
    val = ds[_index(ds, "910001")]
    assert np.isfinite(val["voxels"]).all() and len(val["voxels"]) > 0
    assert ds.data_issues.totals()["non_finite_points"] == 2


@pytest.mark.parametrize("frame,case", [("900000", "empty_point_cloud"), ("900002", "no_points_in_range")])
def test_frame_without_usable_points_is_replaced_in_training(bad_root, frame, case, caplog):
    _, cfg_file = bad_root
    ds = _dataset(cfg_file, training=True)
    np.random.seed(0)
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        sample = ds[_index(ds, frame)]
    assert sample["frame_id"] != frame and len(sample["voxels"]) > 0 and len(sample["gt_boxes"]) > 0
    assert ds.data_issues.totals()[case] >= 1
    assert f"Data issue '{case}' in frame {frame}" in _issue_lines(caplog.text, case)[0]


def test_frames_without_points_are_kept_for_evaluation_and_the_model_runs_on_zero_pillars(bad_root):
    _, cfg_file = bad_root
    cfg = _cfg(cfg_file)
    ds = KittiDataset(cfg.DATA_CONFIG, CLASSES, training=False)
    empty, outside, good = (ds[_index(ds, f)] for f in ("910000", "910002", ds.kitti_infos[0]["image"]["image_idx"]))
    assert (len(empty["voxels"]), len(outside["voxels"])) == (0, 0) and len(good["voxels"]) > 0
    assert {k: v for k, v in ds.data_issues.totals().items() if v} == {"empty_point_cloud": 1, "no_points_in_range": 1}

    model = build_network(cfg.MODEL, len(CLASSES), ds).eval()
    for samples in ([empty], [outside, good]):
        batch = load_data_to_gpu(ds.collate_batch(samples), device="cpu")
        with torch.no_grad():
            preds, _ = model(batch)
        assert len(preds) == len(samples)
        assert all(torch.isfinite(p["pred_boxes"]).all() for p in preds)


def test_frame_without_boxes_is_replaced_in_training(bad_root, caplog):
    _, cfg_file = bad_root
    ds = _dataset(cfg_file, training=True)
    np.random.seed(1)
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        sample = ds[_index(ds, "900003")]
    assert sample["frame_id"] != "900003" and len(sample["gt_boxes"]) > 0
    assert ds.data_issues.totals()["no_boxes"] >= 1
    assert "Data issue 'no_boxes' in frame 900003" in caplog.text


def test_unknown_class_objects_are_dropped_with_a_warning_known_ones_silently(bad_root, caplog):
    _, cfg_file = bad_root
    ds_train = _dataset(cfg_file, training=False, INFO_PATH={"train": [], "test": ["kitti_infos_train.pkl"]})
    template = ds_train[0]
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        sample = ds_train[_index(ds_train, "900004")]
    first_name = ds_train.kitti_infos[0]["annos"]["name"][0]
    assert first_name in CLASSES  # the object renamed "Bus" in 900004 was one of CLASS_NAMES
    assert len(sample["gt_boxes"]) == len(template["gt_boxes"]) - 1
    np.testing.assert_allclose(sample["gt_boxes"], template["gt_boxes"][1:])
    assert ds_train.data_issues.totals()["unknown_class"] == 1
    expected = "Data issue 'unknown_class' in frame 900004: objects of unknown classes dropped (1 of ['Bus'])"
    assert expected in caplog.text

    # A KITTI class outside CLASS_NAMES (Van) is filtered as usual, without a data-issue warning.
    ds_train.kitti_infos[_index(ds_train, "900004")]["annos"]["name"][0] = "Van"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        sample = ds_train[_index(ds_train, "900004")]
    assert len(sample["gt_boxes"]) == len(template["gt_boxes"]) - 1 and "Data issue" not in caplog.text


def test_missing_image_replaced_in_training_error_in_evaluation_estimated_at_info_creation(bad_root, caplog):
    root, cfg_file = bad_root
    ds = _dataset(cfg_file, training=True)
    np.random.seed(2)
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        sample = ds[_index(ds, "900005")]
    assert sample["frame_id"] != "900005" and sample["images"].ndim == 3
    assert "Data issue 'missing_image' in frame 900005" in caplog.text and "image_2/900005.png" in caplog.text

    test_ds = _dataset(cfg_file, training=False, INFO_PATH={"train": [], "test": ["kitti_infos_train.pkl"]})
    with pytest.raises(FileNotFoundError, match=r"image_2/900005\.png"):
        test_ds[_index(test_ds, "900005")]

    # Info creation without the PNG: the shape is estimated from P2's principal point, with a counted warning.
    frame = test_ds.kitti_infos[0]["point_cloud"]["lidar_idx"]
    for sub, ext in (("velodyne", "bin"), ("calib", "txt"), ("label_2", "txt")):
        (root / "training" / sub / f"900007.{ext}").symlink_to(root / "training" / sub / f"{frame}.{ext}")
    info = test_ds.process_single_scene("900007")
    calib = test_ds.get_calib(frame)
    assert info["image"]["image_shape"].tolist() == [round(2 * calib.cv), round(2 * calib.cu)]
    reference = test_ds.process_single_scene(frame)
    assert reference["image"]["image_shape"].tolist() == [375, 1242]
    np.testing.assert_allclose(info["annos"]["gt_boxes_lidar"], reference["annos"]["gt_boxes_lidar"])
    assert test_ds.data_issues.totals()["missing_image"] == 1


def test_corrupt_bin_is_an_error_naming_the_file_unless_skipping_is_opted_in(bad_root, caplog):
    _, cfg_file = bad_root
    strict = _dataset(cfg_file, training=True, SKIP_CORRUPT_FRAMES=False)
    with pytest.raises(PointCloudError, match=r"corrupt LiDAR file .*velodyne/900006\.bin: 1000 bytes"):
        strict[_index(strict, "900006")]
    # through a loader worker process: the same message reaches the training loop
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(strict, [_index(strict, "900006")]), num_workers=1, collate_fn=strict.collate_batch
    )
    with pytest.raises(PointCloudError, match=r"velodyne/900006\.bin"):
        next(iter(loader))

    skipping = _dataset(cfg_file, training=True)  # the config says SKIP_CORRUPT_FRAMES: True
    np.random.seed(3)
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        sample = skipping[_index(skipping, "900006")]
    assert sample["frame_id"] != "900006"
    assert "Data issue 'corrupt_point_cloud' in frame 900006" in caplog.text

    # An evaluation must see every frame: the option does not apply there.
    test_ds = _dataset(cfg_file, training=False, INFO_PATH={"train": [], "test": ["kitti_infos_train.pkl"]})
    with pytest.raises(PointCloudError, match=r"velodyne/900006\.bin"):
        test_ds[_index(test_ds, "900006")]


def test_a_data_set_with_no_usable_frame_is_an_error_not_an_endless_loop(bad_root):
    _, cfg_file = bad_root
    ds = _dataset(cfg_file, training=True)
    ds.kitti_infos = [info for info in ds.kitti_infos if info["point_cloud"]["lidar_idx"] in ("900000", "900002")]
    with pytest.raises(RuntimeError, match="50 training samples in a row could not be used"):
        ds[0]


def test_counts_from_loader_workers_reach_the_main_process(bad_root, caplog):
    _, cfg_file = bad_root
    cfg = _cfg(cfg_file)
    ds, loader, _ = build_dataloader(cfg.DATA_CONFIG, CLASSES, batch_size=2, dist=False, workers=2, training=False)
    logger = logging.getLogger("pcdet")
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        for epoch in (1, 2):
            frames = [f for batch in loader for f in batch["frame_id"]]
            assert len(frames) == 6
            totals = log_data_issue_totals(ds, logger, f"after pass {epoch}")
            assert {k: v for k, v in totals.items() if v} == {
                "empty_point_cloud": epoch,
                "non_finite_points": epoch,
                "no_points_in_range": epoch,
            }
    assert "after pass 2: empty_point_cloud: 2, non_finite_points: 2, no_points_in_range: 2" in caplog.text
    assert ds.data_issues.counts[0].sum() == 0  # all of it was counted in the workers' rows


def test_warnings_are_logged_at_powers_of_ten(caplog):
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="pcdet"):
        for i in range(150):
            issues.record("no_boxes", f"{i:06d}")
    lines = _issue_lines(caplog.text, "no_boxes")
    assert [re.search(r"frame (\d+)", line).group(1) for line in lines] == ["000000", "000009", "000099"]
    assert "100 time(s) in this main process" in lines[-1]
    assert issues.totals()["no_boxes"] == 150


# ------------------------------------------------------------------------------------------ train.py end to end
@pytest.mark.slow
def test_train_py_goes_on_through_every_bad_frame_and_evaluates_every_frame(bad_root, tmp_path, record_property):
    root, cfg_file = bad_root
    out = tmp_path / "out"
    cmd = [str(PYTHON), "train.py", "--cfg_file", str(cfg_file), "--workers", "1", "--batch_size", "2",
           "--output_root", str(out), "--logger_iter_interval", "1",
           "--fix_random_seed"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=TOOLS, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    run = out / "tiny" / "tiny_bad" / "default"
    assert (run / "ckpt" / "checkpoint_epoch_1.pth").is_file()
    assert "Acc_iter 5 " in log  # 10 frames, batch 2: every iteration ran
    # warnings come from the loader worker, with the frame and what was done
    for frame, case in BAD_TRAIN.items():
        assert any(f"in frame {frame}" in line for line in _issue_lines(log, case)), case
    assert all("in this loader worker 0" in line for line in _issue_lines(log, "corrupt_point_cloud"))
    summary = re.search(r"Data issues up to epoch 1 \(frames\): (.*)", log).group(1)
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+): (\d+)", summary))
    record_property("epoch_1_data_issues", summary)
    assert set(counts) >= set(BAD_TRAIN.values()) and min(counts.values()) >= 1

    # the evaluation after training keeps every frame, bad ones included, once each and in order
    assert "Data issues in this evaluation (frames): empty_point_cloud: 1, non_finite_points: 1, " \
           "no_points_in_range: 1" in log  # fmt: skip
    annos = safe_pickle_load(run / "eval" / "eval_with_train" / "epoch_1" / "val" / "result.pkl")
    val_ids = [info["point_cloud"]["lidar_idx"] for info in safe_pickle_load(root / "kitti_infos_val.pkl")]
    assert [a["frame_id"] for a in annos] == val_ids and len(val_ids) == 6


def _run_until(cmd: list[str], log_path: Path, pattern: str | None) -> str:
    """Run ``cmd``; with ``pattern``, SIGKILL it as soon as the pattern appears in its output. Returns the output."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=TOOLS, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=log)
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if pattern is not None and re.search(pattern, log_path.read_text()):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log_path.read_text()
    assert (proc.returncode == -signal.SIGKILL) if pattern else (proc.returncode == 0), output[-3000:]
    return output


@pytest.mark.slow
def test_kill_9_at_several_points_then_the_same_command_resumes_each_time(tmp_path, record_property):
    """Killed mid-epoch (after a time-based latest_model.pth), killed right after an epoch checkpoint, then run to the
    end: every restart resumes from the newest complete file, and every .pth left behind at any kill loads."""
    cfg_file = write_tiny_config(tmp_path, epochs=2)
    out = tmp_path / "out"
    ckpt_dir = out / "tiny" / "tiny_pp" / "default" / "ckpt"
    cmd = [str(PYTHON), "train.py", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "1",
           "--output_root", str(out), "--ckpt_save_time_interval", "0"]  # fmt: skip
    resumed = []
    for step, kill_at in enumerate([r"Saved latest_model\.pth at iteration 2", r"Saved checkpoint_epoch_1\.pth", None]):
        output = _run_until(cmd, tmp_path / f"run{step}.log", kill_at)
        found = re.search(r"Resumed from (\S+) \(epoch (\d+), iteration (\d+)", output)
        resumed.append(None if found is None else (Path(found.group(1)).name, int(found.group(3))))
        for path in ckpt_dir.glob("*.pth"):  # whatever the kill interrupted, no visible checkpoint is half-written
            safe_load(path)
    record_property("resumed_from", resumed)
    assert resumed[0] is None  # first start: from scratch
    assert resumed[1][0] == "latest_model.pth" and resumed[1][1] >= 2  # mid-epoch state
    assert resumed[2][1] >= 3  # at least the end of epoch 1 (latest_model.pth if it was saved after the epoch)
    final = safe_load(ckpt_dir / "checkpoint_epoch_2.pth")
    assert (final["epoch"], final["it"]) == (2, 6)


# ---------------------------------------------------------------------------------------------- safe pickles
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_info_pickle_that_would_run_code_is_refused_and_never_runs(bad_root, tmp_path):
    root, cfg_file = bad_root
    marker = tmp_path / "ran"
    evil = tmp_path / "evil_infos.pkl"
    evil.write_bytes(pickle.dumps([{"point_cloud": {"lidar_idx": "0"}, "x": _RunsCode(marker)}]))
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil_infos\.pkl: it references pathlib.*touch"):
        _dataset(cfg_file, training=False, DATA_PATH=str(tmp_path), INFO_PATH={"train": [], "test": [evil.name]})
    assert not marker.exists()


def test_truncated_info_pickle_is_a_clear_error(tmp_path):
    infos = [{"annos": {"name": np.array(["Car"] * 100), "bbox": np.zeros((100, 4), np.float32)}}]
    data = pickle.dumps(infos, protocol=4)
    (tmp_path / "t.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read .*t\.pkl: the file is truncated or corrupt"):
        safe_pickle_load(tmp_path / "t.pkl")


def test_openpcdet_infos_pickled_by_numpy_1_load(tmp_path):
    """OpenPCDet's infos were written by numpy 1.x, which names its modules numpy.core.*, not numpy._core.*."""
    infos = [{"image": {"image_shape": np.array([375, 1242], np.int32)}, "score": np.float64(0.5), "name": "Car"}]
    data = pickle.dumps(infos, protocol=2)
    assert b"numpy._core.multiarray" in data
    (tmp_path / "old.pkl").write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = safe_pickle_load(tmp_path / "old.pkl")
    assert loaded[0]["image"]["image_shape"].tolist() == [375, 1242] and loaded[0]["score"] == 0.5


def test_library_reads_pickles_and_checkpoints_only_through_the_safe_loaders():
    sources = [*(REPO / "pcdet").rglob("*.py"), *(TOOLS / "train_utils").rglob("*.py")]
    sources += [*(TOOLS / "eval_utils").rglob("*.py"), TOOLS / "train.py", TOOLS / "test.py", TOOLS / "demo.py"]
    offenders = []
    for path in sources:
        if path.name == "checkpoint_io.py":
            continue
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\b(pickle\.loads?|torch\.load|np\.load\(.*allow_pickle=True)", line):
                offenders.append(f"{path.relative_to(REPO)}:{line_no}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_info_pickle_killed_mid_write_is_old_or_new_never_partial(tmp_path, record_property):
    """A writer rewrites a ~20 MB info file in a loop while this process reads it; then it is killed with SIGKILL."""
    target = tmp_path / "kitti_infos_train.pkl"
    script = (
        "import sys, numpy as np\n"
        "from pcdet.utils.common_utils import dump_pickle\n"
        "i = 0\n"
        "while True:\n"
        "    dump_pickle({'version': i, 'points': np.full((1_250_000, 4), i, np.float32)}, sys.argv[1])\n"
        "    print(i, flush=True)\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([str(PYTHON), "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    seen = set()
    try:
        proc.stdout.readline()  # the first complete file exists
        deadline = time.time() + 3
        while time.time() < deadline:
            info = safe_pickle_load(target)
            assert (info["points"] == info["version"]).all()
            seen.add(info["version"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    info = safe_pickle_load(target)
    assert (info["points"] == info["version"]).all() and info["points"].shape == (1_250_000, 4)
    assert len(seen) >= 2  # the reader really raced the writer
    record_property("complete_versions_read", len(seen))


# ------------------------------------------------------------------------------------------------ config errors
def test_config_errors_on_the_train_py_path_each_name_the_culprit(tmp_path):
    cfg_file = write_tiny_config(tmp_path)

    def load(set_cfgs):
        return load_experiment_config(str(cfg_file), set_cfgs, EasyDict({"ROOT_DIR": REPO}))

    with pytest.raises(ConfigError, match=r"OPTIMIZATION\.LRR.*OPTIMIZATION\.LR"):
        load(["OPTIMIZATION.LRR", "0.1"])
    with pytest.raises(ConfigError, match=r"OPTIMIZATION\.NUM_EPOCHS.*float"):
        load(["OPTIMIZATION.NUM_EPOCHS", "2.5"])
    missing = tmp_path / "cfgs" / "tiny" / "no_base.yaml"
    missing.write_text("_BASE_CONFIG_: cfgs/kitti_models/nope.yaml\n")
    with pytest.raises(ConfigError, match=r"nope\.yaml.*no_base\.yaml"):
        load_experiment_config(str(missing), None, EasyDict({"ROOT_DIR": REPO}))
