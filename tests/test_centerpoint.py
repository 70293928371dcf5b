"""CenterPoint (cbgs_voxel0075_res3d_centerpoint.yaml): OpenPCDet's state-dict layout, the gaussian targets and
circle NMS against naive loops, the head's targets on a hand-made scene and its loss by hand, and a training
step / eval forward of the whole detector on a tiny batch (on every device of the ``device`` fixture)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _nuscenes_models import REF, hand_batch, load_cfg, read_keys_tsv, state_rows, stub_dataset, voxel_size_of
from easydict import EasyDict

from pcdet.models import build_network, load_data_to_gpu
from pcdet.models.dense_heads.center_head import CenterHead
from pcdet.models.model_utils import centernet_utils

CFG = "cbgs_voxel0075_res3d_centerpoint.yaml"
needs_reference = pytest.mark.skipif(not REF.is_dir(), reason="shared OpenPCDet reference files not available")


@needs_reference
def test_state_dict_equals_openpcdet():
    cfg = load_cfg(CFG)
    dataset = stub_dataset(cfg.CLASS_NAMES, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, voxel_size_of(cfg))
    summary = json.loads((REF / "summary.json").read_text())["cbgs_voxel0075_res3d_centerpoint"]
    assert dataset.grid_size.tolist() == summary["grid_size"]
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    assert state_rows(model) == read_keys_tsv(REF / "cbgs_voxel0075_res3d_centerpoint.keys.tsv")
    assert len(model.state_dict()) == summary["n_keys"] == 558
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"]
    assert [type(m).__name__ for m in model.module_list] == summary["modules"]


# ------------------------------------------------------------------------------------------- gaussian targets
@pytest.mark.parametrize("overlap", [0.1, 0.5, 0.7])
def test_gaussian_radius_is_cornernets_formula(overlap):
    """Each case's value is ``a`` times the larger root of ``a r² − b r + c`` (numpy's roots), the smallest wins."""
    sizes = [(1.0, 1.0), (3.5, 1.2), (12.0, 4.0), (0.6, 7.3)]
    height = torch.tensor([h for h, _ in sizes], dtype=torch.float64)
    width = torch.tensor([w for _, w in sizes], dtype=torch.float64)
    got = centernet_utils.gaussian_radius(height, width, min_overlap=overlap)
    for i, (h, w) in enumerate(sizes):
        cases = [
            (1.0, h + w, w * h * (1 - overlap) / (1 + overlap)),
            (4.0, 2 * (h + w), (1 - overlap) * w * h),
            (4 * overlap, -2 * overlap * (h + w), (overlap - 1) * w * h),
        ]
        want = min(a * max(np.roots([a, -b, c]).real) for a, b, c in cases)
        assert got[i].item() == pytest.approx(want, rel=1e-9)


def test_heatmap_drawing_equals_naive_loop():
    height, width = 13, 17
    objects = [((4.7, 6.2), 2), ((0.3, 0.9), 3), ((16.6, 12.1), 4), ((8.0, 7.5), 1), ((9.2, 7.9), 2)]
    heatmap = torch.zeros(height, width)
    for center, radius in objects:
        centernet_utils.draw_gaussian_to_heatmap(heatmap, center, radius)

    naive = np.zeros((height, width))
    for (cx, cy), r in objects:
        cx, cy, sigma = int(cx), int(cy), (2 * r + 1) / 6
        for y in range(height):
            for x in range(width):
                if abs(x - cx) <= r and abs(y - cy) <= r:
                    value = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
                    naive[y, x] = max(naive[y, x], value)
    np.testing.assert_allclose(heatmap.numpy(), naive, rtol=1e-6, atol=1e-7)


def _head_cfg(nms: dict | None = None) -> EasyDict:
    return EasyDict(
        {
            "NAME": "CenterHead",
            "CLASS_NAMES_EACH_HEAD": [["car"], ["pedestrian", "traffic_cone"]],
            "SHARED_CONV_CHANNEL": 8,
            "USE_BIAS_BEFORE_NORM": True,
            "NUM_HM_CONV": 2,
            "SEPARATE_HEAD_CFG": {
                "HEAD_ORDER": ["center", "center_z", "dim", "rot", "vel"],
                "HEAD_DICT": {
                    "center": {"out_channels": 2, "num_conv": 2},
                    "center_z": {"out_channels": 1, "num_conv": 2},
                    "dim": {"out_channels": 3, "num_conv": 2},
                    "rot": {"out_channels": 2, "num_conv": 2},
                    "vel": {"out_channels": 2, "num_conv": 2},
                },
            },
            "TARGET_ASSIGNER_CONFIG": {
                "FEATURE_MAP_STRIDE": 8, "NUM_MAX_OBJS": 4, "GAUSSIAN_OVERLAP": 0.1, "MIN_RADIUS": 2,
            },
            "LOSS_CONFIG": {
                "LOSS_WEIGHTS": {
                    "cls_weight": 1.0, "loc_weight": 0.25,
                    "code_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 1.0, 1.0],
                }
            },
            "POST_PROCESSING": {
                "SCORE_THRESH": 0.1, "POST_CENTER_LIMIT_RANGE": [-5, -5, -10, 20, 20, 10], "MAX_OBJ_PER_SAMPLE": 50,
                "NMS_CONFIG": nms or {"NMS_TYPE": "nms_gpu", "NMS_THRESH": 0.2, "NMS_PRE_MAXSIZE": 100,
                                      "NMS_POST_MAXSIZE": 20},
            },
        }
    )  # fmt: skip


CLASSES3 = ["car", "pedestrian", "traffic_cone"]
# 0.1 m voxels, stride 8: 0.8 m cells, a 16 x 16 map over 12.8 m.
PCR, VOXEL = [0.0, 0.0, -5.0, 12.8, 12.8, 3.0], [0.1, 0.1, 0.2]


def _small_head(nms: dict | None = None) -> CenterHead:
    torch.manual_seed(0)
    return CenterHead(_head_cfg(nms), 16, 3, CLASSES3, np.array([128, 128, 40]), np.array(PCR), np.array(VOXEL))


def test_center_targets_on_a_hand_made_scene():
    head = _small_head()
    car = [4.2, 6.5, -0.7, 4.5, 1.9, 1.6, 0.4, 3.0, -1.5, 1]  # cell (5.25, 8.125) -> (5, 8), offset (.25, .125)
    cone = [10.0, 1.0, -1.2, 0.4, 0.4, 1.0, -2.0, 0.0, 0.0, 3]  # cell (12.5, 1.25) -> (12, 1)
    gt = torch.tensor([[car, cone, [0.0] * 10]])  # a padding row
    targets = head.assign_targets(gt, feature_map_size=(16, 16))

    heat_car, heat_other = targets["heatmaps"]
    assert heat_car.shape == (1, 1, 16, 16) and heat_other.shape == (1, 2, 16, 16)
    assert heat_car[0, 0, 8, 5] == 1.0 and heat_car.max() == 1.0
    assert (heat_car[0, 0] == 1.0).sum() == 1
    assert heat_car[0, 0, 8, 6] < 1.0 and heat_car[0, 0, 8, 6] > 0.3  # the neighbour is on the gaussian's flank
    # The cone is the second class of its head (pedestrian, traffic_cone); no pedestrian.
    assert heat_other[0, 1, 1, 12] == 1.0 and heat_other[0, 0].max() == 0.0

    car_t = targets["target_boxes"][0][0, 0]
    want = [0.25, 0.125, -0.7, math.log(4.5), math.log(1.9), math.log(1.6), math.cos(0.4), math.sin(0.4), 3.0, -1.5]
    np.testing.assert_allclose(car_t.numpy(), want, rtol=1e-5, atol=1e-5)
    assert targets["inds"][0][0].tolist() == [8 * 16 + 5, 0, 0, 0]
    assert targets["masks"][0][0].tolist() == [1, 0, 0, 0]
    cone_t = targets["target_boxes"][1][0, 0]
    np.testing.assert_allclose(cone_t[:2].numpy(), [0.5, 0.25], atol=1e-5)
    np.testing.assert_allclose(cone_t[6:8].numpy(), [math.cos(-2.0), math.sin(-2.0)], atol=1e-6)
    assert targets["inds"][1][0, 0] == 1 * 16 + 12 and targets["masks"][1][0].tolist() == [1, 0, 0, 0]


def test_head_loss_equals_hand_computation():
    """One positive cell per head: focal loss of the clamped sigmoid + 0.25 · Σ code_weight · |pred − target|."""
    head = _small_head()
    gt = torch.tensor([[[4.2, 6.5, -0.7, 4.5, 1.9, 1.6, 0.4, 3.0, -1.5, 1]]])
    targets = head.assign_targets(gt, feature_map_size=(16, 16))
    torch.manual_seed(1)
    preds = [
        {name: torch.randn(1, ch, 16, 16) for name, ch in (("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2),
                                                               ("vel", 2), ("hm", c))}
        for c in (1, 2)
    ]  # fmt: skip
    head.forward_ret_dict = {"pred_dicts": preds, "target_dicts": targets}
    loss, tb = head.get_loss()

    code_weights = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 1.0, 1.0])
    want = 0.0
    for idx, p in enumerate(preds):
        prob = np.clip(1 / (1 + np.exp(-p["hm"].double().numpy())), 1e-4, 1 - 1e-4)
        gt_map = targets["heatmaps"][idx].double().numpy()
        pos = gt_map == 1
        focal = -(np.log(prob) * (1 - prob) ** 2 * pos).sum()
        focal -= (np.log(1 - prob) * prob**2 * (1 - gt_map) ** 4 * ~pos).sum()
        want += focal / max(pos.sum(), 1)
        if idx == 0:  # the car at cell (y 8, x 5); the other head has no object: no regression term
            codes = np.concatenate([p[n][0, :, 8, 5].numpy() for n in ("center", "center_z", "dim", "rot", "vel")])
            residual = np.abs(codes - targets["target_boxes"][0][0, 0].numpy())
            want += 0.25 * (code_weights * residual).sum()
    assert loss.item() == pytest.approx(want, rel=1e-4)
    assert set(tb) == {"hm_loss_head_0", "loc_loss_head_0", "hm_loss_head_1", "loc_loss_head_1", "rpn_loss"}


# ------------------------------------------------------------------------------------------ decoding and NMS
def test_circle_nms_equals_naive_loop():
    rng = np.random.default_rng(3)
    centers = torch.from_numpy(rng.uniform(0, 10, size=(200, 2)))
    scores = torch.from_numpy(rng.uniform(0, 1, size=200))
    for thresh, post in ((0.5, None), (2.0, 30), (4.0, None)):
        keep = centernet_utils.circle_nms(centers, scores, thresh, post_max_size=post).tolist()
        naive: list[int] = []
        for i in sorted(range(200), key=lambda j: -scores[j].item()):
            if all(((centers[i] - centers[k]) ** 2).sum().item() > thresh for k in naive):
                naive.append(i)
        assert keep == naive[:post]


def test_decode_round_trip_of_targets():
    """Maps holding the targets at the object cells (and a peak there) decode to the gt boxes."""
    head = _small_head()
    car = [4.2, 6.5, -0.7, 4.5, 1.9, 1.6, 0.4, 3.0, -1.5, 1]
    targets = head.assign_targets(torch.tensor([[car]]), feature_map_size=(16, 16))
    code = targets["target_boxes"][0][0, 0]
    maps = {name: torch.zeros(1, ch, 16, 16) for name, ch in (("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2),
                                                                 ("vel", 2))}  # fmt: skip
    for name, part in zip(maps, torch.split(code, [2, 1, 3, 2, 2])):
        maps[name][0, :, 8, 5] = part
    decoded = centernet_utils.decode_bbox_from_heatmap(
        heatmap=targets["heatmaps"][0], rot_cos=maps["rot"][:, 0:1], rot_sin=maps["rot"][:, 1:2],
        center=maps["center"], center_z=maps["center_z"], dim=maps["dim"].exp(), vel=maps["vel"],
        point_cloud_range=PCR, voxel_size=VOXEL, feature_map_stride=8, K=1,
    )  # fmt: skip
    np.testing.assert_allclose(decoded[0]["pred_boxes"][0].numpy(), car[:9], rtol=1e-5, atol=1e-5)
    assert decoded[0]["pred_labels"].tolist() == [0] and decoded[0]["pred_scores"].tolist() == [1.0]


@pytest.mark.parametrize(
    "nms",
    [
        None,
        {"NMS_TYPE": "class_specific_nms", "NMS_THRESH": [0.2, 0.2, 0.1], "NMS_PRE_MAXSIZE": 100,
         "NMS_POST_MAXSIZE": [20, 10, 10]},
        {"NMS_TYPE": "circle_nms", "MIN_RADIUS": [4.0, 0.175], "NMS_POST_MAXSIZE": 20},
    ],
)  # fmt: skip
def test_eval_boxes_per_nms_type_have_global_labels(nms):
    head = _small_head(nms).eval()
    out = head({"spatial_features_2d": torch.randn(2, 16, 16, 16), "batch_size": 2})
    assert out["center_head_preds"][1]["hm"].shape == (2, 2, 16, 16)
    for pred in out["final_box_dicts"]:
        assert pred["pred_boxes"].shape[1] == 9 and pred["pred_boxes"].shape[0] == pred["pred_scores"].shape[0]
        assert set(pred["pred_labels"].tolist()) <= {1, 2, 3} and (pred["pred_scores"] > 0.1).all()


# ------------------------------------------------------------------------------------------- whole detector
def tiny_centerpoint() -> tuple[torch.nn.Module, list[float], list[float]]:
    """The config's network (full widths) on a 9.6 x 9.6 m range: 128 x 128 x 40 voxels, a 16 x 16 BEV map."""
    cfg = load_cfg(CFG)
    pcr, voxel = [-4.8, -4.8, -5.0, 4.8, 4.8, 3.0], voxel_size_of(cfg)
    cfg.MODEL.DENSE_HEAD.POST_PROCESSING.POST_CENTER_LIMIT_RANGE = [-6, -6, -10, 6, 6, 10]
    torch.manual_seed(0)
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), stub_dataset(cfg.CLASS_NAMES, pcr, voxel)), pcr, voxel


