"""PointDistiller's edge loss and neighbour sums: PyTorch formulations and their fused CPU versions.

The adapter output of edge (i, j) is relu(a_i + b_j) (``losses/point_distiller.py`` folds conv and BN into the
projections a, b). Without pooling the loss is Σ_i φ_i Σ_k Σ_c (γ_T − γ_S)² over (R, K, A) responses; PyTorch has
to materialise them (and as many tensors again in the backward), the fused version walks the edges and keeps only
the (R, A) / (M, A) projections and their gradients. Both give the same value and gradients up to float rounding
(tests/test_kd_cpu_paths.py); the fused path runs for float32 CPU tensors (``cpu_kernels.use_cpu_kernels``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ...utils.numba_utils import numba_threads
from . import cpu_kernels


def response_loss(
    teacher_out: torch.Tensor, student_out: torch.Tensor, weights: torch.Tensor, form: str, outputs: int
) -> torch.Tensor:
    """From materialised responses ((R, K, A) or pooled (R, A)) and the rows' φ: "mse" Σ φ (γ_T − γ_S)² / outputs,
    "norm" sqrt(Σ φ (γ_T − γ_S)²)."""
    diff = teacher_out - student_out
    weights = weights.view(-1, *([1] * (diff.dim() - 1)))
    if form == "norm":
        return torch.linalg.vector_norm(diff * weights.sqrt())
    return (weights * diff.pow(2)).sum() / outputs


def edge_loss(
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    a_s: torch.Tensor,
    b_s: torch.Tensor,
    neighbours: torch.Tensor,
    weights: torch.Tensor,
    form: str,
    outputs: int,
) -> torch.Tensor:
    """The unpooled loss for query rows with projections ``a_* (R, A)``, node projections ``b_* (M, A)``,
    ``neighbours (R, K)`` and weights ``φ (R,)``; ``form`` and ``outputs`` as in :func:`response_loss`."""
    if cpu_kernels.use_cpu_kernels(a_t, b_t, a_s, b_s, neighbours, weights):
        return _FusedEdgeLoss.apply(a_t, b_t, a_s, b_s, neighbours, weights, form, outputs)
    teacher_out = F.relu(a_t.unsqueeze(1) + b_t[neighbours])
    student_out = F.relu(a_s.unsqueeze(1) + b_s[neighbours])
    return response_loss(teacher_out, student_out, weights, form, outputs)


def neighbour_sum(values: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """``(N, A)``: row i is Σ_k values[neighbours[i, k]] (``embedding_bag`` sum). On the CPU its backward is a
    serial scatter instead of embedding_bag's, which sorts all N·K indices first (~10× slower at N·K = 768k)."""
    if values.requires_grad and cpu_kernels.use_cpu_kernels(values, neighbours):
        return _NeighbourSum.apply(values, neighbours)
    return F.embedding_bag(neighbours, values, mode="sum")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _FusedEdgeLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a_t, b_t, a_s, b_s, neighbours, weights, form, outputs):
        numba_threads()
        total = cpu_kernels.edge_loss_sum(*(_numpy(t) for t in (a_t, b_t, a_s, b_s, neighbours, weights)))
        ctx.save_for_backward(a_t, b_t, a_s, b_s, neighbours, weights)
        ctx.total, ctx.form, ctx.outputs = total, form, outputs
        return a_s.new_tensor(math.sqrt(total) if form == "norm" else total / outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        # d(value)/d(total): 1/outputs, or 1/(2·sqrt(total)) for the norm (0 at total 0, as vector_norm's backward).
        if ctx.form == "norm":
            coef = 0.0 if ctx.total == 0 else 0.5 / math.sqrt(ctx.total)
        else:
            coef = 1.0 / ctx.outputs
        arrays = [_numpy(t) for t in ctx.saved_tensors]
        grads = [np.zeros(a.shape, np.float64) for a in arrays[:4]]
        teacher = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        numba_threads()
        cpu_kernels.edge_loss_backward(*arrays, coef * float(grad), *grads, teacher)
        out = [torch.from_numpy(g.astype(np.float32)) if need else None for g, need in zip(grads, ctx.needs_input_grad)]
        return (*out, None, None, None, None)


class _NeighbourSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, neighbours):
        ctx.save_for_backward(neighbours)
        ctx.num_values = values.shape[0]
        return F.embedding_bag(neighbours, values.detach(), mode="sum")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (neighbours,) = ctx.saved_tensors
        out = np.zeros((ctx.num_values, grad.shape[1]), np.float32)
        cpu_kernels.scatter_rows(_numpy(grad), _numpy(neighbours), out)
        return torch.from_numpy(out), None
