"""Base class of every dataset: config → augmentor / feature encoder / processor, sample preparation, batching."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch.utils.data as torch_data

from ..config import ROOT_DIR
from ..utils import common_utils
from .augmentor.data_augmentor import DataAugmentor
from .data_issues import DataIssues
from .processor.data_processor import DataProcessor
from .processor.point_feature_encoder import PointFeatureEncoder

# A training sample that cannot be used (no boxes left after the range crop and class filter, no points, an
# unreadable file) is replaced by a random other one; this many replacements in a row means the data or the config
# rules out everything, which deserves an error rather than a loop.
_MAX_RESAMPLES_IN_A_ROW = 50


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A relative ``DATA_PATH`` means "from the current directory" (OpenPCDet: the tools run in ``tools/``); when it
    does not exist there, it is taken relative to ``ROOT_DIR/tools`` so the same config works from anywhere."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute() or path.exists():
        return path
    return (ROOT_DIR / "tools" / path).resolve()


def _to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class DatasetTemplate(torch_data.Dataset):
    def __init__(self, dataset_cfg=None, class_names=None, training: bool = True, root_path=None, logger=None):
        super().__init__()
        self.dataset_cfg = dataset_cfg
        self.training = training
        self.class_names = class_names
        self.logger = logger or logging.getLogger("pcdet")
        self.data_issues = DataIssues()
        self._resamples_in_a_row = 0
        if root_path is not None:
            self.root_path = Path(root_path)
        else:
            self.root_path = resolve_data_path(dataset_cfg.DATA_PATH) if dataset_cfg is not None else None
        if dataset_cfg is None or class_names is None:
            return

        self.point_cloud_range = np.array(dataset_cfg.POINT_CLOUD_RANGE, dtype=np.float32)
        self.point_feature_encoder = PointFeatureEncoder(
            dataset_cfg.POINT_FEATURE_ENCODING, point_cloud_range=self.point_cloud_range
        )
        self.data_augmentor = (
            DataAugmentor(self.root_path, dataset_cfg.DATA_AUGMENTOR, self.class_names, logger=self.logger)
            if self.training
            else None
        )
        self.data_processor = DataProcessor(
            dataset_cfg.DATA_PROCESSOR,
            point_cloud_range=self.point_cloud_range,
            training=self.training,
            num_point_features=self.point_feature_encoder.num_point_features,
        )
        self.grid_size = self.data_processor.grid_size
        self.voxel_size = self.data_processor.voxel_size
        self.depth_downsample_factor = self.data_processor.depth_downsample_factor
        self.total_epochs = 0
        self._merge_all_iters_to_one_epoch = False

    @property
    def mode(self) -> str:
        return "train" if self.training else "test"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("logger", None)  # loggers hold locks/streams and do not pickle to loader workers
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.logger = logging.getLogger("pcdet")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def __getitem__(self, index: int) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def evaluation(self, det_annos: list[dict], class_names: list[str], **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no evaluation")

    def merge_all_iters_to_one_epoch(self, merge: bool = True, epochs: int | None = None) -> None:
        """Present ``epochs`` passes over the data as one long epoch (``__len__`` grows; indices wrap around)."""
        self._merge_all_iters_to_one_epoch = merge
        self.total_epochs = epochs if merge else 0

    @staticmethod
    def generate_prediction_dicts(batch_dict: dict, pred_dicts: list[dict], class_names: list[str], output_path=None):
        """Model outputs → one annotation dict per frame: ``name, score, boxes_lidar, pred_labels, frame_id`` (and the
        sample's ``metadata`` where the dataset provides one, e.g. nuScenes' sample token)."""
        annos = []
        for index, box_dict in enumerate(pred_dicts):
            boxes = _to_numpy(box_dict["pred_boxes"])
            labels = _to_numpy(box_dict["pred_labels"]).astype(np.int64)
            anno = {
                "name": np.array(class_names)[labels - 1],
                "score": _to_numpy(box_dict["pred_scores"]),
                "boxes_lidar": boxes,
                "pred_labels": labels,
                "frame_id": batch_dict["frame_id"][index],
            }
            if "metadata" in batch_dict:
                anno["metadata"] = batch_dict["metadata"][index]
            annos.append(anno)
        return annos

    def replace_sample(self, case: str, frame_id, detail: str = "") -> dict:
        """Training only: count ``case`` (see ``data_issues.CASES``) and return a random other sample instead, as
        OpenPCDet does for frames left without boxes."""
        self.data_issues.record(case, frame_id, detail, self.logger)
        self._resamples_in_a_row += 1
        if self._resamples_in_a_row > _MAX_RESAMPLES_IN_A_ROW:
            self._resamples_in_a_row = 0
            raise RuntimeError(
                f"{_MAX_RESAMPLES_IN_A_ROW} training samples in a row could not be used (last: frame {frame_id}, "
                f"{case}); check DATA_PATH, the infos, CLASS_NAMES and POINT_CLOUD_RANGE "
                f"(counts so far: {self.data_issues.totals()})"
            )
        return self.__getitem__(np.random.randint(len(self)))

    def prepare_data(self, data_dict: dict) -> dict:
        """Raw sample (``points``, ``gt_boxes (M, 7)``, ``gt_names``, ...) → network-ready sample.

        Training: augment, keep the configured classes, append the 1-based class label as ``gt_boxes[:, 7]``, encode
        point features, process (crop, shuffle, voxelise). Points with NaN/inf are dropped (counted). A training sample
        without points, without points in range or without boxes is swapped for a random one (counted); at test time
        such a frame is kept (it yields zero voxels and, normally, no detections).
        """
        frame_id = data_dict.get("frame_id")
        if data_dict.get("points") is not None:
            points = data_dict["points"]
            finite = np.isfinite(points).all(axis=1)
            if not finite.all():
                self.data_issues.record(
                    "non_finite_points", frame_id, f"{int((~finite).sum())} of {len(points)}", self.logger
                )
                data_dict["points"] = points = points[finite]
            if len(points) == 0:
                if self.training:
                    return self.replace_sample("empty_point_cloud", frame_id)
                self.data_issues.record("empty_point_cloud", frame_id, "kept: test split", self.logger)

        if self.training:
            if "gt_boxes" not in data_dict:
                raise KeyError("training samples need 'gt_boxes'")
            gt_boxes_mask = np.array([n in self.class_names for n in data_dict["gt_names"]], dtype=bool)
            calib = data_dict.get("calib")
            data_dict = self.data_augmentor.forward(data_dict={**data_dict, "gt_boxes_mask": gt_boxes_mask})
            if calib is not None:  # the augmentor drops it (it no longer matches the moved points)
                data_dict["calib"] = calib

        if data_dict.get("gt_boxes") is not None:
            keep = common_utils.keep_arrays_by_name(data_dict["gt_names"], self.class_names)
            data_dict["gt_boxes"] = data_dict["gt_boxes"][keep]
            data_dict["gt_names"] = data_dict["gt_names"][keep]
            labels = np.array([self.class_names.index(n) + 1 for n in data_dict["gt_names"]], dtype=np.float32)
            data_dict["gt_boxes"] = np.concatenate(
                [data_dict["gt_boxes"], labels.reshape(-1, 1)], axis=1, dtype=np.float32
            )
            if data_dict.get("gt_boxes2d") is not None:
                data_dict["gt_boxes2d"] = data_dict["gt_boxes2d"][keep]

        had_points = data_dict.get("points") is not None and len(data_dict["points"]) > 0
        if data_dict.get("points") is not None:
            data_dict = self.point_feature_encoder.forward(data_dict)
        data_dict = self.data_processor.forward(data_dict=data_dict)

        # Points left after the range crop, or voxels when the voxeliser did the cropping.
        in_range = data_dict.get("voxels", data_dict.get("points"))
        if had_points and in_range is not None and len(in_range) == 0:
            if self.training:
                return self.replace_sample("no_points_in_range", frame_id)
            self.data_issues.record("no_points_in_range", frame_id, "kept: test split", self.logger)
        if self.training and len(data_dict["gt_boxes"]) == 0:
            return self.replace_sample("no_boxes", frame_id)
        self._resamples_in_a_row = 0
        data_dict.pop("gt_names", None)
        return data_dict

    @staticmethod
    def collate_batch(batch_list: list[dict], _unused: bool = False) -> dict:
        """Samples → batch dict.

        ``voxels``/``voxel_num_points`` are concatenated; ``points``/``voxel_coords`` are concatenated with the
        sample index prepended as column 0; ``gt_boxes`` are zero-padded to the largest count (B, M_max, C);
        ``calib``, ``images`` and ``metadata`` stay lists; other arrays are stacked. Adds ``batch_size``.
        """
        gathered = defaultdict(list)
        for sample in batch_list:
            for key, val in sample.items():
                gathered[key].append(val)
        batch: dict = {}
        for key, vals in gathered.items():
            if key in ("voxels", "voxel_num_points"):
                batch[key] = np.concatenate(vals, axis=0)
            elif key in ("points", "voxel_coords"):
                batch[key] = np.concatenate(
                    [np.pad(v, ((0, 0), (1, 0)), mode="constant", constant_values=i) for i, v in enumerate(vals)],
                    axis=0,
                )
            elif key in ("gt_boxes", "gt_boxes2d"):
                width = max(v.shape[1] for v in vals)
                padded = np.zeros((len(vals), max(len(v) for v in vals), width), dtype=np.float32)
                for i, v in enumerate(vals):
                    padded[i, : len(v)] = v
                batch[key] = padded
            elif key in ("calib", "images", "metadata"):
                batch[key] = vals
            else:
                batch[key] = np.stack(vals, axis=0)
        batch["batch_size"] = len(batch_list)
        return batch
