"""Slim a trained checkpoint to what a teacher needs (its weights) plus its provenance, for committing to the repo.

    cd tools && python freeze_teacher.py --cfg_file cfgs/kitti_models/pointpillar_synthetic.yaml \
        --ckpt ../output/.../checkpoint_epoch_16.pth --out ../checkpoints/pointpillar_synthetic_teacher.pth \
        --command "python train.py ..."

The file is an ordinary OpenPCDet-layout checkpoint (``model_state``, ``epoch``, ``it``, ``version``) without the
optimizer state, plus ``provenance``: the command that trained it, the synthetic generator version, the resolved
model config, and a fingerprint of the network's raw head outputs on a fixed probe frame. tests/test_checkpoints.py
recomputes the fingerprint with today's code and generator, so a change that makes the committed teacher stale
(different weights layout, different forward, different data) fails a test instead of silently weakening the
main job.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _init_path  # noqa: F401  (repo root on sys.path)
import numpy as np
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file, plain_data
from pcdet.datasets.synthetic import GENERATOR_VERSION
from pcdet.datasets.synthetic.generate import generate_frame
from pcdet.models import build_network
from pcdet.models.kd.feature_matching import VoxelGrid
from pcdet.utils.checkpoint_io import atomic_torch_save, file_sha256, safe_load

# A frame of neither split's generator seed (the protocol uses seeds 1 and 2).
PROBE_SEED, PROBE_INDEX = 97, 0


def model_config(cfg: EasyDict) -> str:
    """What decides the network and its input: MODEL, classes, range and voxelisation, as canonical JSON."""
    processor = [plain_data(p) for p in cfg.DATA_CONFIG.DATA_PROCESSOR if p.NAME == "transform_points_to_voxels"]
    keep = {"MODEL": plain_data(cfg.MODEL), "CLASS_NAMES": list(cfg.CLASS_NAMES), "VOXELS": processor}
    keep["POINT_CLOUD_RANGE"] = list(cfg.DATA_CONFIG.POINT_CLOUD_RANGE)
    return json.dumps(keep, sort_keys=True)


def probe_fingerprint(model: torch.nn.Module, cfg: EasyDict) -> list[float]:
    """Statistics of the eval-mode head outputs (before post-processing) on the probe frame."""
    grid = VoxelGrid.from_data_config(cfg.DATA_CONFIG)
    points = torch.from_numpy(generate_frame(PROBE_SEED, PROBE_INDEX, with_image=False)["points"])
    points = torch.cat([torch.zeros(len(points), 1), points], dim=1)
    batch = {"points": points, "batch_size": 1, **grid.voxelize(points, 1, training=False)}
    model.eval()
    with torch.no_grad():
        for module in model.module_list:
            batch = module(batch)
    head = model.dense_head.forward_ret_dict
    out = []
    for key in ("cls_preds", "box_preds", "dir_cls_preds"):
        values = head[key].double()
        out += [float(values.mean()), float(values.std()), float(values.abs().max())]
    return out


def build_teacher(cfg_file: str) -> tuple[torch.nn.Module, EasyDict]:
    cfg = cfg_from_yaml_file(cfg_file, EasyDict())
    geometry = VoxelGrid.from_data_config(cfg.DATA_CONFIG).network_geometry(
        cfg.CLASS_NAMES, argparse.Namespace(num_point_features=4)
    )
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), geometry), cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg_file", required=True)
    parser.add_argument("--ckpt", required=True, help="the training checkpoint to slim")
    parser.add_argument("--out", required=True)
    parser.add_argument("--command", required=True, help="the command that trained it (recorded verbatim)")
    args = parser.parse_args(argv)
    model, cfg = build_teacher(args.cfg_file)
    checkpoint = safe_load(args.ckpt)
    model.load_state_dict(checkpoint["model_state"], strict=True)
    frozen = {
        "model_state": {k: v.cpu() for k, v in checkpoint["model_state"].items()},
        "epoch": checkpoint.get("epoch"),
        "it": checkpoint.get("it"),
        "version": checkpoint.get("version"),
        "provenance": {
            "command": args.command,
            "generator_version": GENERATOR_VERSION,
            "model_config": model_config(cfg),
            "probe": [PROBE_SEED, PROBE_INDEX],
            "fingerprint": probe_fingerprint(model, cfg),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(frozen, out)
    size = out.stat().st_size
    print(f"{out}: {size} bytes ({size / 2**20:.1f} MiB), sha256 {file_sha256(out)}")
    print("fingerprint", np.round(frozen["provenance"]["fingerprint"], 6).tolist())


if __name__ == "__main__":
    main()
