"""The shipped PointRCNN students: widths of pointrcnn_8x / _16x (teacher / 2.8 and / 4), equal in their synthetic
twins, the teacher's layers and sampling sizes otherwise, and their parameter ratios; a narrow-feature forward."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network

CFG_DIR = Path(__file__).resolve().parents[1] / "tools" / "cfgs" / "kitti_models"
DIVISORS = {"pointrcnn_8x": 2.8, "pointrcnn_16x": 4.0}
WIDTH_KEYS = (
    ("BACKBONE_3D", "SA_CONFIG", "MLPS"),
    ("BACKBONE_3D", "FP_MLPS"),
    ("POINT_HEAD", "CLS_FC"),
    ("POINT_HEAD", "REG_FC"),
    ("ROI_HEAD", "XYZ_UP_LAYER"),
    ("ROI_HEAD", "CLS_FC"),
    ("ROI_HEAD", "REG_FC"),
    ("ROI_HEAD", "SA_CONFIG", "MLPS"),
)


def _load(name: str) -> EasyDict:
    return cfg_from_yaml_file(CFG_DIR / f"{name}.yaml", EasyDict())


def _get(model_cfg: dict, path: tuple[str, ...]):
    for key in path:
        model_cfg = model_cfg[key]
    return model_cfg


def _divided(widths, divisor: float):
    if isinstance(widths, list):
        return [_divided(w, divisor) for w in widths]
    return int(round(widths / divisor))


def _without_widths(model_cfg: EasyDict) -> dict:
    stripped = copy.deepcopy(model_cfg)
    for path in WIDTH_KEYS:
        parent = _get(stripped, path[:-1])
        parent.pop(path[-1])
    return stripped


def _build(cfg: EasyDict) -> torch.nn.Module:
    from types import SimpleNamespace

    dataset = SimpleNamespace(
        class_names=list(cfg.CLASS_NAMES),
        point_cloud_range=np.asarray(cfg.DATA_CONFIG.POINT_CLOUD_RANGE, dtype=np.float32),
        voxel_size=None,
        grid_size=None,
        point_feature_encoder=SimpleNamespace(num_point_features=4),
        depth_downsample_factor=None,
    )
    return build_network(cfg.MODEL, 3, dataset)


@pytest.mark.parametrize("name", sorted(DIVISORS))
def test_student_widths_are_the_teachers_divided_and_equal_in_the_synthetic_twin(name):
    teacher, student = _load("pointrcnn"), _load(name)
    for path in WIDTH_KEYS:
        assert _get(student.MODEL, path) == _divided(_get(teacher.MODEL, path), DIVISORS[name]), path
    # Only widths differ from the teacher; the synthetic twin is pointrcnn_synthetic.yaml with the same widths.
    assert _without_widths(student.MODEL) == _without_widths(teacher.MODEL)
    twin, synthetic_teacher = _load(f"{name}_synthetic"), _load("pointrcnn_synthetic")
    for path in WIDTH_KEYS:
        assert _get(twin.MODEL, path) == _get(student.MODEL, path), path
    assert _without_widths(twin.MODEL) == _without_widths(synthetic_teacher.MODEL)
    assert twin.DATA_CONFIG == synthetic_teacher.DATA_CONFIG and twin.OPTIMIZATION == synthetic_teacher.OPTIMIZATION


def test_parameter_ratios_and_same_layers():
    teacher = _build(_load("pointrcnn"))
    n_teacher = sum(p.numel() for p in teacher.parameters())
    ratios = {}
    for name in DIVISORS:
        student = _build(_load(name))
        assert list(student.state_dict()) == list(teacher.state_dict())  # same layers: only widths differ
        ratios[name] = n_teacher / sum(p.numel() for p in student.parameters())
        assert student.backbone_3d.num_point_features == _load(name).MODEL.ROI_HEAD.XYZ_UP_LAYER[-1]
    assert 7 < ratios["pointrcnn_8x"] < 8.5 and 14 < ratios["pointrcnn_16x"] < 17


def test_xyz_up_layer_must_match_the_backbone_width():
    cfg = _load("pointrcnn_8x")
    cfg.MODEL.ROI_HEAD.XYZ_UP_LAYER = [46, 64]
    with pytest.raises(ValueError, match="XYZ_UP_LAYER must end at the backbone's width 46"):
        _build(cfg)
