"""DATA_CONFIG.USE_SHARED_MEMORY: training points copied once to /dev/shm, read there by loader workers, and removed
at exit, after kill -9 of the owner (watchdog) and at the next start (stale sweep); a clear error without
SharedArray."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_experiment import REPO, TOOLS, tiny_dataset
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets import shm_watchdog
from pcdet.datasets.kitti.kitti_dataset import KittiDataset
from pcdet.datasets.shared_memory import SHM_DIR, segment_prefix
from pcdet.utils.point_cloud_io import load_points_bin

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def _cfg(**extra) -> EasyDict:
    cfg = cfg_from_yaml_file(TOOLS / "cfgs/dataset_configs/synthetic_kitti_dataset.yaml", EasyDict())
    cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ["gt_sampling"]
    cfg.update(extra)
    return cfg


def _segments(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A private copy of the tiny set's training frames (the tests delete .bin files), infos linked."""
    pytest.importorskip("SharedArray")
    src = tiny_dataset()
    root = tmp_path / "kitti"
    shutil.copytree(src / "training" / "velodyne", root / "training" / "velodyne")
    for sub in ("calib", "label_2", "image_2"):
        if (src / "training" / sub).exists():
            (root / "training" / sub).symlink_to(src / "training" / sub, target_is_directory=True)
    for item in ("ImageSets", "kitti_infos_train.pkl", "kitti_infos_val.pkl", "kitti_dbinfos_train.pkl"):
        (root / item).symlink_to(src / item)
    return root


def test_points_come_from_shared_memory_in_loader_workers_and_go_at_close(data_root):
    ds = KittiDataset(_cfg(USE_SHARED_MEMORY=True), CLASSES, training=True, root_path=data_root)
    shared = ds.shared_points
    frames = [info["point_cloud"]["lidar_idx"] for info in ds.kitti_infos]
    assert shared.prefix == segment_prefix(data_root, os.getpid(), shm_watchdog.process_start_time(os.getpid()))
    assert _segments(shared.prefix) == sorted(shared.prefix + f for f in frames)
    on_disk = {f: load_points_bin(data_root / "training" / "velodyne" / f"{f}.bin") for f in frames}
    for f in frames:
        np.testing.assert_array_equal(ds.get_lidar(f), on_disk[f])
    ds.get_lidar(frames[0])[:] = 0  # a private copy: the shared one is untouched
    np.testing.assert_array_equal(ds.get_lidar(frames[0]), on_disk[frames[0]])

    # The files are gone: two loader workers can only have read the shared copies.
    for f in frames:
        (data_root / "training" / "velodyne" / f"{f}.bin").unlink()
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=ds.collate_batch)
    assert sum(batch["batch_size"] for batch in loader) == len(frames)

    watchdog = shared._watchdog
    shared.close()
    assert _segments(shared.prefix) == []
    assert watchdog.poll() is not None  # stopped, not left running
    # Frames not mapped before the close fall back to the files (restored here).
    for f in frames:
        on_disk[f].tofile(data_root / "training" / "velodyne" / f"{f}.bin")
    shared._attached.clear()
    np.testing.assert_array_equal(ds.get_lidar(frames[1]), on_disk[frames[1]])


def test_frame_limit_and_unreadable_frames_stay_on_disk(data_root):
    frames = sorted(p.stem for p in (data_root / "training" / "velodyne").glob("*.bin"))
    (data_root / "training" / "velodyne" / f"{frames[0]}.bin").write_bytes(b"\0" * 20)  # corrupt: not shared
    ds = KittiDataset(_cfg(USE_SHARED_MEMORY=True, SHARED_MEMORY_FILE_LIMIT=2), CLASSES, root_path=data_root)
    try:
        train_frames = [info["point_cloud"]["lidar_idx"] for info in ds.kitti_infos]
        assert ds.shared_points.frames == set(train_frames[:2]) - {frames[0]}
    finally:
        ds.shared_points.close()


