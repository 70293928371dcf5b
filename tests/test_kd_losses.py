"""KD losses, kNN, adapters and voxel matching on plain tensors, against naive references and hand-computed values."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from pcdet.models.kd import LOSSES, KDConfigError
from pcdet.models.kd.adapters import Adapter
from pcdet.models.kd.feature_matching import VoxelGrid, match_voxels
from pcdet.models.kd.knn import knn_indices
from pcdet.models.kd.losses import KDBatch, build_kd_losses
from pcdet.models.kd.losses.point_distiller import build_graph, folded_projections, point_distiller_loss


def _model(vfe_channels: int = 8, bev_channels: int = 6) -> nn.Module:
    """The attributes the losses read widths from (a detector exposes the same)."""
    model = nn.Module()
    model.vfe = SimpleNamespace(get_output_feature_dim=lambda: vfe_channels)
    model.backbone_2d = SimpleNamespace(num_bev_features=bev_channels)
    return model


# ----------------------------------------------------------------------------------------------------------- kNN
def test_chunked_knn_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    queries, candidates = torch.randn(300, 16, generator=gen), torch.randn(700, 16, generator=gen)
    k = 9
    brute = torch.cdist(queries, candidates).topk(k, dim=1, largest=False).indices
    # 10 kB per chunk: a handful of query rows at a time, so many chunks are stitched together.
    chunked = knn_indices(queries, candidates, k, max_chunk_bytes=10_000)
    assert torch.equal(chunked.sort(dim=1).values, brute.sort(dim=1).values)


def test_knn_finds_itself_and_rejects_bad_k():
    nodes = torch.randn(50, 4)
    idx = knn_indices(nodes, nodes, 3)
    assert (idx == torch.arange(50)[:, None]).any(dim=1).all()
    with pytest.raises(ValueError, match="k=51"):
        knn_indices(nodes, nodes, 51)


# ------------------------------------------------------------------------------------------------ PointDistiller
def _naive_point_distiller(teacher, student, graph, teacher_adapter, student_adapter, edge, pool, form):
    """The definition, literally: build every (2C, N, K) edge tensor with loops, run conv → BN → ReLU on it."""

    def responses(nodes, adapter):
        num_queries, k = graph.neighbours.shape
        channels = nodes.shape[1]
        edges = torch.zeros(1, 2 * channels, num_queries, k)
        for i in range(num_queries):
            centre = nodes[graph.queries[i]]
            for j in range(k):
                neighbour = nodes[graph.neighbours[i, j]]
                first = neighbour if edge == "identity" else centre - neighbour
                edges[0, :, i, j] = torch.cat([first, centre])
        out = adapter(edges)  # (1, A, N, K)
        return out.max(dim=3).values if pool == "max" else out

    diff = responses(teacher, teacher_adapter) - responses(student, student_adapter)
    phi = graph.weights.view(1, 1, -1, *([] if pool == "max" else [1]))
    weighted = phi * diff.pow(2)
    return weighted.sum().sqrt() if form == "norm" else weighted.mean()


def _adapters(ct: int, cs: int, width: int, seed: int) -> tuple[Adapter, Adapter]:
    torch.manual_seed(seed)
    teacher_adapter, student_adapter = Adapter(2 * ct, width), Adapter(2 * cs, width)
    with torch.no_grad():  # non-trivial BN affine parameters, so the folding is really exercised
        for adapter in (teacher_adapter, student_adapter):
            adapter.bn.weight.uniform_(0.5, 1.5)
            adapter.bn.bias.uniform_(-0.5, 0.5)
    return teacher_adapter, student_adapter


@pytest.mark.parametrize("edge", ["identity", "sub"])
@pytest.mark.parametrize("pool", ["none", "max"])
@pytest.mark.parametrize("tau", [None, 0.7])
@pytest.mark.parametrize("form", ["mse", "norm"])
def test_point_distiller_equals_naive_reference(edge, pool, tau, form):
    gen = torch.Generator().manual_seed(1)
    num_nodes, ct, cs, width = 30, 6, 4, 5
    teacher = torch.randn(num_nodes, ct, generator=gen)
    student = torch.randn(num_nodes, cs, generator=gen, requires_grad=True)
    batch = torch.tensor([0] * 17 + [1] * 13)
    counts = torch.randint(1, 5, (num_nodes,), generator=gen).float()
    graph = build_graph(teacher, batch, counts, num_nodes=8, k=6, per_sample=True, candidates_all=True, tau=tau)
    fast_t, fast_s = _adapters(ct, cs, width, seed=2)
    ref_t, ref_s = copy.deepcopy(fast_t), copy.deepcopy(fast_s)

    fast = point_distiller_loss(teacher, student, graph, fast_t, fast_s, edge=edge, pool=pool, form=form)
    fast_grads = torch.autograd.grad(fast, [student, *fast_s.parameters(), *fast_t.parameters()])
    ref = _naive_point_distiller(teacher, student, graph, ref_t, ref_s, edge, pool, form)
    ref_grads = torch.autograd.grad(ref, [student, *ref_s.parameters(), *ref_t.parameters()])

    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    for got, want in zip(fast_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for got, want in ((fast_t.bn, ref_t.bn), (fast_s.bn, ref_s.bn)):  # running statistics advance identically
        torch.testing.assert_close(got.running_mean, want.running_mean)
        torch.testing.assert_close(got.running_var, want.running_var)
        assert int(got.num_batches_tracked) == int(want.num_batches_tracked) == 1


def test_folded_batch_norm_matches_float64_despite_a_large_offset():
    """Features far from zero (offset 300 against unit spread) are where E[x²] − E[x]² in float32 loses every digit;
    the folded BN must still equal conv → BN on the materialised edges computed in float64."""
    gen = torch.Generator().manual_seed(5)
    nodes = 300.0 + torch.randn(400, 3, generator=gen)
    scores = torch.rand(400, generator=gen)
    graph = build_graph(nodes, torch.zeros(400, dtype=torch.long), scores, 150, 16, False, True, None)
    adapter, _ = _adapters(3, 3, 5, seed=6)
    a, b = folded_projections(adapter, nodes, graph, "identity")
    got = a.double().unsqueeze(1) + b.double()[graph.neighbours]  # (N, K, A) pre-ReLU adapter outputs

    weight = adapter.conv.weight.double().view(5, 6)  # identity edge: [neighbour, centre] · W
    n64 = nodes.double()
    edges = n64[graph.neighbours] @ weight[:, :3].t() + (n64[graph.queries] @ weight[:, 3:].t()).unsqueeze(1)
    mean, var = edges.mean((0, 1)), edges.var((0, 1), unbiased=False)
    bn = adapter.bn
    want = (edges - mean) / torch.sqrt(var + bn.eps) * bn.weight.double() + bn.bias.double()
    torch.testing.assert_close(got, want, rtol=0, atol=5e-4)


def test_point_distiller_eval_mode_uses_running_statistics():
    gen = torch.Generator().manual_seed(3)
    teacher, student = torch.randn(20, 4, generator=gen), torch.randn(20, 3, generator=gen)
    scores = torch.rand(20, generator=gen)
    graph = build_graph(teacher, torch.zeros(20, dtype=torch.long), scores, 10, 4, False, True, None)
    fast_t, fast_s = _adapters(4, 3, 5, seed=4)
    with torch.no_grad():
        for bn in (fast_t.bn, fast_s.bn):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    ref_t, ref_s = copy.deepcopy(fast_t).eval(), copy.deepcopy(fast_s).eval()
    fast_t.eval(), fast_s.eval()
    fast = point_distiller_loss(teacher, student, graph, fast_t, fast_s)
    ref = _naive_point_distiller(teacher, student, graph, ref_t, ref_s, "identity", "none", "mse")
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)


def test_rl_weights_sum_to_n_and_follow_point_counts():
    teacher = torch.randn(40, 4)
    batch = torch.tensor([0] * 25 + [1] * 15)
    counts = torch.arange(40).float() % 7
    for per_sample, expected in ((False, [10]), (True, [10, 10])):
        graph = build_graph(teacher, batch, counts, 10, 5, per_sample, True, tau=0.5)
        sums = graph.weights.view(len(expected), -1).sum(dim=1)
        torch.testing.assert_close(sums, torch.tensor(expected, dtype=torch.float32))
    # τ = 0.01 on raw counts (the paper's setting): everything goes to the densest pillars.
    graph = build_graph(teacher, batch, counts, 10, 5, False, True, tau=0.01)
    densest = counts[graph.queries] == counts.max()
    assert graph.weights[densest].sum().item() == pytest.approx(10.0, rel=1e-6)
    assert (graph.weights[~densest] < 1e-30).all()


def test_graph_selects_top_queries_and_respects_samples():
    teacher = torch.randn(12, 3)
    batch = torch.tensor([0] * 6 + [1] * 6)
    scores = torch.tensor([5.0, 1, 5, 3, 0, 2, 9, 9, 1, 0, 4, 2])
    graph = build_graph(teacher, batch, scores, num_nodes=3, k=2, per_sample=True, candidates_all=False, tau=None)
    # highest first, ties in node order; neighbours are queries of the same sample
    assert graph.queries.tolist() == [0, 2, 3, 6, 7, 10]
    assert set(graph.neighbours[:3].flatten().tolist()) <= {0, 2, 3}
    assert set(graph.neighbours[3:].flatten().tolist()) <= {6, 7, 10}
    assert torch.equal(graph.weights, torch.ones(6))
    whole = build_graph(teacher, batch, scores, num_nodes=3, k=12, per_sample=False, candidates_all=True, tau=None)
    assert whole.queries.tolist() == [6, 7, 0] and whole.neighbours.shape == (3, 12)


def _pd_loss(**options) -> nn.Module:
    cfg = {"NAME": "PointDistiller", "FEATURE": "pillar_features", "NUM_NODES": 16, "K": 4, **options}
    return LOSSES["PointDistiller"](cfg, _model(vfe_channels=3), _model(vfe_channels=2))


def _voxel_batch(teacher_feat, student_feat, counts, batch_ids, match=None):
    coords = torch.zeros(len(counts), 4, dtype=torch.long)
    coords[:, 0] = batch_ids
    teacher = {"pillar_features": teacher_feat, "voxel_coords": coords, "voxel_num_points": counts}
    return KDBatch({"pillar_features": student_feat}, teacher, _model(), _model(), match)


def test_student_graph_uses_teacher_neighbours():
    gen = torch.Generator().manual_seed(5)
    teacher = torch.randn(40, 2, generator=gen)
    # Adversarial student: its own geometry is unrelated to the teacher's, so its own kNN would differ.
    student = torch.cat([torch.randn(40, 2, generator=gen) * 100, torch.zeros(40, 1)], dim=1)
    counts = torch.randint(1, 30, (40,), generator=gen)
    batch_ids = torch.zeros(40, dtype=torch.long)
    loss = _pd_loss(RL=False)
    got = loss(_voxel_batch(teacher, student, counts, batch_ids))

    def with_graph_from(nodes):
        graph = build_graph(nodes, batch_ids, counts.float(), 16, 4, False, True, None)
        return graph, point_distiller_loss(
            teacher, student, graph, copy.deepcopy(loss.teacher_adapter), copy.deepcopy(loss.student_adapter)
        )

    teacher_graph, from_teacher = with_graph_from(teacher)
    student_graph, from_student = with_graph_from(student[:, :2])
    assert not torch.equal(teacher_graph.neighbours.sort(1).values, student_graph.neighbours.sort(1).values)
    assert got.item() == pytest.approx(from_teacher.item(), rel=1e-5)
    assert got.item() != pytest.approx(from_student.item(), rel=1e-3)


def test_point_distiller_matches_voxels_by_coordinate():
    gen = torch.Generator().manual_seed(6)
    teacher = torch.randn(10, 2, generator=gen)
    student = torch.randn(7, 3, generator=gen)
    counts = torch.randint(1, 9, (10,), generator=gen)
    match = torch.tensor([3, -1, 0, 6, 1, -1, 2, 5, 4, 4])  # teacher voxel → student voxel at its position
    loss = _pd_loss(RL=False, NUM_NODES=8)
    got = loss(_voxel_batch(teacher, student, counts, torch.zeros(10, dtype=torch.long), match))
    keep = match >= 0
    ref = _pd_loss(RL=False, NUM_NODES=8)
    ref.load_state_dict(loss.state_dict())
    want = ref(_voxel_batch(teacher[keep], student[match[keep]], counts[keep], torch.zeros(8, dtype=torch.long)))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_point_distiller_config_errors():
    with pytest.raises(KDConfigError, match="RL weights queries"):
        _pd_loss(IMPORTANCE="random", RL=True)
    with pytest.raises(KDConfigError, match="EDGE must be one of identity, sub"):
        _pd_loss(EDGE="diff")
    loss = _pd_loss()
    batch = _voxel_batch(torch.randn(5, 2), torch.randn(4, 3), torch.ones(5, dtype=torch.long), torch.zeros(5))
    with pytest.raises(KDConfigError, match="4 voxel rows, teacher 5"):
        loss(batch)


# ------------------------------------------------------------------------------------------------------- baselines
def _map_batch(student_map, teacher_map, key="spatial_features_2d"):
    return KDBatch({key: student_map}, {key: teacher_map}, _model(), _model())


def test_fitnet_is_mse_after_the_adapter():
    cfg = {"NAME": "FitNet", "FEATURE": "spatial_features_2d"}
    loss = LOSSES["FitNet"](cfg, _model(bev_channels=2), _model(bev_channels=3))
    with torch.no_grad():
        loss.adapter.conv.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]).view(3, 2, 1, 1))
        loss.adapter.conv.bias.zero_()
    student = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    teacher = torch.tensor([1.0, 0.0, 5.0]).view(1, 3, 1, 1)
    # adapter output (1, 2, 3) vs (1, 0, 5): squared errors 0, 4, 4 → mean 8/3
    assert loss(_map_batch(student, teacher)).item() == pytest.approx(8 / 3)
    with pytest.raises(KDConfigError, match="not aligned"):
        loss(_map_batch(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2)))


def test_attention_transfer_known_values():
    loss = LOSSES["AttentionTransfer"]({"NAME": "AttentionTransfer", "FEATURE": "f"}, _model(), _model())
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)  # attention (1, 0, 0, 0)
    teacher = torch.tensor([[0.0, 2.0], [0.0, 0.0]]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)  # (0, 1, 0, 0) normalised
    assert loss(_map_batch(student, teacher, "f")).item() == pytest.approx(2 / 4)
    assert loss(_map_batch(teacher[:, :1] * 7, teacher, "f")).item() == pytest.approx(0.0, abs=1e-12)


def test_similarity_preserving_known_values():
    loss = LOSSES["SimilarityPreserving"]({"NAME": "SimilarityPreserving", "FEATURE": "f"}, _model(), _model())
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # orthogonal samples: G = I
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1)  # identical samples: rows (1, 1)/√2
    off = 1 / math.sqrt(2)
    expected = 2 * ((1 - off) ** 2 + off**2) / 4
    assert loss(_map_batch(student, teacher, "f")).item() == pytest.approx(expected)


def test_response_kd_zero_at_agreement_and_heading_periodic():
    head = SimpleNamespace(box_coder=SimpleNamespace(code_size=7))
    model = nn.Module()
    model.num_class, model.dense_head = 2, head
    cfg = {"NAME": "ResponseKD", "SOURCE": "batch_dict", "CLS_KEY": "cls", "BOX_KEY": "box", "CLS_LOSS": "kl"}
    loss = LOSSES["ResponseKD"](cfg, model, model)
    gen = torch.Generator().manual_seed(7)
    cls, box = torch.randn(2, 5, 2, generator=gen), torch.randn(2, 5, 7, generator=gen)
    turned = box.clone()
    turned[..., 6] += math.pi  # the same box, heading one period of sin(Δ) away
    batch = KDBatch({"cls": cls, "box": turned}, {"cls": cls, "box": box}, model, model)
    assert loss(batch).item() == pytest.approx(0.0, abs=1e-5)
    # one anchor's x off by 1: smooth-L1 (β = 1/9) = 1 − 1/18, weighted by that anchor's teacher confidence
    shifted = box.clone()
    shifted[0, 0, 0] += 1.0
    conf = torch.sigmoid(cls).max(dim=-1).values
    expected = (1 - 1 / 18) * conf[0, 0] / conf.sum()
    batch = KDBatch({"cls": cls, "box": shifted}, {"cls": cls, "box": box}, model, model)
    assert loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.parts["cls"] == pytest.approx(0.0, abs=1e-6)


def test_attention_guided_kd_zero_when_features_agree():
    cfg = {"NAME": "AttentionGuidedKD", "FEATURE": "f", "STUDENT_CHANNELS": 3, "TEACHER_CHANNELS": 3}
    loss = LOSSES["AttentionGuidedKD"](cfg, _model(), _model())
    with torch.no_grad():
        loss.adapter.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        loss.adapter.conv.bias.zero_()
    feature = torch.randn(2, 3, 4, 5)
    assert loss(_map_batch(feature, feature.clone(), "f")).item() == pytest.approx(0.0, abs=1e-5)
    other = feature.clone()
    other[0, 1, 2, 3] += 1.0
    value = loss(_map_batch(feature, other, "f"))
    assert value.item() > 0 and loss.parts["feature"] > 0 and loss.parts["attention"] > 0


# -------------------------------------------------------------------------------------------------------- registry
def test_registry_errors_name_the_problem():
    student, teacher = _model(), _model()
    with pytest.raises(KDConfigError, match="unknown KD loss NAME 'PointDistill'.*PointDistiller"):
        build_kd_losses([{"NAME": "PointDistill", "FEATURE": "pillar_features"}], student, teacher)
    with pytest.raises(KDConfigError, match="unknown option.*NUM_NODE\\b"):
        build_kd_losses([{"NAME": "PointDistiller", "FEATURE": "pillar_features", "NUM_NODE": 5}], student, teacher)
    with pytest.raises(KDConfigError, match="tagged 'FitNet'"):
        build_kd_losses([{"NAME": "FitNet", "FEATURE": "spatial_features_2d"}] * 2, student, teacher)
    with pytest.raises(KDConfigError, match="set STUDENT_CHANNELS"):
        build_kd_losses([{"NAME": "FitNet", "FEATURE": "my_key"}], student, teacher)
    with pytest.raises(KDConfigError, match="empty"):
        build_kd_losses([], student, teacher)
    losses = build_kd_losses(
        [{"NAME": "FitNet", "FEATURE": "my_key", "STUDENT_CHANNELS": 4, "TEACHER_CHANNELS": 9, "TAG": "fit"}],
        student,
        teacher,
    )
    assert losses["fit"].adapter.conv.weight.shape == (9, 4, 1, 1)


# ---------------------------------------------------------------------------------------------- voxels and matching
def _grid(size: float) -> VoxelGrid:
    return VoxelGrid((size, size, 4.0), (0.0, -3.2, -3.0, 6.4, 3.2, 1.0), 8, (("test", 5000), ("train", 5000)))


def test_voxelize_matches_cell_arithmetic():
    gen = torch.Generator().manual_seed(8)
    xyz = torch.rand(500, 3, generator=gen) * torch.tensor([6.4, 6.4, 4.0]) + torch.tensor([0.0, -3.2, -3.0])
    points = torch.cat([torch.randint(0, 2, (500, 1), generator=gen).float(), xyz, torch.rand(500, 1)], dim=1)
    out = _grid(0.4).voxelize(points, batch_size=2, training=True)
    cells = torch.floor((xyz[:, :2] - torch.tensor([0.0, -3.2])) / 0.4).long()
    expected = {(int(b), 0, int(y), int(x)) for b, (x, y) in zip(points[:, 0], cells)}
    assert {tuple(c) for c in out["voxel_coords"].tolist()} == expected
    assert int(out["voxel_num_points"].sum()) == 500  # fewer than 8 points per cell here: none dropped
    assert out["voxels"].shape == (len(expected), 8, 4)


def test_match_voxels_by_position():
    fine, coarse = _grid(0.2), _grid(0.6)  # a coarse centre falls inside a fine cell, never on its border
    teacher = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 3, 2], [1, 0, 0, 1], [0, 0, 31, 31]])  # [b, z, y, x]
    student = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    # fine cell centres (y, x in metres from the range's corner) → coarse cell: (0.1, 0.1) → (0, 0);
    # (0.3, 0.3) → (0, 0); (0.7, 0.5) → (1, 0); sample 1 (0.1, 0.3) → (0, 0); (6.3, 6.3) → (10, 10), absent
    assert match_voxels(teacher, fine, student, coarse).tolist() == [1, 1, 2, 0, -1]
    # the other way round: coarse centres (0.3, 0.3) → fine (1, 1); (0.9, 0.3) → fine (4, 1), absent
    assert match_voxels(student, coarse, teacher, fine).tolist() == [-1, 1, -1]
    assert match_voxels(teacher, fine, student[:0], coarse).tolist() == [-1] * 5
