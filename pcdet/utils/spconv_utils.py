"""The one import point for spconv.

spconv's CPU wheel runs sparse-conv forward on CPU, but its backward asks ``torch.cuda.current_stream()`` for a
stream handle (through ``get_current_stream`` imported by name into several spconv modules), which raises without
CUDA. CPU kernels ignore the stream, so on a machine without CUDA we hand them the null stream (0). With CUDA
available nothing is patched. On every machine, CPU sparse convs run through :mod:`pcdet.utils.spconv_cpu_conv`
(spconv's own CPU scatter races with more than one thread).
"""

from __future__ import annotations

import spconv
import spconv.pytorch as spconv_pytorch
import torch

from pcdet.utils import spconv_cpu_conv

_PATCHED_MODULES = ("spconv.pytorch.cppcore", "spconv.pytorch.ops", "spconv.pytorch.hash")


def _null_stream() -> int:
    return 0


def _install_cpu_stream_shim() -> None:
    import importlib

    for name in _PATCHED_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "get_current_stream"):
            module.get_current_stream = _null_stream


if not torch.cuda.is_available():
    _install_cpu_stream_shim()
spconv_cpu_conv.install()

SPCONV_VERSION = tuple(int(p) for p in spconv.__version__.split(".")[:2])

__all__ = ["spconv_pytorch", "SPCONV_VERSION", "replace_feature"]


def replace_feature(sparse_tensor: spconv_pytorch.SparseConvTensor, new_features: torch.Tensor):
    """Return the sparse tensor carrying ``new_features`` (spconv 2.x API)."""
    return sparse_tensor.replace_feature(new_features)


class SubMConv3dBias(spconv_pytorch.SubMConv3d):
    """SubMConv3d whose bias also works on CPU in eval mode: spconv's CPU kernels cannot fuse a bias into
    inference (an assertion), so on CPU the convolution runs without it and the bias is added to the output
    features, as spconv itself does in training. Same parameters and state-dict keys as SubMConv3d."""

    def forward(self, input: spconv_pytorch.SparseConvTensor, add_input=None) -> spconv_pytorch.SparseConvTensor:
        if self.bias is None or input.features.is_cuda:
            return super().forward(input, add_input)
        out = self._conv_forward(
            self.training,
            input,
            self.weight,
            None,
            add_input,
            name=self.name,
            sparse_unique_name=self._sparse_unique_name,
            act_type=self.act_type,
            act_alpha=self.act_alpha,
            act_beta=self.act_beta,
        )
        return replace_feature(out, out.features + self.bias)
