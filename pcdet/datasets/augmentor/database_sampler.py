"""Ground-truth sampling ("copy-paste"): paste objects from the gt database into the training scene.

The database (``create_groundtruth_database``) stores each training object's points relative to its box centre plus
a dbinfo record (name, path, box3d_lidar, num_points_in_gt, difficulty, ...). Per scene, each class of
``SAMPLE_GROUPS`` gets up to its quota of objects; a candidate is kept only if its rotated BEV footprint overlaps
neither an existing box nor an already accepted candidate. Scene points inside the pasted boxes are removed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...ops.iou3d_nms import iou3d_nms_utils
from ...utils import box_utils, common_utils
from ...utils.checkpoint_io import safe_pickle_load


class DataBaseSampler(common_utils.LoggerPicklingMixin):
    def __init__(self, root_path: str | Path, sampler_cfg, class_names: list[str], logger=None):
        self.root_path = Path(root_path)
        self.sampler_cfg = sampler_cfg
        self.class_names = list(class_names)
        self.logger = logger or logging.getLogger("pcdet")
        if sampler_cfg.get("USE_SHARED_MEMORY", False):
            raise NotImplementedError(
                "gt_sampling USE_SHARED_MEMORY is not supported yet: set it to False (objects are read from "
                "gt_database/*.bin, which the OS page cache keeps hot)"
            )
        if sampler_cfg.get("DATABASE_WITH_FAKELIDAR", False):
            raise NotImplementedError("DATABASE_WITH_FAKELIDAR (databases of OpenPCDet < 0.3) is not supported")
        self.num_point_features = int(sampler_cfg.NUM_POINT_FEATURES)
        self.use_road_plane = bool(sampler_cfg.get("USE_ROAD_PLANE", False))
        self.limit_whole_scene = bool(sampler_cfg.get("LIMIT_WHOLE_SCENE", False))
        self.remove_extra_width = list(sampler_cfg.get("REMOVE_EXTRA_WIDTH", [0.0, 0.0, 0.0]))

        self.db_infos: dict[str, list[dict]] = {name: [] for name in self.class_names}
        for rel_path in sampler_cfg.DB_INFO_PATH:
            path = self.root_path / rel_path
            if not path.is_file():
                raise FileNotFoundError(
                    f"gt_sampling database info {path} not found: create it with "
                    "`python -m pcdet.datasets.kitti.kitti_dataset create_kitti_infos <dataset cfg>`"
                )
            infos = safe_pickle_load(path)
            for name in self.class_names:
                self.db_infos[name].extend(infos.get(name, []))

        filters = {"filter_by_difficulty": self.filter_by_difficulty, "filter_by_min_points": self.filter_by_min_points}
        for func_name, arg in sampler_cfg.get("PREPARE", {}).items():
            if func_name not in filters:
                raise ValueError(f"unknown gt_sampling PREPARE step '{func_name}' (known: {', '.join(filters)})")
            self.db_infos = filters[func_name](self.db_infos, arg)

        # Per class: quota, and a shuffled walk through its database that restarts when exhausted.
        self.sample_class_num: dict[str, int] = {}
        self.sample_groups: dict[str, dict] = {}
        for entry in sampler_cfg.SAMPLE_GROUPS:
            name, num = entry.split(":")
            if name not in self.class_names or len(self.db_infos[name]) == 0:
                continue
            self.sample_class_num[name] = int(num)
            self.sample_groups[name] = {
                "sample_num": int(num),
                "pointer": len(self.db_infos[name]),
                "indices": np.arange(len(self.db_infos[name])),
            }

    # ------------------------------------------------------------------------------------------------ PREPARE
    def filter_by_difficulty(self, db_infos: dict, removed_difficulty: list[int]) -> dict:
        out = {}
        for name, infos in db_infos.items():
            out[name] = [info for info in infos if info["difficulty"] not in removed_difficulty]
            self.logger.info(f"gt database {name}: {len(infos)} → {len(out[name])} after filter_by_difficulty")
        return out

    def filter_by_min_points(self, db_infos: dict, min_gt_points_list: list[str]) -> dict:
        out = dict(db_infos)
        for entry in min_gt_points_list:
            name, min_num = entry.split(":")
            if name not in out:
                continue
            before = len(out[name])
            out[name] = [info for info in out[name] if info["num_points_in_gt"] >= int(min_num)]
            self.logger.info(f"gt database {name}: {before} → {len(out[name])} with >= {min_num} points")
        return out

    # ------------------------------------------------------------------------------------------------ sampling
    def sample_with_fixed_number(self, class_name: str, sample_group: dict) -> list[dict]:
        num, pointer, indices = sample_group["sample_num"], sample_group["pointer"], sample_group["indices"]
        if pointer >= len(self.db_infos[class_name]):
            indices = np.random.permutation(len(self.db_infos[class_name]))
            pointer = 0
        picked = [self.db_infos[class_name][i] for i in indices[pointer : pointer + num]]
        sample_group["pointer"] = pointer + num
        sample_group["indices"] = indices
        return picked

    @staticmethod
    def put_boxes_on_road_planes(gt_boxes: np.ndarray, road_plane: np.ndarray, calib) -> tuple[np.ndarray, np.ndarray]:
        """Move boxes vertically so their bottoms sit on the plane ``a x + b y + c z + d = 0`` (rectified camera).

        Returns the moved boxes and how far each bottom was lowered (LiDAR z).
        """
        a, b, c, d = road_plane
        centers_cam = calib.lidar_to_rect(gt_boxes[:, 0:3])
        centers_cam[:, 1] = (-d - a * centers_cam[:, 0] - c * centers_cam[:, 2]) / b
        plane_z_lidar = calib.rect_to_lidar(centers_cam)[:, 2]
        mv_height = gt_boxes[:, 2] - gt_boxes[:, 5] / 2 - plane_z_lidar
        gt_boxes = gt_boxes.copy()
        gt_boxes[:, 2] -= mv_height
        return gt_boxes, mv_height

    def _non_colliding(self, candidates: np.ndarray, existing: np.ndarray) -> np.ndarray:
        """Indices of candidates kept greedily: no BEV overlap with ``existing`` nor with earlier kept candidates."""
        if len(existing) > 0:
            free = iou3d_nms_utils.boxes_bev_iou_cpu(candidates[:, 0:7], existing[:, 0:7]).max(axis=1) <= 0
        else:
            free = np.ones(len(candidates), dtype=bool)
        mutual = iou3d_nms_utils.boxes_bev_iou_cpu(candidates[:, 0:7], candidates[:, 0:7]) > 0
        kept: list[int] = []
        for i in np.flatnonzero(free):
            if not mutual[i, kept].any():
                kept.append(int(i))
        return np.asarray(kept, dtype=np.int64)

    def _load_object_points(self, info: dict) -> np.ndarray:
        path = self.root_path / info["path"]
        raw = np.fromfile(path, dtype=np.float32)
        if raw.size % self.num_point_features != 0:
            raise ValueError(
                f"gt database file {path} is corrupt: {raw.size} floats, not a multiple of "
                f"NUM_POINT_FEATURES={self.num_point_features}"
            )
        return raw.reshape(-1, self.num_point_features)

    def add_sampled_boxes_to_scene(self, data_dict: dict, sampled_boxes: np.ndarray, sampled_infos: list[dict]):
        points = data_dict["points"]
        if self.use_road_plane:
            # A frame without a plane keeps database heights; the dataset reports the missing file (data issue).
            if data_dict.get("road_plane") is not None:
                sampled_boxes, _ = self.put_boxes_on_road_planes(
                    sampled_boxes, data_dict["road_plane"], data_dict["calib"]
                )

        obj_points_list = []
        for k, info in enumerate(sampled_infos):
            obj_points = self._load_object_points(info)
            obj_points[:, 0:3] += sampled_boxes[k, 0:3]  # stored relative to the centre; follows a road-plane move
            obj_points_list.append(obj_points[:, : points.shape[1]])
        enlarged = box_utils.enlarge_box3d(sampled_boxes[:, 0:7], extra_width=self.remove_extra_width)
        points = box_utils.remove_points_in_boxes3d(points, enlarged)
        data_dict["points"] = np.concatenate([*obj_points_list, points], axis=0).astype(points.dtype, copy=False)
        data_dict["gt_boxes"] = np.concatenate([data_dict["gt_boxes"], sampled_boxes], axis=0)
        data_dict["gt_names"] = np.concatenate([data_dict["gt_names"], [x["name"] for x in sampled_infos]], axis=0)
        if "gt_boxes2d" in data_dict:  # keep per-box arrays aligned: pasted objects bring their own 2D label box
            bbox = np.stack([np.asarray(x["bbox"], dtype=np.float32) for x in sampled_infos])
            data_dict["gt_boxes2d"] = np.concatenate([data_dict["gt_boxes2d"], bbox], axis=0)
        if "gt_boxes_mask" in data_dict:
            data_dict["gt_boxes_mask"] = np.concatenate(
                [data_dict["gt_boxes_mask"], np.ones(len(sampled_infos), dtype=bool)]
            )
        return data_dict

    def __call__(self, data_dict: dict) -> dict:
        gt_boxes = data_dict["gt_boxes"]
        gt_names = np.asarray(data_dict["gt_names"]).astype(str)
        existing = gt_boxes[:, 0:7]
        sampled_boxes, sampled_infos = [], []
        for name, group in self.sample_groups.items():
            if self.limit_whole_scene:
                group["sample_num"] = self.sample_class_num[name] - int(np.sum(gt_names == name))
            if group["sample_num"] <= 0:
                continue
            candidates = self.sample_with_fixed_number(name, group)
            boxes = np.stack([np.asarray(x["box3d_lidar"], dtype=np.float32)[0:7] for x in candidates], axis=0)
            kept = self._non_colliding(boxes, existing)
            if len(kept) == 0:
                continue
            existing = np.concatenate([existing, boxes[kept]], axis=0)
            sampled_boxes.append(boxes[kept])
            sampled_infos.extend(candidates[i] for i in kept)
        if sampled_infos:
            boxes = np.concatenate(sampled_boxes, axis=0)
            if gt_boxes.shape[1] > 7:
                boxes = np.hstack([boxes, _extra_columns(sampled_infos, gt_boxes.shape[1] - 7)])
            data_dict = self.add_sampled_boxes_to_scene(data_dict, boxes.astype(gt_boxes.dtype), sampled_infos)
        return data_dict


def _extra_columns(infos: list[dict], width: int) -> np.ndarray:
    """The box columns after the 7 geometric ones (nuScenes: vx, vy) of pasted objects: from a database that has
    them (``*_withvelo``), zeros otherwise; an unknown (NaN) velocity becomes 0 as SET_NAN_VELOCITY_TO_ZEROS does."""
    out = np.zeros((len(infos), width), dtype=np.float32)
    for k, info in enumerate(infos):
        extra = np.asarray(info["box3d_lidar"], dtype=np.float32)[7 : 7 + width]
        out[k, : len(extra)] = np.nan_to_num(extra, nan=0.0)
    return out
