"""nuScenes LiDAR detection: infos / gt database creation, multi-sweep samples, CBGS resampling, devkit evaluation.

    python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos \\
        --cfg_file tools/cfgs/dataset_configs/nuscenes_dataset.yaml --version v1.0-mini

Layout as in OpenPCDet: the devkit's data root is ``DATA_PATH/<VERSION>`` (``samples/``, ``sweeps/``, ``maps/``,
``<VERSION>/*.json``), and the infos go there too: ``nuscenes_infos_<N>sweeps_{train,val}.pkl``,
``nuscenes_dbinfos_<N>sweeps_withvelo.pkl`` and ``gt_database_<N>sweeps_withvelo/`` (N = MAX_SWEEPS).
INFO_PATH and DB_INFO_PATH are relative to that folder. Info format: see ``nuscenes_utils``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...ops.roiaware_pool3d import roiaware_pool3d_utils
from ...utils import common_utils
from ...utils.checkpoint_io import safe_pickle_load
from ...utils.point_cloud_io import PointCloudError, load_points_bin
from ..dataset import DatasetTemplate, resolve_data_path
from . import nuscenes_eval, nuscenes_utils

NUM_FILE_FEATURES = 5  # .pcd.bin: x, y, z, intensity, ring index
EGO_RADIUS = 1.0  # m: sweep points this close to the sensor (|x|, |y|) are the car itself


class NuScenesDataset(DatasetTemplate):
    def __init__(self, dataset_cfg, class_names, training: bool = True, root_path=None, logger=None):
        base = Path(root_path) if root_path is not None else resolve_data_path(dataset_cfg.DATA_PATH)
        root_path = base / dataset_cfg.VERSION  # before the template builds the augmentor: DB_INFO_PATH is below it
        super().__init__(
            dataset_cfg=dataset_cfg, class_names=class_names, training=training, root_path=root_path, logger=logger
        )
        if self.training and dataset_cfg.get("USE_SHARED_MEMORY", False):
            raise NotImplementedError(
                "USE_SHARED_MEMORY is not supported for nuScenes yet (it is for KITTI): set it to False; the sweep "
                "files are read from disk, which the OS page cache keeps hot"
            )
        self.version = dataset_cfg.VERSION
        self.max_sweeps = int(dataset_cfg.MAX_SWEEPS)
        self.infos: list[dict] = []
        self.include_nuscenes_data(self.mode)
        if self.training and dataset_cfg.get("BALANCED_RESAMPLING", False):
            self.infos = self.balanced_infos_resampling(self.infos)

    def include_nuscenes_data(self, mode: str) -> None:
        for rel_path in self.dataset_cfg.INFO_PATH[mode]:
            info_path = self.root_path / rel_path
            if not info_path.is_file():
                self.logger.warning(f"nuScenes info file {info_path} not found (create_nuscenes_infos writes it)")
                continue
            self.infos.extend(safe_pickle_load(info_path))
        self.logger.info(f"Total samples for nuScenes dataset ({mode}): {len(self.infos)}")

    def balanced_infos_resampling(self, infos: list[dict]) -> list[dict]:
        """CBGS (Zhu et al. 2019): for each class, draw (with replacement) as many of the frames that contain it as
        make every class hold the same share of the duplicated list. A class absent from the infos is left out
        (OpenPCDet divides by its zero share)."""
        by_class = {name: [info for info in infos if name in set(info["gt_names"])] for name in self.class_names}
        total = sum(len(v) for v in by_class.values())
        present = {name: v for name, v in by_class.items() if v}
        if not present:
            return infos
        target = total / len(present)  # frames per class after resampling
        sampled: list[dict] = []
        for frames in present.values():
            picks = np.random.choice(len(frames), int(target), replace=True)
            sampled.extend(frames[i] for i in picks)
        self.logger.info(f"CBGS resampling: {len(infos)} → {len(sampled)} samples")
        return sampled

    # ------------------------------------------------------------------------------------------------ points
    def _read_points(self, rel_path: str, what: str) -> np.ndarray:
        path = self.root_path / rel_path
        if not path.is_file():
            raise FileNotFoundError(f"nuScenes LiDAR file not found: {path} ({what})")
        return load_points_bin(path, num_features=NUM_FILE_FEATURES)[:, 0:4]

    def get_sweep(self, sweep: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
        """One sweep in the key frame's LiDAR frame without the ego car's own returns, and its time lag column."""
        points = self._read_points(sweep["lidar_path"], f"sweep {sweep['sample_data_token']} of {what}")
        near = (np.abs(points[:, 0]) < EGO_RADIUS) & (np.abs(points[:, 1]) < EGO_RADIUS)
        points = points[~near].copy()
        if sweep["transform_matrix"] is not None:
            tm = np.asarray(sweep["transform_matrix"], dtype=np.float64)
            points[:, 0:3] = (points[:, 0:3].astype(np.float64) @ tm[0:3, 0:3].T + tm[0:3, 3]).astype(np.float32)
        return points, np.full((len(points), 1), sweep["time_lag"], dtype=np.float32)

    def get_lidar_with_sweeps(self, index: int, max_sweeps: int | None = None) -> np.ndarray:
        """Key frame + its ``max_sweeps - 1`` newest sweeps: ``(N, 5)`` x, y, z, intensity, time lag (s).

        OpenPCDet draws the sweeps at random among those in the info, so with fewer MAX_SWEEPS than the infos hold it
        may skip the newest ones and evaluation is not repeatable; here the newest are taken."""
        info = self.infos[index]
        max_sweeps = self.max_sweeps if max_sweeps is None else max_sweeps
        what = f"sample {info['token']}"
        points = [self._read_points(info["lidar_path"], f"key frame of {what}")]
        times = [np.zeros((len(points[0]), 1), dtype=np.float32)]
        if len(info["sweeps"]) < max_sweeps - 1:
            raise nuscenes_utils.NuScenesLayoutError(
                f"the infos hold {len(info['sweeps'])} sweeps per key frame, MAX_SWEEPS={max_sweeps} needs "
                f"{max_sweeps - 1}: create the infos again with this MAX_SWEEPS (create_nuscenes_infos)"
            )
        for sweep in info["sweeps"][: max_sweeps - 1]:
            p, t = self.get_sweep(sweep, what)
            points.append(p)
            times.append(t)
        return np.concatenate([np.concatenate(points), np.concatenate(times)], axis=1)

    # ------------------------------------------------------------------------------------------------ samples
    def __len__(self) -> int:
        if self._merge_all_iters_to_one_epoch:
            return len(self.infos) * self.total_epochs
        return len(self.infos)

    def __getitem__(self, index: int) -> dict:
        if self._merge_all_iters_to_one_epoch:
            index = index % len(self.infos)
        info = self.infos[index]
        frame_id = Path(info["lidar_path"]).stem
        try:
            points = self.get_lidar_with_sweeps(index)
        except (PointCloudError, FileNotFoundError) as exc:
            if self.training and self.dataset_cfg.get("SKIP_CORRUPT_FRAMES", False):
                return self.replace_sample("corrupt_point_cloud", frame_id, str(exc))
            raise
        input_dict = {"points": points, "frame_id": frame_id, "metadata": {"token": info["token"]}}
        if "gt_boxes" in info:
            keep = np.ones(len(info["gt_boxes"]), dtype=bool)
            min_points = self.dataset_cfg.get("FILTER_MIN_POINTS_IN_GT", False)
            if min_points:
                keep = info["num_lidar_pts"] >= int(min_points)
            gt_boxes = np.array(info["gt_boxes"][keep], dtype=np.float32)
            if self.dataset_cfg.get("SET_NAN_VELOCITY_TO_ZEROS", False):
                # before augmentation: a rotation would mix a NaN component into the other one
                gt_boxes[np.isnan(gt_boxes)] = 0.0
            input_dict["gt_boxes"] = gt_boxes
            input_dict["gt_names"] = np.asarray(info["gt_names"])[keep]
        data_dict = self.prepare_data(data_dict=input_dict)
        if not self.dataset_cfg.get("PRED_VELOCITY", True) and "gt_boxes" in data_dict:
            data_dict["gt_boxes"] = data_dict["gt_boxes"][:, [0, 1, 2, 3, 4, 5, 6, -1]]
        return data_dict

    # ------------------------------------------------------------------------------------------------ outputs
    def evaluation(self, det_annos: list[dict], class_names: list[str], **kwargs):
        """nuscenes-devkit's DetectionEval on the version's val split → ``(result_str, result_dict)``; writes
        ``results_nusc.json`` and the devkit's ``metrics_summary.json`` to ``output_path``."""
        if self.version == "v1.0-test":
            return "No ground-truth annotations for evaluation (v1.0-test)", {}
        output_path = Path(kwargs.get("output_path") or (self.root_path / "eval_output"))
        nusc = nuscenes_utils.load_nuscenes(self.version, self.root_path)
        results = nuscenes_eval.det_annos_to_results(det_annos, nusc)
        metrics = nuscenes_eval.evaluate(nusc, results, self.version, output_path, verbose=kwargs.get("verbose", False))
        return nuscenes_eval.format_metrics(metrics, class_names)

    def create_groundtruth_database(self, used_classes=None, max_sweeps: int = 10) -> None:
        """Each training object's multi-sweep points (relative to its box centre) → ``gt_database_<N>sweeps_withvelo/``
        and ``nuscenes_dbinfos_<N>sweeps_withvelo.pkl`` (``box3d_lidar`` with velocity)."""
        database_dir = self.root_path / f"gt_database_{max_sweeps}sweeps_withvelo"
        db_info_path = self.root_path / f"nuscenes_dbinfos_{max_sweeps}sweeps_withvelo.pkl"
        database_dir.mkdir(parents=True, exist_ok=True)
        all_db_infos: dict[str, list[dict]] = {}
        for idx in tqdm(range(len(self.infos)), desc="gt database"):
            info = self.infos[idx]
            gt_boxes, names = info["gt_boxes"], info["gt_names"]
            if len(gt_boxes) == 0:
                continue
            points = self.get_lidar_with_sweeps(idx, max_sweeps=max_sweeps)
            inside = roiaware_pool3d_utils.points_in_boxes_cpu(points[:, 0:3], gt_boxes[:, 0:7]).astype(bool)
            for i in range(len(gt_boxes)):
                name = str(names[i])
                if used_classes is not None and name not in used_classes:
                    continue
                obj_points = points[inside[i]].copy()
                obj_points[:, 0:3] -= gt_boxes[i, 0:3]
                file_path = database_dir / f"{idx}_{name}_{i}.bin"
                obj_points.astype(np.float32).tofile(file_path)
                all_db_infos.setdefault(name, []).append(
                    {
                        "name": name,
                        "path": str(file_path.relative_to(self.root_path)),
                        "image_idx": idx,
                        "gt_idx": i,
                        "box3d_lidar": gt_boxes[i],
                        "num_points_in_gt": obj_points.shape[0],
                    }
                )
        for name, entries in all_db_infos.items():
            self.logger.info(f"gt database {name}: {len(entries)} objects")
        common_utils.dump_pickle(all_db_infos, db_info_path)


