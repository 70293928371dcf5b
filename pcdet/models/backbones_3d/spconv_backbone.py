"""Sparse 3D convolutional backbones (SECOND's encoder), on spconv 2.x."""

from __future__ import annotations

from functools import partial

import torch.nn as nn

from ...utils.spconv_utils import spconv_pytorch as spconv

# conv_type -> sparse convolution class.
_SPARSE_CONVS = {
    "subm": spconv.SubMConv3d,
    "spconv": spconv.SparseConv3d,
    "inverseconv": spconv.SparseInverseConv3d,
}


def post_act_block(
    in_channels: int,
    out_channels: int,
    kernel_size,
    indice_key: str | None = None,
    stride=1,
    padding=0,
    conv_type: str = "subm",
    norm_fn=None,
) -> spconv.SparseSequential:
    """Sparse conv (no bias) → norm → ReLU. ``indice_key`` lets layers at the same resolution share rulebooks."""
    if conv_type not in _SPARSE_CONVS:
        raise ValueError(f"unknown conv_type {conv_type!r}; available: {sorted(_SPARSE_CONVS)}")
    kwargs = {"bias": False, "indice_key": indice_key}
    if conv_type == "spconv":  # submanifold and inverse convs keep/restore the input's sites: no stride/padding
        kwargs.update(stride=stride, padding=padding)
    conv = _SPARSE_CONVS[conv_type](in_channels, out_channels, kernel_size, **kwargs)
    return spconv.SparseSequential(conv, norm_fn(out_channels), nn.ReLU())


# OpenPCDet's widths: conv_input/conv1, conv2, conv3, conv4, conv_out (its state dict has these shapes).
DEFAULT_NUM_FILTERS = (16, 32, 64, 64, 128)


class VoxelBackBone8x(nn.Module):
    """Four stages of submanifold/strided sparse convs (strides 1, 2, 4, 8) and a final z-downsampling conv.
    Writes ``encoded_spconv_tensor`` (stride 8), ``multi_scale_3d_features`` and ``multi_scale_3d_strides``.

    ``NUM_FILTERS`` (optional, not an OpenPCDet key; narrower students): the five widths of conv_input/conv1,
    conv2, conv3, conv4 and conv_out. The default, ``DEFAULT_NUM_FILTERS``, is OpenPCDet's network.
    """

    def __init__(self, model_cfg, input_channels: int, grid_size, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        widths = [int(c) for c in model_cfg.get("NUM_FILTERS", DEFAULT_NUM_FILTERS)]
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(
                f"VoxelBackBone8x: NUM_FILTERS needs 5 positive widths (conv1, conv2, conv3, conv4, conv_out), "
                f"got {widths}"
            )
        c1, c2, c3, c4, c_out = widths
        norm_fn = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)
        # spconv wants (z, y, x); one extra z cell so that the z downsampling ends on a whole number of cells.
        self.sparse_shape = [int(grid_size[2]) + 1, int(grid_size[1]), int(grid_size[0])]

        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(input_channels, c1, 3, padding=1, bias=False, indice_key="subm1"),
            norm_fn(c1),
            nn.ReLU(),
        )
        block = partial(post_act_block, norm_fn=norm_fn)
        self.conv1 = spconv.SparseSequential(block(c1, c1, 3, padding=1, indice_key="subm1"))
        self.conv2 = spconv.SparseSequential(
            block(c1, c2, 3, stride=2, padding=1, indice_key="spconv2", conv_type="spconv"),
            block(c2, c2, 3, padding=1, indice_key="subm2"),
            block(c2, c2, 3, padding=1, indice_key="subm2"),
        )
        self.conv3 = spconv.SparseSequential(
            block(c2, c3, 3, stride=2, padding=1, indice_key="spconv3", conv_type="spconv"),
            block(c3, c3, 3, padding=1, indice_key="subm3"),
            block(c3, c3, 3, padding=1, indice_key="subm3"),
        )
        self.conv4 = spconv.SparseSequential(
            block(c3, c4, 3, stride=2, padding=(0, 1, 1), indice_key="spconv4", conv_type="spconv"),
            block(c4, c4, 3, padding=1, indice_key="subm4"),
            block(c4, c4, 3, padding=1, indice_key="subm4"),
        )
        last_pad = model_cfg.get("last_pad", 0)
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(
                c4, c_out, (3, 1, 1), stride=(2, 1, 1), padding=last_pad, bias=False, indice_key="spconv_down2"
            ),
            norm_fn(c_out),
            nn.ReLU(),
        )
        self.num_point_features = c_out
        self.backbone_channels = {"x_conv1": c1, "x_conv2": c2, "x_conv3": c3, "x_conv4": c4}

    def forward(self, batch_dict: dict) -> dict:
        """``voxel_features (V, C)``, ``voxel_coords (V, [b, z, y, x])`` → sparse multi-scale features."""
        x = spconv.SparseConvTensor(
            features=batch_dict["voxel_features"],
            indices=batch_dict["voxel_coords"].int(),
            spatial_shape=self.sparse_shape,
            batch_size=batch_dict["batch_size"],
        )
        # spconv refuses empty inputs; a batch whose frames have no point in range (kept at test time) has no site
        # at any level, so every level is an empty tensor of its shape (the BEV map downstream is all zeros).
        run = self._empty_stage if x.features.shape[0] == 0 else (lambda stage, t: stage(t))
        x = run(self.conv_input, x)
        x_conv1 = run(self.conv1, x)
        x_conv2 = run(self.conv2, x_conv1)
        x_conv3 = run(self.conv3, x_conv2)
        x_conv4 = run(self.conv4, x_conv3)
        batch_dict["encoded_spconv_tensor"] = run(self.conv_out, x_conv4)
        batch_dict["encoded_spconv_tensor_stride"] = 8
        batch_dict["multi_scale_3d_features"] = {
            "x_conv1": x_conv1,
            "x_conv2": x_conv2,
            "x_conv3": x_conv3,
            "x_conv4": x_conv4,
        }
        batch_dict["multi_scale_3d_strides"] = {"x_conv1": 1, "x_conv2": 2, "x_conv3": 4, "x_conv4": 8}
        return batch_dict

    @staticmethod
    def _empty_stage(stage: spconv.SparseSequential, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        """What ``stage`` makes of a tensor without sites: no sites, its output width and spatial shape."""
        shape = list(x.spatial_shape)
        channels = x.features.shape[1]
        for module in stage.modules():  # the two conv kinds this backbone uses
            if isinstance(module, (spconv.SubMConv3d, spconv.SparseConv3d)):
                channels = module.out_channels
                if isinstance(module, spconv.SparseConv3d):  # submanifold convs keep the shape
                    shape = [
                        (s + 2 * p - d * (k - 1) - 1) // st + 1
                        for s, k, st, p, d in zip(
                            shape, module.kernel_size, module.stride, module.padding, module.dilation, strict=True
                        )
                    ]
        return spconv.SparseConvTensor(
            features=x.features.new_zeros((0, channels)),
            indices=x.indices.new_zeros((0, 4)),
            spatial_shape=shape,
            batch_size=x.batch_size,
        )