_OWNER = """
import sys, time
from easydict import EasyDict
from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.kitti.kitti_dataset import KittiDataset
cfg = cfg_from_yaml_file(sys.argv[1], EasyDict())
cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ["gt_sampling"]
cfg.USE_SHARED_MEMORY = True
ds = KittiDataset(cfg, ["Car", "Pedestrian", "Cyclist"], training=True, root_path=sys.argv[2])
print(ds.shared_points.prefix, ds.shared_points._watchdog.pid, flush=True)
time.sleep(120)
"""


def test_kill_9_of_the_owner_leaves_nothing_behind_within_seconds(data_root):
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(TOOLS / "cfgs/dataset_configs/synthetic_kitti_dataset.yaml"), data_root],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    prefix, watchdog_pid = owner.stdout.readline().split()
    assert _segments(prefix)
    owner.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    # Not reaped yet on purpose for a moment: a zombie owner must count as dead too.
    while _segments(prefix) and time.monotonic() - killed < 10:
        time.sleep(0.1)
    owner.wait()
    assert _segments(prefix) == [], "segments still there 10 s after kill -9"
    assert time.monotonic() - killed < 5
    while shm_watchdog.process_start_time(int(watchdog_pid)) is not None and time.monotonic() - killed < 10:
        time.sleep(0.1)
    assert shm_watchdog.process_start_time(int(watchdog_pid)) is None  # the watchdog ended too


def test_a_new_run_removes_segments_whose_owner_is_gone(data_root):
    import SharedArray

    dead = segment_prefix(data_root, os.getpid(), 1) + "000000"  # this pid, but another start time: not us
    alive_other = segment_prefix(REPO, os.getpid(), shm_watchdog.process_start_time(os.getpid())) + "000000"
    for name in (dead, alive_other):
        SharedArray.create(f"shm://{name}", (2, 4), dtype=np.float32)
    try:
        ds = KittiDataset(_cfg(USE_SHARED_MEMORY=True), CLASSES, root_path=data_root)
        ds.shared_points.close()
        assert not (SHM_DIR / dead).exists()
        assert (SHM_DIR / alive_other).exists()  # a live owner's copy (another data path) is left alone
    finally:
        for name in (dead, alive_other):
            if (SHM_DIR / name).exists():
                SharedArray.delete(name)


def test_without_shared_array_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "SharedArray", None)  # import SharedArray now raises ImportError
    with pytest.raises(ImportError, match=r"pip install SharedArray==3\.2\.4"):
        KittiDataset(_cfg(USE_SHARED_MEMORY=True), CLASSES, training=True, root_path=tmp_path)
    # Evaluation never uses shared memory, so it does not need the package.
    assert KittiDataset(_cfg(USE_SHARED_MEMORY=True), CLASSES, training=False, root_path=tmp_path).shared_points is None


_RANK = """
import sys
import numpy as np
import torch.distributed as dist
from easydict import EasyDict
from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.kitti.kitti_dataset import KittiDataset
rank, init_file, cfg_file, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
cfg = cfg_from_yaml_file(cfg_file, EasyDict())
cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ["gt_sampling"]
cfg.USE_SHARED_MEMORY = True
ds = KittiDataset(cfg, ["Car", "Pedestrian", "Cyclist"], training=True, root_path=root)
shared = ds.shared_points
total = sum(float(np.abs(ds.get_lidar(f)).sum()) for f in sorted(shared.frames))
print(shared.prefix, shared._owner_pid is not None, len(shared.frames), total, flush=True)
dist.barrier()  # the owner must not exit (and remove the copies) before the other rank has read them
"""


def test_two_ranks_on_one_machine_share_one_copy(data_root, tmp_path):
    cfg_file = TOOLS / "cfgs/dataset_configs/synthetic_kitti_dataset.yaml"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(r), tmp_path / "init", cfg_file, data_root],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].split() for p in ranks]
    assert all(p.returncode == 0 for p in ranks)
    (prefix0, owner0, n0, sum0), (prefix1, owner1, n1, sum1) = outputs
    assert prefix0 == prefix1 and n0 == n1 == "3" and float(sum0) == float(sum1) > 0
    assert (owner0, owner1) == ("True", "False")  # rank 0 copied, rank 1 only mapped
    assert _segments(prefix0) == []  # the owner removed them at exit
