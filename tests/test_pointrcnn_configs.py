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
from pcdet.models.kd import KDConfigError, build_distiller
from pcdet.models.kd.losses.base import KDBatch
from pcdet.utils.checkpoint_io import atomic_torch_save

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


def test_kd_configs_pair_up_build_and_distil_point_features(tmp_path):
    """pointrcnn_kd(_synthetic).yaml: the 8x student's config, the teacher's last epoch, PointDistiller on
    ``point_features`` (rows = the batch's points on both sides); a training step on a small frame distils."""
    teacher_state = _build(_load("pointrcnn")).state_dict()  # random weights stand in for a trained teacher
    atomic_torch_save({"model_state": teacher_state}, tmp_path / "teacher.pth")
    for name, student_name, teacher_name in (("pointrcnn_kd", "pointrcnn_8x", "pointrcnn"),
                                             ("pointrcnn_kd_synthetic", "pointrcnn_8x_synthetic",
                                              "pointrcnn_synthetic")):  # fmt: skip
        cfg, student_cfg = _load(name), _load(student_name)
        assert (cfg.MODEL, cfg.DATA_CONFIG, cfg.OPTIMIZATION) == (
            student_cfg.MODEL,
            student_cfg.DATA_CONFIG,
            student_cfg.OPTIMIZATION,
        )
        epochs = _load(teacher_name).OPTIMIZATION.NUM_EPOCHS
        assert cfg.KD.TEACHER.CFG_FILE == f"cfgs/kitti_models/{teacher_name}.yaml"
        assert (
            cfg.KD.TEACHER.CKPT == f"../output/kitti_models/{teacher_name}/default/ckpt/checkpoint_epoch_{epochs}.pth"
        )
        (term,) = cfg.KD.LOSSES
        assert (term.FEATURE, term.POOL, term.IMPORTANCE, term.GRAPH, term.TAU) == (
            "point_features",
            "max",
            "feature_max",
            "sample",
            1e-4,
        )
        assert term.NUM_NODES == (1500 if name.endswith("_synthetic") else 6000)
        assert (term.STUDENT_CHANNELS, term.TEACHER_CHANNELS) == (46, 128)
    others = {k: v for k, v in term.items() if k != "NUM_NODES"}
    assert others == {k: v for k, v in _load("pointrcnn_kd").KD.LOSSES[0].items() if k != "NUM_NODES"}

    # The step below runs on small sampling sizes (a teacher config on pointrcnn_synthetic.yaml with fewer centres,
    # the student likewise): weights and the KD block are the shipped ones, a step takes a second.
    small = {"BACKBONE_3D": {"SA_CONFIG": {"NPOINTS": [64, 32, 16, 8]}}}
    teacher_file = tmp_path / "teacher.yaml"
    teacher_file.write_text(
        f"_BASE_CONFIG_: {CFG_DIR / 'pointrcnn_synthetic.yaml'}\n"
        "MODEL:\n    BACKBONE_3D:\n        SA_CONFIG:\n            NPOINTS: [64, 32, 16, 8]\n"
    )
    cfg.KD.TEACHER.CFG_FILE = str(teacher_file)
    cfg.KD.DIAGNOSE_EVERY = 0  # the diagnostics' extra backward passes would triple the step (positions: below)
    _merge(cfg.MODEL, small)
    _merge(cfg.MODEL, {"ROI_HEAD": {"ROI_POINT_POOL": {"NUM_SAMPLED_POINTS": 32}, "SA_CONFIG": {"NPOINTS": [16, 4, -1]},
                                    "TARGET_CONFIG": {"ROI_PER_IMAGE": 16}}})  # fmt: skip
    student = _build(cfg)
    distiller = build_distiller(cfg, student, student.dataset, teacher_ckpt=tmp_path / "teacher.pth")
    rng = np.random.default_rng(0)
    xyz = rng.uniform([0, -10, -2], [20, 10, 0], (2, 300, 3))
    points = [np.column_stack([np.full(300, b), xyz[b], rng.uniform(0, 1, 300)]) for b in range(2)]
    gt = np.array([[[8.0, 0.0, -1.0, 3.9, 1.6, 1.56, 0.0, 1.0]]] * 2, dtype=np.float32)
    batch = {"points": torch.tensor(np.concatenate(points), dtype=torch.float32), "batch_size": 2,
             "gt_boxes": torch.from_numpy(gt)}  # fmt: skip
    distiller.train()
    ret, tb, _ = distiller(batch)
    ret["loss"].backward()
    assert torch.isfinite(ret["loss"]) and tb["kd/PointDistiller"] > 0
    assert student.backbone_3d.SA_modules[0].mlps[0][0].weight.grad is not None
    loss = distiller.kd_losses["PointDistiller"]
    features = {"point_features": torch.zeros(4, 46)}
    teacher_side = {"point_features": torch.zeros(4, 128), "point_coords": torch.arange(16.0).view(4, 4)}
    kd_batch = KDBatch(features, teacher_side, student, distiller.teacher)
    # The self-diagnostics place point nodes at the points themselves (BEV x, y).
    assert torch.equal(
        loss._node_positions(kd_batch, teacher_side["point_features"]), teacher_side["point_coords"][:, 1:3]
    )
    loss.opts["IMPORTANCE"] = "voxel_num_points"  # no point counts for points
    with pytest.raises(KDConfigError, match="IMPORTANCE must be feature_max"):
        loss._nodes(kd_batch)


def _merge(cfg: EasyDict, override: dict) -> None:
    for key, val in override.items():
        if isinstance(val, dict):
            _merge(cfg[key], val)
        else:
            cfg[key] = val
