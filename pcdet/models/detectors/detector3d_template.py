"""Base class of all detectors: assembles the modules named in the config, post-processes, loads checkpoints."""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from ...ops.iou3d_nms import iou3d_nms_utils
from ...utils.checkpoint_io import safe_load
from ...utils.cli import InputError
from ...utils.spconv_utils import spconv_pytorch as spconv
from .. import backbones_2d, backbones_3d, dense_heads, roi_heads
from ..backbones_2d import map_to_bev
from ..backbones_3d import vfe
from ..model_utils import model_nms_utils

_LOG = logging.getLogger("pcdet")


class StateDictMismatchError(InputError, RuntimeError):
    """A checkpoint whose keys or shapes do not match the model it is loaded into."""


_SHOWN_KEYS = 3  # a mismatch error lists this many keys per kind, then a count: the first few name the culprit


def _first_keys(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (f" and {len(items) - _SHOWN_KEYS} more" if len(items) > _SHOWN_KEYS else "")


def _mismatch_hint(model_state: dict, loaded_state: dict, shape_keys: list[str], missing: list[str]) -> str:
    """A guess at the cause: a model of another width (e.g. a 4x student's checkpoint for the teacher), a state
    dict saved with DDP's ``module.`` prefix, or another architecture."""
    if shape_keys:
        key = shape_keys[0]
        ckpt_shape, model_shape = tuple(loaded_state[key].shape), tuple(model_state[key].shape)
        ckpt_width, model_width = (ckpt_shape or (0,))[0], (model_shape or (0,))[0]
        section = key.split(".")[0].upper()
        if ckpt_width != model_width and min(ckpt_width, model_width) > 0:
            ratio = max(ckpt_width, model_width) / min(ckpt_width, model_width)
            size = "smaller" if ckpt_width < model_width else "larger"
            example = f" (e.g. a {ratio**2:.0f}x student)" if size == "smaller" else " (e.g. the teacher)"
            return (
                f"hint: {section} width {ckpt_width} in the checkpoint vs {model_width} in the model: a checkpoint "
                f"of a {ratio**2:.0f}x {size} model{example}?"
            )
    if loaded_state and all(str(k).startswith("module.") for k in loaded_state):
        return "hint: every checkpoint key starts with 'module.': saved from a DistributedDataParallel wrapper?"
    if missing and len(missing) * 2 > len(model_state):
        return "hint: most of the model's keys are missing: a checkpoint of another architecture?"
    return ""


def describe_state_dict_mismatch(model_state: dict, loaded_state: dict) -> list[str]:
    """Differences between the model's state dict and a loaded one (empty when they match): one entry per kind
    (missing keys, unexpected keys, shape mismatches) with its count and first keys, then a hint when one fits."""
    missing = [k for k in model_state if k not in loaded_state]
    unexpected = [k for k in loaded_state if k not in model_state]
    shape_keys = [
        k for k in model_state if k in loaded_state and tuple(loaded_state[k].shape) != tuple(model_state[k].shape)
    ]
    shapes = [
        f"{k}: checkpoint {tuple(loaded_state[k].shape)} vs model {tuple(model_state[k].shape)}" for k in shape_keys
    ]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            problems.append(f"{len(items)} {title}: {_first_keys(items)}")
    hint = _mismatch_hint(model_state, loaded_state, shape_keys, missing) if problems else ""
    return problems + ([hint] if hint else [])


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` requiring the exact same keys and shapes; raise
    :class:`StateDictMismatchError` (one line: counts, first keys, a hint) otherwise.
    Sparse-conv weights saved by other spconv versions are converted first (see ``adapt_spconv_weights``)."""
    model_state = model.state_dict()
    state_dict = adapt_spconv_weights(model, state_dict)
    problems = describe_state_dict_mismatch(model_state, state_dict)
    if problems:
        raise StateDictMismatchError(
            f"{source} does not match {type(model).__name__} (was it trained with another config?): "
            + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)


def _sparse_conv_weight_keys(model: nn.Module) -> set[str]:
    return {
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, spconv.conv.SparseConvolution)
    }


def adapt_spconv_weights(model: nn.Module, state_dict: dict) -> dict:
    """Sparse-conv weights saved as ``(kD, kH, kW, in, out)`` (spconv 1.x, and 2.x's native algorithm) are permuted
    to the implicit-GEMM layout ``(out, kD, kH, kW, in)`` our model uses; every other entry is left as it is."""
    keys = _sparse_conv_weight_keys(model)
    if not keys:
        return state_dict
    model_state = model.state_dict()
    adapted = dict(state_dict)
    for key in keys & set(state_dict):
        val, want = state_dict[key], model_state[key].shape
        if val.shape != want and val.dim() == 5 and val.permute(4, 0, 1, 2, 3).shape == want:
            adapted[key] = val.permute(4, 0, 1, 2, 3).contiguous()
    return adapted


class Detector3DTemplate(nn.Module):
    """A detector is ``module_list`` applied in order to one ``batch_dict``; which modules exist is read from the
    config (``MODEL.VFE``, ``BACKBONE_3D``, ``MAP_TO_BEV``, ``PFE``, ``BACKBONE_2D``, ``DENSE_HEAD``,
    ``POINT_HEAD``, ``ROI_HEAD``), each looked up by its ``NAME`` in its package's registry."""

    def __init__(self, model_cfg, num_class: int, dataset):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.dataset = dataset
        self.class_names = dataset.class_names
        # Registered first so that it is the first key of the state dict, as in OpenPCDet's checkpoints.
        self.register_buffer("global_step", torch.zeros(1, dtype=torch.long))
        self.module_topology = [
            "vfe",
            "backbone_3d",
            "map_to_bev_module",
            "pfe",
            "backbone_2d",
            "dense_head",
            "point_head",
            "roi_head",
        ]

    @property
    def mode(self) -> str:
        return "TRAIN" if self.training else "TEST"

    def update_global_step(self) -> None:
        self.global_step += 1

    # ------------------------------------------------------------------ building
    def build_networks(self) -> list[nn.Module]:
        dataset = self.dataset
        model_info_dict = {
            "module_list": [],
            "num_rawpoint_features": dataset.point_feature_encoder.num_point_features,
            "num_point_features": dataset.point_feature_encoder.num_point_features,
            "grid_size": dataset.grid_size,
            "point_cloud_range": dataset.point_cloud_range,
            "voxel_size": dataset.voxel_size,
            "depth_downsample_factor": getattr(dataset, "depth_downsample_factor", None),
        }
        builders = {
            "vfe": self.build_vfe,
            "backbone_3d": self.build_backbone_3d,
            "map_to_bev_module": self.build_map_to_bev_module,
            "pfe": self.build_pfe,
            "backbone_2d": self.build_backbone_2d,
            "dense_head": self.build_dense_head,
            "point_head": self.build_point_head,
            "roi_head": self.build_roi_head,
        }
        for module_name in self.module_topology:
            module = builders[module_name](model_info_dict)
            self.add_module(module_name, module)
            if module is not None:
                model_info_dict["module_list"].append(module)
        self._apply_bn_momentum(self.model_cfg.get("BN_MOMENTUM"))
        return model_info_dict["module_list"]

    def _apply_bn_momentum(self, momentum: float | None) -> None:
        """``MODEL.BN_MOMENTUM`` (optional, not an OpenPCDet key) overrides every BatchNorm's momentum.

        OpenPCDet's layers use 0.01: the running statistics average over the last ~100 steps, fine for 80-epoch
        schedules but far behind the weights after a few hundred steps, so a short CPU schedule evaluates with stale
        statistics. A larger momentum only changes how the buffers are updated, not the state-dict layout.
        """
        if momentum is None:
            return
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = float(momentum)

    @staticmethod
    def _lookup(registry: dict, module_cfg, section: str):
        if module_cfg.NAME not in registry:
            raise KeyError(f"MODEL.{section}.NAME {module_cfg.NAME!r} is unknown; available: {sorted(registry)}")
        return registry[module_cfg.NAME]

    def build_vfe(self, model_info_dict: dict):
        cfg = self.model_cfg.get("VFE")
        if cfg is None:
            return None
        module = self._lookup(vfe.__all__, cfg, "VFE")(
            model_cfg=cfg,
            num_point_features=model_info_dict["num_rawpoint_features"],
            point_cloud_range=model_info_dict["point_cloud_range"],
            voxel_size=model_info_dict["voxel_size"],
            grid_size=model_info_dict["grid_size"],
            depth_downsample_factor=model_info_dict["depth_downsample_factor"],
        )
        model_info_dict["num_point_features"] = module.get_output_feature_dim()
        return module

    def build_backbone_3d(self, model_info_dict: dict):
        cfg = self.model_cfg.get("BACKBONE_3D")
        if cfg is None:
            return None
        module = self._lookup(backbones_3d.__all__, cfg, "BACKBONE_3D")(
            model_cfg=cfg,
            input_channels=model_info_dict["num_point_features"],
            grid_size=model_info_dict["grid_size"],
            voxel_size=model_info_dict["voxel_size"],
            point_cloud_range=model_info_dict["point_cloud_range"],
        )
        model_info_dict["num_point_features"] = module.num_point_features
        model_info_dict["backbone_channels"] = getattr(module, "backbone_channels", None)
        return module

    def build_map_to_bev_module(self, model_info_dict: dict):
        cfg = self.model_cfg.get("MAP_TO_BEV")
        if cfg is None:
            return None
        module = self._lookup(map_to_bev.__all__, cfg, "MAP_TO_BEV")(
            model_cfg=cfg, grid_size=model_info_dict["grid_size"]
        )
        model_info_dict["num_bev_features"] = module.num_bev_features
        return module

    def build_backbone_2d(self, model_info_dict: dict):
        cfg = self.model_cfg.get("BACKBONE_2D")
        if cfg is None:
            return None
        module = self._lookup(backbones_2d.__all__, cfg, "BACKBONE_2D")(
            model_cfg=cfg, input_channels=model_info_dict.get("num_bev_features")
        )
        model_info_dict["num_bev_features"] = module.num_bev_features
        return module

    def _not_available(self, section: str):
        if self.model_cfg.get(section) is not None:
            raise NotImplementedError(
                f"MODEL.{section} ({self.model_cfg[section].get('NAME')}) is not implemented in pcdet yet"
            )
        return None

    def build_pfe(self, model_info_dict: dict):
        return self._not_available("PFE")

    def build_point_head(self, model_info_dict: dict):
        cfg = self.model_cfg.get("POINT_HEAD")
        if cfg is None:
            return None
        if cfg.get("USE_POINT_FEATURES_BEFORE_FUSION", False):
            num_point_features = model_info_dict["num_point_features_before_fusion"]
        else:
            num_point_features = model_info_dict["num_point_features"]
        return self._lookup(dense_heads.__all__, cfg, "POINT_HEAD")(
            model_cfg=cfg,
            input_channels=num_point_features,
            num_class=self.num_class if not cfg.get("CLASS_AGNOSTIC", False) else 1,
            predict_boxes_when_training=self.model_cfg.get("ROI_HEAD") is not None,
        )

    def build_roi_head(self, model_info_dict: dict):
        cfg = self.model_cfg.get("ROI_HEAD")
        if cfg is None:
            return None
        return self._lookup(roi_heads.__all__, cfg, "ROI_HEAD")(
            model_cfg=cfg,
            input_channels=model_info_dict["num_point_features"],
            backbone_channels=model_info_dict.get("backbone_channels"),
            point_cloud_range=model_info_dict["point_cloud_range"],
            voxel_size=model_info_dict["voxel_size"],
            num_class=self.num_class if not cfg.get("CLASS_AGNOSTIC", False) else 1,
        )

    def build_dense_head(self, model_info_dict: dict):
        cfg = self.model_cfg.get("DENSE_HEAD")
        if cfg is None:
            return None
        return self._lookup(dense_heads.__all__, cfg, "DENSE_HEAD")(
            model_cfg=cfg,
            input_channels=model_info_dict.get("num_bev_features", cfg.get("INPUT_FEATURES")),
            num_class=self.num_class if not cfg.get("CLASS_AGNOSTIC", False) else 1,
            class_names=self.class_names,
            grid_size=model_info_dict["grid_size"],
            point_cloud_range=model_info_dict["point_cloud_range"],
            predict_boxes_when_training=self.model_cfg.get("ROI_HEAD") is not None,
            voxel_size=model_info_dict.get("voxel_size", False),
        )

    def forward(self, batch_dict: dict):
        raise NotImplementedError

    # ------------------------------------------------------------------ post-processing
    def post_processing(self, batch_dict: dict) -> tuple[list[dict], dict]:
        """Per sample: scores (sigmoid unless already normalised), threshold, NMS → ``pred_boxes (M, 7)``,
        ``pred_scores (M)``, ``pred_labels (M)`` 1-based; plus recall counts at ``RECALL_THRESH_LIST``."""
        post_process_cfg = self.model_cfg.POST_PROCESSING
        batch_size = batch_dict["batch_size"]
        recall_dict: dict = {}
        pred_dicts = []
        for index in range(batch_size):
            if batch_dict.get("batch_index") is not None:
                assert batch_dict["batch_box_preds"].dim() == 2
                batch_mask = batch_dict["batch_index"] == index
            else:
                assert batch_dict["batch_box_preds"].dim() == 3
                batch_mask = index
            box_preds = batch_dict["batch_box_preds"][batch_mask]
            src_box_preds = box_preds
            if isinstance(batch_dict["batch_cls_preds"], list):
                # A multi-head anchor head: one score tensor per head, each with its own classes.
                final_scores, final_labels, final_boxes = model_nms_utils.multihead_nms(
                    [cls[batch_mask] for cls in batch_dict["batch_cls_preds"]],
                    batch_dict["multihead_label_mapping"],
                    box_preds,
                    post_process_cfg,
                    normalized=batch_dict["cls_preds_normalized"],
                )
            else:
                cls_preds = batch_dict["batch_cls_preds"][batch_mask]
                src_cls_preds = cls_preds
                assert cls_preds.shape[1] in (1, self.num_class)
                if not batch_dict["cls_preds_normalized"]:
                    cls_preds = torch.sigmoid(cls_preds)

                if post_process_cfg.NMS_CONFIG.MULTI_CLASSES_NMS:
                    final_scores, final_labels, final_boxes = model_nms_utils.multi_classes_nms(
                        cls_scores=cls_preds,
                        box_preds=box_preds,
                        nms_config=post_process_cfg.NMS_CONFIG,
                        score_thresh=post_process_cfg.SCORE_THRESH,
                    )
                    final_labels = final_labels + 1
                else:
                    cls_preds, label_preds = torch.max(cls_preds, dim=-1)
                    if batch_dict.get("has_class_labels", False):
                        label_key = "roi_labels" if "roi_labels" in batch_dict else "batch_pred_labels"
                        label_preds = batch_dict[label_key][index]
                    else:
                        label_preds = label_preds + 1
                    selected, selected_scores = model_nms_utils.class_agnostic_nms(
                        box_scores=cls_preds,
                        box_preds=box_preds,
                        nms_config=post_process_cfg.NMS_CONFIG,
                        score_thresh=post_process_cfg.SCORE_THRESH,
                    )
                    if post_process_cfg.OUTPUT_RAW_SCORE:
                        selected_scores = torch.max(src_cls_preds, dim=-1)[0][selected]
                    final_scores = selected_scores
                    final_labels = label_preds[selected]
                    final_boxes = box_preds[selected]

            recall_dict = self.generate_recall_record(
                box_preds=final_boxes if "rois" not in batch_dict else src_box_preds,
                recall_dict=recall_dict,
                batch_index=index,
                data_dict=batch_dict,
                thresh_list=post_process_cfg.RECALL_THRESH_LIST,
            )
            pred_dicts.append({"pred_boxes": final_boxes, "pred_scores": final_scores, "pred_labels": final_labels})
        return pred_dicts, recall_dict

    @staticmethod
    def generate_recall_record(
        box_preds: torch.Tensor, recall_dict: dict, batch_index: int, data_dict: dict | None = None, thresh_list=None
    ) -> dict:
        """Accumulate ``gt`` (number of gt boxes) and, per threshold, ``rcnn_<t>`` / ``roi_<t>``: gt boxes whose
        best 3D IoU with a prediction (an RoI) exceeds ``t``."""
        if "gt_boxes" not in data_dict:
            return recall_dict
        rois = data_dict["rois"][batch_index] if "rois" in data_dict else None
        gt_boxes = data_dict["gt_boxes"][batch_index]
        if len(recall_dict) == 0:
            recall_dict = {"gt": 0}
            for thresh in thresh_list:
                recall_dict[f"roi_{thresh}"] = 0
                recall_dict[f"rcnn_{thresh}"] = 0

        real_rows = torch.nonzero(gt_boxes.sum(dim=1) != 0)
        cur_gt = gt_boxes[: int(real_rows.max()) + 1] if real_rows.numel() > 0 else gt_boxes[:0]
        if cur_gt.shape[0] > 0:
            has_preds = box_preds.shape[0] > 0
            iou3d_rcnn = iou3d_nms_utils.boxes_iou3d_gpu(box_preds[:, 0:7], cur_gt[:, 0:7]) if has_preds else None
            iou3d_roi = iou3d_nms_utils.boxes_iou3d_gpu(rois[:, 0:7], cur_gt[:, 0:7]) if rois is not None else None
            for thresh in thresh_list:
                if iou3d_rcnn is not None:
                    recall_dict[f"rcnn_{thresh}"] += int((iou3d_rcnn.max(dim=0)[0] > thresh).sum().item())
                if iou3d_roi is not None:
                    recall_dict[f"roi_{thresh}"] += int((iou3d_roi.max(dim=0)[0] > thresh).sum().item())
            recall_dict["gt"] += cur_gt.shape[0]
        return recall_dict

    # ------------------------------------------------------------------ checkpoints
    def _load_state_dict(self, model_state_disk: dict, *, strict: bool = True) -> tuple[dict, dict]:
        """Load the entries of ``model_state_disk`` whose key and shape match (after spconv layout conversion).
        ``strict``: every model key must be present, else :class:`StateDictMismatchError`. Returns the model's
        state dict (before loading) and the entries that were loaded."""
        state_dict = self.state_dict()
        model_state_disk = adapt_spconv_weights(self, model_state_disk)
        update_model_state = {
            key: val
            for key, val in model_state_disk.items()
            if key in state_dict and tuple(state_dict[key].shape) == tuple(val.shape)
        }
        if strict:
            load_state_dict_strict(self, model_state_disk)
        else:
            merged = dict(state_dict)
            merged.update(update_model_state)
            self.load_state_dict(merged)
        return state_dict, update_model_state

    def _map_location(self, to_cpu: bool) -> torch.device:
        return torch.device("cpu") if to_cpu else self.global_step.device

    def load_params_from_file(
        self, filename: str, logger: logging.Logger | None = None, to_cpu: bool = False, pre_trained_path=None
    ) -> None:
        """Load the matching weights of a checkpoint (and of ``pre_trained_path`` over it); keys that are missing or
        have another shape keep the model's values and are logged with the file they came from, and a WARNING says
        so when most weights did not load (use :meth:`load_params_strict` to require an exact match)."""
        logger = logger or _LOG
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"checkpoint not found: {filename}")
        location = self._map_location(to_cpu)
        files = f"{filename}" + (f" with {pre_trained_path} over it" if pre_trained_path is not None else "")
        logger.info("==> Loading parameters from checkpoint %s to %s", files, "CPU" if to_cpu else location)
        checkpoint = safe_load(filename, map_location=location)
        model_state_disk = dict(checkpoint["model_state"])
        origin = dict.fromkeys(model_state_disk, str(filename))
        if pre_trained_path is not None:
            pretrained = safe_load(pre_trained_path, map_location=location)["model_state"]
            model_state_disk.update(pretrained)
            origin.update(dict.fromkeys(pretrained, str(pre_trained_path)))
        version = checkpoint.get("version")
        if version is not None:
            logger.info("==> Checkpoint trained from version: %s", version)

        state_dict, update_model_state = self._load_state_dict(model_state_disk, strict=False)
        for key in state_dict:
            if key not in update_model_state:
                if key in model_state_disk:
                    logger.info(
                        "Not updated weight %s: %s has shape %s, model shape %s",
                        key,
                        origin[key],
                        tuple(model_state_disk[key].shape),
                        tuple(state_dict[key].shape),
                    )
                else:
                    logger.info("Not updated weight %s: %s (missing in checkpoint)", key, tuple(state_dict[key].shape))
        unused = [k for k in model_state_disk if k not in state_dict]
        if unused:
            logger.info("Checkpoint keys not used by the model: %s", ", ".join(unused))
        loaded, total = len(update_model_state), len(state_dict)
        # Fine-tuning with a new head loads most weights; loading fewer than half is almost always the wrong file.
        level = logging.WARNING if loaded * 2 < total else logging.INFO
        kept = f"; the other {total - loaded} keep the model's own values" if loaded < total else ""
        logger.log(level, "==> Done (loaded %d/%d from %s%s)", loaded, total, files, kept)

    def load_params_strict(self, filename: str, logger: logging.Logger | None = None, to_cpu: bool = False) -> dict:
        """Load a checkpoint that must match the model exactly (a frozen teacher, an evaluation). Returns the
        checkpoint dict (epoch, it, version...)."""
        logger = logger or _LOG
        checkpoint = safe_load(filename, map_location=self._map_location(to_cpu))
        if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
            raise StateDictMismatchError(f"{filename} is not a pcdet/OpenPCDet checkpoint (no 'model_state')")
        load_state_dict_strict(self, checkpoint["model_state"], source=str(filename))
        logger.info("==> Loaded %s strictly (version %s)", filename, checkpoint.get("version"))
        return checkpoint

    def load_params_with_optimizer(
        self, filename: str, to_cpu: bool = False, optimizer=None, logger: logging.Logger | None = None
    ) -> tuple[int, int]:
        """Resume: load the model strictly and, if given, the optimizer state. Returns ``(it, epoch)``."""
        logger = logger or _LOG
        if not os.path.isfile(filename):
            raise FileNotFoundError(filename)
        location = self._map_location(to_cpu)
        logger.info("==> Loading parameters from checkpoint %s to %s", filename, "CPU" if to_cpu else location)
        checkpoint = safe_load(filename, map_location=location)
        epoch = checkpoint.get("epoch", -1)
        it = checkpoint.get("it", 0.0)
        self._load_state_dict(checkpoint["model_state"], strict=True)

        if optimizer is not None:
            if checkpoint.get("optimizer_state") is not None:
                logger.info("==> Loading optimizer parameters from checkpoint %s", filename)
                optimizer.load_state_dict(checkpoint["optimizer_state"])
            else:
                # OpenPCDet may keep the optimizer next to the model: <name>_optim.<ext>.
                root, ext = os.path.splitext(filename)
                optimizer_filename = f"{root}_optim{ext}"
                if os.path.exists(optimizer_filename):
                    optimizer.load_state_dict(safe_load(optimizer_filename, map_location=location)["optimizer_state"])
        if "version" in checkpoint:
            logger.info("==> Checkpoint trained from version: %s", checkpoint["version"])
        logger.info("==> Done")
        return it, epoch
