"""Anchors, target assignment, box decoding, losses and post-processing of the anchor head, against hand
computations and naive per-anchor / per-box reference implementations."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network
from pcdet.models.dense_heads.anchor_head_template import AnchorHeadTemplate
from pcdet.models.dense_heads.target_assigner.anchor_generator import AnchorGenerator
from pcdet.models.dense_heads.target_assigner.axis_aligned_target_assigner import AxisAlignedTargetAssigner
from pcdet.utils.box_coder_utils import ResidualCoder

REPO = Path(__file__).resolve().parents[1]
PP_CFG = REPO / "tools" / "cfgs" / "kitti_models" / "pointpillar.yaml"


def load_pp_cfg() -> EasyDict:
    return cfg_from_yaml_file(PP_CFG, EasyDict())


def fake_dataset(cfg: EasyDict, pcr, voxel=(0.16, 0.16, 4.0)) -> SimpleNamespace:
    pcr = np.asarray(pcr, dtype=np.float32)
    voxel = np.asarray(voxel, dtype=np.float32)
    return SimpleNamespace(
        class_names=list(cfg.CLASS_NAMES),
        point_cloud_range=pcr,
        voxel_size=voxel,
        grid_size=np.round((pcr[3:6] - pcr[0:3]) / voxel).astype(np.int64),
        point_feature_encoder=SimpleNamespace(num_point_features=4),
        depth_downsample_factor=None,
    )


def small_model(pcr=(0, -2.56, -3, 5.12, 2.56, 1)):
    """PointPillars with narrow layers on a 32 x 32 grid (16 x 16 anchor locations)."""
    cfg = load_pp_cfg()
    cfg.MODEL.VFE.NUM_FILTERS = [8]
    cfg.MODEL.MAP_TO_BEV.NUM_BEV_FEATURES = 8
    cfg.MODEL.BACKBONE_2D.NUM_FILTERS = [8, 8, 8]
    cfg.MODEL.BACKBONE_2D.LAYER_NUMS = [1, 1, 1]
    cfg.MODEL.BACKBONE_2D.NUM_UPSAMPLE_FILTERS = [8, 8, 8]
    torch.manual_seed(0)
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), fake_dataset(cfg, pcr)), cfg


# ----------------------------------------------------------------------------------------------------- anchors
def test_full_size_anchor_layout_matches_openpcdet_facts():
    cfg = load_pp_cfg()
    pcr = cfg.DATA_CONFIG.POINT_CLOUD_RANGE
    gen = AnchorGenerator(pcr, cfg.MODEL.DENSE_HEAD.ANCHOR_GENERATOR_CONFIG)
    anchors, per_loc = gen.generate_anchors([np.array([216, 248])] * 3)
    assert per_loc == [2, 2, 2]
    assert [tuple(a.shape) for a in anchors] == [(1, 248, 216, 1, 2, 7)] * 3
    car = anchors[0]
    # No align_center: the first and last centres sit on the range borders.
    assert car[0, 0, 0, 0, 0, 0].item() == pytest.approx(0.0)
    assert car[0, 0, -1, 0, 0, 0].item() == pytest.approx(69.12, abs=1e-4)
    assert car[0, 0, 0, 0, 0, 1].item() == pytest.approx(-39.68, abs=1e-5)
    assert car[0, -1, 0, 0, 0, 1].item() == pytest.approx(39.68, abs=1e-4)
    assert car[0, 0, 0, 0, 0, 2].item() == pytest.approx(-1.78 + 1.56 / 2)


def test_anchor_order_is_y_x_class_size_rotation_by_hand():
    model, cfg = small_model()
    head = model.dense_head
    anchors = head.flat_anchors(torch.device("cpu"))
    ny = nx = 16
    assert anchors.shape == (3 * 2 * ny * nx, 7)
    gen_cfg = cfg.MODEL.DENSE_HEAD.ANCHOR_GENERATOR_CONFIG
    stride_x = 5.12 / (nx - 1)
    stride_y = 5.12 / (ny - 1)
    rng = np.random.default_rng(0)
    for i in rng.choice(anchors.shape[0], size=60, replace=False).tolist() + [0, anchors.shape[0] - 1]:
        rot_i = i % 2
        cls_i = (i // 2) % 3
        x_i = (i // 6) % nx
        y_i = i // (6 * nx)
        size = gen_cfg[cls_i]["anchor_sizes"][0]
        expected = [
            0.0 + x_i * stride_x,
            -2.56 + y_i * stride_y,
            gen_cfg[cls_i]["anchor_bottom_heights"][0] + size[2] / 2,
            *size,
            gen_cfg[cls_i]["anchor_rotations"][rot_i],
        ]
        np.testing.assert_allclose(anchors[i].numpy(), expected, rtol=0, atol=1e-5, err_msg=f"anchor {i}")


def test_align_center_puts_anchors_at_cell_centres():
    config = [{"anchor_sizes": [[1.0, 1.0, 1.0]], "anchor_rotations": [0.0], "anchor_bottom_heights": [0.0],
               "align_center": True}]  # fmt: skip
    anchors, _ = AnchorGenerator([0, 0, -1, 4, 2, 1], config).generate_anchors([np.array([4, 2])])
    np.testing.assert_allclose(anchors[0][0, :, :, 0, 0, 0].numpy(), [[0.5, 1.5, 2.5, 3.5]] * 2, atol=1e-6)
    np.testing.assert_allclose(anchors[0][0, :, 0, 0, 0, 1].numpy(), [0.5, 1.5], atol=1e-6)


# ---------------------------------------------------------------------------------------------- target assigner
def aligned_bev_box(box) -> tuple[float, float, float, float]:
    """Independent reference: axis-aligned BEV box of a rotated box, dims swapped when the heading is nearer 90°."""
    x, y, dx, dy, heading = float(box[0]), float(box[1]), float(box[3]), float(box[4]), float(box[6])
    r = heading % math.pi
    if min(r, math.pi - r) >= math.pi / 4:
        dx, dy = dy, dx
    return x - dx / 2, y - dy / 2, x + dx / 2, y + dy / 2


def naive_iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = aligned_bev_box(a)
    bx1, by1, bx2, by2 = aligned_bev_box(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def naive_encode(g, a) -> list[float]:
    d = math.hypot(a[3], a[4])
    return [(g[0] - a[0]) / d, (g[1] - a[1]) / d, (g[2] - a[2]) / a[5], math.log(g[3] / a[3]),
            math.log(g[4] / a[4]), math.log(g[5] / a[5]), g[6] - a[6]]  # fmt: skip


def naive_assign(anchors, gts, classes, matched, unmatched):
    """Per anchor / per gt loops over SECOND's rules: labels, regression targets, weights."""
    anchors, gts = anchors.tolist(), gts.tolist()
    labels, targets = [], []
    if not gts:
        return [0] * len(anchors), [[0.0] * 7] * len(anchors)
    iou = [[naive_iou(a, g) for g in gts] for a in anchors]
    best_per_gt = [max(iou[a][g] for a in range(len(anchors))) for g in range(len(gts))]
    for a, anchor in enumerate(anchors):
        best = max(iou[a])
        arg = iou[a].index(best)
        forced = any(best_per_gt[g] > 0 and iou[a][g] == best_per_gt[g] for g in range(len(gts)))
        if forced or best >= matched:
            label = classes[arg]
        elif best < unmatched:
            label = 0
        else:
            label = -1
        labels.append(label)
        targets.append(naive_encode(gts[arg], anchor) if label > 0 else [0.0] * 7)
    return labels, targets


