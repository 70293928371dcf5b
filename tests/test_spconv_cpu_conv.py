"""CPU sparse convs through pcdet.utils.spconv_cpu_conv: equal to dense conv3d on the active sites, gradients equal
to dense autograd, equal to spconv's own kernels run on one thread, and the same on every repeat with 2 threads
(spconv's CPU scatter gave a wrong row in about half of such repeats)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from spconv.pytorch import ops as spconv_ops

from pcdet.utils import spconv_cpu_conv
from pcdet.utils.spconv_utils import spconv_pytorch as spconv

SHAPE = [12, 24, 24]


@contextlib.contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sparse_input(channels: int, seed: int, batch: int = 2, count: int = 900) -> spconv.SparseConvTensor:
    gen = torch.Generator().manual_seed(seed)
    coords = torch.stack(
        [torch.randint(0, batch, (count,), generator=gen)]
        + [torch.randint(0, s, (count,), generator=gen) for s in SHAPE],
        dim=1,
    )
    coords = torch.unique(coords, dim=0).int()
    features = torch.randn(len(coords), channels, generator=gen)
    return spconv.SparseConvTensor(features, coords, SHAPE, batch)


def _dense_at(dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows of a dense (N, C, D, H, W) tensor at sparse indices (batch, z, y, x)."""
    i = indices.long()
    return dense.permute(0, 2, 3, 4, 1)[i[:, 0], i[:, 1], i[:, 2], i[:, 3]]


def _dense_weight(conv) -> torch.Tensor:
    return conv.weight.permute(0, 4, 1, 2, 3)  # spconv 2's (out, k, k, k, in) -> conv3d's (out, in, k, k, k)


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_forward_and_gradients_equal_dense_conv3d(kind):
    torch.manual_seed(3)
    if kind == "subm":
        conv = spconv.SubMConv3d(6, 10, 3, padding=1, bias=False, indice_key="k")
        stride = 1
    else:
        conv = spconv.SparseConv3d(6, 10, 3, stride=2, padding=1, bias=False, indice_key="k")
        stride = 2
    x = _sparse_input(6, seed=1)
    x.features.requires_grad_(True)
    out = conv(x)
    grad_out = torch.randn_like(out.features)
    (out.features * grad_out).sum().backward()

    dense_in = x.dense().detach().requires_grad_(True)
    weight = _dense_weight(conv).detach().requires_grad_(True)
    dense_out = torch.nn.functional.conv3d(dense_in, weight, stride=stride, padding=1)
    expected = _dense_at(dense_out, out.indices)
    torch.testing.assert_close(out.features, expected, rtol=1e-5, atol=1e-5)
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(x.features.grad, _dense_at(dense_in.grad, x.indices), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.weight.grad.permute(0, 4, 1, 2, 3), weight.grad, rtol=1e-4, atol=1e-4)


def _down_up_features(spconv_kernels: bool) -> tuple[torch.Tensor, ...]:
    """A strided conv, a submanifold conv and the inverse conv back, with input and weight gradients."""
    torch.manual_seed(7)
    net = spconv.SparseSequential(
        spconv.SparseConv3d(4, 8, 3, stride=2, padding=1, bias=False, indice_key="down"),
        spconv.SubMConv3d(8, 8, 3, padding=1, bias=False, indice_key="mid"),
        spconv.SparseInverseConv3d(8, 5, 3, bias=False, indice_key="down"),
    )
    x = _sparse_input(4, seed=2)
    x.features.requires_grad_(True)
    patched = (spconv_ops.indice_conv, spconv_ops.indice_conv_backward)
    if spconv_kernels:
        kernels = spconv_cpu_conv.SPCONV_KERNELS
        spconv_ops.indice_conv, spconv_ops.indice_conv_backward = kernels["forward"], kernels["backward"]
    try:
        out = net(x)
        out.features.square().sum().backward()
    finally:
        spconv_ops.indice_conv, spconv_ops.indice_conv_backward = patched
    return (out.features.detach(), x.features.grad, *(p.grad for p in net.parameters()))


def test_strided_submanifold_inverse_chain_equals_spconv_kernels_on_one_thread():
    with _threads(1):  # spconv's CPU kernels are right on one thread
        reference = _down_up_features(spconv_kernels=True)
    with _threads(2):
        ours = _down_up_features(spconv_kernels=False)
    assert ours[0].shape == reference[0].shape
    for got, want in zip(ours, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_repeats_with_two_threads_are_identical():
    with _threads(2):
        conv = spconv.SubMConv3d(5, 16, 3, padding=1, bias=False, indice_key="r")
        x = _sparse_input(5, seed=4, count=4000)
        with torch.no_grad():
            first = conv(x).features
            for _ in range(20):
                assert torch.equal(conv(x).features, first)


def test_install_is_idempotent_and_cuda_or_fused_bias_calls_reach_spconv(monkeypatch):
    wrapper = spconv_ops.indice_conv
    spconv_cpu_conv.install()
    assert spconv_ops.indice_conv is wrapper  # a second install does not wrap twice
    calls = []
    monkeypatch.setitem(spconv_cpu_conv.SPCONV_KERNELS, "forward", lambda *args: calls.append(args) or "spconv")
    features = torch.randn(6, 3)
    weight, pairs, counts = torch.randn(4, 3, 3, 3, 3), torch.zeros(2, 27, 6, dtype=torch.int32), torch.zeros(27)
    assert wrapper(features, weight, pairs, counts, 6, bias=torch.zeros(4)) == "spconv"
    assert len(calls) == 1 and calls[0][0] is features
    assert wrapper(features, weight, pairs, counts.int(), 6, subm=True).shape == (6, 4)  # ours: centre tap only
    assert len(calls) == 1
