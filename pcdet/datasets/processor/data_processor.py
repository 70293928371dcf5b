"""Per-sample processing after augmentation (``DATA_PROCESSOR`` in the dataset config): range cropping, shuffling,
voxelisation (spconv's ``PointToVoxel``, CPU), point sampling."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from ...utils import box_utils, common_utils


class _Voxelizer:
    """Wraps spconv's ``PointToVoxel``; built lazily because spconv objects cannot be pickled to loader workers.

    ``device``: where the voxelisation runs (the data pipeline uses the CPU; the tests also run it on CUDA).
    """

    def __init__(
        self,
        voxel_size,
        point_cloud_range,
        num_point_features: int,
        max_points: int,
        max_voxels: int,
        device: torch.device | str = "cpu",
    ):
        from ...utils import spconv_utils  # noqa: F401  (the one spconv entry point: installs the CPU shim first)

        # isort: split
        from spconv.pytorch.utils import PointToVoxel

        self._generator = PointToVoxel(
            vsize_xyz=[float(v) for v in voxel_size],
            coors_range_xyz=[float(v) for v in point_cloud_range],
            num_point_features=num_point_features,
            max_num_voxels=max_voxels,
            max_num_points_per_voxel=max_points,
            device=torch.device(device),
        )
        self._device = torch.device(device)

    def generate(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``voxels (V, P, C)`` (unused slots zero), ``coords (V, 3) [z, y, x]`` int32, ``num_points (V,)`` int32.

        Voxels come in the order their first point appears; points beyond ``P`` in a voxel, voxels beyond the cap
        and points outside the range are dropped.
        """
        points_t = torch.from_numpy(np.ascontiguousarray(points, np.float32)).to(self._device)
        voxels, coords, num_points = self._generator(points_t)
        return voxels.cpu().numpy(), coords.cpu().numpy(), num_points.cpu().numpy()


class DataProcessor:
    """Applies the ``DATA_PROCESSOR`` list in order; each entry's ``NAME`` selects a method from the registry."""

    def __init__(self, processor_configs: list, point_cloud_range: np.ndarray, training: bool, num_point_features: int):
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32)
        self.training = training
        self.num_point_features = num_point_features
        self.mode = "train" if training else "test"
        self.grid_size: np.ndarray | None = None
        self.voxel_size: list | None = None
        self.depth_downsample_factor = None
        self._voxelizer: _Voxelizer | None = None
        self._voxelizer_cfg = None

        registry: dict[str, Callable] = {
            "mask_points_and_boxes_outside_range": self.mask_points_and_boxes_outside_range,
            "shuffle_points": self.shuffle_points,
            "transform_points_to_voxels": self.transform_points_to_voxels,
            "sample_points": self.sample_points,
            "calculate_grid_size": self.calculate_grid_size,
        }
        self.data_processor_queue: list[Callable] = []
        for cur_cfg in processor_configs:
            if cur_cfg.NAME not in registry:
                raise ValueError(f"unknown DATA_PROCESSOR entry '{cur_cfg.NAME}' (known: {', '.join(registry)})")
            if cur_cfg.NAME in ("transform_points_to_voxels", "calculate_grid_size"):
                self._set_grid(cur_cfg.VOXEL_SIZE)
            self.data_processor_queue.append(partial(registry[cur_cfg.NAME], config=cur_cfg))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_voxelizer"] = None
        return state

    def _set_grid(self, voxel_size) -> None:
        extent = self.point_cloud_range[3:6] - self.point_cloud_range[0:3]
        self.grid_size = np.round(extent / np.asarray(voxel_size, dtype=np.float32)).astype(np.int64)
        self.voxel_size = list(voxel_size)

    def forward(self, data_dict: dict) -> dict:
        for processor in self.data_processor_queue:
            data_dict = processor(data_dict=data_dict)
        return data_dict

    def mask_points_and_boxes_outside_range(self, data_dict: dict, config) -> dict:
        """Drop points outside the x/y range; in training also boxes whose centre is outside the range."""
        if data_dict.get("points") is not None:
            mask = common_utils.mask_points_by_range(data_dict["points"], self.point_cloud_range)
            data_dict["points"] = data_dict["points"][mask]
        if data_dict.get("gt_boxes") is not None and config.REMOVE_OUTSIDE_BOXES and self.training:
            mask = box_utils.mask_boxes_outside_range_numpy(
                data_dict["gt_boxes"],
                self.point_cloud_range,
                min_num_corners=config.get("min_num_corners", 1),
                use_center_to_filter=config.get("USE_CENTER_TO_FILTER", True),
            )
            data_dict["gt_boxes"] = data_dict["gt_boxes"][mask]
        return data_dict

    def shuffle_points(self, data_dict: dict, config) -> dict:
        if config.SHUFFLE_ENABLED[self.mode]:
            points = data_dict["points"]
            data_dict["points"] = points[np.random.permutation(points.shape[0])]
        return data_dict

    def calculate_grid_size(self, data_dict: dict, config) -> dict:
        """Grid size only (set at construction); for point-based detectors that never voxelise."""
        return data_dict

    def transform_points_to_voxels(self, data_dict: dict, config) -> dict:
        if self._voxelizer is None:
            self._voxelizer = _Voxelizer(
                config.VOXEL_SIZE,
                self.point_cloud_range,
                num_point_features=self.num_point_features,
                max_points=config.MAX_POINTS_PER_VOXEL,
                max_voxels=config.MAX_NUMBER_OF_VOXELS[self.mode],
            )
        voxels, coords, num_points = self._voxelizer.generate(data_dict["points"])
        if not data_dict.get("use_lead_xyz", True):
            voxels = voxels[..., 3:]  # the encoder asked for features without x, y, z
        data_dict["voxels"] = voxels
        data_dict["voxel_coords"] = coords
        data_dict["voxel_num_points"] = num_points
        return data_dict

    def sample_points(self, data_dict: dict, config) -> dict:
        """Fixed number of points ``NUM_POINTS[mode]`` (-1: keep all).

        Down-sampling keeps every far point (>= 40 m, where LiDAR is sparse) when it can and draws the rest from the
        near ones; up-sampling repeats points (with replacement once more than twice the points are needed).
        """
        num_points = config.NUM_POINTS[self.mode]
        if num_points == -1:
            return data_dict
        points = data_dict["points"]
        total = len(points)
        if total == 0:
            return data_dict
        if num_points < total:
            far = np.linalg.norm(points[:, 0:3], axis=1) >= 40.0
            far_idx, near_idx = np.flatnonzero(far), np.flatnonzero(~far)
            if num_points > len(far_idx):
                chosen_near = np.random.choice(near_idx, num_points - len(far_idx), replace=False)
                choice = np.concatenate([chosen_near, far_idx])
            else:
                choice = np.random.choice(total, num_points, replace=False)
        else:
            extra = np.random.choice(total, num_points - total, replace=num_points - total > total)
            choice = np.concatenate([np.arange(total), extra])
        np.random.shuffle(choice)
        data_dict["points"] = points[choice]
        return data_dict