def assigner_cfg(**overrides) -> EasyDict:
    cfg = copy.deepcopy(load_pp_cfg().MODEL.DENSE_HEAD)
    cfg.TARGET_ASSIGNER_CONFIG.update(overrides)
    return cfg


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("grid", [(7, 6), (13, 11)])  # 1 m: many forced matches; 0.5 m: ignored band too
def test_vectorised_assigner_equals_naive_reference(seed, grid):
    rng = np.random.default_rng(seed)
    # Anchors close in size to the gt boxes, 0.5 m apart or more: IoU ties (other than 0) have probability 0.
    anchor_cfg = [{"class_name": "Car", "anchor_sizes": [[2.0, 1.0, 1.5]], "anchor_rotations": [0, 1.57],
                   "anchor_bottom_heights": [-1.0], "feature_map_stride": 1, "matched_threshold": 0.6,
                   "unmatched_threshold": 0.45}]  # fmt: skip
    anchors = AnchorGenerator([0, 0, -3, 6, 5, 1], anchor_cfg).generate_anchors([np.array(grid)])[0][0].double()
    num_gt = 4
    gts = np.column_stack([
        rng.uniform(0, 6, num_gt), rng.uniform(0, 5, num_gt), rng.uniform(-1, 0, num_gt),
        rng.uniform(1.5, 2.5, num_gt), rng.uniform(0.8, 1.2, num_gt), rng.uniform(1.3, 1.7, num_gt),
        rng.uniform(-np.pi, np.pi, num_gt),
    ])  # fmt: skip
    gts = torch.from_numpy(gts)
    cfg = assigner_cfg()
    cfg.ANCHOR_GENERATOR_CONFIG = anchor_cfg
    assigner = AxisAlignedTargetAssigner(cfg, ["Car"], ResidualCoder())
    classes = torch.ones(num_gt, dtype=torch.int32)
    out = assigner.assign_targets_single(anchors.view(-1, 7), gts, classes, 0.6, 0.45)
    labels, targets = naive_assign(anchors.view(-1, 7), gts, [1] * num_gt, 0.6, 0.45)
    assert out["box_cls_labels"].tolist() == labels
    np.testing.assert_allclose(out["box_reg_targets"].numpy(), np.array(targets), atol=1e-9)
    np.testing.assert_array_equal(out["reg_weights"].numpy(), (np.array(labels) > 0).astype(float))
    # Every gt box got at least one positive anchor (force-matching), even those below the matched IoU.
    assert (out["box_cls_labels"] > 0).sum() >= 1


