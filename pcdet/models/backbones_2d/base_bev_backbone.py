"""The 2D BEV backbone of SECOND / PointPillars: strided conv blocks, each upsampled back and concatenated."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from ..model_utils.fused_inference import FoldCache, FoldedConvReLU, fold_conv_bn_relu, fused_active


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01), nn.ReLU()]


class BaseBEVBackbone(nn.Module):
    """Config: ``LAYER_NUMS``, ``LAYER_STRIDES``, ``NUM_FILTERS`` (one per level) and optionally
    ``UPSAMPLE_STRIDES`` / ``NUM_UPSAMPLE_FILTERS``; a stride < 1 downsamples with a strided conv instead.

    Writes ``spatial_features_2d`` (and each level's output as ``spatial_features_<stride>x``).
    """

    def __init__(self, model_cfg, input_channels: int, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        layer_nums = list(model_cfg.get("LAYER_NUMS", []))
        layer_strides = list(model_cfg.get("LAYER_STRIDES", []))
        num_filters = list(model_cfg.get("NUM_FILTERS", []))
        if not len(layer_nums) == len(layer_strides) == len(num_filters):
            raise ValueError("BaseBEVBackbone: LAYER_NUMS, LAYER_STRIDES and NUM_FILTERS need one entry per level")
        upsample_strides = list(model_cfg.get("UPSAMPLE_STRIDES", []))
        num_upsample_filters = list(model_cfg.get("NUM_UPSAMPLE_FILTERS", []))
        num_levels = len(layer_nums)
        if upsample_strides and (
            len(num_upsample_filters) != num_levels or len(upsample_strides) not in (num_levels, num_levels + 1)
        ):
            raise ValueError(
                "BaseBEVBackbone: NUM_UPSAMPLE_FILTERS needs one entry per level, UPSAMPLE_STRIDES one per level "
                "(plus optionally one for the concatenated map)"
            )
        use_conv_for_no_stride = model_cfg.get("USE_CONV_FOR_NO_STRIDE", False)

        c_in_list = [input_channels, *num_filters[:-1]]
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        for idx, (num_layers, stride, c_out) in enumerate(zip(layer_nums, layer_strides, num_filters)):
            # Explicit zero padding then an unpadded conv: the module indices (and state-dict keys) depend on it.
            layers: list[nn.Module] = [nn.ZeroPad2d(1)]
            layers += _conv_bn_relu(nn.Conv2d(c_in_list[idx], c_out, 3, stride=stride, padding=0, bias=False), c_out)
            for _ in range(num_layers):
                layers += _conv_bn_relu(nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), c_out)
            self.blocks.append(nn.Sequential(*layers))
            if upsample_strides:
                self.deblocks.append(
                    self._make_deblock(c_out, num_upsample_filters[idx], upsample_strides[idx], use_conv_for_no_stride)
                )

        c_total = sum(num_upsample_filters) if upsample_strides else sum(num_filters)
        if len(upsample_strides) > len(layer_nums):
            # One extra stride: upsample the concatenation once more.
            self.deblocks.append(self._make_deblock(c_total, c_total, upsample_strides[-1], False))
        self.num_bev_features = c_total
        self.fused_inference = False  # see model_utils.fused_inference
        self._fold_cache = FoldCache()

    @staticmethod
    def _make_deblock(c_in: int, c_out: int, stride: float, use_conv_for_no_stride: bool) -> nn.Sequential:
        if stride > 1 or (stride == 1 and not use_conv_for_no_stride):
            stride = int(stride)
            conv = nn.ConvTranspose2d(c_in, c_out, stride, stride=stride, bias=False)
        else:
            down = int(np.round(1 / stride))
            conv = nn.Conv2d(c_in, c_out, down, stride=down, bias=False)
        return nn.Sequential(*_conv_bn_relu(conv, c_out))

    def forward(self, data_dict: dict) -> dict:
        """``spatial_features (B, C, H, W)`` → ``spatial_features_2d (B, num_bev_features, H', W')``."""
        spatial_features = data_dict["spatial_features"]
        stages = [*self.blocks, *self.deblocks]  # run(k, x): stage k, deblock i is stage len(blocks) + i
        if fused_active(self):
            run = self._fused_runner()
            # oneDNN's convolutions are ~25 % faster on channels-last maps at batch 1 (no reorders per layer).
            spatial_features = spatial_features.contiguous(memory_format=torch.channels_last)
        else:

            def run(k: int, x: torch.Tensor) -> torch.Tensor:
                return stages[k](x)

        ups = []
        x = spatial_features
        num_blocks = len(self.blocks)
        for i in range(num_blocks):
            x = run(i, x)
            stride = int(spatial_features.shape[2] / x.shape[2])
            data_dict[f"spatial_features_{stride}x"] = x
            ups.append(run(num_blocks + i, x) if len(self.deblocks) > 0 else x)
        x = torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]
        if len(self.deblocks) > num_blocks:
            x = run(len(stages) - 1, x)
        data_dict["spatial_features_2d"] = x
        return data_dict

    def _fused_runner(self) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """A function ``(k, x) -> y`` running stage ``k`` (a block, then the deblocks) with every conv + BN + ReLU
        folded into one biased convolution with the ReLU fused (``fold_conv_bn_relu``), transposed deblocks too."""
        sources = [*self.parameters(), *self.buffers()]
        folded = self._fold_cache.get(sources, self._fold_all)

        def run(k: int, x: torch.Tensor) -> torch.Tensor:
            for step in folded[k]:
                x = step(x)
            return x

        return run

    def _fold_all(self) -> list[list[FoldedConvReLU]]:
        folded = []
        for sequential in [*self.blocks, *self.deblocks]:
            steps, pending_pad, modules = [], 0, list(sequential)
            for i, module in enumerate(modules):
                if isinstance(module, nn.ZeroPad2d):
                    pending_pad = module.padding[0]
                elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    # Every conv here is followed by its BatchNorm2d and a ReLU (_conv_bn_relu).
                    steps.append(fold_conv_bn_relu(module, modules[i + 1], extra_padding=pending_pad))
                    pending_pad = 0
            folded.append(steps)
        return folded
