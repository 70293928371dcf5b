"""What a KD run measures about itself (KD.DIAGNOSE_EVERY) and the frozen teacher-side adapter option."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_distiller import FIT, PD, _batch, _dataset, _kd_setup

from pcdet.models.kd import build_distiller
from pcdet.models.kd.diagnostics import effective_count, gradient_report, inside_boxes_bev, response_stats


def test_gradient_report_known_values():
    w = torch.tensor([2.0, -1.0], requires_grad=True)
    det = 3 * w[0]  # gradient (3, 0)
    terms = {"a": w[0] + w[1], "b": -w[0], "const": torch.tensor(1.0)}  # (1, 1), (-1, 0), no graph
    report = gradient_report(det, terms, [w])
    assert report["grad/det_norm"] == pytest.approx(3.0)
    assert report["grad/a_norm"] == pytest.approx(math.sqrt(2))
    assert report["grad/a_ratio"] == pytest.approx(math.sqrt(2) / 3)
    assert report["grad/a_cos_det"] == pytest.approx(1 / math.sqrt(2))
    assert report["grad/b_cos_det"] == pytest.approx(-1.0)
    assert "grad/const_norm" not in report


def test_weight_statistics_and_dead_outputs():
    assert effective_count(torch.ones(10)) == pytest.approx(10)
    assert effective_count(torch.tensor([5.0, 0, 0, 0])) == pytest.approx(1)
    stats = response_stats("t", torch.tensor([0.0, 0.0, 1.0, 3.0]))
    assert stats["t_zero_share"] == 0.5 and stats["t_std"] == pytest.approx(torch.tensor([0.0, 0, 1, 3]).std().item())


def test_inside_boxes_bev_uses_rotation_and_ignores_height_and_padding():
    # Sample 0: a 4 x 2 m box at (10, 0) turned by 90°, so it spans y ±2 and x ±1. Sample 1: padding only.
    boxes = torch.zeros(2, 2, 8)
    boxes[0, 0, :7] = torch.tensor([10.0, 0.0, -1.0, 4.0, 2.0, 1.5, math.pi / 2])
    positions = torch.tensor([[10.0, 1.8], [11.5, 0.0], [10.5, -1.5], [0.0, 0.0], [10.0, 0.0]])
    node_batch = torch.tensor([0, 0, 0, 1, 1])
    inside = inside_boxes_bev(positions, node_batch, boxes)
    assert inside.tolist() == [True, False, True, False, False]


def test_distiller_logs_gradients_and_rl_selection_on_diagnosed_steps(tmp_path):
    pd = dict(PD, TAU=0.5)  # RL on raw counts: the weight goes to the densest pillars (the car cluster of _batch)
    cfg, student, _ = _kd_setup(tmp_path, [pd, FIT])
    cfg.KD.DIAGNOSE_EVERY = 2
    reference = copy.deepcopy(student).train()
    distiller = build_distiller(cfg, student, _dataset(cfg)).train()
    batch = _batch(cfg)
    # Label each sample's dense cluster (x 3-5 m, y ±1 m) with a box that holds all of it.
    batch["gt_boxes"][:, 0, :7] = torch.tensor([4.0, 0.0, -1.0, 2.6, 2.6, 2.0, 0.0])
    ret, tb, _ = distiller(dict(batch))
    ref_ret, _, _ = reference(dict(batch))
    ref_ret["loss"].backward()
    det_norm = torch.cat([p.grad.reshape(-1) for p in reference.parameters() if p.grad is not None]).norm()
    assert tb["kd/grad/det_norm"] == pytest.approx(det_norm.item(), rel=1e-4)
    for tag in ("PointDistiller", "FitNet"):
        assert tb[f"kd/grad/{tag}_norm"] > 0 and -1 <= tb[f"kd/grad/{tag}_cos_det"] <= 1
    parts = {k.removeprefix("kd/PointDistiller/"): v for k, v in tb.items() if k.startswith("kd/PointDistiller/")}
    assert parts["node_fg_share"] < 0.5 < 0.9 < parts["rl_fg_weight_share"]
    assert parts["rl_mean_range_m"] == pytest.approx(4.0, abs=1.0)  # the cluster sits 3-5 m ahead
    assert 1 <= parts["rl_effective_queries"] < parts["queries"]
    assert 0 <= parts["teacher_adapter_zero_share"] <= 1 and parts["student_adapter_std"] > 0
    # The loss itself is what a run without diagnostics computes.
    assert ret["loss"].item() == pytest.approx(tb["kd/loss_det"] + tb["kd/PointDistiller"] + tb["kd/FitNet"], rel=1e-5)
    distiller.update_global_step()
    _, tb_next, _ = distiller(dict(batch))
    assert not any(k.startswith(("kd/grad/", "kd/PointDistiller/")) for k in tb_next)


def test_frozen_teacher_adapter_stays_at_its_initialisation(tmp_path):
    cfg, student, _ = _kd_setup(tmp_path, [dict(PD, TEACHER_ADAPTER="frozen")])
    distiller = build_distiller(cfg, student, _dataset(cfg)).train()
    pd = distiller.kd_losses["PointDistiller"]
    frozen = {k: v.clone() for k, v in pd.teacher_adapter.named_parameters()}
    optimizer = torch.optim.Adam([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
    ret, tb, _ = distiller(_batch(cfg))
    optimizer.zero_grad()
    ret["loss"].backward()
    optimizer.step()
    assert tb["kd/PointDistiller"] > 0
    assert all(p.grad is None for p in pd.teacher_adapter.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pd.student_adapter.parameters())
    for key, value in pd.teacher_adapter.named_parameters():
        assert torch.equal(value, frozen[key]), key
    # BatchNorm still normalises with batch statistics, and its running statistics still advance.
    assert int(pd.teacher_adapter.bn.num_batches_tracked) == 1


def test_diagnostics_on_bev_map_nodes_use_cell_centres(tmp_path):
    pd_map = {"NAME": "PointDistiller", "FEATURE": "spatial_features_2d", "NUM_NODES": 64, "K": 8}
    pd_map |= {"IMPORTANCE": "feature_max", "GRAPH": "sample", "TAU": 1.0}
    cfg, student, _ = _kd_setup(tmp_path, [pd_map])
    distiller = build_distiller(cfg, student, _dataset(cfg)).train()
    batch = _batch(cfg)
    _, tb, _ = distiller(dict(batch))
    parts = {k.removeprefix("kd/PointDistiller/"): v for k, v in tb.items() if k.startswith("kd/PointDistiller/")}
    assert parts["queries"] == 2 * 64
    # Two boxes of a few m² in a BEV range of tens of m²: a small share of the cells, and cell centres lie within it.
    assert 0 < parts["node_fg_share"] < 0.2
    pc_range = cfg.DATA_CONFIG.POINT_CLOUD_RANGE
    assert 0 < parts["query_mean_range_m"] < math.hypot(pc_range[3], max(abs(pc_range[1]), abs(pc_range[4])))
