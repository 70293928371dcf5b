"""PointRCNN: OpenPCDet's state-dict layout, RoIPointPool3d and the point-head targets against naive loops, the
proposal target layer's sampling counts, and bad input (too few points, empty RoIs, no proposals, no objects)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network
from pcdet.models.backbones_3d.pointnet2_backbone import split_points_by_sample
from pcdet.models.roi_heads.target_assigner.proposal_target_layer import ProposalTargetLayer
from pcdet.ops.iou3d_nms.iou3d_nms_utils import boxes_iou_bev
from pcdet.ops.roipoint_pool3d.roipoint_pool3d_utils import RoIPointPool3d
from pcdet.utils.checkpoint_io import atomic_torch_save

CFG_DIR = Path(__file__).resolve().parents[1] / "tools" / "cfgs" / "kitti_models"
REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openpcdet"
needs_reference = pytest.mark.skipif(not REF.is_dir(), reason="shared OpenPCDet reference files not available")

# pointrcnn.yaml narrowed (every width a handful of channels, few centres and RoIs): a forward in well under 1 s.
NARROW = {
    "BACKBONE_3D": {
        "SA_CONFIG": {
            "NPOINTS": [64, 32, 16, 8],
            "RADIUS": [[0.5, 1.0], [1.0, 2.0], [2.0, 4.0], [4.0, 8.0]],
            "NSAMPLE": [[8, 16], [8, 16], [8, 16], [8, 16]],
            "MLPS": [[[8], [8]], [[8], [8]], [[8], [8]], [[8], [8]]],
        },
        "FP_MLPS": [[16], [16], [16], [16]],
    },
    "POINT_HEAD": {"CLS_FC": [16], "REG_FC": [16]},
    "ROI_HEAD": {
        "ROI_POINT_POOL": {"NUM_SAMPLED_POINTS": 32},
        "XYZ_UP_LAYER": [16, 16],
        "CLS_FC": [16],
        "REG_FC": [16],
        "SA_CONFIG": {"NPOINTS": [16, 4, -1], "MLPS": [[16], [16], [16]]},
        "NMS_CONFIG": {"TRAIN": {"NMS_POST_MAXSIZE": 64}, "TEST": {"NMS_POST_MAXSIZE": 20}},
        "TARGET_CONFIG": {"ROI_PER_IMAGE": 16},
    },
}


def _merge(cfg: EasyDict, override: dict) -> None:
    for key, val in override.items():
        if isinstance(val, dict):
            _merge(cfg[key], val)
        else:
            cfg[key] = val


def load_cfg(name: str = "pointrcnn") -> EasyDict:
    return cfg_from_yaml_file(CFG_DIR / f"{name}.yaml", EasyDict())


def fake_dataset(cfg: EasyDict) -> SimpleNamespace:
    return SimpleNamespace(
        class_names=list(cfg.CLASS_NAMES),
        point_cloud_range=np.asarray(cfg.DATA_CONFIG.POINT_CLOUD_RANGE, dtype=np.float32),
        voxel_size=None,
        grid_size=None,
        point_feature_encoder=SimpleNamespace(num_point_features=4),
        depth_downsample_factor=None,
    )


def narrow_model(**overrides) -> torch.nn.Module:
    cfg = load_cfg()
    _merge(cfg.MODEL, NARROW)
    _merge(cfg.MODEL, overrides)
    torch.manual_seed(0)
    return build_network(cfg.MODEL, 3, fake_dataset(cfg))


GT = np.array([[10.0, 0.0, -1.0, 3.9, 1.6, 1.56, 0.3, 1], [15.0, 3.0, -1.0, 0.8, 0.6, 1.73, 0.0, 2]], np.float32)


def scene(num_points: int, batch_size: int = 2, seed: int = 0, gt: np.ndarray = GT) -> dict:
    """Points half uniform over 40 x 40 m, half around the first gt box; gt padded with a zero row (collate)."""
    rng = np.random.default_rng(seed)
    parts = []
    for b in range(batch_size):
        half = num_points // 2
        xyz = np.concatenate([rng.uniform([0, -20, -3], [40, 20, 1], (half, 3)),
                              rng.normal([10, 0, -1], [1.2, 0.5, 0.4], (num_points - half, 3))])  # fmt: skip
        parts.append(np.column_stack([np.full(num_points, b), xyz, rng.uniform(0, 1, num_points)]))
    boxes = np.concatenate([gt, np.zeros((1, 8), np.float32)])[None].repeat(batch_size, 0)
    return {
        "points": torch.tensor(np.concatenate(parts), dtype=torch.float32),
        "batch_size": batch_size,
        "gt_boxes": torch.tensor(boxes),
    }


# ---------------------------------------------------------------------------------------------- state dict
def _state_rows(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]


def _read_keys_tsv(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(",")) if shape else (), dtype))
    return rows


@needs_reference
@pytest.mark.parametrize("name", ["pointrcnn", "pointrcnn_synthetic"])
def test_state_dict_equals_openpcdet(name):
    cfg = load_cfg(name)
    model = build_network(cfg.MODEL, 3, fake_dataset(cfg))
    summary = json.loads((REF / "summary.json").read_text())["pointrcnn"]
    rows = _state_rows(model)
    assert rows == _read_keys_tsv(REF / "pointrcnn.keys.tsv")
    assert len(rows) == summary["n_keys"] == 309
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"] == 4_038_819
    assert [type(m).__name__ for m in model.module_list] == summary["modules"]
    assert (model.vfe, model.backbone_2d, model.dense_head) == (None, None, None)


# ------------------------------------------------------------------------------------------- RoIPointPool3d
def naive_roipoint_pool(points, features, boxes, num_sampled, extra_width):
    """Per RoI, per point, in float64: the first ``num_sampled`` points inside the enlarged box, repeated."""
    batch, num_boxes = boxes.shape[:2]
    pooled = np.zeros((batch, num_boxes, num_sampled, 3 + features.shape[-1]))
    empty = np.zeros((batch, num_boxes), dtype=np.int32)
    for b in range(batch):
        for m in range(num_boxes):
            x, y, z, dx, dy, dz, h = boxes[b, m].astype(np.float64)
            dx, dy, dz = dx + extra_width[0], dy + extra_width[1], dz + extra_width[2]
            inside = []
            for n, (px, py, pz) in enumerate(points[b].astype(np.float64)):
                lx = (px - x) * np.cos(h) + (py - y) * np.sin(h)
                ly = -(px - x) * np.sin(h) + (py - y) * np.cos(h)
                if abs(lx) <= dx / 2 and abs(ly) <= dy / 2 and abs(pz - z) <= dz / 2:
                    inside.append(n)
                if len(inside) == num_sampled:
                    break
            if not inside:
                empty[b, m] = 1
                continue
            for k in range(num_sampled):
                n = inside[k % len(inside)]
                pooled[b, m, k] = np.concatenate([points[b, n], features[b, n]])
    return pooled, empty


def test_roipoint_pool3d_equals_a_per_roi_loop(device):
    rng = np.random.default_rng(1)
    points = rng.uniform([-5, -5, -2], [5, 5, 2], (2, 300, 3)).astype(np.float32)
    features = rng.normal(size=(2, 300, 4)).astype(np.float32)
    boxes = np.array([[[0, 0, 0, 4, 3, 2, 0.4],        # many points: the first 16 in index order
                       [2, -2, 0.5, 1.5, 1, 1, -1.2],  # a few: repeated cyclically
                       [30, 30, 0, 2, 2, 2, 0],        # none: empty flag, zeros
                       [0, 0, 0, 0, 0, 0, 0]],         # a padding RoI: nothing inside a zero-size box
                      [[-3, 3, -1, 2, 2, 1, 2.5], [1, 1, 1, 6, 0.5, 3, 0.9],
                       [0, 0, 0, 0.3, 0.3, 0.3, 0], [-4, -4, 0, 1, 1, 1, 0]]], np.float32)  # fmt: skip
    for extra in ([0.0, 0.0, 0.0], [0.5, 1.0, 0.2]):
        pool = RoIPointPool3d(num_sampled_points=16, pool_extra_width=extra)
        got, empty = pool(*(torch.from_numpy(a).to(device) for a in (points, features, boxes)))
        want, want_empty = naive_roipoint_pool(points, features, boxes, 16, extra)
        assert got.shape == (2, 4, 16, 7) and got.device.type == device.type
        np.testing.assert_array_equal(empty.cpu().numpy(), want_empty)
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=0)
    assert want_empty[0].tolist() == [0, 0, 1, 1] and 0 < want_empty.sum() < 8


def test_roipoint_pool3d_scalar_width_and_bad_shapes():
    pool = RoIPointPool3d(num_sampled_points=4)  # OpenPCDet's default extra width 1.0 on each size
    assert pool.pool_extra_width == [1.0, 1.0, 1.0]
    points = torch.zeros(1, 5, 3)
    out, empty = pool(points, torch.ones(1, 5, 2), torch.tensor([[[0.0, 0, 0, 0.1, 0.1, 0.1, 0]]]))
    assert empty.tolist() == [[0]] and out.shape == (1, 1, 4, 5) and out[..., 3:].eq(1).all()
    with pytest.raises(ValueError, match="boxes3d must be"):
        pool(points, torch.ones(1, 5, 2), torch.zeros(2, 1, 7))
    with pytest.raises(ValueError, match="point_features"):
        pool(points, torch.ones(1, 4, 2), torch.zeros(1, 1, 7))


# -------------------------------------------------------------------------------------- point-head targets
def test_point_head_targets_equal_a_naive_loop():
    model = narrow_model()
    head = model.point_head
    batch = scene(400)
    coords = torch.cat([batch["points"][:, 0:1], batch["points"][:, 1:4]], dim=1)
    extend = head.enlarged_gt_boxes(batch["gt_boxes"], [0.2, 0.2, 0.2])
    targets = head.assign_stack_targets(coords, batch["gt_boxes"], extend, set_ignore_flag=True, ret_box_labels=True)

    def inside(p, box):
        x, y, z, dx, dy, dz, h = box[:7]
        lx = (p[0] - x) * np.cos(h) + (p[1] - y) * np.sin(h)
        ly = -(p[0] - x) * np.sin(h) + (p[1] - y) * np.cos(h)
        return abs(lx) <= dx / 2 and abs(ly) <= dy / 2 and abs(p[2] - z) <= dz / 2

    labels = targets["point_cls_labels"].numpy()
    for n, p in enumerate(coords[:, 1:4].double().numpy()):
        in_gt = [k for k, box in enumerate(GT.astype(np.float64)) if inside(p, box)]
        in_ext = [k for k, box in enumerate(GT.astype(np.float64)) if inside(p, box + [0, 0, 0, 0.2, 0.2, 0.2, 0, 0])]
        want = int(GT[in_gt[0], 7]) if in_gt else (-1 if in_ext else 0)
        assert labels[n] == want
    fg = labels > 0
    assert 50 < fg.sum() < 400 and (labels == -1).any()
    boxes = head.box_coder.decode_torch(targets["point_box_labels"][fg], coords[fg, 1:4], torch.from_numpy(labels[fg]))
    torch.testing.assert_close(boxes, torch.from_numpy(GT[labels[fg] - 1, :7]), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------- proposal target layer
TARGET_CFG = EasyDict(load_cfg().MODEL.ROI_HEAD.TARGET_CONFIG)


def _shifted_rois(gt_box: np.ndarray, ious: list[float]) -> np.ndarray:
    """Copies of ``gt_box`` shifted along its length so that their 3D IoU is each of ``ious``:
    IoU = (l - d) / (l + d) -> d = l (1 - iou) / (1 + iou); IoU 0 -> 100 m away."""
    rois = np.repeat(gt_box[None, :7], len(ious), axis=0).astype(np.float32)
    length = gt_box[3]
    for i, iou in enumerate(ious):
        rois[i, 0] += length * (1 - iou) / (1 + iou) if iou > 0 else 100.0
    return rois


@pytest.mark.parametrize(
    "n_fg, n_hard, n_easy, want",
    [
        (10, 50, 100, (10, 17, 5)),  # fewer fg than 16: all of them; bg 22 = int(22 * 0.8) hard + 5 easy
        (40, 50, 100, (16, 12, 4)),  # fg capped at round(0.5 * 32); bg 16 = 12 hard + 4 easy
        (40, 0, 0, (32, 0, 0)),  # no background: fg drawn with replacement
        (0, 50, 100, (0, 25, 7)),  # no foreground: all background
        (0, 0, 20, (0, 0, 32)),  # only easy background
    ],
)
def test_proposal_target_layer_sampling_counts(n_fg, n_hard, n_easy, want):
    cfg = copy.deepcopy(TARGET_CFG)
    cfg.ROI_PER_IMAGE = 32
    rng = np.random.default_rng(0)
    gt = np.array([0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0, 1.0], np.float32)
    ious = (
        list(rng.uniform(0.6, 0.95, n_fg)) + list(rng.uniform(0.15, 0.5, n_hard)) + list(rng.uniform(0.0, 0.05, n_easy))
    )
    rois = torch.from_numpy(_shifted_rois(gt, ious))[None]
    batch = {
        "batch_size": 1,
        "rois": rois,
        "roi_scores": torch.rand(1, rois.shape[1]),
        "roi_labels": torch.ones(1, rois.shape[1], dtype=torch.long),
        "gt_boxes": torch.from_numpy(np.stack([gt, np.zeros(8, np.float32)]))[None],
    }
    torch.manual_seed(0)
    out = ProposalTargetLayer(cfg)(batch)
    got_ious = out["gt_iou_of_rois"][0]
    assert got_ious.shape == (32,) and out["rois"].shape == (1, 32, 7) and out["gt_of_rois"].shape == (1, 32, 8)
    fg = got_ious >= 0.55
    hard = (got_ious >= 0.1) & (got_ious < 0.55)
    assert (int(fg.sum()), int(hard.sum()), int((got_ious < 0.1).sum())) == want
    if 0 < n_fg < 32 and (n_hard or n_easy):  # foreground drawn without replacement
        assert len({tuple(r) for r in out["rois"][0][fg].tolist()}) == int(fg.sum())
    # Labels: 1 above 0.6, -1 in (0.45, 0.6), else 0; regression only above 0.55; gt of every RoI is the one box.
    labels = out["rcnn_cls_labels"][0]
    assert torch.equal(labels == 1, got_ious > 0.6) and torch.equal(labels == -1, (got_ious > 0.45) & (got_ious < 0.6))
    assert torch.equal(out["reg_valid_mask"][0].bool(), got_ious > 0.55)
    assert torch.equal(out["gt_of_rois"][0, :, 7], torch.ones(32))


def test_proposal_target_layer_matches_by_class_and_handles_no_gt_and_no_proposals():
    cfg = copy.deepcopy(TARGET_CFG)
    gt = np.array([0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0, 1.0], np.float32)
    rois = torch.from_numpy(_shifted_rois(gt, [0.9] * 4))[None]
    base = {"batch_size": 1, "rois": rois, "roi_scores": torch.rand(1, 4)}
    # A Pedestrian proposal on a Car box overlaps nothing of its class.
    labels = torch.tensor([[2, 2, 2, 2]])
    out = ProposalTargetLayer(cfg)({**base, "roi_labels": labels, "gt_boxes": torch.from_numpy(gt)[None, None]})
    assert out["gt_iou_of_rois"].max() == 0 and out["reg_valid_mask"].sum() == 0
    # No objects in the scene (gt all padding) and no proposals (all-zero RoIs): every RoI easy background.
    empty = {"batch_size": 1, "rois": torch.zeros(1, 8, 7), "roi_scores": torch.zeros(1, 8),
             "roi_labels": torch.ones(1, 8, dtype=torch.long), "gt_boxes": torch.zeros(1, 3, 8)}  # fmt: skip
    out = ProposalTargetLayer(cfg)(empty)
    assert out["rois"].shape == (1, cfg.ROI_PER_IMAGE, 7) and out["gt_iou_of_rois"].abs().sum() == 0
    assert out["rcnn_cls_labels"].eq(0).all() and out["reg_valid_mask"].eq(0).all()
    with pytest.raises(ValueError, match="no RoI to sample"):
        ProposalTargetLayer(cfg)({**empty, "rois": torch.zeros(1, 0, 7), "roi_scores": torch.zeros(1, 0),
                                  "roi_labels": torch.zeros(1, 0, dtype=torch.long)})  # fmt: skip


# ------------------------------------------------------------------------------------ forward and bad input
def test_training_step_reaches_every_parameter_and_eval_gives_real_boxes():
    model = narrow_model()
    model.train()
    ret, tb, _ = model(scene(256))
    ret["loss"].backward()
    assert torch.isfinite(ret["loss"])
    for key in ("point_loss_cls", "point_loss_box", "rcnn_loss_cls", "rcnn_loss_reg", "rcnn_loss"):
        assert np.isfinite(tb[key]), key
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad
    model.eval()
    with torch.no_grad():
        model.roi_head.cls_layers[-1].bias.fill_(5.0)  # every RoI scores ~1: padding RoIs would come through
        batch = scene(256)
        preds, recall = model(batch)
    assert len(preds) == 2 and recall["gt"] == 4
    assert batch["rois"].shape == (2, 20, 7) and batch["has_class_labels"] is True
    for p in preds:
        assert len(p["pred_boxes"]) > 0 and (p["pred_boxes"][:, 3:6] > 0).all()  # no zero-size padding box
        assert set(p["pred_labels"].tolist()) <= {1, 2, 3}


def test_fewer_points_than_the_samplers_need_and_unequal_counts():
    model = narrow_model().eval()
    with torch.no_grad():
        preds, _ = model(scene(40))  # fewer points than SA level 0's 64 centres, RoIs pool fewer than 32 points
    assert len(preds) == 2
    batch = scene(100)
    batch["points"] = batch["points"][:-3]
    with pytest.raises(ValueError, match=r"same, non-zero number of points in every sample, got \[100, 97\]"):
        model(batch)
    with pytest.raises(ValueError, match="sample_points"):
        split_points_by_sample(torch.zeros(0, 5), 1)


def test_scene_without_objects_trains_and_empty_rois_pool_zeros():
    model = narrow_model()
    model.train()
    batch = scene(200, gt=GT[:0])
    ret, tb, _ = model(batch)
    ret["loss"].backward()
    assert torch.isfinite(ret["loss"]) and tb["point_pos_num"] == 0 and tb["rcnn_loss_reg"] == 0
    # The pooled features of the RoIs without points are zero (OpenPCDet's empty flag).
    rois = torch.tensor([[[100.0, 100, 0, 1, 1, 1, 0]] * 2] * 2)
    pooled = model.roi_head.roipool3d_gpu({**batch, "rois": rois})
    assert pooled.shape == (4, 32, 5 + 16) and pooled.abs().sum() == 0


@needs_reference
def test_a_checkpoint_in_openpcdets_layout_loads_strictly_and_resumes(tmp_path):
    """A checkpoint built from OpenPCDet's key list (random values of its shapes and dtypes) loads strictly."""
    torch.manual_seed(1)
    state = {}
    for key, shape, dtype in _read_keys_tsv(REF / "pointrcnn.keys.tsv"):
        state[key] = torch.randn(shape) if dtype == "float32" else torch.randint(0, 9, shape, dtype=torch.int64)
    path = tmp_path / "checkpoint_epoch_80.pth"
    atomic_torch_save({"epoch": 80, "it": 1856, "model_state": state, "optimizer_state": None,
                       "version": "pcdet+0.6.0+8caccce"}, path)  # fmt: skip
    cfg = load_cfg()
    model = build_network(cfg.MODEL, 3, fake_dataset(cfg))
    model.load_params_strict(str(path), to_cpu=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    resumed = build_network(cfg.MODEL, 3, fake_dataset(cfg))
    assert resumed.load_params_with_optimizer(str(path), to_cpu=True) == (1856, 80)  # (it, epoch)


def test_proposal_layer_equals_a_naive_greedy_nms_per_sample():
    head = narrow_model().roi_head
    rng = np.random.default_rng(2)
    n = 60
    centres = rng.uniform([0, -5, -1], [10, 5, 0], (2 * n, 3))
    boxes = np.column_stack([centres, rng.uniform(1, 4, (2 * n, 3)), rng.uniform(-np.pi, np.pi, 2 * n)])
    batch = {
        "batch_size": 2,
        "batch_box_preds": torch.tensor(boxes, dtype=torch.float32),
        "batch_cls_preds": torch.tensor(rng.normal(size=(2 * n, 3)), dtype=torch.float32),
        "batch_index": torch.arange(2).repeat_interleave(n).float(),
    }
    nms_cfg = EasyDict(NMS_TYPE="nms_gpu", MULTI_CLASSES_NMS=False, NMS_PRE_MAXSIZE=40, NMS_POST_MAXSIZE=30,
                       NMS_THRESH=0.2)  # fmt: skip
    out = head.proposal_layer(dict(batch), nms_config=nms_cfg)
    assert "batch_index" not in out and out["has_class_labels"] is True
    assert out["rois"].shape == (2, 30, 7) and out["roi_labels"].shape == (2, 30)
    for b in range(2):
        box_b, cls_b = batch["batch_box_preds"][b * n : (b + 1) * n], batch["batch_cls_preds"][b * n : (b + 1) * n]
        scores, labels = cls_b.max(dim=1)
        order = [int(i) for i in torch.argsort(scores, descending=True)[:40]]  # NMS_PRE_MAXSIZE candidates
        iou = boxes_iou_bev(box_b, box_b)
        kept = []
        for i in order:  # greedy: drop a box overlapping a kept one by more than the threshold
            if all(iou[i, j] <= 0.2 for j in kept):
                kept.append(i)
        kept = kept[:30]
        assert 10 < len(kept) < 30  # NMS removed some, and the rest of the rows are padding
        torch.testing.assert_close(out["rois"][b, : len(kept)], box_b[kept])
        assert out["roi_labels"][b, : len(kept)].tolist() == (labels[kept] + 1).tolist()
        torch.testing.assert_close(out["roi_scores"][b, : len(kept)], scores[kept])
        assert out["rois"][b, len(kept) :].abs().sum() == 0  # padding RoIs