def test_training_step_and_eval_forward(device):
    model, pcr, voxel = tiny_centerpoint()
    model.to(device)
    boxes = [
        np.array([[1.0, 0.5, -1.0, 4.5, 1.9, 1.6, 0.3, 2.0, 0.5, 1], [-2.5, -3.0, -1.2, 0.7, 0.7, 1.8, 1.2, 0, 0, 9]]),
        np.array([[2.0, -1.0, -0.5, 8.0, 2.6, 3.0, -0.4, -1.0, 0.0, 2]]),
    ]
    batch = load_data_to_gpu(hand_batch(pcr, voxel, 10, boxes), device=device)
    model.train()
    ret, tb, _ = model(batch)
    assert batch["spatial_features"].shape == (2, 256, 16, 16)
    assert batch["spatial_features_2d"].shape == (2, 512, 16, 16)
    assert torch.isfinite(ret["loss"]) and tb["hm_loss_head_1"] > 0
    ret["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.backbone_3d.conv1[0].conv1.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        preds, recall = model(load_data_to_gpu(hand_batch(pcr, voxel, 10, boxes, seed=1), device=device))
    assert len(preds) == 2 and recall["gt"] == 3
    for pred in preds:
        assert pred["pred_boxes"].device.type == device.type and pred["pred_boxes"].shape[1] == 9
        assert ((pred["pred_labels"] >= 1) & (pred["pred_labels"] <= 10)).all()


def test_residual_conv_bias_is_added_in_eval_on_cpu():
    """spconv's CPU kernels cannot fuse a bias in eval mode: SubMConv3dBias adds it after, equal to training mode."""
    from pcdet.utils.spconv_utils import SubMConv3dBias, spconv_pytorch

    torch.manual_seed(0)
    conv = SubMConv3dBias(4, 6, 3, padding=1, bias=True, indice_key="k")
    torch.nn.init.uniform_(conv.bias, 0.5, 1.0)
    coords = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4], [0, 2, 3, 3], [0, 5, 5, 5]], dtype=torch.int32)
    features = torch.randn(4, 4)

    def run(train: bool) -> torch.Tensor:
        conv.train(train)
        return conv(spconv_pytorch.SparseConvTensor(features, coords, [8, 8, 8], 1)).features

    with torch.no_grad():
        torch.testing.assert_close(run(False), run(True))
        assert not torch.allclose(run(False), run(True) - conv.bias)
