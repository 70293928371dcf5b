"""PointDistiller's CPU paths (``kd.cpu_kernels``, ``kd.edge_loss``) against the PyTorch formulations they replace,
and the PillarVFE eval shortcut a KD teacher takes against its per-point path. Losses and gradients equal up to
float rounding; kNN sets equal except where candidates tie at the k-th distance; the VFE bit for bit."""

from __future__ import annotations

import contextlib
import copy

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcdet.models.backbones_3d.vfe.pillar_vfe import PFNLayer
from pcdet.models.kd import cpu_kernels
from pcdet.models.kd.adapters import Adapter
from pcdet.models.kd.edge_loss import edge_loss, neighbour_sum
from pcdet.models.kd.knn import knn_indices
from pcdet.models.kd.losses.point_distiller import build_graph, point_distiller_loss
from pcdet.utils.numba_utils import numba_threads


def _smallest_by_value_then_index(row: np.ndarray, k: int) -> set:
    return set(np.lexsort((np.arange(row.size), row))[:k].tolist())


# ------------------------------------------------------------------------------------------ k smallest per row
def test_smallest_k_equals_sorting_ties_by_lower_index():
    rng = np.random.default_rng(0)
    for trial in range(150):
        m = int(rng.integers(1, 1500))
        k = int(rng.integers(1, m + 1))
        block = rng.standard_normal((4, m)).astype(np.float32)
        if trial % 3 == 0:  # many exact ties, and -0.0 next to +0.0 (equal values: the lower index wins)
            block = np.round(block, 1)
        out = np.empty((4, k), np.int64)
        cpu_kernels.smallest_k(block, k, out, int(rng.integers(1, 4)))
        for row, got in zip(block, out):
            assert set(got.tolist()) == _smallest_by_value_then_index(row, k), (trial, m, k)


def test_smallest_k_falls_back_when_the_sample_misleads():
    """The threshold comes from evenly spaced samples; if those hold the smallest values, fewer than k values pass
    it and the row is selected among all its values."""
    m, k = 4000, 128
    row = np.random.default_rng(1).uniform(1, 2, m).astype(np.float32)
    stride = m // 512
    row[::stride][:512] = -np.arange(512, dtype=np.float32)
    out = np.empty((1, k), np.int64)
    cpu_kernels.smallest_k(row[None], k, out, 1)
    assert set(out[0].tolist()) == _smallest_by_value_then_index(row, k)


def test_knn_kernel_equals_topk_at_pointdistiller_scale():
    gen = torch.Generator().manual_seed(2)
    nodes = F.relu(torch.randn(8000, 64, generator=gen))
    queries = nodes[:6000]
    fused = knn_indices(queries, nodes, 128)
    with cpu_kernels.reference_paths():
        reference = knn_indices(queries, nodes, 128)
    # The ranking value knn_indices compares, as it computes it; rows where the k-th and (k+1)-th values are equal
    # may legitimately differ (topk's choice among ties is unspecified), and there the chosen values must agree.
    cand_aug = torch.cat([nodes, nodes.pow(2).sum(1, keepdim=True)], dim=1)
    values = torch.cat([-2.0 * queries, queries.new_ones(6000, 1)], dim=1) @ cand_aug.t()
    ordered = values.topk(129, dim=1, largest=False).values  # sorted ascending
    tied = ordered[:, 127] == ordered[:, 128]
    assert torch.equal(fused[~tied].sort(dim=1).values, reference[~tied].sort(dim=1).values)
    assert torch.equal(values.gather(1, fused).sort(dim=1).values, values.gather(1, reference).sort(dim=1).values)


# ----------------------------------------------------------------------------------------------- the edge loss
def _edge_inputs(rows: int, nodes: int, k: int, width: int, seed: int, weights: str):
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, width, generator=gen) for n in (rows, nodes, rows, nodes)]
    neighbours = torch.randint(0, nodes, (rows, k), generator=gen)  # repeats included, as a graph can have
    phi = {"ones": torch.ones(rows), "softmax": rows * torch.softmax(torch.randn(rows, generator=gen) / 0.3, 0)}
    return tensors, neighbours, phi[weights]


@pytest.mark.parametrize("form", ["mse", "norm"])
@pytest.mark.parametrize("weights", ["ones", "softmax"])
@pytest.mark.parametrize("teacher_trains", [False, True])
def test_fused_edge_loss_equals_materialised(form, weights, teacher_trains):
    tensors, neighbours, phi = _edge_inputs(50, 70, 9, 6, seed=3, weights=weights)
    results = []
    for reference in (False, True):
        leaves = [t.clone().requires_grad_(teacher_trains or i >= 2) for i, t in enumerate(tensors)]
        with cpu_kernels.reference_paths() if reference else contextlib.nullcontext():
            loss = edge_loss(*leaves, neighbours, phi, form, outputs=50 * 9 * 6)
        wrt = [t for t in leaves if t.requires_grad]
        results.append((loss, torch.autograd.grad(loss, wrt)))
    (fused, fused_grads), (ref, ref_grads) = results
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5)
    assert len(fused_grads) == (4 if teacher_trains else 2)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["mse", "norm"])
