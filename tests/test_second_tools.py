"""SECOND end to end on CPU with the real tools: train.py killed and resumed, test.py on its checkpoint, the
SECOND KD config writing a plain student checkpoint, dist_train.sh with 2 gloo processes, and frames without a
point in range (spconv with zero voxels)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, TOOLS, sigkill_when, tiny_dataset  # noqa: E402
from train_utils.experiment import load_experiment_config  # noqa: E402
from train_utils.train_utils import checkpoint_state, save_checkpoint  # noqa: E402

from pcdet.config import cfg_from_yaml_file  # noqa: E402
from pcdet.datasets import build_dataloader  # noqa: E402
from pcdet.models import build_network, load_data_to_gpu  # noqa: E402
from pcdet.utils.checkpoint_io import safe_load  # noqa: E402

pytestmark = pytest.mark.slow
CFG_DIR = TOOLS / "cfgs" / "kitti_models"
# The tiny data set (3 train / 3 val frames) without gt sampling: the DATA_CONFIG lines every tiny config starts with.
TINY_DATA = """    DATA_PATH: {data}
    DATA_AUGMENTOR:
        DISABLE_AUG_LIST: ['gt_sampling']
        AUG_CONFIG_LIST:
            - NAME: random_world_flip
              ALONG_AXIS_LIST: ['x']
"""
# SECOND of second_synthetic.yaml, shrunk: 25.6 m x 25.6 m at 0.2 m (128 x 128 x 40 voxels, a 16 x 16 BEV map),
# narrow encoder (NUM_FILTERS), one conv per BEV level. An iteration takes a fraction of a second.
TINY_SECOND = """
_BASE_CONFIG_: {base}
DATA_CONFIG:
{data}    POINT_CLOUD_RANGE: [0, -12.8, -3, 25.6, 12.8, 1]
    DATA_PROCESSOR:
        - NAME: mask_points_and_boxes_outside_range
          REMOVE_OUTSIDE_BOXES: True
        - NAME: shuffle_points
          SHUFFLE_ENABLED:
              train: True
              test: False
        - NAME: transform_points_to_voxels
          VOXEL_SIZE: [0.2, 0.2, 0.1]
          MAX_POINTS_PER_VOXEL: 5
          MAX_NUMBER_OF_VOXELS:
              train: 3000
              test: 3000
MODEL:
    BACKBONE_3D:
        NUM_FILTERS: [4, 8, 8, 8, 8]
    MAP_TO_BEV:
        NUM_BEV_FEATURES: 16
    BACKBONE_2D:
        LAYER_NUMS: [1, 1]
        NUM_FILTERS: [16, 16]
        NUM_UPSAMPLE_FILTERS: [16, 16]
OPTIMIZATION:
    BATCH_SIZE_PER_GPU: 2
    NUM_EPOCHS: 4
