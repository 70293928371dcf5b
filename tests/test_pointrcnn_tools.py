"""PointRCNN end to end on CPU with the real tools: train.py for an epoch, resumed for a second, test.py on the
checkpoint (KITTI table and result.pkl), on the tiny synthetic data set with pointrcnn_synthetic.yaml narrowed."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from easydict import EasyDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_experiment import PYTHON, TOOLS, tiny_dataset  # noqa: E402
from train_utils.experiment import load_experiment_config  # noqa: E402

from pcdet.datasets import build_dataloader  # noqa: E402
from pcdet.models import build_network  # noqa: E402
from pcdet.utils.checkpoint_io import safe_load  # noqa: E402

pytestmark = pytest.mark.slow
CFG_DIR = TOOLS / "cfgs" / "kitti_models"
# pointrcnn_synthetic.yaml on the tiny data set (3 train / 3 val frames, no gt sampling), 1024 points per frame and
# every width a handful of channels: an iteration takes well under a second.
TINY_POINTRCNN = """
_BASE_CONFIG_: {base}
DATA_CONFIG:
    DATA_PATH: {data}
    DATA_AUGMENTOR:
        DISABLE_AUG_LIST: ['gt_sampling']
        AUG_CONFIG_LIST:
            - NAME: random_world_flip
              ALONG_AXIS_LIST: ['x']
    DATA_PROCESSOR:
        - NAME: mask_points_and_boxes_outside_range
          REMOVE_OUTSIDE_BOXES: True
        - NAME: sample_points
          NUM_POINTS:
              train: 1024
              test: 1024
        - NAME: shuffle_points
          SHUFFLE_ENABLED:
              train: True
              test: False
MODEL:
    BACKBONE_3D:
        SA_CONFIG:
            NPOINTS: [256, 64, 16, 8]
            NSAMPLE: [[8, 16], [8, 16], [8, 16], [8, 16]]
            MLPS: [[[8], [8]], [[8], [8]], [[8], [8]], [[8], [8]]]
        FP_MLPS: [[16], [16], [16], [16]]
    POINT_HEAD:
        CLS_FC: [16]
        REG_FC: [16]
    ROI_HEAD:
        ROI_POINT_POOL:
            NUM_SAMPLED_POINTS: 32
        XYZ_UP_LAYER: [16, 16]
        CLS_FC: [16]
        REG_FC: [16]
        SA_CONFIG:
            NPOINTS: [16, 4, -1]
            MLPS: [[16], [16], [16]]
        TARGET_CONFIG:
            ROI_PER_IMAGE: 16
OPTIMIZATION:
    BATCH_SIZE_PER_GPU: 1
    NUM_EPOCHS: 2
"""


def _env() -> dict:
    return {**os.environ, "PATH": f"{PYTHON.parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=TOOLS, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _train_cmd(cfg_file: Path, out: Path, *extra: str) -> list[str]:
    return [str(PYTHON), "train.py", "--cfg_file", str(cfg_file), "--workers", "0", "--fix_random_seed",
            "--output_root", str(out), "--skip_eval", "--logger_iter_interval", "1", *extra]  # fmt: skip


def test_pointrcnn_trains_resumes_and_test_py_evaluates(tmp_path):
    cfg_file = tmp_path / "cfgs" / "tiny" / "tiny_pointrcnn.yaml"
    cfg_file.parent.mkdir(parents=True)
    cfg_file.write_text(TINY_POINTRCNN.format(base=CFG_DIR / "pointrcnn_synthetic.yaml", data=tiny_dataset()))
    out = tmp_path / "out"
    ckpt_dir = out / "tiny" / "tiny_pointrcnn" / "default" / "ckpt"

    first = _run(_train_cmd(cfg_file, out, "--epochs", "1")).stderr
    for term in ("point_loss_cls", "point_loss_box", "rcnn_loss_cls", "rcnn_loss_reg"):
        assert term in first, term
    epoch_1 = safe_load(ckpt_dir / "checkpoint_epoch_1.pth")
    assert (epoch_1["epoch"], epoch_1["it"]) == (1, 3)  # 3 frames, batch 1

    again = _run(_train_cmd(cfg_file, out)).stderr
    assert f"Resumed from {ckpt_dir / 'checkpoint_epoch_1.pth'} (epoch 1, iteration 3" in again
    final = safe_load(ckpt_dir / "checkpoint_epoch_2.pth")
    assert (final["epoch"], final["it"]) == (2, 6)
    key = "roi_head.cls_layers.0.weight"  # stage two trains too
    assert not torch.equal(final["model_state"][key], epoch_1["model_state"][key])

    cfg = load_experiment_config(str(cfg_file), None, EasyDict({"ROOT_DIR": TOOLS.parent}))
    dataset, _, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, 1, False, workers=0, training=False)
    build_network(cfg.MODEL, 3, dataset).load_state_dict(final["model_state"], strict=True)

    test = _run([str(PYTHON), "test.py", "--cfg_file", str(cfg_file), "--workers", "0", "--batch_size", "2",
                 "--ckpt", str(ckpt_dir / "checkpoint_epoch_2.pth"), "--output_root", str(out),
                 "--set", "MODEL.POST_PROCESSING.SCORE_THRESH", "0.0"])  # fmt: skip
    assert "Car AP@0.70" in test.stderr and "recall_roi_0.3" in test.stderr
    result = out / "tiny" / "tiny_pointrcnn" / "default" / "eval" / "epoch_2" / "val" / "default" / "result.pkl"
    with open(result, "rb") as f:
        annos = pickle.load(f)
    val_ids = (tiny_dataset() / "ImageSets" / "val.txt").read_text().split()
    assert [str(a["frame_id"]) for a in annos] == val_ids
    assert sum(len(a["name"]) for a in annos) > 0  # score threshold 0: the second stage's boxes come through