def test_fused_edge_loss_equals_float64_autograd_with_ties_and_zero_weights(form):
    """Against the materialised formula in float64 (autograd, no kernel): integer-valued projections make many
    pre-activations exactly 0 (relu passes no gradient there) and many teacher/student responses equal; some
    weights are exactly 0 and some neighbours repeat within a row."""
    gen = torch.Generator().manual_seed(10)
    rows, nodes, k, width = 40, 25, 7, 5
    tensors = [torch.randint(-3, 4, (n, width), generator=gen).float() for n in (rows, nodes, rows, nodes)]
    neighbours = torch.randint(0, nodes, (rows, k), generator=gen)
    phi = torch.rand(rows, generator=gen) * (torch.rand(rows, generator=gen) > 0.3)
    outputs = rows * k * width
    fused_leaves = [t.clone().requires_grad_(True) for t in tensors]
    fused = edge_loss(*fused_leaves, neighbours, phi, form, outputs)
    fused_grads = torch.autograd.grad(fused, fused_leaves)
    ref_leaves = [t.double().requires_grad_(True) for t in tensors]
    t_out = F.relu(ref_leaves[0].unsqueeze(1) + ref_leaves[1][neighbours])
    s_out = F.relu(ref_leaves[2].unsqueeze(1) + ref_leaves[3][neighbours])
    total = (phi.double().view(-1, 1, 1) * (t_out - s_out).pow(2)).sum()
    ref = total.sqrt() if form == "norm" else total / outputs
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    assert (t_out == s_out).float().mean() > 0.3 and (
        (ref_leaves[2].unsqueeze(1) + ref_leaves[3][neighbours]) == 0
    ).any()
    assert fused.item() == pytest.approx(ref.item(), rel=1e-6)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)


def test_fused_edge_loss_does_not_depend_on_the_thread_count():
    """Each row's sum is its own; the sum over rows runs serially, so the value is the same on any pool size."""
    tensors, neighbours, phi = _edge_inputs(300, 100, 16, 8, seed=13, weights="softmax")
    arrays = [t.numpy() for t in (*tensors, neighbours, phi)]
    totals = []
    for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
        numba.set_num_threads(threads)
        totals.append(cpu_kernels.edge_loss_sum(*arrays))
    numba_threads()
    assert len(set(totals)) == 1


def test_fused_edge_loss_norm_at_zero_has_zero_gradient():
    """Where teacher and student responses agree the norm is 0; its gradient is 0 there, as vector_norm's."""
    tensors, neighbours, phi = _edge_inputs(5, 8, 3, 4, seed=4, weights="ones")
    a, b = tensors[0], tensors[1]
    a_s, b_s = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = edge_loss(a, b, a_s, b_s, neighbours, phi, "norm", outputs=1)
    assert loss.item() == 0.0
    for grad in torch.autograd.grad(loss, [a_s, b_s]):
        assert torch.equal(grad, torch.zeros_like(grad))


def test_neighbour_sum_backward_equals_embedding_bag():
    gen = torch.Generator().manual_seed(5)
    values = torch.randn(40, 7, generator=gen, requires_grad=True)
    neighbours = torch.randint(0, 40, (30, 11), generator=gen)
    upstream = torch.randn(30, 7, generator=gen)
    got = neighbour_sum(values, neighbours)
    want = F.embedding_bag(neighbours, values, mode="sum")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        torch.autograd.grad(got, values, upstream)[0], torch.autograd.grad(want, values, upstream)[0]
    )


# --------------------------------------------------------------------------------- the whole PointDistiller loss
def _loss_and_grads(teacher, student, graph, adapters, reference, **options):
    teacher_adapter, student_adapter = copy.deepcopy(adapters)
    student = student.clone().requires_grad_(True)
    with cpu_kernels.reference_paths() if reference else contextlib.nullcontext():
        loss = point_distiller_loss(teacher, student, graph, teacher_adapter, student_adapter, **options)
    wrt = [student, *(p for p in [*student_adapter.parameters(), *teacher_adapter.parameters()] if p.requires_grad)]
    stats = [t.clone() for bn in (teacher_adapter.bn, student_adapter.bn) for t in (bn.running_mean, bn.running_var)]
    return loss, torch.autograd.grad(loss, wrt), stats


def _adapters(ct: int, cs: int, width: int, frozen: bool) -> tuple[Adapter, Adapter]:
    torch.manual_seed(6)
    adapters = Adapter(2 * ct, width), Adapter(2 * cs, width)
    with torch.no_grad():
        for adapter in adapters:
            adapter.bn.weight.uniform_(0.5, 1.5)
            adapter.bn.bias.uniform_(-0.5, 0.5)
    if frozen:
        adapters[0].requires_grad_(False)
    return adapters


