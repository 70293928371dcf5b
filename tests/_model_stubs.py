"""What model tests share: a stub of what build_network reads from a dataset, and state-dict rows in the layout
of the OpenPCDet reference key lists (``../shared/reference/openpcdet/*.keys.tsv``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def stub_dataset(class_names, pcr, voxel, num_point_features: int = 5) -> SimpleNamespace:
    """Exactly what build_network reads from a dataset (nuScenes points: x, y, z, intensity, time lag)."""
    pcr = np.asarray(pcr, dtype=np.float32)
    voxel = np.asarray(voxel, dtype=np.float32)
    return SimpleNamespace(
        class_names=list(class_names),
        point_cloud_range=pcr,
        voxel_size=voxel,
        grid_size=np.round((pcr[3:6] - pcr[0:3]) / voxel).astype(np.int64),
        point_feature_encoder=SimpleNamespace(num_point_features=num_point_features),
        depth_downsample_factor=None,
    )


def read_keys_tsv(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(",")) if shape else (), dtype))
    return rows


def state_rows(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
