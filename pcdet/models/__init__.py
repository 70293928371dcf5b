"""Model building and the per-iteration glue used by the tools (OpenPCDet's ``pcdet.models`` interface)."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import torch

from .detectors import build_detector

ModelReturn = namedtuple("ModelReturn", ["loss", "tb_dict", "disp_dict"])

# Entries that stay as they are (strings, calibration objects, per-sample metadata).
_NOT_TENSORS = frozenset({"frame_id", "metadata", "calib", "image_paths", "ori_shape", "img_process_infos"})


def build_network(model_cfg, num_class: int, dataset) -> torch.nn.Module:
    """Build the detector named by ``model_cfg.NAME``. From ``dataset`` only ``class_names``,
    ``point_cloud_range``, ``voxel_size``, ``grid_size``, ``point_feature_encoder.num_point_features`` and
    ``depth_downsample_factor`` are read."""
    return build_detector(model_cfg=model_cfg, num_class=num_class, dataset=dataset)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_data_to_gpu(batch_dict: dict, device: torch.device | str | None = None) -> dict:
    """In place: numpy arrays become tensors on ``device`` (default: CUDA when available, else CPU) — floats as
    float32, integers as int64 (``image_shape`` as int32), booleans as bool; tensors are moved. Strings, calib and
    metadata entries are left alone. Returns ``batch_dict`` for convenience."""
    device = torch.device(device) if device is not None else default_device()
    for key, val in batch_dict.items():
        if key in _NOT_TENSORS:
            continue
        if isinstance(val, torch.Tensor):
            batch_dict[key] = val.to(device)
        elif isinstance(val, np.ndarray) and val.dtype != object:
            tensor = torch.from_numpy(np.ascontiguousarray(val))
            if key == "image_shape":
                tensor = tensor.int()
            elif val.dtype == np.bool_:
                pass
            elif np.issubdtype(val.dtype, np.integer):
                tensor = tensor.long()
            else:
                tensor = tensor.float()
            batch_dict[key] = tensor.to(device)
    return batch_dict


def model_fn_decorator():
    """``model_func(model, batch_dict) → ModelReturn(loss, tb_dict, disp_dict)``: moves the batch to the model's
    device, runs a training forward and advances the model's ``global_step``."""

    def model_func(model: torch.nn.Module, batch_dict: dict) -> ModelReturn:
        load_data_to_gpu(batch_dict, device=next(model.parameters()).device)
        ret_dict, tb_dict, disp_dict = model(batch_dict)
        loss = ret_dict["loss"].mean()
        # DistributedDataParallel hides the detector behind .module.
        if hasattr(model, "update_global_step"):
            model.update_global_step()
        else:
            model.module.update_global_step()
        return ModelReturn(loss, tb_dict, disp_dict)

    return model_func