def test_force_matching_takes_every_tied_best_anchor():
    # Two anchors at x = 0 and x = 2 (2 x 2 m), a 2 x 2 m gt at x = 1: both overlap it by IoU 1/3 exactly, below
    # the unmatched threshold, and both must be forced positive; the anchor at x = 4 stays background.
    anchors = torch.tensor([[0.0, 0, 0, 2, 2, 1, 0], [2.0, 0, 0, 2, 2, 1, 0], [4.0, 0, 0, 2, 2, 1, 0]])
    gt = torch.tensor([[1.0, 0, 0, 2, 2, 1, 0]])
    assigner = AxisAlignedTargetAssigner(assigner_cfg(), ["Car", "Pedestrian", "Cyclist"], ResidualCoder())
    out = assigner.assign_targets_single(anchors, gt, torch.tensor([2]), 0.6, 0.45)
    assert out["box_cls_labels"].tolist() == [2, 2, 0]
    np.testing.assert_allclose(out["box_reg_targets"][0].numpy(), naive_encode(gt[0].tolist(), anchors[0].tolist()))


def test_no_gt_means_all_background_and_ignored_band():
    anchors = torch.tensor([[0.0, 0, 0, 2, 2, 1, 0], [0.0, 0, 0, 2, 2, 1, 0.0]])
    assigner = AxisAlignedTargetAssigner(assigner_cfg(), ["Car", "Pedestrian", "Cyclist"], ResidualCoder())
    out = assigner.assign_targets_single(anchors, anchors.new_zeros((0, 7)), torch.zeros(0), 0.6, 0.45)
    assert out["box_cls_labels"].tolist() == [0, 0]
    assert out["reg_weights"].sum() == 0
    # IoU 2.8 / 5.2 = 0.54 lies between the thresholds (0.45, 0.6): ignored, unless it is the gt's best.
    anchors = torch.tensor([[0.0, 0, 0, 2, 2, 1, 0], [0.6, 0, 0, 2, 2, 1, 0], [8.0, 0, 0, 2, 2, 1, 0]])
    gt = torch.tensor([[0.0, 0, 0, 2, 2, 1, 0]])
    out = assigner.assign_targets_single(anchors, gt, torch.tensor([1]), 0.6, 0.45)
    assert out["box_cls_labels"].tolist() == [1, -1, 0]


