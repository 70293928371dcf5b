"""A small synthetic nuScenes set and collated batches from it, for tests of nuScenes detectors.

    from pcdet.datasets.nuscenes.synthetic_batch import prepare_synthetic_nuscenes, synthetic_nuscenes_batch

    root = prepare_synthetic_nuscenes(tmp_path)                      # generate + create_nuscenes_infos (cached)
    batch = synthetic_nuscenes_batch(root, model_cfg.DATA_CONFIG)    # collated batch_dict, numpy (load_data_to_gpu)

Needs nuscenes-devkit (info creation reads the tables through it).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from easydict import EasyDict

from ...config import ROOT_DIR, cfg_from_yaml_file
from .nuscenes_dataset import NuScenesDataset, create_nuscenes_gt_database, create_nuscenes_infos
from .nuscenes_utils import DETECTION_CLASSES

VERSION = "v1.0-mini"
SYNTHETIC_DATASET_CFG = ROOT_DIR / "tools" / "cfgs" / "dataset_configs" / "synthetic_nuscenes_dataset.yaml"


def prepare_synthetic_nuscenes(root: str | Path, num_scenes: int = 2, num_samples: int = 2, seed: int = 0,
                               max_sweeps: int = 10) -> Path:  # fmt: skip
    """Write the synthetic set to ``root/v1.0-mini`` and its infos + gt database, unless already there; returns
    ``root`` (the DATA_PATH). Two scenes = one train and one val scene (v1.0-mini's split names)."""
    from ..synthetic.generate_nuscenes import generate_nuscenes

    root = Path(root)
    data_root = root / VERSION
    if not (data_root / f"nuscenes_dbinfos_{max_sweeps}sweeps_withvelo.pkl").is_file():
        generate_nuscenes(data_root, num_scenes=num_scenes, num_samples=num_samples, seed=seed, version=VERSION)
        logger = logging.getLogger("pcdet")
        create_nuscenes_infos(VERSION, root, root, max_sweeps=max_sweeps, logger=logger)
        cfg = cfg_from_yaml_file(SYNTHETIC_DATASET_CFG, EasyDict())
        create_nuscenes_gt_database(cfg, root, max_sweeps=max_sweeps, logger=logger)
    return root


def synthetic_nuscenes_dataset(root: str | Path, dataset_cfg=None, class_names=None, training: bool = False):
    """``NuScenesDataset`` on ``root`` (from :func:`prepare_synthetic_nuscenes`) with ``dataset_cfg`` (default: the
    synthetic dataset config; a model's DATA_CONFIG works as is: its paths are replaced)."""
    if dataset_cfg is None:
        cfg = cfg_from_yaml_file(SYNTHETIC_DATASET_CFG, EasyDict())
    else:
        cfg = copy.deepcopy(dataset_cfg)
    cfg.VERSION = VERSION
    return NuScenesDataset(cfg, list(class_names or DETECTION_CLASSES), training=training, root_path=root)


def synthetic_nuscenes_batch(root: str | Path, dataset_cfg=None, class_names=None, batch_size: int = 2,
                             training: bool = False) -> dict:  # fmt: skip
    """A collated batch_dict of the first ``batch_size`` samples (training: augmented, CBGS-resampled list):
    ``points (N, 6: b, x, y, z, intensity, time lag)``, ``voxels``/``voxel_coords``/``voxel_num_points``,
    ``gt_boxes (B, M, 10: x, y, z, dx, dy, dz, heading, vx, vy, label)``, ``frame_id``, ``metadata``,
    ``batch_size``."""
    dataset = synthetic_nuscenes_dataset(root, dataset_cfg, class_names, training=training)
    return dataset.collate_batch([dataset[i % len(dataset)] for i in range(batch_size)])