"""


def _env() -> dict:
    # The scripts call `python`: make it this venv's. One thread per process (the box has 2 cores).
    return {**os.environ, "PATH": f"{PYTHON.parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def _write_cfg(directory: Path, name: str, template: str, base: str) -> Path:
    """``directory/cfgs/tiny/<name>.yaml`` (EXP_GROUP_PATH ``tiny``): ``template`` on the shipped config ``base``
    and the tiny data set."""
    path = directory / "cfgs" / "tiny" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(template.format(base=CFG_DIR / f"{base}.yaml", data=TINY_DATA.format(data=tiny_dataset())))
    return path


def _tiny_second(directory: Path) -> Path:
    return _write_cfg(directory, "tiny_second", TINY_SECOND, "second_synthetic")


def _load(cfg_file: Path) -> EasyDict:
    return load_experiment_config(str(cfg_file), None, EasyDict({"ROOT_DIR": TOOLS.parent}))


def _train_cmd(cfg_file: Path, out: Path, *extra: str) -> list[str]:
    return [str(PYTHON), "train.py", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "1",
            "--fix_random_seed", "--output_root", str(out), "--skip_eval", "--logger_iter_interval", "1",
            *extra]  # fmt: skip


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=TOOLS, env=_env(), capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_second_trains_is_killed_resumes_and_test_py_evaluates(tmp_path):
    cfg_file = _tiny_second(tmp_path)
    out = tmp_path / "out"
    ckpt_dir = out / "tiny" / "tiny_second" / "default" / "ckpt"
    sigkill_when(_train_cmd(cfg_file, out), ckpt_dir / "checkpoint_epoch_1.pth", _env())
    done = sorted(ckpt_dir.glob("checkpoint_epoch_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert done and done[-1].name != "checkpoint_epoch_4.pth", "killed too late to test resuming"
    epoch = int(done[-1].stem.rsplit("_", 1)[1])

    again = _run(_train_cmd(cfg_file, out)).stderr
    assert f"Resumed from {done[-1]} (epoch {epoch}, iteration {3 * epoch}" in again  # 3 frames, batch 1
    assert "rpn_loss_loc" in again
    final = safe_load(ckpt_dir / "checkpoint_epoch_4.pth")
    assert (final["epoch"], final["it"]) == (4, 12)
    first = safe_load(ckpt_dir / "checkpoint_epoch_1.pth")["model_state"]
    key = "backbone_3d.conv_input.0.weight"  # (out, kD, kH, kW, in): the sparse encoder trains (spconv CPU backward)
    assert final["model_state"][key].shape == (4, 3, 3, 3, 4) and not torch.equal(final["model_state"][key], first[key])

    test = _run([str(PYTHON), "test.py", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "2",
                 "--ckpt", str(ckpt_dir / "checkpoint_epoch_4.pth"), "--output_root", str(out),
                 "--set", "MODEL.POST_PROCESSING.SCORE_THRESH", "0.0"])  # fmt: skip
    assert "Car AP@0.70" in test.stderr
    result = out / "tiny" / "tiny_second" / "default" / "eval" / "epoch_4" / "val" / "default" / "result.pkl"
    with open(result, "rb") as f:
        annos = pickle.load(f)
    val_ids = (tiny_dataset() / "ImageSets" / "val.txt").read_text().split()
    assert [str(a["frame_id"]) for a in annos] == val_ids
    assert sum(len(a["name"]) for a in annos) > 0  # score threshold 0: the trained head's boxes come through


TINY_KD = """
_BASE_CONFIG_: {base}
DATA_CONFIG:
{data}OPTIMIZATION:
    BATCH_SIZE_PER_GPU: 2
    NUM_EPOCHS: 1
