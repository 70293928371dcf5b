"""Shared helpers of the nuScenes model tests: the configs, a stub dataset with what build_network reads, the
OpenPCDet reference lists, and a collated batch made by hand (voxelised points, padded 10-column gt boxes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from _model_stubs import read_keys_tsv, state_rows, stub_dataset  # noqa: F401  (re-exported for the nuScenes tests)
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file

REPO = Path(__file__).resolve().parents[1]
CFG_DIR = REPO / "tools" / "cfgs" / "nuscenes_models"
DATASET_CFG = REPO / "tools" / "cfgs" / "dataset_configs" / "nuscenes_dataset.yaml"
REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openpcdet"

NUSCENES_CLASSES = [
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
]  # fmt: skip


def _merged(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, val in child.items():
        out[key] = _merged(out[key], val) if isinstance(val, dict) and isinstance(out.get(key), dict) else val
    return out


def _raw_with_top_bases(path: Path) -> dict:
    own = yaml.safe_load(path.read_text())
    base = own.pop("_BASE_CONFIG_", None)
    return _merged(_raw_with_top_bases(REPO / "tools" / base), own) if base else own


def load_cfg(name: str) -> EasyDict:
    """The config through pcdet.config once the nuScenes dataset config exists; before that its YAML with only the
    top-level bases (student → teacher) merged in, DATA_CONFIG's base left out: the models do not depend on it."""
    path = CFG_DIR / name
    if DATASET_CFG.is_file():
        return cfg_from_yaml_file(path, EasyDict())
    return EasyDict(_raw_with_top_bases(path))


def voxel_size_of(cfg: EasyDict) -> list[float]:
    return next(p.VOXEL_SIZE for p in cfg.DATA_CONFIG.DATA_PROCESSOR if p.NAME == "transform_points_to_voxels")


def hand_batch(pcr, voxel, max_points: int, boxes_per_sample: list[np.ndarray], seed: int = 0) -> dict:
    """A collated batch: per sample, points on and around the given boxes (10 columns: x, y, z, dx, dy, dz,
    heading, vx, vy, label) plus background, voxelised with spconv's PointToVoxel; gt zero-padded."""
    from spconv.pytorch.utils import PointToVoxel

    rng = np.random.default_rng(seed)
    gen = PointToVoxel(
        vsize_xyz=list(voxel), coors_range_xyz=list(pcr), num_point_features=5,
        max_num_voxels=20000, max_num_points_per_voxel=max_points,
    )  # fmt: skip
    voxels, coords, nums = [], [], []
    for b, boxes in enumerate(boxes_per_sample):
        parts = [rng.uniform(pcr[:3], np.array(pcr[3:]) - 1e-3, size=(600, 3))]
        for box in boxes:
            parts.append(box[:3] + rng.uniform(-0.5, 0.5, size=(200, 3)) * box[3:6])
        xyz = np.clip(np.concatenate(parts), np.array(pcr[:3]), np.array(pcr[3:]) - 1e-3)
        points = np.column_stack([xyz, rng.uniform(0, 1, len(xyz)), rng.uniform(0, 0.5, len(xyz))]).astype(np.float32)
        v, c, n = gen(torch.from_numpy(points))
        voxels.append(v.numpy())
        coords.append(np.pad(c.numpy(), ((0, 0), (1, 0)), constant_values=b))
        nums.append(n.numpy())
    m = max(1, max(len(b) for b in boxes_per_sample))
    gt = np.zeros((len(boxes_per_sample), m, 10), dtype=np.float32)
    for b, boxes in enumerate(boxes_per_sample):
        gt[b, : len(boxes)] = boxes
    return {
        "voxels": np.concatenate(voxels),
        "voxel_coords": np.concatenate(coords),
        "voxel_num_points": np.concatenate(nums),
        "batch_size": len(boxes_per_sample),
        "gt_boxes": gt,
    }
