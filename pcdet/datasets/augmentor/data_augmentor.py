"""Training-time augmentation (``DATA_AUGMENTOR`` in the dataset config): a registry of named steps run in order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from ...utils import common_utils
from . import augmentor_utils
from .database_sampler import DataBaseSampler

_FLIPS = {"x": augmentor_utils.random_flip_along_x, "y": augmentor_utils.random_flip_along_y}


class DataAugmentor(common_utils.LoggerPicklingMixin):
    """Builds the ``AUG_CONFIG_LIST`` steps (minus ``DISABLE_AUG_LIST``) and applies them to a data_dict.

    Each step reads/writes ``points``, ``gt_boxes`` (M, 7+) and ``gt_names``; ``gt_boxes_mask`` marks the boxes of
    the classes being trained and is applied (then removed) at the end.
    """

    def __init__(self, root_path: str | Path, augmentor_configs, class_names: list[str], logger=None):
        self.root_path = Path(root_path)
        self.class_names = list(class_names)
        self.logger = logger or logging.getLogger("pcdet")
        builders: dict[str, Callable] = {
            "gt_sampling": self.gt_sampling,
            "random_world_flip": self.random_world_flip,
            "random_world_rotation": self.random_world_rotation,
            "random_world_scaling": self.random_world_scaling,
            "random_world_translation": self.random_world_translation,
        }
        if isinstance(augmentor_configs, list):  # OpenPCDet also accepts a bare AUG_CONFIG_LIST
            config_list, disabled = augmentor_configs, []
        else:
            config_list, disabled = augmentor_configs.AUG_CONFIG_LIST, augmentor_configs.get("DISABLE_AUG_LIST", [])
        self.data_augmentor_queue: list[Callable] = []
        for cur_cfg in config_list:
            if cur_cfg.NAME in disabled:
                continue
            if cur_cfg.NAME not in builders:
                raise ValueError(f"unknown augmentation '{cur_cfg.NAME}' (known: {', '.join(builders)})")
            self.data_augmentor_queue.append(builders[cur_cfg.NAME](config=cur_cfg))

    # Builders: each takes its config entry and returns the step ``data_dict -> data_dict``.
    def gt_sampling(self, config) -> Callable:
        return DataBaseSampler(
            root_path=self.root_path, sampler_cfg=config, class_names=self.class_names, logger=self.logger
        )

    def random_world_flip(self, config) -> Callable:
        for axis in config.ALONG_AXIS_LIST:
            if axis not in _FLIPS:
                raise ValueError(f"random_world_flip: ALONG_AXIS_LIST entry '{axis}' must be 'x' or 'y'")
        return partial(self._flip, axes=list(config.ALONG_AXIS_LIST))

    def random_world_rotation(self, config) -> Callable:
        rot_range = config.WORLD_ROT_ANGLE
        if not isinstance(rot_range, list):  # a single number means ±value
            rot_range = [-rot_range, rot_range]
        return partial(self._rotate, rot_range=rot_range)

    def random_world_scaling(self, config) -> Callable:
        return partial(self._scale, scale_range=config.WORLD_SCALE_RANGE)

    def random_world_translation(self, config) -> Callable:
        return partial(self._translate, noise_std=config.NOISE_TRANSLATE_STD)

    # Steps.
    @staticmethod
    def _flip(data_dict: dict, axes: list[str]) -> dict:
        gt_boxes, points = data_dict["gt_boxes"], data_dict["points"]
        for axis in axes:
            gt_boxes, points, enabled = _FLIPS[axis](gt_boxes, points)
            data_dict[f"flip_{axis}"] = enabled
        data_dict["gt_boxes"], data_dict["points"] = gt_boxes, points
        return data_dict

    @staticmethod
    def _rotate(data_dict: dict, rot_range) -> dict:
        data_dict["gt_boxes"], data_dict["points"], data_dict["noise_rot"] = augmentor_utils.global_rotation(
            data_dict["gt_boxes"], data_dict["points"], rot_range=rot_range
        )
        return data_dict

    @staticmethod
    def _scale(data_dict: dict, scale_range) -> dict:
        data_dict["gt_boxes"], data_dict["points"], data_dict["noise_scale"] = augmentor_utils.global_scaling(
            data_dict["gt_boxes"], data_dict["points"], scale_range=scale_range
        )
        return data_dict

    @staticmethod
    def _translate(data_dict: dict, noise_std) -> dict:
        data_dict["gt_boxes"], data_dict["points"], data_dict["noise_translate"] = augmentor_utils.global_translation(
            data_dict["gt_boxes"], data_dict["points"], noise_std=noise_std
        )
        return data_dict

    def forward(self, data_dict: dict) -> dict:
        """Run every step, wrap headings to [-pi, pi), drop calib/road_plane and apply ``gt_boxes_mask``."""
        for step in self.data_augmentor_queue:
            data_dict = step(data_dict)
        boxes = data_dict["gt_boxes"]
        boxes[:, 6] = common_utils.limit_period(boxes[:, 6], offset=0.5, period=2 * np.pi)
        data_dict.pop("calib", None)
        data_dict.pop("road_plane", None)
        mask = data_dict.pop("gt_boxes_mask", None)
        if mask is not None:
            data_dict["gt_boxes"] = data_dict["gt_boxes"][mask]
            data_dict["gt_names"] = data_dict["gt_names"][mask]
            if "gt_boxes2d" in data_dict:
                data_dict["gt_boxes2d"] = data_dict["gt_boxes2d"][mask]
        return data_dict
