"""KITTI 3D object detection: raw-file access, info/gt-database creation, samples, predictions and evaluation.

Layout under DATA_PATH: ``ImageSets/{train,val,test}.txt``, ``training/{velodyne,calib,label_2,image_2[,planes]}``,
``testing/{velodyne,calib,image_2}``; created here: ``kitti_infos_*.pkl``, ``kitti_dbinfos_train.pkl``,
``gt_database/``.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import sys
import warnings
from concurrent import futures
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ...ops.roiaware_pool3d import roiaware_pool3d_utils
from ...utils import box_utils, calibration_kitti, common_utils, object3d_kitti
from ...utils.checkpoint_io import safe_pickle_load
from ...utils.point_cloud_io import PointCloudError, load_points_bin
from ..dataset import DatasetTemplate, _to_numpy
from ..shared_memory import SharedPointClouds

_ITEMS = ("points", "images", "gt_boxes2d")

# OpenPCDet's command ``python -m pcdet.datasets.kitti.kitti_dataset`` finds this module already imported (by
# pcdet.datasets), and runpy warns that two copies may misbehave; the __main__ block below runs the imported copy.
warnings.filterwarnings(
    "ignore", message=r"'pcdet\.datasets\.kitti\.kitti_dataset' found in sys\.modules", category=RuntimeWarning
)


class KittiDataset(DatasetTemplate):
    def __init__(self, dataset_cfg, class_names, training: bool = True, root_path=None, logger=None):
        super().__init__(
            dataset_cfg=dataset_cfg, class_names=class_names, training=training, root_path=root_path, logger=logger
        )
        unknown = [x for x in dataset_cfg.get("GET_ITEM_LIST", ["points"]) if x not in _ITEMS]
        if unknown:
            raise ValueError(f"GET_ITEM_LIST entries {unknown} are not supported by KittiDataset (known: {_ITEMS})")
        self.split = dataset_cfg.DATA_SPLIT[self.mode]
        self.root_split_path = self.root_path / ("testing" if self.split == "test" else "training")
        split_file = self.root_path / "ImageSets" / f"{self.split}.txt"
        # Only info creation needs the id list; training/testing read the infos, so a missing file is not fatal here.
        self.sample_id_list = self._read_split_file(split_file) if split_file.is_file() else None
        self._use_road_plane = self.training and any(
            c.NAME == "gt_sampling" and c.get("USE_ROAD_PLANE", False) and c.NAME not in self._disabled_augs()
            for c in dataset_cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST
        )
        self.kitti_infos: list[dict] = []
        self.include_kitti_data(self.mode)
        self.shared_points: SharedPointClouds | None = None
        if self.training and dataset_cfg.get("USE_SHARED_MEMORY", False):
            self.shared_points = SharedPointClouds(
                self.root_path,
                [info["point_cloud"]["lidar_idx"] for info in self.kitti_infos],
                read_points=self._read_lidar_file,
                frame_file=self._lidar_file,
                limit=dataset_cfg.get("SHARED_MEMORY_FILE_LIMIT"),
                logger=self.logger,
            )

    def _disabled_augs(self) -> list:
        return list(self.dataset_cfg.DATA_AUGMENTOR.get("DISABLE_AUG_LIST", []))

    @staticmethod
    def _read_split_file(split_file: Path) -> list[str]:
        if not split_file.is_file():
            raise FileNotFoundError(f"KITTI split file not found: {split_file} (expected one frame id per line)")
        return [line.strip() for line in split_file.read_text().splitlines() if line.strip()]

    def include_kitti_data(self, mode: str) -> None:
        for rel_path in self.dataset_cfg.INFO_PATH[mode]:
            info_path = self.root_path / rel_path
            if not info_path.is_file():
                self.logger.warning(f"KITTI info file {info_path} not found (create_kitti_infos writes it)")
                continue
            self.kitti_infos.extend(safe_pickle_load(info_path))
        if self.dataset_cfg.INFO_PATH[mode]:  # info creation lists none: "0 samples" there would only confuse
            self.logger.info(f"Total samples for KITTI dataset ({mode}): {len(self.kitti_infos)}")

    def set_split(self, split: str) -> None:
        """Point the dataset at another ImageSets split (info creation); raises if its id list is missing."""
        self.split = split
        self.root_split_path = self.root_path / ("testing" if split == "test" else "training")
        self.sample_id_list = self._read_split_file(self.root_path / "ImageSets" / f"{split}.txt")

    # ------------------------------------------------------------------------------------------------ raw files
    def get_lidar(self, idx: str) -> np.ndarray:
        """Points ``(N, 4)`` float32: x, y, z, intensity (from shared memory when the frame is there)."""
        if self.shared_points is not None:
            points = self.shared_points.points(idx)
            if points is not None:
                return points
        return self._read_lidar_file(idx)

    def _lidar_file(self, idx: str) -> Path:
        return self.root_split_path / "velodyne" / f"{idx}.bin"

    def _read_lidar_file(self, idx: str) -> np.ndarray:
        return load_points_bin(self._lidar_file(idx), num_features=4)

    def get_image(self, idx: str) -> np.ndarray:
        """Left colour image ``(H, W, 3)`` float32 in [0, 1]."""
        img_file = self.root_split_path / "image_2" / f"{idx}.png"
        if not img_file.is_file():
            raise FileNotFoundError(f"image file not found: {img_file}")
        with Image.open(img_file) as img:
            return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0

    def get_image_shape(self, idx: str) -> np.ndarray:
        """``[H, W]`` int32 from the PNG header (the pixels are not decoded)."""
        img_file = self.root_split_path / "image_2" / f"{idx}.png"
        if not img_file.is_file():
            raise FileNotFoundError(f"image file not found: {img_file}")
        with Image.open(img_file) as img:
            width, height = img.size
        return np.array([height, width], dtype=np.int32)

    def get_label(self, idx: str) -> list[object3d_kitti.Object3d]:
        label_file = self.root_split_path / "label_2" / f"{idx}.txt"
        skip = bool(self.dataset_cfg.get("SKIP_UNKNOWN_CLASSES", False))
        return object3d_kitti.get_objects_from_label(label_file, skip_unknown=skip, logger=self.logger)

    def get_calib(self, idx: str) -> calibration_kitti.Calibration:
        """The frame's ``calib/<idx>.txt``, parsed on every call: a corrected file takes effect without rebuilding
        the infos (their ``calib`` copy is not used for samples). Not cached: parsing takes ~0.4 ms of a sample's
        10-20 ms."""
        calib_file = self.root_split_path / "calib" / f"{idx}.txt"
        if not calib_file.is_file():
            raise FileNotFoundError(
                f"calibration file not found: {calib_file} (frame {idx}; every sample reads its calib/<id>.txt)"
            )
        return calibration_kitti.Calibration(calib_file)

    def get_road_plane(self, idx: str) -> np.ndarray | None:
        """Ground plane ``(a, b, c, d)`` in the rectified camera frame, normal pointing up (-y), unit length.

        A missing plane file gives None and a counted data issue (one warning per process at counts 1, 10, 100, ...,
        also across epochs, whose loader workers are new processes), never an error.
        """
        plane_file = self.root_split_path / "planes" / f"{idx}.txt"
        if not plane_file.is_file():
            self.data_issues.record("missing_road_plane", idx, str(plane_file), self.logger)
            return None
        lines = [line for line in plane_file.read_text().splitlines() if line.strip()]
        plane = np.array([float(v) for v in lines[-1].split()], dtype=np.float32)
        if plane.size != 4:
            raise ValueError(f"road plane file {plane_file}: last line must hold 4 numbers a b c d")
        if plane[1] > 0:  # camera y points down: make the normal point up
            plane = -plane
        return plane / np.linalg.norm(plane[0:3])

    @staticmethod
    def get_fov_flag(pts_rect: np.ndarray, img_shape, calib) -> np.ndarray:
        """Points (rectified camera frame) in front of the camera that project inside the image."""
        pts_img, depth = calib.rect_to_img(pts_rect)
        inside_u = (pts_img[:, 0] >= 0) & (pts_img[:, 0] < img_shape[1])
        inside_v = (pts_img[:, 1] >= 0) & (pts_img[:, 1] < img_shape[0])
        return inside_u & inside_v & (depth >= 0)

    # ------------------------------------------------------------------------------------------------ infos
    @staticmethod
    def _calib_info(calib: calibration_kitti.Calibration) -> dict:
        def hom(mat: np.ndarray) -> np.ndarray:
            out = np.eye(4, dtype=np.float32)
            out[: mat.shape[0], : mat.shape[1]] = mat
            return out

        return {"P2": hom(calib.P2), "R0_rect": hom(calib.R0), "Tr_velo_to_cam": hom(calib.V2C)}

    def _image_shape_or_estimate(self, sample_idx: str, calib: calibration_kitti.Calibration) -> np.ndarray:
        """The PNG's ``[H, W]``; without the PNG, twice P2's principal point (KITTI frame 000000: 361 x 1208 for
        375 x 1242), counted as a ``missing_image`` data issue."""
        try:
            return self.get_image_shape(sample_idx)
        except FileNotFoundError:
            estimate = np.array([round(2 * calib.cv), round(2 * calib.cu)], dtype=np.int32)
            detail = f"image_shape estimated from P2 as {estimate.tolist()}"
            self.data_issues.record("missing_image", sample_idx, detail, self.logger)
            return estimate

    def process_single_scene(self, sample_idx: str, has_label: bool = True, count_inside_pts: bool = True) -> dict:
        calib = self.get_calib(sample_idx)
        info = {
            "point_cloud": {"num_features": 4, "lidar_idx": sample_idx},
            "image": {"image_idx": sample_idx, "image_shape": self._image_shape_or_estimate(sample_idx, calib)},
            "calib": self._calib_info(calib),
        }
        if not has_label:
            return info
        objects = self.get_label(sample_idx)
        # DontCare regions go last so that the first num_objects entries line up with gt_boxes_lidar.
        objects = [o for o in objects if o.cls_type != "DontCare"] + [o for o in objects if o.cls_type == "DontCare"]
        num_objects = sum(o.cls_type != "DontCare" for o in objects)
        annos = {
            "name": np.array([o.cls_type for o in objects]),
            "truncated": np.array([o.truncation for o in objects], dtype=np.float32),
            "occluded": np.array([o.occlusion for o in objects], dtype=np.int32),
            "alpha": np.array([o.alpha for o in objects], dtype=np.float32),
            "bbox": np.array([o.box2d for o in objects], dtype=np.float32).reshape(-1, 4),
            "dimensions": np.array([[o.l, o.h, o.w] for o in objects], dtype=np.float32).reshape(-1, 3),
            "location": np.array([o.loc for o in objects], dtype=np.float32).reshape(-1, 3),
            "rotation_y": np.array([o.ry for o in objects], dtype=np.float32),
            "score": np.array([o.score for o in objects], dtype=np.float32),
            "difficulty": np.array([o.level for o in objects], dtype=np.int32),
            "index": np.array(list(range(num_objects)) + [-1] * (len(objects) - num_objects), dtype=np.int32),
        }
        boxes_camera = np.concatenate([annos["location"], annos["dimensions"], annos["rotation_y"][:, None]], axis=1)[
            :num_objects
        ]
        gt_boxes_lidar = box_utils.boxes3d_kitti_camera_to_lidar(boxes_camera, calib).reshape(-1, 7)
        annos["gt_boxes_lidar"] = gt_boxes_lidar
        if count_inside_pts:
            points = self.get_lidar(sample_idx)
            fov = self.get_fov_flag(calib.lidar_to_rect(points[:, 0:3]), info["image"]["image_shape"], calib)
            inside = roiaware_pool3d_utils.points_in_boxes_cpu(points[fov, 0:3], gt_boxes_lidar)
            num_points = np.full(len(objects), -1, dtype=np.int32)
            num_points[:num_objects] = inside.sum(axis=1)
            annos["num_points_in_gt"] = num_points
        info["annos"] = annos
        return info

    def get_infos(
        self, num_workers: int = 4, has_label: bool = True, count_inside_pts: bool = True, sample_id_list=None
    ) -> list[dict]:
        """One info dict per frame of ``sample_id_list`` (default: the current split), in that order."""
        ids = list(sample_id_list if sample_id_list is not None else self._require_ids())
        desc = f"KITTI infos ({self.split})"
        # Each bar is closed however its loop ends, so that an error message starts on its own line.
        if num_workers <= 1 or len(ids) <= 1:
            with tqdm(ids, desc=desc) as bar:
                return [self.process_single_scene(i, has_label, count_inside_pts) for i in bar]
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with futures.ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_info_worker,
            initargs=(self,),
        ) as pool:
            jobs = pool.map(_info_worker, ids, [has_label] * len(ids), [count_inside_pts] * len(ids), chunksize=8)
            with tqdm(jobs, total=len(ids), desc=desc) as bar:
                return list(bar)

    def _require_ids(self) -> list[str]:
        if self.sample_id_list is None:
            return self._read_split_file(self.root_path / "ImageSets" / f"{self.split}.txt")
        return self.sample_id_list

    def create_groundtruth_database(self, info_path=None, used_classes=None, split: str = "train") -> None:
        """Write each object's points (relative to its box centre) to ``gt_database/`` and their dbinfos."""
        database_dir = self.root_path / ("gt_database" if split == "train" else f"gt_database_{split}")
        db_info_path = self.root_path / f"kitti_dbinfos_{split}.pkl"
        database_dir.mkdir(parents=True, exist_ok=True)
        infos = safe_pickle_load(info_path)
        all_db_infos: dict[str, list[dict]] = {}
        for info in tqdm(infos, desc="gt database"):
            sample_idx = info["point_cloud"]["lidar_idx"]
            annos = info["annos"]
            gt_boxes = annos["gt_boxes_lidar"]
            if len(gt_boxes) == 0:
                continue
            points = self.get_lidar(sample_idx)
            inside = roiaware_pool3d_utils.points_in_boxes_cpu(points[:, 0:3], gt_boxes).astype(bool)
            for i in range(len(gt_boxes)):
                name = str(annos["name"][i])
                if used_classes is not None and name not in used_classes:
                    continue
                obj_points = points[inside[i]].copy()
                obj_points[:, 0:3] -= gt_boxes[i, 0:3]
                file_path = database_dir / f"{sample_idx}_{name}_{i}.bin"
                obj_points.tofile(file_path)
                all_db_infos.setdefault(name, []).append(
                    {
                        "name": name,
                        "path": str(file_path.relative_to(self.root_path)),
                        "image_idx": sample_idx,
                        "gt_idx": i,
                        "box3d_lidar": gt_boxes[i],
                        "num_points_in_gt": obj_points.shape[0],
                        "difficulty": annos["difficulty"][i],
                        "bbox": annos["bbox"][i],
                        "score": annos["score"][i],
                    }
                )
        for name, entries in all_db_infos.items():
            self.logger.info(f"gt database {name}: {len(entries)} objects")
        common_utils.dump_pickle(all_db_infos, db_info_path)
        self.logger.info(f"KITTI dbinfos {split} file is saved to {db_info_path} (objects' points in {database_dir})")

    # ------------------------------------------------------------------------------------------------ samples
    def __len__(self) -> int:
        if self._merge_all_iters_to_one_epoch:
            return len(self.kitti_infos) * self.total_epochs
        return len(self.kitti_infos)

    def __getitem__(self, index: int) -> dict:
        if self._merge_all_iters_to_one_epoch:
            index = index % len(self.kitti_infos)
        info = copy.deepcopy(self.kitti_infos[index])
        sample_idx = info["point_cloud"]["lidar_idx"]
        img_shape = info["image"]["image_shape"]
        calib = self.get_calib(sample_idx)  # from the file, as OpenPCDet: the infos' copy may be stale
        get_item_list = self.dataset_cfg.get("GET_ITEM_LIST", ["points"])

        input_dict = {"frame_id": sample_idx, "calib": calib}
        if "annos" in info:
            annos = common_utils.drop_info_with_name(info["annos"], name="DontCare")
            unknown = ~np.isin(annos["name"], [*object3d_kitti.KITTI_CLASSES, *self.class_names])
            if unknown.any():
                names = sorted({str(n) for n in annos["name"][unknown]})
                self.data_issues.record("unknown_class", sample_idx, f"{int(unknown.sum())} of {names}", self.logger)
                annos = {key: val[~unknown] for key, val in annos.items()}
            boxes_camera = np.concatenate(
                [annos["location"], annos["dimensions"], annos["rotation_y"][:, None]], axis=1
            ).astype(np.float32)
            input_dict["gt_names"] = annos["name"]
            input_dict["gt_boxes"] = box_utils.boxes3d_kitti_camera_to_lidar(boxes_camera, calib).reshape(-1, 7)
            if "gt_boxes2d" in get_item_list:
                input_dict["gt_boxes2d"] = annos["bbox"]
            if self._use_road_plane:
                road_plane = self.get_road_plane(sample_idx)
                if road_plane is not None:
                    input_dict["road_plane"] = road_plane
        if "points" in get_item_list:
            try:
                points = self.get_lidar(sample_idx)
            except (PointCloudError, FileNotFoundError) as exc:
                # Opt-in (training only): an evaluation must see every frame, and by default a broken file is an
                # error naming it.
                if self.training and self.dataset_cfg.get("SKIP_CORRUPT_FRAMES", False):
                    return self.replace_sample("corrupt_point_cloud", sample_idx, str(exc))
                raise
            if self.dataset_cfg.get("FOV_POINTS_ONLY", False):
                points = points[self.get_fov_flag(calib.lidar_to_rect(points[:, 0:3]), img_shape, calib)]
            input_dict["points"] = points
        if "images" in get_item_list:
            try:
                input_dict["images"] = self.get_image(sample_idx)
            except FileNotFoundError as exc:
                if not self.training:
                    raise
                return self.replace_sample("missing_image", sample_idx, str(exc))

        data_dict = self.prepare_data(data_dict=input_dict)
        data_dict["image_shape"] = img_shape
        return data_dict

    # ------------------------------------------------------------------------------------------------ outputs
    @staticmethod
    def generate_prediction_dicts(batch_dict: dict, pred_dicts: list[dict], class_names: list[str], output_path=None):
        """Model outputs → KITTI annotation dicts (camera boxes, projected 2D boxes, alpha), one per frame; with
        ``output_path`` also one KITTI result file ``<frame_id>.txt`` per frame."""
        annos = []
        for index, box_dict in enumerate(pred_dicts):
            scores = _to_numpy(box_dict["pred_scores"]).astype(np.float32)
            boxes_lidar = _to_numpy(box_dict["pred_boxes"]).astype(np.float32).reshape(-1, 7)
            labels = _to_numpy(box_dict["pred_labels"]).astype(np.int64)
            calib = batch_dict["calib"][index]
            image_shape = _to_numpy(batch_dict["image_shape"][index])
            boxes_camera = box_utils.boxes3d_lidar_to_kitti_camera(boxes_lidar, calib)
            boxes_img = box_utils.boxes3d_kitti_camera_to_imageboxes(boxes_camera, calib, image_shape=image_shape)
            # Observation angle: heading relative to the ray from the camera to the object centre.
            alpha = boxes_camera[:, 6] - np.arctan2(boxes_camera[:, 0], boxes_camera[:, 2])
            num = len(scores)
            anno = {
                "name": np.array(class_names)[labels - 1],
                "truncated": np.zeros(num, dtype=np.float32),
                "occluded": np.zeros(num, dtype=np.float32),
                "alpha": alpha.astype(np.float32),
                "bbox": boxes_img.astype(np.float32).reshape(-1, 4),
                "dimensions": boxes_camera[:, 3:6],
                "location": boxes_camera[:, 0:3],
                "rotation_y": boxes_camera[:, 6],
                "score": scores,
                "boxes_lidar": boxes_lidar,
                "frame_id": batch_dict["frame_id"][index],
            }
            annos.append(anno)
            if output_path is not None:
                _write_kitti_result(Path(output_path) / f"{anno['frame_id']}.txt", anno)
        return annos

    def evaluation(self, det_annos: list[dict], class_names: list[str], **kwargs):
        """KITTI official metrics of ``det_annos`` (in info order) → ``(result_str, result_dict)``."""
        if not self.kitti_infos or "annos" not in self.kitti_infos[0]:
            return "no ground truth in this split: nothing to evaluate", {}
        from .kitti_object_eval_python import eval as kitti_eval

        gt_annos = [copy.deepcopy(info["annos"]) for info in self.kitti_infos]
        return kitti_eval.get_official_eval_result(gt_annos, copy.deepcopy(det_annos), class_names)


