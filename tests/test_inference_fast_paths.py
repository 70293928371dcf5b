"""Inference fast paths (numba rotated NMS on CPU, gather-after-top-k post-processing, cached flat anchors)
against the formulations they replace: the detections must be the same, not merely close."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from easydict import EasyDict
from test_anchor_head import small_model
from test_ops_iou_nms import _clustered_scene, _reference_greedy, _shapely_iou_matrix

from pcdet.models import load_data_to_gpu
from pcdet.models.model_utils import model_nms_utils
from pcdet.ops.iou3d_nms import iou3d_nms_utils as iou_nms
from pcdet.ops.iou3d_nms.rotated_nms_cpu import greedy_rotated_nms


def _blocked_torch_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """The vectorised formulation (the CUDA path), run on CPU."""
    order = iou_nms._sort_candidates(scores, None)
    return order[iou_nms._blocked_greedy_nms(boxes[order, 0:7], thresh, iou_nms._rotated_suppression)]


@pytest.mark.parametrize("thresh", [0.01, 0.1, 0.5, 0.7])
def test_numba_nms_equals_the_vectorised_nms_on_crowded_scenes(thresh):
    for seed in range(2):
        boxes, scores = _clustered_scene(np.random.default_rng(100 + seed), 700, 12)
        expected = _blocked_torch_nms(boxes, scores, thresh)
        keep, _ = iou_nms.nms_gpu(boxes, scores, thresh)
        assert 1 < len(expected) < len(boxes)
        assert keep.tolist() == expected.tolist()


def test_numba_nms_equals_naive_greedy_with_shapely():
    boxes, scores = _clustered_scene(np.random.default_rng(7), 300, 15)
    for thresh in (0.01, 0.3, 0.6):
        expected = _reference_greedy(boxes, scores, thresh, lambda b: _shapely_iou_matrix(b, b))
        assert iou_nms.nms_gpu(boxes, scores, thresh)[0].tolist() == expected.tolist()


def test_numba_nms_edge_cases():
    assert greedy_rotated_nms(np.zeros((0, 7)), 0.1).tolist() == []
    # Zero-size boxes overlap nothing (the vectorised version forces their intersection to 0 too).
    boxes = np.array([[0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 2, 2, 1, 0], [0.1, 0, 0, 2, 2, 1, 0.3]], dtype=np.float64)
    assert greedy_rotated_nms(boxes, 0.1).tolist() == [0, 1]
    # Identical boxes: IoU 1 (up to round-off, on either path) suppresses the copies; a far box stays.
    same = np.vstack([np.tile([[5.0, -3.0, 0, 4, 1.6, 1.5, 0.7]], (3, 1)), [[20.0, 0, 0, 4, 1.6, 1.5, 0]]])
    assert greedy_rotated_nms(same, 0.99).tolist() == [0, 3]
    for thresh in (0.99, 1.0):
        expected = iou_nms._blocked_greedy_nms(torch.from_numpy(same), thresh, iou_nms._rotated_suppression)
        assert greedy_rotated_nms(same, thresh).tolist() == expected.tolist()
    # A NaN box overlaps nothing and must not stop the others from suppressing each other.
    with_nan = np.vstack([same[:1], np.full((1, 7), np.nan), same[1:]])
    assert greedy_rotated_nms(with_nan, 0.5).tolist() == [0, 1, 4]
    # Boxes far apart in x are outside each other's window; a long box reaches across it.
    row = np.array([[x, 0, 0, 4, 1.6, 1.5, 0] for x in (0.0, 3.0, 50.0, 53.0)] + [[26.5, 0, 0, 60, 1.6, 1.5, 0]])
    assert greedy_rotated_nms(row, 0.1).tolist() == [0, 2, 4]
    assert greedy_rotated_nms(row[[4, 0, 1, 2, 3]], 0.01).tolist() == [0]


def _random_pillars(rng: np.random.Generator, num: int = 300) -> dict:
    """A batch of one: ``num`` distinct pillars of small_model's 32 x 32 grid (0.16 m), 1-32 points each."""
    cells = rng.choice(32 * 32, size=num, replace=False)
    cx, cy = cells % 32, cells // 32
    counts = rng.integers(1, 33, num)
    voxels = np.zeros((num, 32, 4), dtype=np.float32)
    for i in range(num):
        lo = np.array([cx[i] * 0.16, cy[i] * 0.16 - 2.56, -3.0])
        voxels[i, : counts[i], 0:3] = lo + rng.random((counts[i], 3)) * [0.16, 0.16, 4.0]
        voxels[i, : counts[i], 3] = rng.random(counts[i])
    coords = np.column_stack([np.zeros((num, 2)), cy, cx]).astype(np.int32)  # (batch, z, y, x)
    return {"voxels": voxels, "voxel_num_points": counts.astype(np.int32), "voxel_coords": coords, "batch_size": 1}


