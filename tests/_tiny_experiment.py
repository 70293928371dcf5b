"""A tiny synthetic KITTI-format data set and a small PointPillars config, for end-to-end tests of the tools.

The data set (6 frames: 3 train, 3 val) is generated once per test process and shared by every test that asks.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
PYTHON = REPO / ".venv" / "bin" / "python"

_DATA_DIR: Path | None = None

# PointPillars of pointpillar_synthetic.yaml, shrunk: a 25.6 m x 25.6 m range (160 x 160 pillars), 16 channels,
# one conv per block, no gt sampling, a few hundred pillars. One iteration takes a fraction of a second on a CPU.
TINY_CFG = """
_BASE_CONFIG_: {base}
DATA_CONFIG:
    DATA_PATH: {data}
    POINT_CLOUD_RANGE: [0, -12.8, -3, 25.6, 12.8, 1]
    DATA_AUGMENTOR:
        DISABLE_AUG_LIST: ['gt_sampling']
        AUG_CONFIG_LIST:
            - NAME: random_world_flip
              ALONG_AXIS_LIST: ['x']
    DATA_PROCESSOR:
        - NAME: mask_points_and_boxes_outside_range
          REMOVE_OUTSIDE_BOXES: True
        - NAME: shuffle_points
          SHUFFLE_ENABLED:
              train: True
              test: False
        - NAME: transform_points_to_voxels
          VOXEL_SIZE: [0.16, 0.16, 4]
          MAX_POINTS_PER_VOXEL: 8
          MAX_NUMBER_OF_VOXELS:
              train: 3000
              test: 3000
MODEL:
    VFE:
        NUM_FILTERS: [16]
    MAP_TO_BEV:
        NUM_BEV_FEATURES: 16
    BACKBONE_2D:
        LAYER_NUMS: [1, 1, 1]
        NUM_FILTERS: [16, 16, 16]
        NUM_UPSAMPLE_FILTERS: [16, 16, 16]
OPTIMIZATION:
    BATCH_SIZE_PER_GPU: 2
    NUM_EPOCHS: {epochs}
"""


def tiny_dataset() -> Path:
    """Root of the shared tiny data set (infos and gt database included), created on first use."""
    global _DATA_DIR
    if _DATA_DIR is None:
        from easydict import EasyDict

        from pcdet.config import cfg_from_yaml_file
        from pcdet.datasets.kitti.kitti_dataset import create_kitti_infos
        from pcdet.datasets.synthetic.generate import generate_dataset

        root = Path(tempfile.mkdtemp(prefix="pcdet_tiny_"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        generate_dataset(root, num_frames=6, seed=0, val_fraction=0.5, workers=1, progress=False)
        dataset_cfg = cfg_from_yaml_file(TOOLS / "cfgs/dataset_configs/synthetic_kitti_dataset.yaml", EasyDict())
        create_kitti_infos(dataset_cfg, ["Car", "Pedestrian", "Cyclist"], data_path=root, save_path=root, workers=1)
        _DATA_DIR = root
    return _DATA_DIR


def write_tiny_config(directory: Path, epochs: int = 2, name: str = "tiny_pp.yaml") -> Path:
    """A config file in ``directory/cfgs/tiny/`` (so its EXP_GROUP_PATH is ``tiny``) using the tiny data set."""
    cfg_dir = directory / "cfgs" / "tiny"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    path = cfg_dir / name
    base = TOOLS / "cfgs" / "kitti_models" / "pointpillar_synthetic.yaml"
    path.write_text(TINY_CFG.format(base=base, data=tiny_dataset(), epochs=epochs))
    return path


def sigkill_when(cmd: list[str], ready: Path, env: dict, timeout: float = 240) -> None:
    """Run ``cmd`` from tools/ and SIGKILL it as soon as ``ready`` exists (or it exits, or ``timeout`` s pass)."""
    proc = subprocess.Popen(cmd, cwd=TOOLS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
