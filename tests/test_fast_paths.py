"""The sparse fast paths (anchor/gt overlap search, points-in-boxes candidate search) against dense brute force:
the results must be identical, not merely close, including boundary cases and ties."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models.dense_heads.anchor_head_template import generate_anchors
from pcdet.models.dense_heads.target_assigner.axis_aligned_target_assigner import (
    AlignedAnchorIndex,
    AxisAlignedTargetAssigner,
    aligned_bev_iou_pairs,
)
from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu, points_in_boxes_gpu
from pcdet.utils import box_utils
from pcdet.utils.box_coder_utils import ResidualCoder

PP_CFG = Path(__file__).resolve().parents[1] / "tools" / "cfgs" / "kitti_models" / "pointpillar.yaml"


def random_boxes(rng: np.random.Generator, n: int, extent=(0.0, -10.0, 20.0, 10.0)) -> torch.Tensor:
    x0, y0, x1, y1 = extent
    return torch.from_numpy(
        np.column_stack(
            [
                rng.uniform(x0, x1, n),
                rng.uniform(y0, y1, n),
                rng.uniform(-2, 0, n),
                rng.uniform(0.5, 4.5, n),
                rng.uniform(0.5, 2.0, n),
                rng.uniform(1.0, 2.0, n),
                rng.uniform(-math.pi, math.pi, n),
            ]
        )  # fmt: skip
    ).float()


def dense_pairs(anchors: torch.Tensor, gts: torch.Tensor) -> torch.Tensor:
    return box_utils.boxes3d_nearest_bev_iou(anchors, gts)


def scatter_pairs(index: AlignedAnchorIndex, gts: torch.Tensor, num_anchors: int) -> torch.Tensor:
    anchor_idx, gt_idx, iou = aligned_bev_iou_pairs(index, gts)
    out = torch.zeros((num_anchors, gts.shape[0]), dtype=iou.dtype)
    out[anchor_idx, gt_idx] = iou
    # Each pair appears once.
    assert torch.unique(anchor_idx * gts.shape[0] + gt_idx).numel() == anchor_idx.numel()
    return out


@pytest.mark.parametrize("seed", range(3))
def test_sparse_bev_iou_equals_dense_matrix_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    anchors = random_boxes(rng, 3000)
    gts = random_boxes(rng, 25)
    # Edge cases: a gt sharing an anchor's x edge exactly (zero-width overlap), a copy of an anchor, a gt outside
    # every anchor, a duplicate gt (tied columns).
    aligned = box_utils.boxes3d_lidar_to_aligned_bev_boxes(anchors[:1])
    touching = anchors[0].clone()
    touching[0] = aligned[0, 2] + touching[3] / 2
    touching[6] = 0.0
    far = torch.tensor([500.0, 500.0, 0, 2, 2, 2, 0])
    gts = torch.cat([gts, touching[None], anchors[7:8], far[None], gts[3:4]])
    index = AlignedAnchorIndex.build(anchors)
    assert torch.equal(scatter_pairs(index, gts, anchors.shape[0]), dense_pairs(anchors, gts))
    # Only strictly positive IoUs are listed.
    assert (aligned_bev_iou_pairs(index, gts)[2] > 0).all()


def test_sparse_bev_iou_on_the_kitti_anchor_grid():
    cfg = cfg_from_yaml_file(PP_CFG, EasyDict())
    pcr = np.array([0, -39.68, -3, 69.12, 39.68, 1], dtype=np.float32)
    anchors, _ = generate_anchors(cfg.MODEL.DENSE_HEAD.ANCHOR_GENERATOR_CONFIG, np.array([432, 496, 1]), pcr)
    rng = np.random.default_rng(5)
    gts = random_boxes(rng, 20, extent=(0.0, -39.68, 69.12, 39.68))
    gts[:5, 0:2] = anchors[0].reshape(-1, 7)[rng.integers(0, 10000, 5), 0:2]  # centred on anchors: IoU ties
    gts[:5, 6] = 0.0
    for set_anchors in anchors:
        flat = set_anchors.reshape(-1, 7)
        index = AlignedAnchorIndex.build(flat)
        assert torch.equal(scatter_pairs(index, gts, flat.shape[0]), dense_pairs(flat, gts))


def dense_assign(anchors, gts, classes, matched, unmatched, code_size=7):
    """The dense formulation: full IoU matrix, torch.max for row maxima/argmax, equality with column maxima."""
    overlap = box_utils.boxes3d_nearest_bev_iou(anchors, gts)
    row_max, row_arg = overlap.max(dim=1)
    col_max = overlap.max(dim=0)[0]
    col_max = torch.where(col_max == 0, torch.full_like(col_max, -1), col_max)
    forced = (overlap == col_max[None, :]).any(dim=1)
    labels = torch.full((anchors.shape[0],), -1, dtype=torch.int32)
    labels = torch.where(forced | (row_max >= matched), classes.int()[row_arg], labels)
    labels = torch.where((row_max < unmatched) & ~forced, torch.zeros_like(labels), labels)
    targets = anchors.new_zeros((anchors.shape[0], code_size))
    fg = labels > 0
    targets[fg] = ResidualCoder().encode_torch(gts[row_arg[fg]], anchors[fg])
    return labels, targets


@pytest.mark.parametrize("seed", range(4))
def test_assigner_equals_dense_formulation_with_ties(seed):
    rng = np.random.default_rng(seed)
    cfg = cfg_from_yaml_file(PP_CFG, EasyDict()).MODEL.DENSE_HEAD
    anchor_cfg = copy.deepcopy(cfg.ANCHOR_GENERATOR_CONFIG[:1])
    anchor_cfg[0].feature_map_stride = 1
    cfg.ANCHOR_GENERATOR_CONFIG = anchor_cfg
    pcr = np.array([0, -8, -3, 16, 8, 1], dtype=np.float32)
    anchors = generate_anchors(anchor_cfg, np.array([40, 40, 1]), pcr)[0][0].reshape(-1, 7)
    gts = random_boxes(rng, 12, extent=(0, -8, 16, 8))
    gts[:4] = anchors[rng.integers(0, anchors.shape[0], 4)]  # exactly on anchors
    gts[4] = gts[0]  # duplicate gt: tied maxima in two columns
    classes = torch.ones(12, dtype=torch.int32)
    assigner = AxisAlignedTargetAssigner(cfg, ["Car", "Pedestrian", "Cyclist"], ResidualCoder())
    out = assigner.assign_targets_single(anchors, gts, classes, 0.6, 0.45)
    labels, targets = dense_assign(anchors, gts, classes, 0.6, 0.45)
    assert torch.equal(out["box_cls_labels"], labels)
    assert torch.equal(out["box_reg_targets"], targets)
    assert (labels > 0).sum() > 0 and (labels == -1).sum() > 0  # the case exercises all three labels


def test_assigner_rebuilds_its_anchor_index_when_the_anchors_change():
    cfg = cfg_from_yaml_file(PP_CFG, EasyDict()).MODEL.DENSE_HEAD
    pcr = np.array([0, -8, -3, 16, 8, 1], dtype=np.float32)
    anchors, _ = generate_anchors(cfg.ANCHOR_GENERATOR_CONFIG, np.array([40, 40, 1]), pcr)
    assigner = AxisAlignedTargetAssigner(cfg, ["Car", "Pedestrian", "Cyclist"], ResidualCoder())
    gt = torch.cat([anchors[0].reshape(-1, 7)[100], torch.tensor([1.0])])[None, None]
    first = assigner.assign_targets(anchors, gt)["box_cls_labels"]
    assert first[0].gt(0).any()
    assert assigner.assign_targets(anchors, gt)["box_cls_labels"].equal(first)  # cached index reused
    shifted = [a.clone() for a in anchors]
    for a in shifted:
        a[..., 0] += 100.0  # every anchor now far from the gt
    labels = assigner.assign_targets(shifted, gt)["box_cls_labels"]
    assert (labels == 0).all()


def naive_points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Independent float64 numpy reference: rotate each point into each box's frame."""
    pts = points.astype(np.float32).astype(np.float64)
    out = np.zeros((len(boxes), len(pts)), dtype=np.int32)
    for k, box in enumerate(boxes.astype(np.float32).astype(np.float64)):
        local = pts[:, 0:3] - box[0:3]
        c, s = np.cos(box[6]), np.sin(box[6])
        lx = local[:, 0] * c + local[:, 1] * s
        ly = -local[:, 0] * s + local[:, 1] * c
        out[k] = (np.abs(lx) <= box[3] / 2) & (np.abs(ly) <= box[4] / 2) & (np.abs(local[:, 2]) <= box[5] / 2)
    return out


