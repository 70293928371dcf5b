"""The teacher: an ordinary detector config + checkpoint, loaded strictly, frozen, run only as far as needed."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from easydict import EasyDict

from ...config import ROOT_DIR, cfg_from_yaml_file
from ...utils.checkpoint_io import CheckpointError, file_sha256, safe_load
from .. import build_network
from ..detectors import StateDictMismatchError, load_state_dict_strict
from ..model_utils.fused_inference import enable_fused_inference
from .errors import KDConfigError
from .feature_matching import VoxelGrid


@dataclass
class Teacher:
    model: nn.Module
    cfg: EasyDict
    cfg_path: Path
    ckpt_path: Path
    sha256: str
    # The teacher's own voxelisation, or None when it equals the student's (the batch's voxels are reused).
    grid: VoxelGrid | None


def find_file(path: str | os.PathLike, what: str) -> Path:
    """A path as the tools take it: absolute, else relative to the cwd, else to ROOT_DIR/tools (the directory the
    tools run from, so the same config works from the repository root)."""
    path = Path(os.path.expanduser(str(path)))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, ROOT_DIR / "tools" / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    # Run from tools/, both candidates are one directory: name each place once.
    tried = list(dict.fromkeys(str(c.resolve()) for c in candidates))
    raise KDConfigError(f"{what} not found: {path} (tried {', '.join(tried)})")


def load_teacher_weights(model: nn.Module, ckpt_path: Path, cfg_path: Path | None = None) -> None:
    """Strict load of an OpenPCDet checkpoint's ``model_state``; every problem becomes one KDConfigError
    (``cfg_path``, the teacher config the model was built from, is named in a mismatch)."""
    try:
        checkpoint = safe_load(ckpt_path, map_location="cpu")
    except CheckpointError as exc:
        raise KDConfigError(f"teacher checkpoint: {exc}") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model_state"), dict):
        raise KDConfigError(f"teacher checkpoint {ckpt_path} holds no 'model_state' (not an OpenPCDet checkpoint)")
    try:
        built_from = f" (model built from {cfg_path})" if cfg_path is not None else ""
        load_state_dict_strict(model, checkpoint["model_state"], source=f"teacher checkpoint {ckpt_path}{built_from}")
    except StateDictMismatchError as exc:
        raise KDConfigError(str(exc)) from exc


def build_teacher(
    kd_cfg: dict,
    student_cfg: dict,
    dataset,
    teacher_ckpt: str | os.PathLike | None = None,
    logger: logging.Logger | None = None,
) -> Teacher:
    """Build the detector of ``KD.TEACHER.CFG_FILE``, load ``teacher_ckpt`` (else ``KD.TEACHER.CKPT``) strictly,
    freeze it. ``student_cfg`` is the experiment config (CLASS_NAMES, DATA_CONFIG)."""
    logger = logger or logging.getLogger("pcdet")
    teacher_block = kd_cfg.get("TEACHER") or {}
    if not teacher_block.get("CFG_FILE"):
        raise KDConfigError("KD.TEACHER.CFG_FILE is not set")
    cfg_path = find_file(teacher_block["CFG_FILE"], "teacher config KD.TEACHER.CFG_FILE")
    ckpt = teacher_ckpt if teacher_ckpt is not None else teacher_block.get("CKPT")
    if not ckpt:
        raise KDConfigError("no teacher checkpoint: set KD.TEACHER.CKPT or pass --teacher_ckpt")
    ckpt_path = find_file(ckpt, "teacher checkpoint" + (" (--teacher_ckpt)" if teacher_ckpt is not None else ""))

    teacher_cfg = cfg_from_yaml_file(cfg_path, EasyDict())
    student_classes = list(student_cfg.CLASS_NAMES)
    if list(teacher_cfg.get("CLASS_NAMES", [])) != student_classes:
        raise KDConfigError(
            f"teacher classes {list(teacher_cfg.get('CLASS_NAMES', []))} ({cfg_path}) differ from the student's "
            f"{student_classes}: both must predict the same classes in the same order"
        )
    teacher_data = teacher_cfg.get("DATA_CONFIG", student_cfg.DATA_CONFIG)
    if teacher_data.get("POINT_FEATURE_ENCODING") != student_cfg.DATA_CONFIG.get("POINT_FEATURE_ENCODING"):
        raise KDConfigError(
            f"teacher POINT_FEATURE_ENCODING {teacher_data.get('POINT_FEATURE_ENCODING')} differs from the student's "
            f"{student_cfg.DATA_CONFIG.get('POINT_FEATURE_ENCODING')}: both models read the same points"
        )
    student_grid = VoxelGrid.from_data_config(student_cfg.DATA_CONFIG)
    teacher_grid = VoxelGrid.from_data_config(teacher_data)
    own_grid = None if teacher_grid == student_grid else teacher_grid

    # A teacher with its own voxelisation is built for its grid; otherwise the student's dataset describes it.
    geometry = dataset
    if own_grid is not None:
        geometry = own_grid.network_geometry(
            student_classes, dataset.point_feature_encoder, getattr(dataset, "depth_downsample_factor", None)
        )
    model = build_network(teacher_cfg.MODEL, num_class=len(student_classes), dataset=geometry)
    load_teacher_weights(model, ckpt_path, cfg_path)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    # The teacher only ever runs in eval mode under no_grad: where its modules have a fused eval path (batch-norm
    # folded, fused kernels; equal to the reference forward up to float round-off) it is taken unless the config
    # asks for the reference forward.
    enable_fused_inference(model, bool(teacher_block.get("FUSED_INFERENCE", True)))
    sha256 = file_sha256(ckpt_path)
    logger.info(f"KD teacher {teacher_cfg.MODEL.NAME} from {cfg_path}, checkpoint {ckpt_path} (sha256 {sha256})")
    return Teacher(model, teacher_cfg, cfg_path, ckpt_path, sha256, own_grid)


def module_names(model: nn.Module) -> list[str]:
    """Names (vfe, backbone_2d, ...) of ``model.module_list`` in run order."""
    by_id = {id(child): name for name, child in model.named_children()}
    return [by_id[id(module)] for module in model.module_list]


def run_teacher(model: nn.Module, batch_dict: dict, keys: set[str], modules: set[str]) -> dict:
    """Run the teacher's modules in order on its own dict until every key in ``keys`` exists and every module
    named in ``modules`` has run; the rest of the network (and post-processing) is skipped."""
    ran: set[str] = set()
    names = module_names(model)
    with torch.no_grad():
        for name, module in zip(names, model.module_list):
            if keys <= batch_dict.keys() and modules <= ran:
                break
            batch_dict = module(batch_dict)
            ran.add(name)
    missing_modules = modules - ran
    if missing_modules:
        raise KDConfigError(f"the teacher has no module(s) {sorted(missing_modules)} (it has {names})")
    missing = keys - batch_dict.keys()
    if missing:
        raise KDConfigError(
            f"the teacher's batch_dict has no key(s) {sorted(missing)} after its full forward "
            f"(available: {', '.join(sorted(map(str, batch_dict)))})"
        )
    return batch_dict