def _assert_same(fused, reference):
    (loss, grads, stats), (ref_loss, ref_grads, ref_stats) = fused, reference
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    for got, want in zip(stats, ref_stats):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("edge", ["identity", "sub"])
@pytest.mark.parametrize("pool", ["none", "max"])
@pytest.mark.parametrize("tau", [None, 0.7])
@pytest.mark.parametrize("form", ["mse", "norm"])
@pytest.mark.parametrize("frozen", [False, True])
def test_point_distiller_loss_cpu_paths_equal_reference(edge, pool, tau, form, frozen):
    gen = torch.Generator().manual_seed(7)
    teacher, student = torch.randn(60, 6, generator=gen), torch.randn(60, 4, generator=gen)
    counts = torch.randint(1, 6, (60,), generator=gen).float()
    graph = build_graph(teacher, torch.tensor([0] * 35 + [1] * 25), counts, 20, 8, True, True, tau)
    adapters = _adapters(6, 4, 5, frozen)
    options = {"edge": edge, "pool": pool, "form": form}
    fused = _loss_and_grads(teacher, student, graph, adapters, reference=False, **options)
    _assert_same(fused, _loss_and_grads(teacher, student, graph, adapters, reference=True, **options))


def test_point_distiller_loss_cpu_paths_on_a_real_sized_graph():
    """The paper's PointPillars sizes: 8000 pillars, teacher 64 / student 32 channels, N = 6000 queries, K = 128,
    32-wide adapters, RL off so that all 768k edges enter the loss. One graph for both paths, so only the loss
    computation is compared."""
    gen = torch.Generator().manual_seed(8)
    teacher = F.relu(torch.randn(8000, 64, generator=gen))
    student = F.relu(torch.randn(8000, 32, generator=gen))
    counts = torch.randint(1, 33, (8000,), generator=gen).float()
    with cpu_kernels.reference_paths():
        graph = build_graph(teacher, torch.zeros(8000, dtype=torch.long), counts, 6000, 128, False, True, None)
    adapters = _adapters(64, 32, 32, frozen=True)
    fused = _loss_and_grads(teacher, student, graph, adapters, reference=False)
    _assert_same(fused, _loss_and_grads(teacher, student, graph, adapters, reference=True))


# ------------------------------------------------------------------------------- the teacher VFE's eval shortcut
@pytest.mark.parametrize("points", [2, 7, 32])
def test_pfn_eval_max_before_norm_is_bit_identical(points):
    gen = torch.Generator().manual_seed(9)
    layer = PFNLayer(10, 64, use_norm=True, last_layer=True).eval()
    with torch.no_grad():
        layer.norm.weight.uniform_(-1.5, 1.5, generator=gen)
        layer.norm.weight[:4] = 0  # sign and zero of the BN scale: the extreme that maps to the max changes
        layer.norm.bias.uniform_(-1, 1, generator=gen)
        layer.norm.running_mean.uniform_(-2, 2, generator=gen)
        layer.norm.running_var.uniform_(0.01, 3, generator=gen)
        inputs = torch.randn(3000, points, 10, generator=gen)
        filled = torch.randint(1, points + 1, (3000, 1, 1), generator=gen)
        inputs = inputs * (torch.arange(points).view(1, -1, 1) < filled)  # padded slots are zero, as decorate's
        out = layer(inputs)
        assert torch.equal(out, layer.norm_then_reduce(layer.linear(inputs)))
        assert layer._norm_is_monotone_map(layer.linear(inputs))
    assert not layer._norm_is_monotone_map(layer.linear(inputs))  # with autograd on: the per-point path


def test_pfn_shortcut_only_in_eval_without_grad_on_a_last_layer(monkeypatch):
    """Training (batch statistics, running-stat updates), autograd and non-last layers keep the per-point path."""
    calls = []
    original = PFNLayer.reduce_then_norm
    monkeypatch.setattr(PFNLayer, "reduce_then_norm", lambda self, x: calls.append(1) or original(self, x))
    torch.manual_seed(11)
    inputs = torch.randn(200, 8, 10)
    last, middle = PFNLayer(10, 16, last_layer=True), PFNLayer(10, 16, last_layer=False)
    for layer in (last, middle):
        reference = copy.deepcopy(layer)
        with torch.no_grad():
            out = layer(inputs)  # training mode: batch statistics, running statistics advance
            want = reference.norm_then_reduce(reference.linear(inputs))
        assert torch.equal(out, want)
        assert torch.equal(layer.norm.running_mean, reference.norm.running_mean)
        layer.eval()
        out = layer(inputs)  # eval with autograd: gradients reach the linear weights through every point
        assert out.requires_grad
        torch.testing.assert_close(
            torch.autograd.grad(out.sum(), layer.linear.weight)[0],
            torch.autograd.grad(
                reference.eval().norm_then_reduce(reference.linear(inputs)).sum(), reference.linear.weight
            )[0],
        )
    assert not calls
    with torch.no_grad():
        middle(inputs)
        assert not calls
        last(inputs)
    assert len(calls) == 1