def test_assign_targets_batches_classes_in_anchor_order():
    model, _ = small_model()
    head = model.dense_head
    anchors = head.flat_anchors(torch.device("cpu"))
    # One Pedestrian placed exactly on anchor 16*6*3 + 6*4 + 2*1 + 1 (y=3, x=4, class Pedestrian, rotation 1.57).
    idx = 16 * 6 * 3 + 6 * 4 + 2 * 1 + 1
    gt = torch.cat([anchors[idx], torch.tensor([2.0])])
    gt_boxes = torch.stack([torch.stack([gt, torch.zeros(8)]), torch.zeros(2, 8)])  # 2nd sample: padding only
    targets = head.assign_targets(gt_boxes)
    labels = targets["box_cls_labels"]
    assert labels.shape == (2, anchors.shape[0])
    assert labels[0, idx].item() == 2
    assert torch.allclose(targets["box_reg_targets"][0, idx], torch.zeros(7), atol=1e-6)
    # Only Pedestrian anchors can match a Pedestrian box.
    positives = torch.nonzero(labels[0] > 0)[:, 0]
    assert ((positives // 2) % 3 == 1).all()
    assert (labels[1] == 0).all()


def test_pos_fraction_subsampling_caps_the_sample():
    cfg = assigner_cfg(POS_FRACTION=0.25, SAMPLE_SIZE=8)
    assigner = AxisAlignedTargetAssigner(cfg, ["Car", "Pedestrian", "Cyclist"], ResidualCoder())
    xs = torch.arange(40, dtype=torch.float32) * 0.1
    anchors = torch.stack([xs, *[torch.zeros(40)] * 2, torch.full((40,), 4.0), *[torch.ones(40)] * 2,
                           torch.zeros(40)], dim=1)  # fmt: skip
    gt = torch.tensor([[0.5, 0, 0, 4, 1, 1, 0], [30.0, 0, 0, 4, 1, 1, 0]])
    torch.manual_seed(0)
    labels = assigner.assign_targets_single(anchors, gt, torch.tensor([1, 1]), 0.6, 0.45)["box_cls_labels"]
    assert (labels > 0).sum() == 2  # 0.25 * 8 positives kept
    assert (labels >= 0).sum() == 8  # filled up to SAMPLE_SIZE with background


# ------------------------------------------------------------------------------------------- decoding and losses
def test_generate_predicted_boxes_decodes_residuals_and_direction():
    model, _ = small_model()
    head = model.dense_head
    anchors = head.flat_anchors(torch.device("cpu"))
    n = anchors.shape[0]
    box_preds = torch.zeros(1, n, 7)
    i, j = 7, 100
    box_preds[0, i] = torch.tensor([0.1, -0.2, 0.3, math.log(1.5), math.log(0.5), 0.0, 0.2])
    box_preds[0, j, 6] = -1.0  # heading residual that needs folding
    dir_preds = torch.zeros(1, n, 2)
    dir_preds[0, i, 1] = 5.0  # second bin: heading + π
    cls_preds = torch.zeros(1, n, 3)
    cls, boxes = head.generate_predicted_boxes(1, cls_preds.view(1, 16, 16, -1), box_preds.view(1, 16, 16, -1),
                                               dir_preds.view(1, 16, 16, -1))  # fmt: skip
    assert cls.shape == (1, n, 3) and boxes.shape == (1, n, 7)
    a = anchors[i].tolist()
    d = math.hypot(a[3], a[4])
    heading = a[6] + 0.2
    folded = (heading - 0.78539) % math.pi + 0.78539 + math.pi
    expected = [a[0] + 0.1 * d, a[1] - 0.2 * d, a[2] + 0.3 * a[5], 1.5 * a[3], 0.5 * a[4], a[5], folded]
    np.testing.assert_allclose(boxes[0, i].numpy(), expected, rtol=1e-5, atol=1e-5)
    # Bin 0, heading a + (-1) = -1 or 0.57 (by anchor rotation): folded into [0.78539, 0.78539 + π).
    heading_j = anchors[j, 6].item() - 1.0
    assert boxes[0, j, 6].item() == pytest.approx((heading_j - 0.78539) % math.pi + 0.78539, abs=1e-5)
    # Untouched anchors decode to themselves (with the folded heading).
    np.testing.assert_allclose(boxes[0, 0, :6].numpy(), anchors[0, :6].numpy(), atol=1e-6)


def test_direction_target_bins_and_sin_difference():
    anchors = torch.zeros(1, 4, 7)
    reg = torch.zeros(1, 4, 7)
    reg[0, :, 6] = torch.tensor([0.0, 1.0, 2.0, -2.0])
    # Bins of width π from 0.78539: 0 -> bin 1 (0 - 0.785 wraps to 2π - 0.785), 1 -> 0, 2 -> 0, -2 -> 1.
    bins = AnchorHeadTemplate.get_direction_target(anchors, reg, one_hot=False, dir_offset=0.78539, num_bins=2)
    assert bins.tolist() == [[1, 0, 0, 1]]
    one_hot = AnchorHeadTemplate.get_direction_target(anchors, reg, one_hot=True, dir_offset=0.78539, num_bins=2)
    assert one_hot[0, 0].tolist() == [0.0, 1.0]

    a = torch.tensor([[[0, 0, 0, 1, 1, 1, 0.3]]])
    b = torch.tensor([[[0, 0, 0, 1, 1, 1, 0.3 + math.pi]]])
    sa, sb = AnchorHeadTemplate.add_sin_difference(a, b)
    # The encoded difference is sin(a - b): a box flipped by 180° costs nothing.
    assert (sa - sb)[0, 0, 6].item() == pytest.approx(math.sin(-math.pi), abs=1e-6)


def test_head_loss_on_a_hand_made_target():
    model, cfg = small_model()
    head = model.dense_head
    head.train()
    anchors = head.flat_anchors(torch.device("cpu"))
    n = anchors.shape[0]
    labels = torch.zeros(1, n, dtype=torch.int32)
    labels[0, 5] = 1
    labels[0, 6] = -1
    reg_targets = torch.zeros(1, n, 7)
    reg_targets[0, 5] = torch.tensor([0.5, 0, 0, 0, 0, 0, 0])
    head.forward_ret_dict = {
        "cls_preds": torch.zeros(1, 16, 16, 18),
        "box_preds": torch.zeros(1, 16, 16, 42),
        "dir_cls_preds": torch.zeros(1, 16, 16, 12),
        "box_cls_labels": labels,
        "box_reg_targets": reg_targets,
        "reg_weights": (labels > 0).float(),
    }
    loss, tb = head.get_loss()
    # Logits 0 -> p = 0.5. Focal per class: alpha_t * 0.5^2 * log 2; the positive anchor has one positive class
    # (alpha 0.25) and two negatives (0.75); each of the other n - 2 cared anchors has three negatives; one
    # positive -> normaliser 1.
    log2 = math.log(2)
    cls_expected = (0.25 + 2 * 0.75) * 0.25 * log2 + (n - 2) * 3 * 0.75 * 0.25 * log2
    assert tb["rpn_loss_cls"] == pytest.approx(cls_expected, rel=1e-5)
    # Smooth-L1 (beta 1/9) of 0.5 on one code, loc weight 2.
    assert tb["rpn_loss_loc"] == pytest.approx(2 * (0.5 - 0.5 / 9), rel=1e-5)
    # Direction: two equal logits -> CE = log 2, weight 0.2.
    assert tb["rpn_loss_dir"] == pytest.approx(0.2 * log2, rel=1e-5)
    assert loss.item() == pytest.approx(tb["rpn_loss_cls"] + tb["rpn_loss_loc"] + tb["rpn_loss_dir"], rel=1e-6)


# ------------------------------------------------------------------------------------------------ post-processing
def logit(p: float) -> float:
    return math.log(p / (1 - p))


def post_batch(num_class=3):
    boxes = torch.tensor([
        [1.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.0],   # A
        [1.5, 0.2, -1.0, 4.0, 1.8, 1.5, 0.1],   # B overlaps A
        [10.0, 5.0, -1.0, 0.8, 0.6, 1.7, 0.0],  # C far away
        [20.0, 5.0, -1.0, 4.0, 1.8, 1.5, 0.0],  # D below the score threshold
    ])  # fmt: skip
    cls = torch.full((4, num_class), logit(0.01))
    cls[0, 0], cls[1, 1], cls[2, 2], cls[3, 0] = logit(0.9), logit(0.8), logit(0.5), logit(0.05)
    gt = torch.zeros(1, 3, 8)
    gt[0, 0] = torch.cat([boxes[0], torch.tensor([1.0])])
    gt[0, 1] = torch.tensor([30.0, -5, -1, 4, 1.8, 1.5, 0, 1])
    return {"batch_size": 1, "batch_box_preds": boxes[None], "batch_cls_preds": cls[None],
            "cls_preds_normalized": False, "gt_boxes": gt}  # fmt: skip


def test_post_processing_class_agnostic_nms_and_recall():
    model, _ = small_model()
    model.eval()
    preds, recall = model.post_processing(post_batch())
    p = preds[0]
    assert p["pred_labels"].tolist() == [1, 3]
    np.testing.assert_allclose(p["pred_scores"].numpy(), [0.9, 0.5], rtol=1e-5)
    np.testing.assert_allclose(p["pred_boxes"].numpy(), post_batch()["batch_box_preds"][0, [0, 2]].numpy())
    assert recall == {"gt": 2, "roi_0.3": 0, "rcnn_0.3": 1, "roi_0.5": 0, "rcnn_0.5": 1, "roi_0.7": 0, "rcnn_0.7": 1}


def test_post_processing_multi_class_nms_and_raw_scores():
    model, cfg = small_model()
    model.eval()
    model.model_cfg.POST_PROCESSING.NMS_CONFIG.MULTI_CLASSES_NMS = True
    p = model.post_processing(post_batch())[0][0]
    assert p["pred_labels"].tolist() == [1, 2, 3]  # B survives: another class
    np.testing.assert_allclose(p["pred_scores"].numpy(), [0.9, 0.8, 0.5], rtol=1e-5)

    model.model_cfg.POST_PROCESSING.NMS_CONFIG.MULTI_CLASSES_NMS = False
    model.model_cfg.POST_PROCESSING.OUTPUT_RAW_SCORE = True
    p = model.post_processing(post_batch())[0][0]
    np.testing.assert_allclose(p["pred_scores"].numpy(), [logit(0.9), logit(0.5)], rtol=1e-5)


def test_post_processing_respects_post_maxsize_and_empty_input():
    model, _ = small_model()
    model.eval()
    model.model_cfg.POST_PROCESSING.NMS_CONFIG.NMS_POST_MAXSIZE = 1
    p = model.post_processing(post_batch())[0][0]
    assert p["pred_labels"].tolist() == [1]
    batch = post_batch()
    batch["batch_cls_preds"][:] = logit(0.01)
    p, recall = model.post_processing(batch)
    assert p[0]["pred_boxes"].shape == (0, 7) and p[0]["pred_labels"].shape == (0,)
    assert recall["gt"] == 2 and recall["rcnn_0.3"] == 0
