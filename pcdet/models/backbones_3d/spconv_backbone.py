"""Sparse 3D convolutional backbones (SECOND's encoder), on spconv 2.x."""

from __future__ import annotations

from functools import partial

import torch.nn as nn

from ...utils.spconv_utils import SubMConv3dBias, replace_feature
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


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two submanifold 3×3×3 convs: conv → norm → ReLU → conv → norm, + input, ReLU.
    Same width in and out (no downsampling branch: the backbones below stride with separate convs)."""

    def __init__(self, channels: int, norm_fn, indice_key: str | None = None, bias: bool | None = None):
        super().__init__()
        bias = True if bias is None else bool(bias)  # OpenPCDet's default (USE_BIAS unset): convs with bias
        self.conv1 = SubMConv3dBias(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn1 = norm_fn(channels)
        self.relu = nn.ReLU()
        self.conv2 = SubMConv3dBias(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn2 = norm_fn(channels)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = replace_feature(out, self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return replace_feature(out, self.relu(self.bn2(out.features) + x.features))


class VoxelBackBone8x(nn.Module):
    """Four stages of submanifold/strided sparse convs (strides 1, 2, 4, 8) and a final z-downsampling conv.
    Writes ``encoded_spconv_tensor`` (stride 8), ``multi_scale_3d_features`` and ``multi_scale_3d_strides``.

    ``NUM_FILTERS`` (optional, not an OpenPCDet key; narrower students): the five widths of conv_input/conv1,
    conv2, conv3, conv4 and conv_out. The default, ``DEFAULT_NUM_FILTERS``, is OpenPCDet's network.
    """

    DEFAULT_NUM_FILTERS = DEFAULT_NUM_FILTERS

    def __init__(self, model_cfg, input_channels: int, grid_size, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        name = type(self).__name__
        widths = [int(c) for c in model_cfg.get("NUM_FILTERS", self.DEFAULT_NUM_FILTERS)]
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(
                f"{name}: NUM_FILTERS needs 5 positive widths (conv1, conv2, conv3, conv4, conv_out), got {widths}"
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
        self.conv1 = self._stage(None, c1, 1, norm_fn)
        down2 = block(c1, c2, 3, stride=2, padding=1, indice_key="spconv2", conv_type="spconv")
        self.conv2 = self._stage(down2, c2, 2, norm_fn)
        down3 = block(c2, c3, 3, stride=2, padding=1, indice_key="spconv3", conv_type="spconv")
        self.conv3 = self._stage(down3, c3, 3, norm_fn)
        down4 = block(c3, c4, 3, stride=2, padding=(0, 1, 1), indice_key="spconv4", conv_type="spconv")
        self.conv4 = self._stage(down4, c4, 4, norm_fn)
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

    def _stage(self, down: spconv.SparseSequential | None, channels: int, level: int, norm_fn):
        """A stage at one resolution: its downsampling block (none for the first), then the blocks at that width
        (here two submanifold conv blocks; one in the first stage)."""
        block = partial(post_act_block, norm_fn=norm_fn)
        count = 1 if down is None else 2
        same = [block(channels, channels, 3, padding=1, indice_key=f"subm{level}") for _ in range(count)]
        return spconv.SparseSequential(*([] if down is None else [down]), *same)

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
        for module in stage.modules():  # the two conv kinds these backbones use
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


class VoxelResBackBone8x(VoxelBackBone8x):
    """VoxelBackBone8x with residual stages (CenterPoint's nuScenes encoder): each stage is its downsampling
    block then two :class:`SparseBasicBlock`. ``USE_BIAS`` (OpenPCDet's key) sets the residual convs' bias
    (default: with bias). Widths default to OpenPCDet's (16, 32, 64, 128, 128); ``NUM_FILTERS`` as in the parent.
    """

    DEFAULT_NUM_FILTERS = (16, 32, 64, 128, 128)

    def _stage(self, down: spconv.SparseSequential | None, channels: int, level: int, norm_fn):
        bias = self.model_cfg.get("USE_BIAS", None)
        blocks = [SparseBasicBlock(channels, norm_fn, indice_key=f"res{level}", bias=bias) for _ in range(2)]
        return spconv.SparseSequential(*([] if down is None else [down]), *blocks)