def create_nuscenes_infos(version: str, data_path, save_path, max_sweeps: int = 10, logger=None) -> None:
    """Infos of the version's train and val splits (one test list for v1.0-test) from the devkit's tables.

    As in OpenPCDet, ``data_path`` and ``save_path`` are the parents of the ``<version>`` folder (DATA_PATH)."""
    logger = logger or common_utils.create_logger()
    data_path, save_path = Path(data_path) / version, Path(save_path) / version
    nusc = nuscenes_utils.load_nuscenes(version, data_path)
    train_infos, val_infos = nuscenes_utils.fill_infos(nusc, version, max_sweeps, logger)
    save_path.mkdir(parents=True, exist_ok=True)
    if version == "v1.0-test":
        common_utils.dump_pickle(train_infos, save_path / f"nuscenes_infos_{max_sweeps}sweeps_test.pkl")
        return
    for split, infos in (("train", train_infos), ("val", val_infos)):
        path = save_path / f"nuscenes_infos_{max_sweeps}sweeps_{split}.pkl"
        common_utils.dump_pickle(infos, path)
        logger.info(f"nuScenes info {split} file is saved to {path} ({len(infos)} samples)")


def create_nuscenes_gt_database(dataset_cfg, data_path, max_sweeps: int = 10, logger=None) -> None:
    """The train split's gt database (after :func:`create_nuscenes_infos`), ``data_path`` = DATA_PATH."""
    cfg = copy.deepcopy(dataset_cfg)
    cfg.MAX_SWEEPS = max_sweeps
    cfg.INFO_PATH = {"train": [f"nuscenes_infos_{max_sweeps}sweeps_train.pkl"], "test": []}
    cfg.BALANCED_RESAMPLING = False
    cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST = []  # the database is being made: gt_sampling cannot read it yet
    classes = list(nuscenes_utils.DETECTION_CLASSES)
    dataset = NuScenesDataset(cfg, classes, training=True, root_path=Path(data_path), logger=logger)
    dataset.create_groundtruth_database(max_sweeps=max_sweeps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="nuScenes data preparation")
    parser.add_argument("--func", choices=["create_nuscenes_infos"], default="create_nuscenes_infos")
    parser.add_argument("--cfg_file", required=True, help="e.g. tools/cfgs/dataset_configs/nuscenes_dataset.yaml")
    parser.add_argument("--version", default=None, help="v1.0-trainval, v1.0-test or v1.0-mini (default: VERSION)")
    parser.add_argument("--data_path", default=None, help="nuScenes root holding <version>/ (default: DATA_PATH)")
    parser.add_argument("--with_cam", action="store_true", help="accepted for OpenPCDet compatibility; LiDAR only")
    args = parser.parse_args(argv)

    from easydict import EasyDict

    from ...config import cfg_from_yaml_file

    dataset_cfg = cfg_from_yaml_file(args.cfg_file, EasyDict())
    version = args.version or dataset_cfg.VERSION
    dataset_cfg.VERSION = version
    root = Path(os.path.expanduser(args.data_path)) if args.data_path else resolve_data_path(dataset_cfg.DATA_PATH)
    max_sweeps = int(dataset_cfg.MAX_SWEEPS)
    logger = common_utils.create_logger()
    create_nuscenes_infos(version, root, root, max_sweeps=max_sweeps, logger=logger)
    if version != "v1.0-test":
        create_nuscenes_gt_database(dataset_cfg, root, max_sweeps=max_sweeps, logger=logger)


if __name__ == "__main__":
    from ...utils.cli import run_tool

    run_tool(main, sys.argv[1:])