def _write_kitti_result(path: Path, anno: dict) -> None:
    lines = []
    for k in range(len(anno["score"])):
        l, h, w = anno["dimensions"][k]
        x, y, z = anno["location"][k]
        x1, y1, x2, y2 = anno["bbox"][k]
        lines.append(
            f"{anno['name'][k]} -1 -1 {anno['alpha'][k]:.4f} {x1:.4f} {y1:.4f} {x2:.4f} {y2:.4f} "
            f"{h:.4f} {w:.4f} {l:.4f} {x:.4f} {y:.4f} {z:.4f} {anno['rotation_y'][k]:.4f} {anno['score'][k]:.4f}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


# Info-creation workers: the dataset arrives once per process (initializer), not once per frame.
_WORKER_DATASET: KittiDataset | None = None


def _init_info_worker(dataset: KittiDataset) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    torch.set_num_threads(1)  # the pool already uses every core


def _info_worker(sample_idx: str, has_label: bool, count_inside_pts: bool) -> dict:
    return _WORKER_DATASET.process_single_scene(sample_idx, has_label, count_inside_pts)


def create_kitti_infos(dataset_cfg, class_names, data_path, save_path, workers: int = 4) -> None:
    """Write ``kitti_infos_{train,val,trainval,test}.pkl`` and the train gt database under ``save_path``."""
    data_path, save_path = Path(data_path), Path(save_path)
    creation_cfg = copy.deepcopy(dataset_cfg)
    creation_cfg.INFO_PATH = {"train": [], "test": []}  # the infos are being made: don't try to load old ones
    dataset = KittiDataset(dataset_cfg=creation_cfg, class_names=class_names, root_path=data_path, training=False)
    splits = {}
    for split in ("train", "val"):
        dataset.set_split(split)
        splits[split] = dataset.get_infos(num_workers=workers, has_label=True, count_inside_pts=True)
        common_utils.dump_pickle(splits[split], save_path / f"kitti_infos_{split}.pkl")
        dataset.logger.info(f"KITTI info {split} file is saved to {save_path / f'kitti_infos_{split}.pkl'}")
    common_utils.dump_pickle(splits["train"] + splits["val"], save_path / "kitti_infos_trainval.pkl")
    dataset.logger.info(f"KITTI info trainval file is saved to {save_path / 'kitti_infos_trainval.pkl'}")

    dataset.set_split("train")
    dataset.create_groundtruth_database(save_path / "kitti_infos_train.pkl", split="train")

    # Last, so that a missing testing/ folder cannot cost the train/val outputs above.
    dataset.set_split("test")
    test_infos = dataset.get_infos(num_workers=workers, has_label=False, count_inside_pts=False)
    common_utils.dump_pickle(test_infos, save_path / "kitti_infos_test.pkl")
    dataset.logger.info(f"KITTI info test file is saved to {save_path / 'kitti_infos_test.pkl'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="KITTI data preparation")
    parser.add_argument("command", choices=["create_kitti_infos"])
    parser.add_argument("cfg_file", help="dataset config, e.g. tools/cfgs/dataset_configs/kitti_dataset.yaml")
    parser.add_argument("--data_path", default=None, help="KITTI root (default: the config's DATA_PATH)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--class_names", nargs="+", default=["Car", "Pedestrian", "Cyclist"])
    parser.add_argument("--debug", action="store_true", help="full tracebacks on the console for input errors")
    args = parser.parse_args(argv)

    from easydict import EasyDict

    from ...config import ROOT_DIR, cfg_from_yaml_file

    dataset_cfg = cfg_from_yaml_file(args.cfg_file, EasyDict())
    if args.data_path is not None:
        data_path = Path(args.data_path)
    else:  # a relative DATA_PATH means what it means to the tools, which run from tools/
        data_path = Path(os.path.expanduser(str(dataset_cfg.DATA_PATH)))
        data_path = data_path if data_path.is_absolute() else (ROOT_DIR / "tools" / data_path).resolve()
    common_utils.create_logger()
    create_kitti_infos(dataset_cfg, args.class_names, data_path=data_path, save_path=data_path, workers=args.workers)


if __name__ == "__main__":
    # ``python -m`` runs this file as __main__ after the package import already loaded it as
    # pcdet.datasets.kitti.kitti_dataset; run that copy, so that the info workers and every class are defined once.
    from pcdet.datasets.kitti import kitti_dataset as _module
    from pcdet.utils.cli import run_tool

    run_tool(_module.main, sys.argv[1:])
