"""Rotated BEV / 3D IoU and NMS (pcdet.ops.iou3d_nms) against shapely polygons and naive greedy references."""

import math

import numpy as np
import pytest
import shapely
import torch
from shapely.geometry import Polygon

from pcdet.ops.iou3d_nms import iou3d_nms_utils as iou_nms


def _polygon(box) -> Polygon:
    """Independent BEV footprint: rotate the (±dx/2, ±dy/2) rectangle by the heading and translate it."""
    x, y, _, dx, dy, _, heading = (float(v) for v in box[:7])
    c, s = math.cos(heading), math.sin(heading)
    pts = [(u * dx / 2, v * dy / 2) for u, v in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(x + c * u - s * v, y + s * u + c * v) for u, v in pts])


def _shapely_iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray, three_d: bool = False) -> np.ndarray:
    polys_a = np.array([_polygon(b) for b in boxes_a], dtype=object)
    polys_b = np.array([_polygon(b) for b in boxes_b], dtype=object)
    inter = shapely.area(shapely.intersection(polys_a[:, None], polys_b[None, :]))
    area_a, area_b = shapely.area(polys_a)[:, None], shapely.area(polys_b)[None, :]
    if not three_d:
        return inter / (area_a + area_b - inter)
    top = np.minimum((boxes_a[:, 2] + boxes_a[:, 5] / 2)[:, None], (boxes_b[:, 2] + boxes_b[:, 5] / 2)[None, :])
    bottom = np.maximum((boxes_a[:, 2] - boxes_a[:, 5] / 2)[:, None], (boxes_b[:, 2] - boxes_b[:, 5] / 2)[None, :])
    inter3d = inter * np.clip(top - bottom, 0, None)
    vol_a = (area_a[:, 0] * boxes_a[:, 5])[:, None]
    vol_b = (area_b[0] * boxes_b[:, 5])[None, :]
    return inter3d / (vol_a + vol_b - inter3d)


def _random_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Box pairs with random sizes / headings, centres close enough that most overlap, some far apart."""
    a = np.concatenate(
        [
            rng.uniform(-50, 50, (n, 2)),
            rng.uniform(-2, 1, (n, 1)),
            rng.uniform(0.1, 6, (n, 3)),
            rng.uniform(-np.pi, np.pi, (n, 1)),
        ],
        axis=1,
    )
    b = a.copy()
    b[:, 0:2] += rng.normal(0, 1.5, (n, 2))
    b[:, 2] += rng.normal(0, 0.5, n)
    b[:, 3:6] *= rng.uniform(0.3, 2.0, (n, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return a, b


def test_bev_iou_matches_shapely_on_random_pairs(device):
    rng = np.random.default_rng(0)
    a, b = _random_pairs(rng, 600)
    ours = iou_nms.boxes_iou_bev(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)).cpu().numpy()
    ref = _shapely_iou_matrix(a, b)
    assert ours.shape == (600, 600)
    assert (np.diag(ref) > 0).sum() > 400  # the diagonal pairs mostly overlap: the clipping path is exercised
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_3d_iou_matches_shapely_times_height_overlap(device):
    rng = np.random.default_rng(1)
    a, b = _random_pairs(rng, 500)
    ours = iou_nms.boxes_iou3d_gpu(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)).cpu().numpy()
    ref = _shapely_iou_matrix(a, b, three_d=True)
    assert (np.diag(ref) > 0).sum() > 300
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_identical_boxes_give_one_even_in_float32_far_from_origin(device):
    boxes = torch.tensor(
        [[60.3, -35.1, -1.0, 3.9, 1.6, 1.56, 0.7], [12.0, 5.0, 0.0, 0.8, 0.6, 1.7, -2.9], [1, 1, 1, 2, 2, 2, 0.0]],
        device=device,
    )
    ones = torch.ones(3, device=device)
    assert torch.allclose(torch.diagonal(iou_nms.boxes_iou_bev(boxes, boxes)), ones, atol=1e-6)
    assert torch.allclose(torch.diagonal(iou_nms.boxes_iou3d_gpu(boxes, boxes)), ones, atol=1e-6)


def test_near_coincident_pairs_stay_accurate():
    """Round-off stress: edges almost collinear, vertices almost on the other box's edges."""
    rng = np.random.default_rng(7)
    a, _ = _random_pairs(rng, 300)
    b = a.copy()
    b[:, 0:2] += rng.normal(0, 1e-7, (300, 2))
    b[:, 3:5] *= 1 + rng.normal(0, 1e-7, (300, 2))
    b[:, 6] += rng.choice([0.0, np.pi], 300) + rng.normal(0, 1e-8, 300)
    b[::3, 3:5] = b[::3, 4:2:-1]  # every third: a quarter turn with sides swapped is the same footprint
    b[::3, 6] += np.pi / 2
    ours = np.diag(iou_nms.boxes_bev_iou_cpu(a, b))
    np.testing.assert_allclose(ours, np.diag(_shapely_iou_matrix(a, b)), atol=1e-5, rtol=0)
    assert ours.min() > 1 - 1e-5