def _former_selection(scores: torch.Tensor, boxes: torch.Tensor, nms_cfg, thresh: float) -> torch.Tensor:
    """The former selection: gather every box above the threshold, then top-k, then the vectorised NMS."""
    candidates = torch.arange(scores.shape[0])[scores >= thresh]
    cand_scores, cand_boxes = scores[candidates], boxes[candidates]
    top_scores, order = torch.topk(cand_scores, k=min(nms_cfg.NMS_PRE_MAXSIZE, len(candidates)))
    keep = order[_blocked_torch_nms(cand_boxes[order], top_scores, nms_cfg.NMS_THRESH)]
    return candidates[keep[: nms_cfg.NMS_POST_MAXSIZE]]


@pytest.mark.parametrize("multi_class", [False, True])
def test_post_processing_detections_equal_the_former_formulation(multi_class):
    model, cfg = small_model()
    model.eval()
    with torch.no_grad():
        model.dense_head.conv_cls.bias.zero_()  # every anchor scores near 0.5: all candidates reach NMS
    post_cfg = cfg.MODEL.POST_PROCESSING
    post_cfg.NMS_CONFIG.MULTI_CLASSES_NMS = multi_class
    with torch.no_grad():
        batch = load_data_to_gpu(_random_pillars(np.random.default_rng(3)), device="cpu")
        preds, _ = model(batch)
    scores = torch.sigmoid(batch["batch_cls_preds"][0])
    boxes = batch["batch_box_preds"][0]
    if multi_class:
        picks = [_former_selection(scores[:, k], boxes, post_cfg.NMS_CONFIG, post_cfg.SCORE_THRESH) for k in range(3)]
        expected_scores = torch.cat([scores[p, k] for k, p in enumerate(picks)])
        expected_boxes = torch.cat([boxes[p] for p in picks])
        expected_labels = torch.cat([torch.full_like(p, k + 1) for k, p in enumerate(picks)])
    else:
        best, labels = torch.max(scores, dim=-1)
        picked = _former_selection(best, boxes, post_cfg.NMS_CONFIG, post_cfg.SCORE_THRESH)
        expected_scores, expected_boxes, expected_labels = best[picked], boxes[picked], labels[picked] + 1
    assert len(expected_scores) > 5
    torch.testing.assert_close(preds[0]["pred_scores"], expected_scores, rtol=0, atol=0)
    torch.testing.assert_close(preds[0]["pred_boxes"], expected_boxes, rtol=0, atol=0)
    torch.testing.assert_close(preds[0]["pred_labels"], expected_labels, rtol=0, atol=0)


def test_nothing_above_the_score_threshold_selects_nothing():
    nms_cfg = EasyDict(NMS_TYPE="nms_gpu", NMS_THRESH=0.1, NMS_PRE_MAXSIZE=10, NMS_POST_MAXSIZE=10)
    selected, scores = model_nms_utils.class_agnostic_nms(torch.zeros(10), torch.zeros(10, 7), nms_cfg, 0.5)
    assert selected.numel() == 0 and scores.numel() == 0


def test_flat_anchors_are_cached_and_rebuilt_when_the_anchors_change():
    model, _ = small_model()
    head = model.dense_head
    fresh = torch.cat(head.anchors, dim=-3).view(-1, head.anchors[0].shape[-1])
    first = head.flat_anchors(torch.device("cpu"))
    assert torch.equal(first, fresh)
    assert head.flat_anchors(torch.device("cpu")) is first  # reused
    head.anchors[1][..., 0] += 1.0  # changed in place: the cache must notice
    moved = head.flat_anchors(torch.device("cpu"))
    assert moved is not first and torch.equal(moved, torch.cat(head.anchors, dim=-3).view_as(fresh))
    assert not torch.equal(moved, fresh)
    head.anchors = [a.clone() for a in head.anchors]  # replaced
    assert head.flat_anchors(torch.device("cpu")) is not moved
