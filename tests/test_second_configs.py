"""The shipped SECOND configs: the sparse encoder's width option, the 4x / 16x students, the synthetic grid, and the
SECOND KD configs (paired with their students and KITTI twins, each builds with a random-weight teacher)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network
from pcdet.models.backbones_3d.spconv_backbone import DEFAULT_NUM_FILTERS
from pcdet.models.kd import build_distiller
from pcdet.models.kd.feature_matching import VoxelGrid
from pcdet.utils.checkpoint_io import atomic_torch_save

CFG_DIR = Path(__file__).resolve().parents[1] / "tools" / "cfgs" / "kitti_models"
STUDENT_WIDTHS = {  # sparse encoder, BEV channels, BEV filters, upsample filters
    "second_4x": ([8, 16, 32, 32, 64], 128, [64, 128], [128, 128]),
    "second_16x": ([4, 8, 16, 16, 32], 64, [32, 64], [64, 64]),
}


def _load(name: str) -> EasyDict:
    return cfg_from_yaml_file(CFG_DIR / f"{name}.yaml", EasyDict())


def _dataset(cfg: EasyDict) -> SimpleNamespace:
    grid = VoxelGrid.from_data_config(cfg.DATA_CONFIG)
    return grid.network_geometry(cfg.CLASS_NAMES, SimpleNamespace(num_point_features=4))


def _build(cfg: EasyDict) -> torch.nn.Module:
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), _dataset(cfg))


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_explicit_default_widths_give_openpcdets_state_dict_and_bad_widths_are_refused():
    # tests/test_pointpillar_model.py::test_second_state_dict_equals_openpcdet checks the default against the
    # OpenPCDet key list; spelling the default out must not change a single key or shape.
    cfg = _load("second")
    default = _shapes(_build(cfg))
    cfg.MODEL.BACKBONE_3D.NUM_FILTERS = list(DEFAULT_NUM_FILTERS)
    assert _shapes(_build(cfg)) == default
    assert default["backbone_3d.conv_out.0.weight"][0] == 128 and default["backbone_3d.conv1.0.0.weight"][0] == 16
    cfg.MODEL.BACKBONE_3D.NUM_FILTERS = [8, 16, 32, 64]
    with pytest.raises(ValueError, match="NUM_FILTERS needs 5 positive widths"):
        _build(cfg)


def test_student_widths_layouts_and_parameter_ratios():
    teacher_cfg = _load("second")
    teacher = _build(teacher_cfg)
    counts = {}
    for name, (sparse, bev, filters, up) in STUDENT_WIDTHS.items():
        for variant in (name, f"{name}_synthetic"):
            model_cfg = _load(variant).MODEL
            assert model_cfg.BACKBONE_3D.NUM_FILTERS == sparse and model_cfg.MAP_TO_BEV.NUM_BEV_FEATURES == bev
            assert (model_cfg.BACKBONE_2D.NUM_FILTERS, model_cfg.BACKBONE_2D.NUM_UPSAMPLE_FILTERS) == (filters, up)
            for key in ("LAYER_NUMS", "LAYER_STRIDES", "UPSAMPLE_STRIDES"):
                assert model_cfg.BACKBONE_2D[key] == teacher_cfg.MODEL.BACKBONE_2D[key]
            assert model_cfg.DENSE_HEAD == teacher_cfg.MODEL.DENSE_HEAD
        # The synthetic twin is the same network; only BN_MOMENTUM (buffer updates, not layout) may differ.
        synthetic_model = {k: v for k, v in _load(f"{name}_synthetic").MODEL.items() if k != "BN_MOMENTUM"}
        assert dict(_load(name).MODEL) == synthetic_model
        student = _build(_load(name))
        assert list(_shapes(student)) == list(_shapes(teacher))  # same layers: only widths differ
        assert student.dense_head.conv_cls.in_channels == 2 * up[0]
        counts[name] = _n_params(student)
    teacher_params = _n_params(teacher)
    assert 3.5 < teacher_params / counts["second_4x"] < 4.5
    assert 12 < teacher_params / counts["second_16x"] < 20


def test_synthetic_grid_gives_the_teachers_bev_layout():
    cfg = _load("second_synthetic")
    assert cfg.DATA_CONFIG.POINT_CLOUD_RANGE == [0, -20.48, -3, 40.96, 20.48, 1]
    assert cfg.MODEL.BN_MOMENTUM == 0.1 and cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU == 4
    dataset = _dataset(cfg)
    assert dataset.grid_size.tolist() == [320, 320, 40]
    model = _build(cfg).eval()
    # A whole-grid state dict equal to KITTI's second.yaml: the synthetic teacher is the same network.
    assert _shapes(model) == _shapes(_build(_load("second")))
    rng = np.random.default_rng(0)
    parts = []
    for b in range(2):
        xyz = rng.uniform([5, -5, -2], [15, 5, 0], size=(500, 3))  # a few hundred voxels: a fast forward
        parts.append(np.column_stack([np.full(len(xyz), b), xyz, rng.uniform(0, 1, len(xyz))]))
    points = torch.from_numpy(np.concatenate(parts).astype(np.float32))
    batch = {
        "points": points,
        "batch_size": 2,
        **VoxelGrid.from_data_config(cfg.DATA_CONFIG).voxelize(points, 2, False),
    }
    with torch.no_grad():
        pred_dicts, _ = model(batch)
    assert len(pred_dicts) == 2
    # 40 z cells end as 2 after the encoder: 2 x 128 = 256 BEV channels on a 40 x 40 map (stride 8), and the
    # backbone's per-level outputs are batch_dict keys (what the KD configs distil).
    assert tuple(batch["spatial_features"].shape) == (2, 256, 40, 40)
    assert tuple(batch["spatial_features_1x"].shape) == (2, 128, 40, 40)
    assert tuple(batch["spatial_features_2x"].shape) == (2, 256, 20, 20)
    assert tuple(batch["spatial_features_2d"].shape) == (2, 512, 40, 40)


def test_second_kd_configs_pair_up_and_build(tmp_path):
    names = sorted(p.stem for p in CFG_DIR.glob("second_kd*.yaml"))
    assert names == [
        "second_kd",
        "second_kd_fitnet",
        "second_kd_fitnet_synthetic",
        "second_kd_frozen_synthetic",  # an option study: no KITTI twin
        "second_kd_synthetic",
    ]
    teacher_state = _build(_load("second")).state_dict()  # grid-independent weights fit both teachers
    atomic_torch_save({"model_state": teacher_state}, tmp_path / "teacher.pth")
    for name in names:
        cfg = _load(name)
        synthetic = name.endswith("_synthetic")
        student_cfg = _load("second_4x_synthetic" if synthetic else "second_4x")
        assert cfg.MODEL == student_cfg.MODEL and cfg.DATA_CONFIG == student_cfg.DATA_CONFIG
        assert cfg.OPTIMIZATION == student_cfg.OPTIMIZATION
        teacher_name = "second_synthetic" if synthetic else "second"
        assert cfg.KD.TEACHER.CFG_FILE == f"cfgs/kitti_models/{teacher_name}.yaml"
        epochs = _load(teacher_name).OPTIMIZATION.NUM_EPOCHS  # what train.py writes for the teacher's last epoch
        assert (
            cfg.KD.TEACHER.CKPT == f"../output/kitti_models/{teacher_name}/default/ckpt/checkpoint_epoch_{epochs}.pth"
        )
        if synthetic:
            assert cfg.DATA_CONFIG == _load("second_synthetic").DATA_CONFIG
            if name.removesuffix("_synthetic") in names:
                assert cfg.KD.LOSSES == _load(name.removesuffix("_synthetic")).KD.LOSSES
        student = _build(cfg)
        distiller = build_distiller(cfg, student, _dataset(cfg), teacher_ckpt=tmp_path / "teacher.pth")
        assert [loss["NAME"] for loss in cfg.KD.LOSSES] == [type(m).__name__ for m in distiller.kd_losses.values()]
    assert _load("second").OPTIMIZATION.NUM_EPOCHS == 80
    # The frozen-adapter study differs from the paper setting in that one option only.
    frozen, paper = _load("second_kd_frozen_synthetic").KD.LOSSES, _load("second_kd_synthetic").KD.LOSSES
    assert [term.pop("TEACHER_ADAPTER") for term in frozen] == ["frozen", "frozen"] and frozen == paper
    # The paper's SECOND setting: PointDistiller on two levels of the 2D backbone, N = 256 cells per sample chosen by
    # the teacher's feature maximum, tau = 1e-4; adapter widths from the levels' channel counts.
    losses = _load("second_kd").KD.LOSSES
    assert [(t.TAG, t.FEATURE) for t in losses] == [
        ("PointDistiller_1x", "spatial_features_1x"),
        ("PointDistiller_2x", "spatial_features_2x"),
    ]
    for term, (student_c, teacher_c) in zip(losses, [(64, 128), (128, 256)], strict=True):
        assert (term.NUM_NODES, term.GRAPH, term.IMPORTANCE, term.TAU) == (256, "sample", "feature_max", 1e-4)
        assert (term.STUDENT_CHANNELS, term.TEACHER_CHANNELS) == (student_c, teacher_c)