def test_special_configurations_have_analytic_answers(device):
    square = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    cases = [
        ([0, 0, 0, 1, 1, 1, np.pi / 4], math.sqrt(2) / 2),  # 45° twin: octagon 2(√2 − 1) over union 2 − that
        ([0.25, 0.1, 0, 0.4, 0.3, 1, 0.3], 0.12),  # contained: small area / big area
        ([1.0, 0, 0, 1, 1, 1, 0], 0.0),  # sharing an edge
        ([1.0, 1.0, 0, 1, 1, 1, 0], 0.0),  # sharing a corner
        ([5.0, 5.0, 0, 1, 1, 1, 0.4], 0.0),  # disjoint
        ([0.5, 0, 0, 1, 1, 1, 0], 1 / 3),  # half overlap: 0.5 / 1.5
        ([0, 0, 0, 1, 1, 1, np.pi], 1.0),  # heading is periodic in π for the footprint
        ([0, 0, 0, 2, 0.5, 1, np.pi / 2], 0.5 / 1.5),  # cross: a 0.5 × 1 strip of each
    ]
    a = torch.tensor([square], dtype=torch.float64, device=device)
    b = torch.tensor([c[0] for c in cases], dtype=torch.float64, device=device)
    expected = torch.tensor([c[1] for c in cases], dtype=torch.float64, device=device)
    torch.testing.assert_close(iou_nms.boxes_iou_bev(a, b)[0], expected, atol=1e-9, rtol=0)


def test_dx_dy_swap_with_quarter_turn_is_the_same_footprint():
    rng = np.random.default_rng(2)
    a, b = _random_pairs(rng, 100)
    b_swapped = b.copy()
    b_swapped[:, [3, 4]] = b[:, [4, 3]]
    b_swapped[:, 6] += np.pi / 2
    np.testing.assert_allclose(iou_nms.boxes_bev_iou_cpu(a, b), iou_nms.boxes_bev_iou_cpu(a, b_swapped), atol=1e-9)


def test_3d_iou_uses_z_as_centre(device):
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2, 0]], device=device)
    b = torch.tensor([[0.0, 0, 1, 2, 2, 2, 0.3], [0.0, 0, 2.5, 2, 2, 2, 0], [0.0, 0, -1, 2, 2, 2, 0]], device=device)
    bev = iou_nms.boxes_overlap_bev(a, b)[0]
    expected = torch.stack([bev[0] * 1 / (16 - bev[0] * 1), bev.new_tensor(0.0), bev.new_tensor(4 / 12)])
    torch.testing.assert_close(iou_nms.boxes_iou3d_gpu(a, b)[0], expected, atol=1e-6, rtol=0)