"""


def test_second_kd_config_trains_and_writes_a_plain_4x_student(tmp_path):
    """second_kd_synthetic.yaml itself (widths, grid, both PointDistiller terms) on the tiny data set."""
    kd_cfg_file = _write_cfg(tmp_path, "tiny_second_kd", TINY_KD, "second_kd_synthetic")
    kd_cfg = _load(kd_cfg_file)
    teacher_cfg = cfg_from_yaml_file(CFG_DIR / "second_synthetic.yaml", EasyDict())
    dataset, _, _ = build_dataloader(kd_cfg.DATA_CONFIG, kd_cfg.CLASS_NAMES, 1, False, workers=0)
    torch.manual_seed(0)
    teacher = build_network(teacher_cfg.MODEL, 3, dataset)  # random weights stand in for a trained teacher
    teacher_ckpt = save_checkpoint(checkpoint_state(teacher, None, 16, 3200), tmp_path / "teacher.pth")

    log = _run(_train_cmd(kd_cfg_file, tmp_path / "out", "--teacher_ckpt", str(teacher_ckpt), "--batch_size", "2"))
    for term in ("kd/loss_det=", "kd/PointDistiller_1x=", "kd/PointDistiller_2x="):
        assert term in log.stderr, term
    ckpt = safe_load(tmp_path / "out" / "tiny" / "tiny_second_kd" / "default" / "ckpt" / "checkpoint_epoch_1.pth")
    assert ckpt["it"] == 2 and sorted(ckpt["kd_state"]["adapters"]) == ["PointDistiller_1x", "PointDistiller_2x"]
    for student_name in ("second_4x", "second_4x_synthetic"):  # no KD code involved
        student_cfg = cfg_from_yaml_file(CFG_DIR / f"{student_name}.yaml", EasyDict())
        student = build_network(student_cfg.MODEL, 3, dataset)
        student.load_state_dict(ckpt["model_state"], strict=True)
    assert ckpt["model_state"]["backbone_3d.conv_out.0.weight"].shape[0] == 64  # the 4x encoder's output width


def test_dist_train_runs_second_on_two_cpu_processes(tmp_path):
    cfg_file = _tiny_second(tmp_path)
    cmd = ["bash", "scripts/dist_train.sh", "2", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "2",
           "--epochs", "1", "--output_root", str(tmp_path / "out"), "--logger_iter_interval", "1", "--skip_eval",
           "--fix_random_seed"]  # fmt: skip
    output = _run(cmd).stderr
    assert "Total batch size: 2 (2 processes)" in output
    ckpt = safe_load(tmp_path / "out" / "tiny" / "tiny_second" / "default" / "ckpt" / "checkpoint_epoch_1.pth")
    assert ckpt["it"] == 2  # 3 frames over 2 ranks, 1 each per step: 2 iterations
    assert not any(k.startswith("module.") for k in ckpt["model_state"])
    cfg = _load(cfg_file)
    dataset, _, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, 1, False, workers=0)
    build_network(cfg.MODEL, 3, dataset).load_state_dict(ckpt["model_state"], strict=True)


def test_frames_without_points_in_range_replaced_in_training_kept_in_evaluation(tmp_path):
    cfg = _load(_tiny_second(tmp_path))
    train_set, _, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, 1, False, workers=0, training=True)
    test_set, _, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, 1, False, workers=0, training=False)
    rng = np.random.default_rng(0)
    # 200 points at x = 40..60 m, beyond the range's x_max 25.6 m; one box inside the range.
    outside = np.column_stack([rng.uniform(40, 60, 200), rng.uniform(-5, 5, 200), rng.uniform(-2, 0, 200),
                               rng.uniform(0, 1, 200)]).astype(np.float32)  # fmt: skip
    box = np.array([[10.0, 0.0, -1.0, 3.9, 1.6, 1.56, 0.0]], dtype=np.float32)

    def frame() -> dict:
        return {"points": outside.copy(), "frame_id": "999999", "gt_boxes": box.copy(), "gt_names": np.array(["Car"])}

    np.random.seed(0)
    sample = train_set.prepare_data(frame())
    assert sample["frame_id"] != "999999" and len(sample["voxels"]) > 0  # OpenPCDet's way: another frame
    assert train_set.data_issues.totals()["no_points_in_range"] == 1

    empty = test_set.prepare_data(frame())
    good = test_set[0]
    assert len(empty["voxels"]) == 0 and len(good["voxels"]) > 0
    assert test_set.data_issues.totals()["no_points_in_range"] == 1
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, 3, test_set).eval()
    with torch.no_grad():
        model.dense_head.conv_cls.bias.zero_()  # every anchor scores ~0.5: boxes come out where features exist
        for samples in ([empty], [empty, good], [good, empty]):
            batch = load_data_to_gpu(test_set.collate_batch(samples), device="cpu")
            preds, _ = model(batch)
            assert len(preds) == len(samples)
            assert all(torch.isfinite(p["pred_boxes"]).all() for p in preds)
            # Zero voxels give an all-zero BEV map for that sample: nothing from the sparse encoder reaches it.
            for i, s in enumerate(samples):
                if s is empty:
                    assert batch["spatial_features"][i].abs().sum() == 0
                else:
                    assert len(preds[i]["pred_boxes"]) > 0
