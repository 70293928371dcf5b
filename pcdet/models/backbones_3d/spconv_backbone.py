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


class VoxelBackBone8x(nn.Module):
    """Four stages of submanifold/strided sparse convs (16, 32, 64, 64 channels; strides 1, 2, 4, 8) and a final
    z-downsampling conv to 128 channels. Writes ``encoded_spconv_tensor`` (stride 8), ``multi_scale_3d_features``
    and ``multi_scale_3d_strides``."""

    def __init__(self, model_cfg, input_channels: int, grid_size, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        norm_fn = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)
        # spconv wants (z, y, x); one extra z cell so that the z downsampling ends on a whole number of cells.
        self.sparse_shape = [int(grid_size[2]) + 1, int(grid_size[1]), int(grid_size[0])]

        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(input_channels, 16, 3, padding=1, bias=False, indice_key="subm1"),
            norm_fn(16),
            nn.ReLU(),
        )
        block = partial(post_act_block, norm_fn=norm_fn)
        self.conv1 = spconv.SparseSequential(block(16, 16, 3, padding=1, indice_key="subm1"))
        self.conv2 = spconv.SparseSequential(
            block(16, 32, 3, stride=2, padding=1, indice_key="spconv2", conv_type="spconv"),
            block(32, 32, 3, padding=1, indice_key="subm2"),
            block(32, 32, 3, padding=1, indice_key="subm2"),
        )
        self.conv3 = spconv.SparseSequential(
            block(32, 64, 3, stride=2, padding=1, indice_key="spconv3", conv_type="spconv"),
            block(64, 64, 3, padding=1, indice_key="subm3"),
            block(64, 64, 3, padding=1, indice_key="subm3"),
        )
        self.conv4 = spconv.SparseSequential(
            block(64, 64, 3, stride=2, padding=(0, 1, 1), indice_key="spconv4", conv_type="spconv"),
            block(64, 64, 3, padding=1, indice_key="subm4"),
            block(64, 64, 3, padding=1, indice_key="subm4"),
        )
        last_pad = model_cfg.get("last_pad", 0)
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(
                64, 128, (3, 1, 1), stride=(2, 1, 1), padding=last_pad, bias=False, indice_key="spconv_down2"
            ),
            norm_fn(128),
            nn.ReLU(),
        )
        self.num_point_features = 128
        self.backbone_channels = {"x_conv1": 16, "x_conv2": 32, "x_conv3": 64, "x_conv4": 64}

    def forward(self, batch_dict: dict) -> dict:
        """``voxel_features (V, C)``, ``voxel_coords (V, [b, z, y, x])`` → sparse multi-scale features."""
        x = spconv.SparseConvTensor(
            features=batch_dict["voxel_features"],
            indices=batch_dict["voxel_coords"].int(),
            spatial_shape=self.sparse_shape,
            batch_size=batch_dict["batch_size"],
        )
        x = self.conv_input(x)
        x_conv1 = self.conv1(x)
        x_conv2 = self.conv2(x_conv1)
        x_conv3 = self.conv3(x_conv2)
        x_conv4 = self.conv4(x_conv3)
        batch_dict["encoded_spconv_tensor"] = self.conv_out(x_conv4)
        batch_dict["encoded_spconv_tensor_stride"] = 8
        batch_dict["multi_scale_3d_features"] = {
            "x_conv1": x_conv1,
            "x_conv2": x_conv2,
            "x_conv3": x_conv3,
            "x_conv4": x_conv4,
        }
        batch_dict["multi_scale_3d_strides"] = {"x_conv1": 1, "x_conv2": 2, "x_conv3": 4, "x_conv4": 8}
        return batch_dict