def test_points_in_boxes_matches_brute_force_including_surfaces(device):
    rng = np.random.default_rng(0)
    points = rng.uniform([-5, -25, -3], [60, 25, 1], (20000, 3)).astype(np.float32)
    boxes = random_boxes(rng, 40, extent=(0, -20, 50, 20)).numpy()
    # Points exactly on the faces of axis-aligned boxes (surface counts as inside) and just outside them.
    boxes[0] = [10, 0, -1, 4, 2, 2, 0]
    boxes[1] = [20, 5, -1, 2, 2, 2, 0]
    boxes[2] = [30, -5, -1, 0, 2, 2, 0]  # zero length: only the plane x = 30 is inside
    surface = np.array([[12, 0, -1], [8, 1, 0], [21, 5, -2], [22.0001, 5, -1], [30, -5, -1]], dtype=np.float32)
    points = np.concatenate([points, surface])
    got = points_in_boxes_cpu(points, boxes)
    assert got.dtype == np.int32 and got.shape == (40, len(points))
    np.testing.assert_array_equal(got, naive_points_in_boxes(points, boxes))
    assert got[0, -5] == 1 and got[0, -4] == 1 and got[1, -3] == 1 and got[1, -2] == 0 and got[2, -1] == 1
    # Torch in, torch out, on the input's device; empty inputs give empty / all-zero memberships.
    points_t, boxes_t = torch.from_numpy(points).to(device), torch.from_numpy(boxes).to(device)
    got_t = points_in_boxes_cpu(points_t, boxes_t)
    assert isinstance(got_t, torch.Tensor) and got_t.device == device and np.array_equal(got_t.cpu().numpy(), got)
    # The batched variant: index of the first box holding each point, -1 for none.
    first = points_in_boxes_gpu(points_t[None], boxes_t[None])[0].cpu().numpy()
    expected_first = np.where(got.any(axis=0), got.argmax(axis=0), -1)
    np.testing.assert_array_equal(first, expected_first)
    assert points_in_boxes_cpu(points[:0], boxes).shape == (40, 0)
    assert points_in_boxes_cpu(points, boxes[:0]).shape == (0, len(points))
