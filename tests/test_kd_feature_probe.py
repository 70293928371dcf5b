"""The feature probes of benchmarks/kd_feature_probe.py against cases with known answers."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from kd_feature_probe import knn_overlap, linear_r2, participation_rank  # noqa: E402


def _feats(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_knn_overlap_is_one_for_any_isometry_and_near_chance_for_unrelated_features():
    x = _feats(600, 8, 0)
    rotation, _ = torch.linalg.qr(_feats(8, 8, 1))
    queries, pool = torch.arange(0, 600, 3), torch.arange(600)
    # Distances are what the graph is built from: a rotation plus a shift keeps every neighbour set.
    assert knn_overlap(x, x @ rotation + 5.0, queries, pool, k=10) == 1.0
    # Narrower students are compared with wider teachers: only distances matter, not the widths.
    assert knn_overlap(x, torch.cat([x, torch.zeros(600, 4)], 1), queries, pool, k=10) == 1.0
    unrelated = knn_overlap(x, _feats(600, 8, 2), queries, pool, k=10)
    assert unrelated < 0.05  # chance is 10 / 599


def test_knn_overlap_leaves_the_query_itself_out():
    # Two tight clusters: each query's true neighbours are its own cluster; itself must not count among them.
    x = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 10.0)]) + 0.01 * _feats(10, 2, 3)
    queries, pool = torch.tensor([0, 7]), torch.arange(10)
    assert knn_overlap(x, x, queries, pool, k=4) == 1.0
    # Interleaved clusters {0, 2, 4, 6, 8} and {1, 3, 5, 7, 9}: pillar 0's neighbours 2, 4, 6, 8 against 1, 2, 3, 4,
    # pillar 7's 1, 3, 5, 9 against 5, 6, 8, 9: two of four shared each (more if a query counted itself).
    interleaved = x[torch.tensor([0, 5, 1, 6, 2, 7, 3, 8, 4, 9])]
    assert knn_overlap(interleaved, x, queries, pool, k=4) == 0.5


def test_linear_r2_of_an_affine_map_is_one_and_of_noise_is_near_zero():
    x = _feats(2000, 6, 4)
    fit, held_out = torch.arange(1000), torch.arange(1000, 2000)
    y = x @ _feats(6, 10, 5) + 3.0
    assert abs(linear_r2(x, y, fit, held_out) - 1.0) < 1e-6
    assert abs(linear_r2(x, _feats(2000, 10, 6), fit, held_out)) < 0.03
    # A trained student has dead and duplicate channels: the fit must stay well-posed on such a design.
    degenerate = torch.cat([x, torch.zeros(2000, 1), x[:, :2]], 1)
    assert abs(linear_r2(degenerate, y, fit, held_out) - 1.0) < 1e-6
    half = torch.cat([x[:, :3] @ _feats(3, 1, 7), _feats(2000, 1, 8) * 0], 1)
    assert linear_r2(x[:, :3], half, fit, held_out) > 1 - 1e-9


def test_participation_rank_counts_equally_used_directions():
    basis, _ = torch.linalg.qr(_feats(12, 12, 9))
    coeffs = torch.cat([torch.eye(5), -torch.eye(5)]) * 2.0  # centred, equal variance along 5 directions
    assert abs(participation_rank(coeffs @ basis[:5]) - 5.0) < 1e-6
    one_dominant = torch.cat([torch.eye(5), -torch.eye(5)]) * torch.tensor([100.0, 1, 1, 1, 1])
    assert participation_rank(one_dominant) < 1.1
