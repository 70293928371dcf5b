"""Run a trained detector on point-cloud files and save a bird's-eye-view PNG per frame.

    cd tools && python demo.py --cfg_file cfgs/kitti_models/pointpillar.yaml --ckpt pointpillar_7728.pth \
        --data_path ../data/kitti/training/velodyne/000008.bin [--label_path ../data/kitti/training/label_2]

``--data_path`` is one ``.bin`` (float32 x, y, z, intensity) / ``.npy`` file or a folder of them. Ground truth is
drawn when a KITTI label file for the frame (``--label_path``: a file or a folder of ``<frame>.txt``) and its
calibration (``calib/<frame>.txt`` next to the label or velodyne folder) exist. Pictures go to ``--out_dir``.
The detector runs its fused eval path (``--no_fused_inference``: the reference forward; same boxes up to round-off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _init_path  # noqa: F401  (repo root on sys.path)
import numpy as np
import torch
from train_utils.experiment import add_fused_inference_flag, load_experiment_config
from visual_utils.bev_plot import render_bev, save_bev

from pcdet.config import cfg
from pcdet.datasets import DatasetTemplate
from pcdet.models import build_network, default_device, load_data_to_gpu
from pcdet.models.model_utils.fused_inference import fused_inference_scope
from pcdet.utils import box_utils, calibration_kitti, common_utils, object3d_kitti
from pcdet.utils.cli import run_tool
from pcdet.utils.point_cloud_io import PointCloudError, load_points_bin


def read_points(path: Path) -> np.ndarray:
    """``(N, 4)`` float32 points of a KITTI ``.bin`` (4 float32 per point) or a ``.npy`` array."""
    if path.suffix == ".npy":
        points = np.load(path)
        if points.ndim != 2 or points.shape[1] < 4:
            raise PointCloudError(f"{path}: expected an (N, >=4) array of x, y, z, intensity, got shape {points.shape}")
        return points[:, :4].astype(np.float32)
    return load_points_bin(path)


class DemoDataset(DatasetTemplate):
    """Point-cloud files run through the config's test-time processing (no augmentation, no labels)."""

    def __init__(self, dataset_cfg, class_names, root_path: Path, ext: str = ".bin", logger=None) -> None:
        super().__init__(
            dataset_cfg=dataset_cfg, class_names=class_names, training=False, root_path=root_path, logger=logger
        )
        root_path = Path(root_path)
        self.files = sorted(root_path.glob(f"*{ext}")) if root_path.is_dir() else [root_path]
        if not self.files:
            raise FileNotFoundError(f"no *{ext} files in {root_path}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return self.prepare_data({"points": read_points(self.files[index]), "frame_id": self.files[index].stem})


def find_ground_truth(frame: Path, label_path: Path | None, logger) -> np.ndarray | None:
    """LiDAR boxes ``(M, 7)`` of the frame's KITTI label (DontCare dropped), or None without label/calibration.

    The calibration is read from ``calib/<frame>.txt`` itself (as OpenPCDet does), never from an info file."""
    if label_path is None:
        return None
    label_file = label_path if label_path.is_file() else label_path / f"{frame.stem}.txt"
    calib_candidates = list(
        dict.fromkeys(
            [
                label_file.parent.parent / "calib" / f"{frame.stem}.txt",
                frame.parent.parent / "calib" / f"{frame.stem}.txt",
            ]
        )
    )
    calib_file = next((c for c in calib_candidates if c.is_file()), None)
    if not label_file.is_file():
        logger.warning(f"{frame.name}: no label file {label_file}; drawing predictions only")
        return None
    if calib_file is None:
        tried = " or ".join(str(c) for c in calib_candidates)
        logger.warning(f"{frame.name}: no calibration file {tried}; drawing predictions only")
        return None
    objects = [o for o in object3d_kitti.get_objects_from_label(label_file) if o.cls_type != "DontCare"]
    if not objects:
        return np.zeros((0, 7), np.float32)
    camera_boxes = np.array([[*o.loc, o.l, o.h, o.w, o.ry] for o in objects], dtype=np.float32)
    return box_utils.boxes3d_kitti_camera_to_lidar(camera_boxes, calibration_kitti.Calibration(calib_file))


def parse_config(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Detect objects in point clouds and draw bird's-eye views")
    parser.add_argument("--cfg_file", type=str, required=True, help="experiment config")
    parser.add_argument("--ckpt", type=str, required=True, help="checkpoint to run")
    parser.add_argument("--data_path", type=str, required=True, help="a point-cloud file or a folder of them")
    parser.add_argument("--ext", type=str, default=".bin", choices=[".bin", ".npy"], help="point-cloud file type")
    parser.add_argument("--label_path", type=str, default=None, help="KITTI label file or label_2 folder")
    parser.add_argument("--out_dir", type=str, default="demo_output", help="where the PNGs go")
    parser.add_argument("--score_thresh", type=float, default=None, help="hide predictions below this score")
    add_fused_inference_flag(parser, "run the detector")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on the console for input errors")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    load_experiment_config(args.cfg_file, args.set_cfgs, cfg)
    return args, cfg


def main(argv: list[str] | None = None) -> list[Path]:
    args, cfg = parse_config(argv)
    logger = common_utils.create_logger()
    logger.info("-----------------Quick Demo of pcdet-------------------------")
    dataset = DemoDataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, root_path=Path(args.data_path), ext=args.ext, logger=logger)
    logger.info(f"Total number of samples: {len(dataset)}")
    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    model.to(default_device())
    model.load_params_strict(args.ckpt, logger=logger)
    model.eval()
    label_path = Path(args.label_path) if args.label_path else None

    written = []
    fused = not args.no_fused_inference
    logger.info(f"Inference path: {'fused eval path' if fused else 'reference eval path (--no_fused_inference)'}")
    with torch.no_grad(), fused_inference_scope(model, fused):
        for idx, data_dict in enumerate(dataset):
            frame = dataset.files[idx]
            batch = load_data_to_gpu(dataset.collate_batch([data_dict]), device=next(model.parameters()).device)
            pred_dicts, _ = model(batch)
            pred = {key: val.cpu().numpy() for key, val in pred_dicts[0].items()}
            keep = pred["pred_scores"] >= (args.score_thresh if args.score_thresh is not None else -np.inf)
            gt_boxes = find_ground_truth(frame, label_path, logger)
            summary = f"{frame.name}: {int(keep.sum())} predictions" + (
                "" if gt_boxes is None else f", {len(gt_boxes)} ground-truth boxes"
            )
            fig = render_bev(
                read_points(frame),
                pred_boxes=pred["pred_boxes"][keep],
                pred_scores=pred["pred_scores"][keep],
                pred_labels=pred["pred_labels"][keep],
                gt_boxes=gt_boxes,
                class_names=cfg.CLASS_NAMES,
                point_cloud_range=cfg.DATA_CONFIG.POINT_CLOUD_RANGE,
                title=summary,
            )
            out = save_bev(fig, Path(args.out_dir) / f"{frame.stem}.png")
            logger.info(f"{summary} -> {out}")
            written.append(out)
    logger.info("Demo done.")
    return written


if __name__ == "__main__":
    run_tool(main, sys.argv[1:])
