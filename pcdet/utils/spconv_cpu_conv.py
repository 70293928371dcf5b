"""Sparse-convolution gather-GEMM-scatter on CPU in plain PyTorch, replacing spconv's CPU kernels.

spconv 2.3's CPU ``scatter_add_cpu`` is wrong now and then when torch runs more than one thread: one output row of
a convolution gets a wrong sum (spconv issue #679 reports the symptom; measured here: 32 of 60 identical runs of a
16-channel SubMConv3d on 1,773 voxels had a wrong row with 2 threads, none with 1). Forward and backward of every
CPU sparse conv go through it, so SECOND / CenterPoint results on CPU changed from run to run. Here the same rule
books (spconv still builds them) drive ``index_select`` / ``mm`` and a serial numba scatter-add, and CUDA tensors
still take spconv's own kernels.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from spconv import constants as spconv_constants
from spconv.pytorch import ops as spconv_ops

from pcdet.utils.numba_utils import njit_cached


@njit_cached
def _scatter_add_rows_kernel(out, rows, values):  # pragma: no cover - compiled by numba
    for i in range(rows.shape[0]):
        row = rows[i]
        for c in range(out.shape[1]):
            out[row, c] += values[i, c]


def _scatter_add_rows(out: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """``out[rows] += values`` in place, one row after another. Same result as ``index_add_`` at about half its
    time on CPU (numba kernel for float32/64, spconv's scatter speed); other dtypes take ``index_add_``."""
    if out.dtype in (torch.float32, torch.float64) and out.is_contiguous():
        _scatter_add_rows_kernel(out.numpy(), rows.numpy(), values.contiguous().numpy())
    else:
        out.index_add_(0, rows.long(), values)


def _offset_pairs(
    indice_pairs: torch.Tensor, indice_pair_num: torch.Tensor, inverse: bool, subm: bool
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(kernel offset, input rows, output rows; int32) of every offset with pairs. A submanifold conv's centre offset is
    the identity (done by one mm) and, as spconv stores it, an offset past the centre has the pair count of its
    mirror offset."""
    counts = indice_pair_num.tolist()
    volume, centre = len(counts), len(counts) // 2
    rows_in, rows_out = indice_pairs[int(inverse)], indice_pairs[int(not inverse)]
    for offset in range(volume):
        if subm and offset == centre:
            continue
        count = counts[volume - 1 - offset] if subm and offset > centre else counts[offset]
        if count > 0:
            yield offset, rows_in[offset, :count], rows_out[offset, :count]


def _per_offset(filters: torch.Tensor) -> torch.Tensor:
    """spconv 2's weight layout (out, k_z, k_y, k_x, in) as (out, kernel volume, in)."""
    return filters.reshape(filters.shape[0], -1, filters.shape[-1])


def indice_conv_cpu(
    features: torch.Tensor,
    filters: torch.Tensor,
    indice_pairs: torch.Tensor,
    indice_pair_num: torch.Tensor,
    num_activate_out: int,
    inverse: bool = False,
    subm: bool = False,
) -> torch.Tensor:
    """Output features (num_activate_out, out channels) of a sparse conv given spconv's rule book."""
    weights = _per_offset(filters)
    if subm:
        out = torch.mm(features, weights[:, weights.shape[1] // 2].T)
    else:
        out = features.new_zeros((num_activate_out, weights.shape[0]))
    for offset, rows_in, rows_out in _offset_pairs(indice_pairs, indice_pair_num, inverse, subm):
        _scatter_add_rows(out, rows_out, torch.mm(features.index_select(0, rows_in.long()), weights[:, offset].T))
    return out


def indice_conv_backward_cpu(
    features: torch.Tensor,
    filters: torch.Tensor,
    out_bp: torch.Tensor,
    indice_pairs: torch.Tensor,
    indice_pair_num: torch.Tensor,
    inverse: bool = False,
    subm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (input features, filters) of :func:`indice_conv_cpu` for the output gradient ``out_bp``."""
    weights = _per_offset(filters)
    grad_weights = torch.zeros_like(weights)
    if subm:
        centre = weights.shape[1] // 2
        grad_weights[:, centre] = torch.mm(out_bp.T, features)
        grad_in = torch.mm(out_bp, weights[:, centre])
    else:
        grad_in = torch.zeros_like(features)
    for offset, rows_in, rows_out in _offset_pairs(indice_pairs, indice_pair_num, inverse, subm):
        grad_out = out_bp.index_select(0, rows_out.long())
        grad_weights[:, offset] = torch.mm(grad_out.T, features.index_select(0, rows_in.long()))
        _scatter_add_rows(grad_in, rows_in, torch.mm(grad_out, weights[:, offset]))
    return grad_in, grad_weights.reshape(filters.shape)


# spconv's own functions, kept by install(): CUDA calls (and tests) use them.
SPCONV_KERNELS: dict = {}


def install() -> None:
    """Route spconv's CPU sparse convs (forward and backward) through the functions above; CUDA, and a CPU call
    with a fused bias or activation (which spconv refuses on CPU itself), still reach spconv."""
    if not spconv_constants.ALL_WEIGHT_IS_KRSC:
        raise RuntimeError("pcdet's CPU sparse conv expects spconv 2's (out, k..., in) weight layout")
    if getattr(spconv_ops.indice_conv, "pcdet_cpu_path", False):
        return
    SPCONV_KERNELS.update(forward=spconv_ops.indice_conv, backward=spconv_ops.indice_conv_backward)
    native, no_activation = spconv_ops.ConvAlgo.Native, spconv_ops.tv.gemm.Activation.None_
    no_timer = spconv_ops.CUDAKernelTimer(False)

    def indice_conv(
        features,
        filters,
        indice_pairs,
        indice_pair_num,
        num_activate_out,
        inverse=False,
        subm=False,
        algo=native,
        timer=no_timer,
        bias=None,
        act_alpha=0.0,
        act_beta=0.0,
        act_type=no_activation,
    ):
        if features.is_cuda or bias is not None or act_type != no_activation:
            return SPCONV_KERNELS["forward"](
                features, filters, indice_pairs, indice_pair_num, num_activate_out, inverse, subm, algo, timer,
                bias, act_alpha, act_beta, act_type,
            )  # fmt: skip
        return indice_conv_cpu(
            features.contiguous(), filters, indice_pairs, indice_pair_num, num_activate_out, inverse, subm
        )

    def indice_conv_backward(
        features, filters, out_bp, indice_pairs, indice_pair_num, inverse=False, subm=False, algo=native,
        timer=no_timer,
    ):  # fmt: skip
        if features.is_cuda:
            return SPCONV_KERNELS["backward"](
                features, filters, out_bp, indice_pairs, indice_pair_num, inverse, subm, algo, timer
            )
        return indice_conv_backward_cpu(
            features.contiguous(), filters, out_bp.contiguous(), indice_pairs, indice_pair_num, inverse, subm
        )

    indice_conv.pcdet_cpu_path = indice_conv_backward.pcdet_cpu_path = True
    spconv_ops.indice_conv, spconv_ops.indice_conv_backward = indice_conv, indice_conv_backward
