"""PointPillars (and SECOND) models: OpenPCDet's state-dict layout, strict loading of its checkpoints, forward
numerics of the pillar encoder and scatter against naive loops, a CPU training step, checkpoint round trips."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _model_stubs import read_keys_tsv, state_rows, stub_dataset  # noqa: F401  (read_keys_tsv, state_rows: used by other tests via this module)
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network, load_data_to_gpu, model_fn_decorator
from pcdet.models.backbones_2d.base_bev_backbone import BaseBEVBackbone
from pcdet.models.backbones_2d.map_to_bev.pointpillar_scatter import PointPillarScatter
from pcdet.models.backbones_3d.vfe.pillar_vfe import PillarVFE
from pcdet.models.detectors import StateDictMismatchError, load_state_dict_strict
from pcdet.utils.checkpoint_io import atomic_torch_save, safe_load

REPO = Path(__file__).resolve().parents[1]
CFG_DIR = REPO / "tools" / "cfgs" / "kitti_models"
SHARED = Path(__file__).resolve().parents[2] / "shared"
REF = SHARED / "reference" / "openpcdet"
needs_reference = pytest.mark.skipif(not REF.is_dir(), reason="shared OpenPCDet reference files not available")


def load_cfg(name: str) -> EasyDict:
    return cfg_from_yaml_file(CFG_DIR / name, EasyDict())


def fake_dataset(class_names, pcr, voxel) -> SimpleNamespace:
    """Exactly what build_network reads from a dataset (4 point features: x, y, z, intensity)."""
    return stub_dataset(class_names, pcr, voxel, num_point_features=4)


def voxelize(points: np.ndarray, pcr, voxel, max_points: int, max_voxels: int) -> dict:
    from spconv.pytorch.utils import PointToVoxel

    gen = PointToVoxel(
        vsize_xyz=list(voxel),
        coors_range_xyz=list(pcr),
        num_point_features=points.shape[1],
        max_num_voxels=max_voxels,
        max_num_points_per_voxel=max_points,
    )
    voxels, coords, num = gen(torch.from_numpy(points))
    return {"voxels": voxels.numpy(), "voxel_coords": coords.numpy(), "voxel_num_points": num.numpy()}


def batch_of(samples: list[dict], gt_boxes: list[np.ndarray] | None = None) -> dict:
    """Collate voxelised samples as the data loader does: coords get the sample index in front."""
    batch = {
        "voxels": np.concatenate([s["voxels"] for s in samples]),
        "voxel_num_points": np.concatenate([s["voxel_num_points"] for s in samples]),
        "voxel_coords": np.concatenate(
            [np.pad(s["voxel_coords"], ((0, 0), (1, 0)), constant_values=i) for i, s in enumerate(samples)]
        ),
        "batch_size": len(samples),
    }
    if gt_boxes is not None:
        m = max(len(g) for g in gt_boxes)
        padded = np.zeros((len(gt_boxes), m, 8), dtype=np.float32)
        for i, g in enumerate(gt_boxes):
            padded[i, : len(g)] = g
        batch["gt_boxes"] = padded
    return batch


# ------------------------------------------------------------------------------ full-size model vs OpenPCDet
@pytest.fixture(scope="module")
def full_pointpillar():
    cfg = load_cfg("pointpillar.yaml")
    dataset = fake_dataset(cfg.CLASS_NAMES, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, [0.16, 0.16, 4])
    assert dataset.grid_size.tolist() == [432, 496, 1]
    torch.manual_seed(0)
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset), cfg


@needs_reference
def test_state_dict_equals_openpcdet_keys_shapes_dtypes_and_order(full_pointpillar):
    model, _ = full_pointpillar
    assert state_rows(model) == read_keys_tsv(REF / "pointpillar.keys.tsv")
    summary = __import__("json").loads((REF / "summary.json").read_text())["pointpillar"]
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"]
    assert len(model.state_dict()) == summary["n_keys"]
    assert [type(m).__name__ for m in model.module_list] == summary["modules"]
    assert model.dense_head.num_anchors_per_location == summary["num_anchors_per_location"]


@needs_reference
def test_openpcdet_checkpoint_loads_strictly_and_eval_forward(full_pointpillar, tmp_path):
    model, cfg = full_pointpillar
    checkpoint = safe_load(REF / "pointpillar_random.pth")
    model.load_state_dict(checkpoint["model_state"], strict=True)
    model.load_params_strict(REF / "pointpillar_random.pth")
    for key, val in checkpoint["model_state"].items():
        assert torch.equal(model.state_dict()[key], val), key

    points = np.load(REF / "pp_points.npy").astype(np.float32)
    proc = cfg.DATA_CONFIG.DATA_PROCESSOR[-1]
    sample = voxelize(points, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, proc.VOXEL_SIZE, proc.MAX_POINTS_PER_VOXEL,
                      proc.MAX_NUMBER_OF_VOXELS["test"])  # fmt: skip
    batch = load_data_to_gpu(batch_of([sample]), device="cpu")
    model.eval()
    with torch.no_grad():
        pred_dicts, recall = model(batch)
    num_anchors = 248 * 216 * 6
    assert batch["pillar_features"].shape == (sample["voxels"].shape[0], 64)
    assert batch["spatial_features"].shape == (1, 64, 496, 432)
    assert batch["spatial_features_2d"].shape == (1, 384, 248, 216)
    assert batch["batch_cls_preds"].shape == (1, num_anchors, 3)
    assert batch["batch_box_preds"].shape == (1, num_anchors, 7)
    assert torch.isfinite(batch["batch_cls_preds"]).all() and torch.isfinite(batch["batch_box_preds"]).all()
    assert recall == {}  # no gt_boxes in the batch
    p = pred_dicts[0]
    assert p["pred_boxes"].shape[1] == 7 and p["pred_boxes"].shape[0] == p["pred_scores"].shape[0]
    assert (p["pred_scores"] >= 0.1).all()

    # Random weights rarely pass the 0.1 score threshold: post-process the same outputs with none.
    model.model_cfg.POST_PROCESSING.SCORE_THRESH = 0.0
    try:
        p = model.post_processing(batch)[0][0]
    finally:
        model.model_cfg.POST_PROCESSING.SCORE_THRESH = cfg.MODEL.POST_PROCESSING.SCORE_THRESH
    assert 0 < p["pred_boxes"].shape[0] <= 500
    assert set(p["pred_labels"].unique().tolist()) <= {1, 2, 3}
    assert (p["pred_scores"][:-1] >= p["pred_scores"][1:]).all()  # descending
    assert (p["pred_boxes"][:, 3:6] > 0).all() and torch.isfinite(p["pred_boxes"]).all()
    from pcdet.ops.iou3d_nms.iou3d_nms_utils import boxes_iou_bev

    iou = boxes_iou_bev(p["pred_boxes"], p["pred_boxes"])
    assert (iou - torch.eye(iou.shape[0])).max() <= 0.01  # NMS at 0.01 left no overlapping pair


# ---------------------------------------------------------------------------- pillar encoder and scatter
def random_pillars(rng, num_voxels=40, max_points=6, grid=(10, 8), batch_size=2):
    """Unique (b, z=0, y, x) pillars with 1..max_points real points each, padded slots zero."""
    cells = rng.choice(batch_size * grid[1] * grid[0], size=num_voxels, replace=False)
    b, rest = np.divmod(cells, grid[1] * grid[0])
    y, x = np.divmod(rest, grid[0])
    coords = np.stack([b, np.zeros_like(b), y, x], axis=1).astype(np.int64)
    num = rng.integers(1, max_points + 1, size=num_voxels)
    voxels = np.zeros((num_voxels, max_points, 4), dtype=np.float32)
    for v in range(num_voxels):
        voxels[v, : num[v]] = rng.normal(size=(num[v], 4))
    return torch.from_numpy(voxels), torch.from_numpy(num.astype(np.int32)), torch.from_numpy(coords)


def naive_decoration(voxels, num, coords, voxel, pcr, absolute=True, distance=False):
    out = []
    for v in range(voxels.shape[0]):
        n = int(num[v])
        pts = voxels[v, :n].double()
        mean = pts[:, :3].mean(dim=0)
        centre = torch.tensor([(int(coords[v, 3 - a]) + 0.5) * voxel[a] + pcr[a] for a in range(3)]).double()
        rows = []
        for p in range(voxels.shape[1]):
            width = (4 if absolute else 1) + 6 + int(distance)
            if p >= n:
                rows.append(torch.zeros(width, dtype=torch.float64))
                continue
            raw = pts[p] if absolute else pts[p, 3:]
            parts = [raw, pts[p, :3] - mean, pts[p, :3] - centre]
            if distance:
                parts.append(pts[p, :3].norm().view(1))
            rows.append(torch.cat(parts))
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("absolute,distance", [(True, False), (False, True)])
def test_pillar_decoration_equals_naive_loop(absolute, distance):
    rng = np.random.default_rng(0)
    voxels, num, coords = random_pillars(rng)
    voxel, pcr = [0.16, 0.2, 4.0], [0.0, -0.8, -3.0, 1.6, 0.8, 1.0]
    cfg = EasyDict(USE_NORM=True, WITH_DISTANCE=distance, USE_ABSLOTE_XYZ=absolute, NUM_FILTERS=[16])
    vfe = PillarVFE(cfg, num_point_features=4, voxel_size=voxel, point_cloud_range=pcr)
    got = vfe.decorate(voxels, num, coords)
    assert vfe.pfn_layers[0].linear.in_features == got.shape[-1]
    np.testing.assert_allclose(got.numpy(), naive_decoration(voxels, num, coords, voxel, pcr, absolute, distance),
                               atol=1e-5)  # fmt: skip


def test_pillar_vfe_forward_equals_naive_pointnet():
    rng = np.random.default_rng(1)
    voxels, num, coords = random_pillars(rng)
    voxel, pcr = [0.16, 0.16, 4.0], [0.0, -0.64, -3.0, 1.6, 0.64, 1.0]
    cfg = EasyDict(USE_NORM=True, WITH_DISTANCE=False, USE_ABSLOTE_XYZ=True, NUM_FILTERS=[16])
    vfe = PillarVFE(cfg, num_point_features=4, voxel_size=voxel, point_cloud_range=pcr).eval()
    layer = vfe.pfn_layers[0]
    assert layer.linear.bias is None and layer.norm.eps == 1e-3 and layer.norm.momentum == 0.01
    with torch.no_grad():
        layer.norm.running_mean.uniform_(-0.5, 0.5)
        layer.norm.running_var.uniform_(0.5, 2.0)
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
        out = vfe({"voxels": voxels, "voxel_num_points": num, "voxel_coords": coords})["pillar_features"]
    decorated = naive_decoration(voxels, num, coords, voxel, pcr)
    w = layer.linear.weight.double()
    bn = layer.norm
    expected = []
    for v in range(voxels.shape[0]):
        slots = []
        for p in range(voxels.shape[1]):  # padded slots too: OpenPCDet takes the max over all 32 slots
            x = decorated[v, p] @ w.T
            x = (x - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps)
            slots.append(torch.relu(x * bn.weight.double() + bn.bias.double()))
        expected.append(torch.stack(slots).max(dim=0)[0])
    np.testing.assert_allclose(out.numpy(), torch.stack(expected).detach().numpy(), atol=1e-5)


def test_two_layer_pfn_concatenates_pillar_max():
    cfg = EasyDict(USE_NORM=False, WITH_DISTANCE=False, USE_ABSLOTE_XYZ=True, NUM_FILTERS=[8, 6])
    vfe = PillarVFE(cfg, num_point_features=4, voxel_size=[1, 1, 4], point_cloud_range=[0, 0, -3, 4, 4, 1])
    first = vfe.pfn_layers[0]
    assert first.linear.out_features == 4 and first.linear.bias is not None  # half of 8, with bias when no norm
    x = torch.randn(5, 3, 10)
    y = first(x)
    assert y.shape == (5, 3, 8)
    torch.testing.assert_close(y[:, :, 4:], torch.relu(first.linear(x)).max(dim=1, keepdim=True)[0].expand(-1, 3, -1))
    assert vfe.get_output_feature_dim() == 6


def test_scatter_equals_naive_loop():
    rng = np.random.default_rng(2)
    nx, ny = 10, 8
    _, _, coords = random_pillars(rng, num_voxels=50, grid=(nx, ny), batch_size=3)
    features = torch.randn(50, 5)
    scatter = PointPillarScatter(EasyDict(NUM_BEV_FEATURES=5), grid_size=[nx, ny, 1])
    out = scatter({"pillar_features": features, "voxel_coords": coords, "batch_size": 3})["spatial_features"]
    expected = torch.zeros(3, 5, ny, nx)
    for v in range(50):
        b, _, y, x = coords[v].tolist()
        expected[b, :, y, x] = features[v]
    torch.testing.assert_close(out, expected)
    # A sample without pillars still gets its (empty) map.
    out = scatter({"pillar_features": features[:1], "voxel_coords": coords[:1] * 0, "batch_size": 2})
    assert out["spatial_features"].shape == (2, 5, ny, nx) and out["spatial_features"][1].abs().sum() == 0


def test_bev_backbone_layers_and_upsampling():
    cfg = EasyDict(LAYER_NUMS=[1, 1], LAYER_STRIDES=[2, 2], NUM_FILTERS=[4, 6], UPSAMPLE_STRIDES=[0.5, 1],
                   NUM_UPSAMPLE_FILTERS=[3])  # fmt: skip
    with pytest.raises(ValueError, match="one entry per level"):
        BaseBEVBackbone(cfg, input_channels=2)
    cfg.NUM_UPSAMPLE_FILTERS = [3, 5]
    net = BaseBEVBackbone(cfg, input_channels=2).eval()
    # A stride < 1 downsamples with a strided conv; 1 stays a (1x1) transposed conv.
    assert isinstance(net.deblocks[0][0], torch.nn.Conv2d) and net.deblocks[0][0].stride == (2, 2)
    assert isinstance(net.deblocks[1][0], torch.nn.ConvTranspose2d)
    x = torch.randn(1, 2, 16, 16)
    out = net({"spatial_features": x})
    assert out["spatial_features_2x"].shape == (1, 4, 8, 8) and out["spatial_features_4x"].shape == (1, 6, 4, 4)
    assert out["spatial_features_2d"].shape == (1, 8, 4, 4) and net.num_bev_features == 8
    # One stride more than levels: the concatenation is upsampled once more.
    cfg.UPSAMPLE_STRIDES = [0.5, 1, 2]
    assert BaseBEVBackbone(cfg, input_channels=2)({"spatial_features": x})["spatial_features_2d"].shape == (1, 8, 8, 8)
    # Level 0 by hand: zero pad 1, unpadded strided 3x3 conv, BN (eps 1e-3), ReLU, then conv (pad 1), BN, ReLU.
    block = net.blocks[0]

    def bn_relu(y, bn):
        return torch.relu(torch.nn.functional.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                                         eps=1e-3))  # fmt: skip

    y = bn_relu(torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), block[1].weight, stride=2),
                block[2])  # fmt: skip
    y = bn_relu(torch.nn.functional.conv2d(y, block[4].weight, padding=1), block[5])
    torch.testing.assert_close(out["spatial_features_2x"], y)


# ------------------------------------------------------------------------------------ training on a tiny grid
TINY_PCR = [0.0, -5.12, -3.0, 10.24, 5.12, 1.0]


def tiny_pointpillar(seed=0):
    """pointpillar.yaml with narrow layers on a 64 x 64 grid (state-dict layout unchanged, sizes smaller)."""
    cfg = load_cfg("pointpillar.yaml")
    cfg.MODEL.VFE.NUM_FILTERS = [16]
    cfg.MODEL.MAP_TO_BEV.NUM_BEV_FEATURES = 16
    cfg.MODEL.BACKBONE_2D.LAYER_NUMS = [1, 1, 1]
    cfg.MODEL.BACKBONE_2D.NUM_FILTERS = [16, 32, 32]
    cfg.MODEL.BACKBONE_2D.NUM_UPSAMPLE_FILTERS = [16, 16, 16]
    torch.manual_seed(seed)
    return build_network(cfg.MODEL, 3, fake_dataset(cfg.CLASS_NAMES, TINY_PCR, [0.16, 0.16, 4])), cfg


def tiny_scene(seed=0) -> dict:
    """Points sampled on the surfaces of three boxes plus background clutter; gt in LiDAR frame."""
    rng = np.random.default_rng(seed)
    gt = np.array([[4.0, 1.0, -0.9, 3.9, 1.6, 1.56, 0.3, 1], [7.0, -3.0, -0.8, 0.8, 0.6, 1.73, 1.2, 2],
                   [2.5, -2.5, -0.8, 1.76, 0.6, 1.73, -0.5, 3]], dtype=np.float32)  # fmt: skip
    pts = [np.column_stack([rng.uniform(TINY_PCR[0], TINY_PCR[3], 800), rng.uniform(TINY_PCR[1], TINY_PCR[4], 800),
                            np.full(800, -1.7), rng.uniform(0, 0.3, 800)])]  # fmt: skip
    for box in gt:
        local = rng.uniform(-0.5, 0.5, size=(150, 3)) * box[3:6]
        c, s = np.cos(box[6]), np.sin(box[6])
        xy = local[:, :2] @ np.array([[c, s], [-s, c]]) + box[:2]
        pts.append(np.column_stack([xy, local[:, 2] + box[2], rng.uniform(0.5, 1, 150)]))
    points = np.concatenate(pts).astype(np.float32)
    sample = voxelize(points, TINY_PCR, [0.16, 0.16, 4], 32, 16000)
    return batch_of([sample, sample], gt_boxes=[gt, gt[:2]])


def test_training_step_reaches_every_parameter_and_overfits():
    model, _ = tiny_pointpillar()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model_func = model_fn_decorator()
    losses = []
    for step in range(6):
        ret = model_func(model, tiny_scene())
        assert torch.isfinite(ret.loss)
        assert set(ret.tb_dict) >= {"loss_rpn", "rpn_loss_cls", "rpn_loss_loc", "rpn_loss_dir", "rpn_loss"}
        optimizer.zero_grad()
        ret.loss.backward()
        if step == 0:
            for name, param in model.named_parameters():
                assert param.grad is not None, f"no gradient reaches {name}"
                assert torch.isfinite(param.grad).all(), name
                assert param.grad.abs().sum() > 0, f"zero gradient for {name}"
        optimizer.step()
        losses.append(ret.loss.item())
    assert model.global_step.item() == 6
    assert losses[-1] < 0.6 * losses[0], losses


def test_load_data_to_gpu_types():
    batch = {
        "points": np.zeros((3, 5), np.float64),
        "voxel_coords": np.zeros((2, 4), np.int32),
        "image_shape": np.array([[375, 1242]]),
        "use_lead_xyz": np.array([True]),
        "frame_id": np.array(["000001"]),
        "calib": [object()],
        "batch_size": 1,
    }
    load_data_to_gpu(batch, device="cpu")
    assert batch["points"].dtype == torch.float32
    assert batch["voxel_coords"].dtype == torch.int64
    assert batch["image_shape"].dtype == torch.int32
    assert batch["use_lead_xyz"].dtype == torch.bool
    assert isinstance(batch["frame_id"], np.ndarray) and batch["batch_size"] == 1


# ---------------------------------------------------------------------------------------------- checkpoints
def test_load_params_with_optimizer_round_trip(tmp_path):
    model, _ = tiny_pointpillar(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.95, 0.85))
    model.train()
    ret = model_fn_decorator()(model, tiny_scene())
    ret.loss.backward()
    optimizer.step()
    opt_state = optimizer.state_dict()
    # OpenPCDet checkpoints carry numpy scalars in the optimizer state: they must load under weights_only.
    opt_state["param_groups"][0]["betas"] = (np.float64(0.95), np.float64(0.85))
    path = tmp_path / "checkpoint_epoch_3.pth"
    atomic_torch_save({"epoch": 3, "it": 123, "model_state": model.state_dict(), "optimizer_state": opt_state,
                       "version": "pcdet+test"}, path)  # fmt: skip

    other, _ = tiny_pointpillar(seed=1)
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    it, epoch = other.load_params_with_optimizer(str(path), to_cpu=True, optimizer=other_opt)
    assert (it, epoch) == (123, 3)
    for key, val in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], val), key
    loaded = other_opt.state_dict()
    assert float(loaded["param_groups"][0]["betas"][0]) == 0.95
    first = next(iter(optimizer.state_dict()["state"]))
    assert torch.equal(loaded["state"][first]["exp_avg"], optimizer.state_dict()["state"][first]["exp_avg"])

    # A different architecture must not load strictly; the error names the offending keys.
    narrow, _ = tiny_pointpillar()
    narrow_cfg = copy.deepcopy(narrow.model_cfg)
    narrow_cfg.BACKBONE_2D.NUM_UPSAMPLE_FILTERS = [8, 8, 8]
    narrow = build_network(narrow_cfg, 3, fake_dataset(["Car", "Pedestrian", "Cyclist"], TINY_PCR, [0.16, 0.16, 4]))
    with pytest.raises(StateDictMismatchError, match="shape mismatches.*backbone_2d.deblocks.0.0.weight"):
        narrow.load_params_with_optimizer(str(path), to_cpu=True)


def test_partial_load_logs_and_strict_helper_lists_problems(tmp_path, caplog):
    model, _ = tiny_pointpillar(seed=0)
    state = dict(model.state_dict())
    del state["dense_head.conv_cls.bias"]
    state["dense_head.conv_box.weight"] = torch.zeros(1, 2, 3, 4)
    state["some.unknown.key"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    atomic_torch_save({"model_state": state, "version": "pcdet+test"}, path)

    other, _ = tiny_pointpillar(seed=1)
    before = other.state_dict()["dense_head.conv_cls.bias"].clone()
    logger = logging.getLogger("pcdet.test_partial")
    with caplog.at_level(logging.INFO, logger="pcdet.test_partial"):
        other.load_params_from_file(str(path), logger=logger, to_cpu=True)
    total = len(model.state_dict())
    assert f"loaded {total - 2}/{total}" in caplog.text
    assert "dense_head.conv_box.weight" in caplog.text and "some.unknown.key" in caplog.text
    assert torch.equal(other.state_dict()["dense_head.conv_cls.bias"], before)  # kept its own value
    assert torch.equal(other.state_dict()["vfe.pfn_layers.0.linear.weight"], state["vfe.pfn_layers.0.linear.weight"])

    with pytest.raises(StateDictMismatchError) as info:
        load_state_dict_strict(other, state)
    message = str(info.value)
    for needle in ("1 missing keys: dense_head.conv_cls.bias", "1 unexpected keys: some.unknown.key",
                   "dense_head.conv_box.weight: checkpoint (1, 2, 3, 4)"):  # fmt: skip
        assert needle in message
    with pytest.raises(FileNotFoundError):
        other.load_params_from_file(str(tmp_path / "missing.pth"), logger=logger)


# ------------------------------------------------------------------------------------------------------ SECOND
@needs_reference
def test_second_state_dict_equals_openpcdet():
    cfg = load_cfg("second.yaml")
    dataset = fake_dataset(cfg.CLASS_NAMES, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, [0.05, 0.05, 0.1])
    summary = __import__("json").loads((REF / "summary.json").read_text())["second"]
    assert dataset.grid_size.tolist() == summary["grid_size"]
    model = build_network(cfg.MODEL, 3, dataset)
    assert state_rows(model) == read_keys_tsv(REF / "second.keys.tsv")
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"]
    assert [type(m).__name__ for m in model.module_list] == summary["modules"]


def test_second_tiny_forward_train_and_spconv1_weight_layout(tmp_path):
    cfg = load_cfg("second.yaml")
    pcr = [0.0, -3.2, -3.0, 6.4, 3.2, 1.0]  # 128 x 128 x 40 voxels -> 16 x 16 BEV
    dataset = fake_dataset(cfg.CLASS_NAMES, pcr, [0.05, 0.05, 0.1])
    cfg.MODEL.BACKBONE_2D.LAYER_NUMS = [1, 1]
    cfg.MODEL.BACKBONE_2D.NUM_FILTERS = [16, 16]
    cfg.MODEL.BACKBONE_2D.NUM_UPSAMPLE_FILTERS = [16, 16]
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, 3, dataset)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(0, 6.4, 3000), rng.uniform(-3.2, 3.2, 3000), rng.uniform(-2, 0, 3000),
                              rng.uniform(0, 1, 3000)]).astype(np.float32)  # fmt: skip
    sample = voxelize(points, pcr, [0.05, 0.05, 0.1], 5, 16000)
    gt = np.array([[3.0, 0.5, -1.0, 3.9, 1.6, 1.56, 0.2, 1]], dtype=np.float32)
    batch = batch_of([sample], gt_boxes=[gt])
    model.train()
    ret = model_fn_decorator()(model, batch)
    assert batch["spatial_features"].shape == (1, 256, 16, 16)
    assert torch.isfinite(ret.loss)
    ret.loss.backward()
    assert model.backbone_3d.conv_input[0].weight.grad.abs().sum() > 0

    # spconv 1.x checkpoints stored sparse-conv weights as (kD, kH, kW, in, out): converted on load.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old_layout = dict(state)
    old_layout["backbone_3d.conv_input.0.weight"] = state["backbone_3d.conv_input.0.weight"].permute(1, 2, 3, 4, 0)
    path = tmp_path / "spconv1.pth"
    atomic_torch_save({"model_state": old_layout}, path)
    with torch.no_grad():
        model.backbone_3d.conv_input[0].weight.zero_()
    model.load_params_strict(str(path))
    assert torch.equal(model.backbone_3d.conv_input[0].weight, state["backbone_3d.conv_input.0.weight"])


def test_bn_momentum_option_sets_every_batchnorm_and_keeps_the_state_dict():
    default, cfg = tiny_pointpillar()
    norms = [m for m in default.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.01 for m in norms)  # OpenPCDet's layers
    cfg.MODEL.BN_MOMENTUM = 0.1
    fast = build_network(cfg.MODEL, 3, fake_dataset(cfg.CLASS_NAMES, TINY_PCR, [0.16, 0.16, 4]))
    assert all(m.momentum == 0.1 for m in fast.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in default.state_dict().items()}
    assert load_cfg("pointpillar_synthetic.yaml").MODEL.BN_MOMENTUM == 0.1
