"""nuScenes students and KD: the 2x / 4x students' widths and sizes, CenterHeatmapKD by hand (it reads the
CenterHead's batch_dict outputs only), and the KD configs pairing up with their students and building."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nuscenes_models import CFG_DIR, DATASET_CFG, load_cfg, stub_dataset, voxel_size_of
from easydict import EasyDict

from pcdet.models import build_network
from pcdet.models.kd.errors import KDConfigError
from pcdet.models.kd.losses import LOSSES, KDBatch, build_kd_losses

PP_WIDTHS = {  # VFE, scatter, BEV filters, upsample filters, shared conv, middle filter
    "cbgs_pp_multihead": ([64], 64, [64, 128, 256], [128, 128, 128], 64, 64),
    "cbgs_pp_multihead_2x": ([45], 45, [45, 91, 182], [91, 91, 91], 45, 45),
    "cbgs_pp_multihead_4x": ([32], 32, [32, 64, 128], [64, 64, 64], 32, 32),
}


def _build(cfg: EasyDict) -> torch.nn.Module:
    dataset = stub_dataset(cfg.CLASS_NAMES, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, voxel_size_of(cfg))
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_pointpillars_students_widths_and_sizes():
    sizes = {}
    for name, (vfe, bev, filters, ups, shared, middle) in PP_WIDTHS.items():
        cfg = load_cfg(f"{name}.yaml")
        model_cfg = cfg.MODEL
        assert model_cfg.VFE.NUM_FILTERS == vfe and model_cfg.MAP_TO_BEV.NUM_BEV_FEATURES == bev
        assert model_cfg.BACKBONE_2D.NUM_FILTERS == filters and model_cfg.BACKBONE_2D.NUM_UPSAMPLE_FILTERS == ups
        assert model_cfg.DENSE_HEAD.SHARED_CONV_NUM_FILTER == shared
        assert model_cfg.DENSE_HEAD.SEPARATE_REG_CONFIG.NUM_MIDDLE_FILTER == middle
        sizes[name] = _n_params(_build(cfg))
    # The paper's nuScenes student divides every width by 1.4 (about half the parameters); the 4x halves them.
    assert 1.8 < sizes["cbgs_pp_multihead"] / sizes["cbgs_pp_multihead_2x"] < 2.2
    assert 3.5 < sizes["cbgs_pp_multihead"] / sizes["cbgs_pp_multihead_4x"] < 4.2


def test_centerpoint_student_is_a_quarter():
    teacher = _build(load_cfg("cbgs_voxel0075_res3d_centerpoint.yaml"))
    student = _build(load_cfg("cbgs_voxel0075_res3d_centerpoint_4x.yaml"))
    assert 3.5 < _n_params(teacher) / _n_params(student) < 4.2
    assert student.backbone_3d.num_point_features == 64 and student.dense_head.shared_conv[0].out_channels == 32
    # Same tasks, map stride and heatmap layout as the teacher: what CenterHeatmapKD compares.
    assert student.dense_head.class_names_each_head == teacher.dense_head.class_names_each_head


# ---------------------------------------------------------------------------------------------- CenterHeatmapKD
def _preds(seed: int, requires_grad: bool = False) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for classes in (1, 2):
        maps = {name: torch.randn(2, ch, 4, 5, generator=gen) for name, ch in
                (("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2), ("vel", 2), ("hm", classes))}  # fmt: skip
        out.append({k: v.requires_grad_(requires_grad) for k, v in maps.items()})
    return out


def _kd_batch(student: list[dict], teacher: list[dict]) -> KDBatch:
    model = torch.nn.Module()
    return KDBatch({"center_head_preds": student}, {"center_head_preds": teacher}, model, model)


def _loss(options: dict):
    model = torch.nn.Module()
    return build_kd_losses([{"NAME": "CenterHeatmapKD", **options}], model, model)["CenterHeatmapKD"]


def test_center_heatmap_kd_equals_hand_computation():
    student, teacher = _preds(0, requires_grad=True), _preds(1)
    loss_fn = _loss({"TEMPERATURE": 2.0, "CLS_LOSS": "bce", "CLS_WEIGHT": 1.5, "REG_WEIGHT": 0.5})
    assert loss_fn.teacher_keys() == {"center_head_preds"} and "CenterHeatmapKD" in LOSSES
    value = loss_fn(_kd_batch(student, teacher))

    want_cls = want_reg = 0.0
    for s, t in zip(student, teacher):
        s_hm, t_hm = s["hm"].detach().double().numpy() / 2.0, t["hm"].double().numpy() / 2.0
        p_t, p_s = 1 / (1 + np.exp(-t_hm)), 1 / (1 + np.exp(-s_hm))
        want_cls += (-(p_t * np.log(p_s) + (1 - p_t) * np.log(1 - p_s))).mean() * 4.0
        weight = (1 / (1 + np.exp(-t["hm"].double().numpy()))).max(axis=1)
        diff = sum(np.abs(s[k].detach().double().numpy() - t[k].double().numpy()).sum(axis=1)
                   for k in ("center", "center_z", "dim", "rot", "vel"))  # fmt: skip
        want_reg += (diff * weight).sum() / weight.sum()
    assert value.item() == pytest.approx(1.5 * want_cls + 0.5 * want_reg, rel=1e-5)
    value.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for task in student for v in task.values())


def test_center_heatmap_kd_is_zero_on_identical_outputs_and_checks_layouts():
    teacher = _preds(3)
    same = [{k: v.clone() for k, v in task.items()} for task in teacher]
    assert _loss({"CLS_LOSS": "kl"})(_kd_batch(same, teacher)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(KDConfigError, match="tasks"):
        _loss({})(_kd_batch(same[:1], teacher))
    with pytest.raises(KDConfigError, match="heatmaps differ"):
        _loss({})(_kd_batch([same[0], same[0]], teacher))
    with pytest.raises(KDConfigError, match="no key"):
        _loss({"KEY": "spatial_features_2d"})(_kd_batch(same, teacher))
    with pytest.raises(KDConfigError, match="unknown option"):
        _loss({"HEADS": 2})


# ------------------------------------------------------------------------------------------------- KD configs
def test_kd_configs_pair_up_with_their_students():
    pairs = {
        "cbgs_pp_multihead_kd": ("cbgs_pp_multihead_2x", "cbgs_pp_multihead"),
        "cbgs_pp_multihead_kd_4x": ("cbgs_pp_multihead_4x", "cbgs_pp_multihead"),
        "cbgs_pp_multihead_kd_bev": ("cbgs_pp_multihead_2x", "cbgs_pp_multihead"),
        "cbgs_voxel0075_res3d_centerpoint_kd": (
            "cbgs_voxel0075_res3d_centerpoint_4x", "cbgs_voxel0075_res3d_centerpoint",
        ),
        "cbgs_pp_multihead_kd_synthetic": ("cbgs_pp_multihead_2x_synthetic", "cbgs_pp_multihead_synthetic"),
        "cbgs_voxel0075_res3d_centerpoint_kd_synthetic": (
            "cbgs_voxel0075_res3d_centerpoint_4x_synthetic", "cbgs_voxel0075_res3d_centerpoint_synthetic",
        ),
    }  # fmt: skip
    assert sorted(p.stem for p in CFG_DIR.glob("*_kd*.yaml")) == sorted(pairs)
    for name, (student_name, teacher_name) in pairs.items():
        cfg, student = load_cfg(f"{name}.yaml"), load_cfg(f"{student_name}.yaml")
        assert cfg.MODEL == student.MODEL and cfg.OPTIMIZATION == student.OPTIMIZATION
        assert cfg.DATA_CONFIG == student.DATA_CONFIG == load_cfg(f"{teacher_name}.yaml").DATA_CONFIG
        if name.endswith("_synthetic"):  # the same losses as the nuScenes twin, the same widths as its student
            twin = load_cfg(f"{name.removesuffix('_synthetic')}.yaml")
            assert cfg.KD.LOSSES == twin.KD.LOSSES
            for section in ("VFE", "MAP_TO_BEV", "BACKBONE_3D", "BACKBONE_2D"):
                assert cfg.MODEL.get(section) == twin.MODEL.get(section), (name, section)
            head, twin_head = cfg.MODEL.DENSE_HEAD, twin.MODEL.DENSE_HEAD
            assert {k: v for k, v in head.items() if k != "POST_PROCESSING"} == {
                k: v for k, v in twin_head.items() if k != "POST_PROCESSING"
            }
        assert cfg.KD.TEACHER.CFG_FILE == f"cfgs/nuscenes_models/{teacher_name}.yaml"
        epochs = load_cfg(f"{teacher_name}.yaml").OPTIMIZATION.NUM_EPOCHS
        assert (
            cfg.KD.TEACHER.CKPT
            == f"../output/nuscenes_models/{teacher_name}/default/ckpt/checkpoint_epoch_{epochs}.pth"
        )
    names = [t.NAME for t in load_cfg("cbgs_voxel0075_res3d_centerpoint_kd.yaml").KD.LOSSES]
    assert names == ["PointDistiller", "CenterHeatmapKD"]


@pytest.mark.skipif(not DATASET_CFG.is_file(), reason="the nuScenes dataset config does not exist yet")
def test_kd_configs_build_with_a_random_weight_teacher(tmp_path):
    from pcdet.models.kd import build_distiller
    from pcdet.models.kd.feature_matching import VoxelGrid
    from pcdet.utils.checkpoint_io import atomic_torch_save

    pairs = [("cbgs_pp_multihead_kd", "cbgs_pp_multihead"),
             ("cbgs_voxel0075_res3d_centerpoint_kd", "cbgs_voxel0075_res3d_centerpoint")]  # fmt: skip
    for name, teacher_name in pairs:
        cfg = load_cfg(f"{name}.yaml")
        geometry = VoxelGrid.from_data_config(cfg.DATA_CONFIG).network_geometry(
            cfg.CLASS_NAMES, type("Encoder", (), {"num_point_features": 5})()
        )
        path = tmp_path / f"{teacher_name}.pth"
        teacher = build_network(load_cfg(f"{teacher_name}.yaml").MODEL, len(cfg.CLASS_NAMES), geometry)
        atomic_torch_save({"model_state": teacher.state_dict()}, path)
        student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), geometry)
        distiller = build_distiller(cfg, student, geometry, teacher_ckpt=path)
        assert [t.NAME for t in cfg.KD.LOSSES] == [type(m).__name__ for m in distiller.kd_losses.values()]


@pytest.mark.skipif(not DATASET_CFG.is_file(), reason="the nuScenes dataset config does not exist yet")
@pytest.mark.parametrize(
    "kd_name, teacher_name, pcr, max_points",
    [
        ("cbgs_pp_multihead_kd", "cbgs_pp_multihead", [-6.4, -6.4, -5.0, 6.4, 6.4, 3.0], 20),
        ("cbgs_pp_multihead_kd_bev", "cbgs_pp_multihead", [-6.4, -6.4, -5.0, 6.4, 6.4, 3.0], 20),
        ("cbgs_voxel0075_res3d_centerpoint_kd", "cbgs_voxel0075_res3d_centerpoint", [-4.8, -4.8, -5, 4.8, 4.8, 3], 10),
    ],
)  # fmt: skip
def test_kd_training_step_on_a_tiny_range(tmp_path, kd_name, teacher_name, pcr, max_points):
    """The KD configs on a small range (teacher and student alike): one distilled step, every term finite, the
    student's gradients reached; the teacher's weights are random."""
    from _nuscenes_models import hand_batch

    from pcdet.config import cfg_from_yaml_file
    from pcdet.models import load_data_to_gpu
    from pcdet.models.kd import build_distiller
    from pcdet.models.kd.feature_matching import VoxelGrid
    from pcdet.utils.checkpoint_io import atomic_torch_save

    teacher_yaml = tmp_path / "teacher.yaml"
    teacher_yaml.write_text(f"_BASE_CONFIG_: {CFG_DIR / teacher_name}.yaml\nDATA_CONFIG:\n  POINT_CLOUD_RANGE: {pcr}\n")
    kd_yaml = tmp_path / "kd.yaml"
    kd_yaml.write_text(
        f"_BASE_CONFIG_: {CFG_DIR / kd_name}.yaml\nDATA_CONFIG:\n  POINT_CLOUD_RANGE: {pcr}\n"
        f"KD:\n  TEACHER:\n    CFG_FILE: {teacher_yaml}\n"
    )
    cfg = cfg_from_yaml_file(kd_yaml, EasyDict())
    grid = VoxelGrid.from_data_config(cfg.DATA_CONFIG)
    geometry = grid.network_geometry(cfg.CLASS_NAMES, type("Encoder", (), {"num_point_features": 5})())
    torch.manual_seed(0)
    teacher = build_network(cfg_from_yaml_file(teacher_yaml, EasyDict()).MODEL, 10, geometry)
    atomic_torch_save({"model_state": teacher.state_dict()}, tmp_path / "teacher.pth")
    student = build_network(cfg.MODEL, 10, geometry)
    distiller = build_distiller(cfg, student, geometry, teacher_ckpt=tmp_path / "teacher.pth")
    distiller.train()

    boxes = [
        np.array([[1.0, 0.5, -1.0, 4.5, 1.9, 1.6, 0.3, 2.0, 0.5, 1], [-2.5, -3.0, -1.2, 0.7, 0.7, 1.8, 1.2, 0, 0, 9]]),
        np.array([[2.0, -1.0, -0.5, 8.0, 2.6, 3.0, -0.4, -1.0, 0.0, 2]]),
    ]
    batch = load_data_to_gpu(hand_batch(pcr, grid.voxel_size, max_points, boxes), device="cpu")
    ret, tb, _ = distiller(batch)
    terms = [key for key in tb if key.startswith("kd/") and key.count("/") == 1 and key != "kd/loss_det"]
    assert terms == [f"kd/{t.get('TAG', t.NAME)}" for t in cfg.KD.LOSSES]
    assert all(np.isfinite(tb[key]) and tb[key] > 0 for key in terms)
    ret["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_synthetic_configs_keep_the_networks_on_a_cpu_sized_grid():
    """The synthetic twins change data, grid and BN momentum only (the CenterHead's limits follow the range)."""
    for name, grid in (("cbgs_pp_multihead", [256, 256, 1]), ("cbgs_voxel0075_res3d_centerpoint", [512, 512, 40])):
        cfg, base = load_cfg(f"{name}_synthetic.yaml"), load_cfg(f"{name}.yaml")
        assert cfg.DATA_CONFIG.DATA_PATH == "../data/synthetic_nuscenes" and cfg.DATA_CONFIG.VERSION == "v1.0-mini"
        dataset = stub_dataset(cfg.CLASS_NAMES, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, voxel_size_of(cfg))
        assert dataset.grid_size.tolist() == grid
        model_cfg = EasyDict({k: v for k, v in cfg.MODEL.items() if k != "BN_MOMENTUM"})
        if "POST_PROCESSING" in model_cfg.DENSE_HEAD:
            del model_cfg.DENSE_HEAD["POST_PROCESSING"]
            del base.MODEL.DENSE_HEAD["POST_PROCESSING"]
        assert model_cfg == base.MODEL and cfg.MODEL.BN_MOMENTUM == 0.1