def test_degenerate_and_empty_inputs(device):
    a = torch.tensor([[0.0, 0, 0, 0, 0, 1, 0], [0.0, 0, 0, 2, 2, 1, 0]], device=device)
    iou = iou_nms.boxes_iou_bev(a, a)
    assert iou[0].tolist() == [0.0, 0.0]  # a zero-size box overlaps nothing, itself included
    assert iou[1, 1].item() == pytest.approx(1.0)
    assert iou_nms.boxes_iou_bev(a, a[:0]).shape == (2, 0)
    assert iou_nms.boxes_iou3d_gpu(a[:0], a).shape == (0, 2)
    keep, _ = iou_nms.nms_gpu(a[:0], torch.zeros(0, device=device), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.long


def test_types_devices_and_dtypes_follow_the_input(device):
    rng = np.random.default_rng(3)
    a, b = _random_pairs(rng, 20)
    out_np = iou_nms.boxes_bev_iou_cpu(a.astype(np.float32), b.astype(np.float32))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert iou_nms.boxes_bev_iou_cpu(a, b).dtype == np.float64
    ta = torch.from_numpy(a).float().to(device)
    tb = torch.from_numpy(b).float().to(device)
    for fn in (iou_nms.boxes_iou_bev, iou_nms.boxes_iou3d_gpu, iou_nms.boxes_overlap_bev, iou_nms.boxes_bev_iou_cpu):
        out = fn(ta, tb)
        assert out.dtype == torch.float32 and out.device == device and out.shape == (20, 20)
    np.testing.assert_allclose(iou_nms.boxes_iou_bev(ta, tb).cpu().numpy(), out_np, atol=1e-6)
    keep, extra = iou_nms.nms_gpu(ta, torch.rand(20, device=device), 0.1)
    assert extra is None and keep.dtype == torch.long and keep.device == device


def test_chunked_paths_agree_with_unchunked(monkeypatch):
    rng = np.random.default_rng(4)
    a, b = _random_pairs(rng, 120)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    whole = iou_nms.boxes_iou_bev(ta, tb)
    monkeypatch.setattr(iou_nms, "_PAIR_CHUNK", 7)
    monkeypatch.setattr(iou_nms, "_MASK_CHUNK", 500)
    torch.testing.assert_close(iou_nms.boxes_iou_bev(ta, tb), whole, atol=0, rtol=0)


def _clustered_scene(rng: np.random.Generator, n: int, num_objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector-like candidates: jittered copies of a few car-sized objects, random scores."""
    objects = np.concatenate(
        [
            rng.uniform([0, -30, -2], [60, 30, 0], (num_objects, 3)),
            np.tile([3.9, 1.6, 1.56], (num_objects, 1)),
            rng.uniform(-np.pi, np.pi, (num_objects, 1)),
        ],
        axis=1,
    )
    boxes = objects[rng.integers(0, num_objects, n)]
    boxes[:, 0:2] += rng.normal(0, 0.6, (n, 2))
    boxes[:, 3:6] *= rng.uniform(0.8, 1.2, (n, 3))
    boxes[:, 6] += rng.normal(0, 0.3, n)
    return torch.from_numpy(boxes).float(), torch.from_numpy(rng.random(n)).float()


def _reference_greedy(boxes: torch.Tensor, scores: torch.Tensor, thresh: float, iou_matrix, pre_maxsize=None):
    order = np.argsort(-scores.numpy(), kind="stable")
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    iou = iou_matrix(boxes.numpy()[order].astype(np.float64))
    kept: list[int] = []
    for i in range(len(order)):
        if all(iou[j, i] <= thresh for j in kept):
            kept.append(i)
    return order[kept]


def _axis_aligned_iou(boxes: np.ndarray) -> np.ndarray:
    lo, hi = boxes[:, 0:2] - boxes[:, 3:5] / 2, boxes[:, 0:2] + boxes[:, 3:5] / 2
    wh = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = boxes[:, 3] * boxes[:, 4]
    return inter / (area[:, None] + area[None] - inter)


@pytest.mark.parametrize(
    ("thresh", "pre_maxsize", "block"), [(0.01, None, 256), (0.1, 150, 256), (0.5, None, 16), (0.7, None, 5)]
)
def test_rotated_nms_matches_naive_greedy(monkeypatch, device, thresh, pre_maxsize, block):
    monkeypatch.setattr(iou_nms, "_NMS_BLOCK", block)
    boxes, scores = _clustered_scene(np.random.default_rng(5), 240, 12)
    expected = _reference_greedy(boxes, scores, thresh, lambda b: _shapely_iou_matrix(b, b), pre_maxsize)
    boxes, scores = boxes.to(device), scores.to(device)
    # nms_gpu: the numba loop on CPU, the blocked formulation on CUDA; the blocked one is checked on every device.
    keep, _ = iou_nms.nms_gpu(boxes, scores, thresh, pre_maxsize=pre_maxsize, NMS_POST_MAXSIZE=500)
    order = iou_nms._sort_candidates(scores, pre_maxsize)
    blocked = order[iou_nms._blocked_greedy_nms(boxes[order], thresh, iou_nms._rotated_suppression)]
    assert 1 < len(expected) < (pre_maxsize or len(boxes))
    assert keep.cpu().tolist() == expected.tolist()
    assert blocked.cpu().tolist() == expected.tolist()


def test_nms_keeps_in_score_order_and_suppresses_strictly_above_thresh(device):
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0], [0.5, 0, 0, 1, 1, 1, 0], [5.0, 0, 0, 1, 1, 1, 0]], device=device)
    scores = torch.tensor([0.2, 0.9, 0.5], device=device)
    assert iou_nms.nms_gpu(boxes, scores, 0.5)[0].tolist() == [1, 2, 0]  # IoU 1/3 ≤ 0.5: both kept
    assert iou_nms.nms_gpu(boxes, scores, 1 / 3 - 1e-6)[0].tolist() == [1, 2]
    assert iou_nms.nms_gpu(boxes, scores, 0.5, pre_maxsize=2)[0].tolist() == [1, 2]


@pytest.mark.parametrize("thresh", [0.1, 0.5])
def test_axis_aligned_nms_ignores_heading(monkeypatch, device, thresh):
    monkeypatch.setattr(iou_nms, "_NMS_BLOCK", 32)
    boxes, scores = _clustered_scene(np.random.default_rng(6), 200, 10)
    expected = _reference_greedy(boxes, scores, thresh, _axis_aligned_iou)
    boxes, scores = boxes.to(device), scores.to(device)
    keep, extra = iou_nms.nms_normal_gpu(boxes, scores, thresh)
    assert extra is None and keep.cpu().tolist() == expected.tolist()
    spun = boxes.clone()
    spun[:, 6] = torch.rand(len(spun), device=device) * 6
    assert iou_nms.nms_normal_gpu(spun, scores, thresh)[0].tolist() == keep.tolist()


def test_nms_pruning_bound_never_undercuts_the_exact_intersection():
    rng = np.random.default_rng(8)
    a, b = _random_pairs(rng, 2000)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    exact = iou_nms._paired_bev_intersection(ta, tb)
    bound = iou_nms._intersection_upper_bound(ta, tb)
    assert (exact > 0).sum() > 1000
    assert bool((bound >= exact - 1e-9).all())
