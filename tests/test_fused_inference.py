"""The opt-in fused eval path (``enable_fused_inference``) against the reference forward: every intermediate output
equal up to float32 round-off, the detections the same, and training / the default eval forward untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _nuscenes_models import hand_batch, voxel_size_of
from test_anchor_head import fake_dataset, load_pp_cfg, small_model
from test_anchor_head_multi import TINY_PCR
from test_anchor_head_multi import tiny_model as tiny_multihead
from test_centerpoint import tiny_centerpoint
from test_inference_fast_paths import _random_pillars

from pcdet.models import build_network, load_data_to_gpu
from pcdet.models.backbones_3d.vfe.pillar_vfe import PillarVFE
from pcdet.models.model_utils import fused_inference
from pcdet.models.model_utils.fused_inference import enable_fused_inference, fold_conv_bn_relu, fused_inference_scope


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Trained-looking batch-norm statistics (random init has mean 0 / var 1, which would hide a wrong fold),
    including negative scales, which turn a max into a min if folded the wrong way round."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.05)
                module.weight.copy_(torch.randn(n, generator=gen))
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)


def _pair(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    model.eval()
    return model, enable_fused_inference(copy.deepcopy(model))


def _forward(model: torch.nn.Module, batch: dict) -> tuple[list[dict], dict]:
    batch = load_data_to_gpu(copy.deepcopy(batch), device="cpu")
    with torch.no_grad():
        preds, _ = model(batch)
    return preds, batch


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    # float32 round-off of folded weights and reordered sums, relative to the tensor's magnitude.
    atol = rel * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def _separated_head(model: torch.nn.Module, seed: int) -> None:
    """Spread class logits so that a few dozen anchors pass the 0.1 threshold with distinct scores: a score tie
    within round-off could otherwise swap which of two overlapping boxes NMS keeps, on either path."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = model.dense_head
        head.conv_cls.weight.copy_(torch.randn(head.conv_cls.weight.shape, generator=gen))
        head.conv_cls.bias.fill_(-3.0)


def test_every_intermediate_output_equals_the_reference_small_model():
    model, _ = small_model()
    _randomise_norms(model)
    reference, fused = _pair(model)
    batch = _random_pillars(np.random.default_rng(5))
    _, ref = _forward(reference, batch)
    _, out = _forward(fused, batch)
    _assert_close(out["pillar_features"], ref["pillar_features"])
    # The channels-last scatter is a copy: the same values from the same pillar features.
    with torch.no_grad():
        scattered = fused.map_to_bev_module(dict(ref))["spatial_features"]
    assert torch.equal(scattered, ref["spatial_features"])
    assert scattered.is_contiguous(memory_format=torch.channels_last)
    for key in ("spatial_features_2x", "spatial_features_4x", "spatial_features_8x", "spatial_features_2d"):
        assert out[key].shape == ref[key].shape
        _assert_close(out[key], ref[key])
    assert out["batch_cls_preds"].shape == ref["batch_cls_preds"].shape
    _assert_close(out["batch_cls_preds"], ref["batch_cls_preds"])
    _assert_close(out["batch_box_preds"], ref["batch_box_preds"])
    for key in ("cls_preds", "box_preds", "dir_cls_preds"):
        _assert_close(fused.dense_head.forward_ret_dict[key], reference.dense_head.forward_ret_dict[key])


@pytest.mark.parametrize("use_absolute_xyz, with_distance", [(True, False), (False, True), (True, True)])
def test_fused_pillar_vfe_equals_the_reference_for_each_decoration(use_absolute_xyz, with_distance):
    cfg = load_pp_cfg()
    vfe_cfg = copy.deepcopy(cfg.MODEL.VFE)
    vfe_cfg.USE_ABSLOTE_XYZ, vfe_cfg.WITH_DISTANCE = use_absolute_xyz, with_distance
    torch.manual_seed(1)
    vfe = PillarVFE(vfe_cfg, 4, voxel_size=[0.16, 0.16, 4.0], point_cloud_range=[0, -2.56, -3, 5.12, 2.56, 1])
    _randomise_norms(vfe, seed=1)
    reference, fused = _pair(vfe)
    batch = load_data_to_gpu(_random_pillars(np.random.default_rng(2)), device="cpu")
    with torch.no_grad():
        expected = reference(dict(batch))["pillar_features"]
        actual = fused(dict(batch))["pillar_features"]
    assert actual.shape == expected.shape == (300, 64)
    _assert_close(actual, expected)


def _count_deconv_calls(monkeypatch) -> list[tuple[int, ...]]:
    """Kernel sizes of the transposed convolutions run through oneDNN's fused deconv + ReLU (where it exists)."""
    calls: list[tuple[int, ...]] = []
    real = fused_inference._DECONV_RELU
    if real is not None:

        def spy(x, weight, *args):
            calls.append(tuple(weight.shape[2:]))
            return real(x, weight, *args)

        monkeypatch.setattr(fused_inference, "_DECONV_RELU", spy)
    return calls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detections_equal_the_reference(seed, monkeypatch):
    model, _ = small_model()
    _randomise_norms(model, seed)
    _separated_head(model, seed)
    reference, fused = _pair(model)
    batch = _random_pillars(np.random.default_rng(10 + seed))
    expected, _ = _forward(reference, batch)
    deconvs = _count_deconv_calls(monkeypatch)
    actual, _ = _forward(fused, batch)
    if fused_inference._DECONV_RELU is not None:  # the stride-2 and stride-4 deblocks (stride 1 runs as a conv)
        assert deconvs == [(2, 2), (4, 4)]
    assert len(expected[0]["pred_scores"]) > 3
    assert torch.equal(actual[0]["pred_labels"], expected[0]["pred_labels"])
    torch.testing.assert_close(actual[0]["pred_boxes"], expected[0]["pred_boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(actual[0]["pred_scores"], expected[0]["pred_scores"], rtol=0, atol=1e-5)


def test_full_width_synthetic_config_detections_equal_the_reference():
    # The 4x student's layer structure (3 / 5 / 5 layers, a 1x1 stride-1 deblock run as a convolution).
    cfg = load_pp_cfg()
    cfg.MODEL.VFE.NUM_FILTERS = [32]
    cfg.MODEL.MAP_TO_BEV.NUM_BEV_FEATURES = 32
    cfg.MODEL.BACKBONE_2D.NUM_FILTERS = [32, 64, 128]
    cfg.MODEL.BACKBONE_2D.NUM_UPSAMPLE_FILTERS = [64, 64, 64]
    torch.manual_seed(0)
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), fake_dataset(cfg, (0, -2.56, -3, 5.12, 2.56, 1)))
    _randomise_norms(model, 3)
    _separated_head(model, 3)
    reference, fused = _pair(model)
    batch = _random_pillars(np.random.default_rng(4))
    expected, ref = _forward(reference, batch)
    actual, out = _forward(fused, batch)
    _assert_close(out["spatial_features_2d"], ref["spatial_features_2d"])
    _assert_close(out["batch_box_preds"], ref["batch_box_preds"])
    assert len(expected[0]["pred_scores"]) > 3
    assert torch.equal(actual[0]["pred_labels"], expected[0]["pred_labels"])
    torch.testing.assert_close(actual[0]["pred_boxes"], expected[0]["pred_boxes"], rtol=0, atol=1e-4)


def test_training_and_gradient_mode_stay_on_the_reference_path_bit_for_bit():
    model, _ = small_model()
    _randomise_norms(model)
    batch = _random_pillars(np.random.default_rng(6))
    reference, fused = _pair(model)
    # Eval with autograd on (as a caller computing gradients through the detector would): the reference path.
    ref = load_data_to_gpu(copy.deepcopy(batch), device="cpu")
    out = load_data_to_gpu(copy.deepcopy(batch), device="cpu")
    reference(ref)
    fused(out)
    for key in ("pillar_features", "spatial_features", "spatial_features_2d", "batch_cls_preds", "batch_box_preds"):
        assert torch.equal(out[key], ref[key]), key
    # Training mode: the same modules' outputs, bit for bit (KD teachers and training never see the fused path).
    reference.train()
    fused.train()
    for module_ref, module_fused in zip(reference.module_list[:3], fused.module_list[:3]):
        ref = module_ref(ref)
        out = module_fused(out)
    assert torch.equal(out["spatial_features_2d"], ref["spatial_features_2d"])
    assert list(fused.state_dict()) == list(reference.state_dict())


def test_folded_weights_follow_a_loaded_state_dict():
    model, _ = small_model()
    reference, fused = _pair(model)
    batch = _random_pillars(np.random.default_rng(7))
    _forward(fused, batch)  # folds and caches the initial weights
    _randomise_norms(reference, seed=9)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.01)
    fused.load_state_dict(reference.state_dict())  # copied in place: the caches must notice
    _, ref = _forward(reference, batch)
    _, out = _forward(fused, batch)
    _assert_close(out["pillar_features"], ref["pillar_features"])
    _assert_close(out["batch_box_preds"], ref["batch_box_preds"])
    _assert_close(out["batch_cls_preds"], ref["batch_cls_preds"])


# ------------------------------------------------------------------------------------------- other detectors
_NUSCENES_BOXES = [  # x, y, z, dx, dy, dz, heading, vx, vy, label
    np.array([[1.0, 0.5, -0.1, 4.6, 1.9, 1.7, 0.1, 2.0, -1.0, 1], [-3.0, 2.0, 0.3, 0.7, 0.7, 1.8, 1.5, 0, 0, 9]]),
    np.array([[2.0, -2.0, 0.6, 6.9, 2.5, 2.8, 1.6, 0.0, 3.0, 2]]),
]


def _assert_same_detections(expected: list[dict], actual: list[dict]) -> None:
    for exp, act in zip(expected, actual, strict=True):
        # Hundreds of random-weight boxes: a near-tie within round-off could swap two overlapping ones (the seeds
        # below have none that does).
        assert len(exp["pred_scores"]) > 3
        assert torch.equal(act["pred_labels"], exp["pred_labels"])
        torch.testing.assert_close(act["pred_scores"], exp["pred_scores"], rtol=0, atol=1e-5)
        _assert_close(act["pred_boxes"], exp["pred_boxes"], rel=1e-5)


@pytest.mark.parametrize("seed", [1, 2])
def test_multihead_pointpillars_detections_equal_the_reference(seed):
    # nuScenes PointPillars-MultiHead: fused PillarVFE, scatter and BEV backbone feed AnchorHeadMulti's towers.
    model, cfg = tiny_multihead()
    _randomise_norms(model, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.dense_head.rpn_heads:
            cls = head.conv_cls if isinstance(head.conv_cls, torch.nn.Conv2d) else head.conv_cls[-1]
            cls.weight.copy_(torch.randn(cls.weight.shape, generator=gen) * 0.5)
            cls.bias.fill_(-3.0)
            boxes = [head.conv_box] if isinstance(head.conv_box, torch.nn.Conv2d) else head.conv_box.values()
            for tower in boxes:  # small residuals: boxes of sensible size, so 1e-5 of them is round-off
                (tower if isinstance(tower, torch.nn.Conv2d) else tower[-1]).weight.mul_(0.01)
    reference, fused = _pair(model)
    batch = hand_batch(TINY_PCR, voxel_size_of(cfg), 20, _NUSCENES_BOXES, seed=1)
    expected, ref = _forward(reference, batch)
    actual, out = _forward(fused, batch)
    _assert_close(out["spatial_features_2d"], ref["spatial_features_2d"])
    _assert_same_detections(expected, actual)


def test_centerpoint_detections_equal_the_reference():
    # CenterPoint: only its BEV backbone has a fused path (the sparse 3D encoder and CenterHead run as before).
    model, pcr, voxel = tiny_centerpoint()
    _randomise_norms(model, 0)
    reference, fused = _pair(model)
    batch = hand_batch(pcr, voxel, 10, _NUSCENES_BOXES, seed=1)
    expected, ref = _forward(reference, batch)
    actual, out = _forward(fused, batch)
    _assert_close(out["spatial_features_2d"], ref["spatial_features_2d"])
    _assert_same_detections(expected, actual)


# ------------------------------------------------------------------------------------------- folded deblocks
@pytest.mark.parametrize(
    "kernel, stride, padding, output_padding", [(2, 2, 0, 0), (4, 4, 0, 0), (3, 2, 1, 1), (1, 1, 0, 0)]
)
@pytest.mark.parametrize("onednn", [True, False])
def test_folded_transposed_deblock_equals_conv_transpose_bn_relu(
    kernel, stride, padding, output_padding, onednn, monkeypatch
):
    torch.manual_seed(10 * kernel + stride)
    deconv = torch.nn.ConvTranspose2d(
        24, 16, kernel, stride=stride, padding=padding, output_padding=output_padding, bias=False
    )
    block = torch.nn.Sequential(deconv, torch.nn.BatchNorm2d(16, eps=1e-3, momentum=0.01), torch.nn.ReLU()).eval()
    _randomise_norms(block, seed=stride)
    if not onednn:  # the plain transposed conv + in-place ReLU (CUDA, or a torch build without oneDNN's op)
        monkeypatch.setattr(fused_inference, "_DECONV_RELU", None)
        monkeypatch.setattr(fused_inference, "_CONV_RELU", None)
    folded = fold_conv_bn_relu(block[0], block[1])
    assert folded.transposed == (kernel != 1)  # a 1x1 stride-1 one is run as the equal 1x1 convolution
    x = torch.randn(2, 24, 13, 11) * 3
    with torch.no_grad():
        expected = block(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            actual = folded(x.contiguous(memory_format=layout))
            assert actual.shape == expected.shape
            # Folded weights round differently: relative 1e-5, plus a floor for outputs the ReLU leaves near 0.
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
            assert (actual >= 0).all()


def test_fold_refuses_what_it_cannot_fold():
    norm = torch.nn.BatchNorm2d(8)
    with pytest.raises(ValueError, match="bias-free"):
        fold_conv_bn_relu(torch.nn.ConvTranspose2d(8, 8, 2, stride=2, bias=True), norm)
    with pytest.raises(ValueError, match="ZeroPad2d"):
        fold_conv_bn_relu(torch.nn.ConvTranspose2d(8, 8, 2, stride=2, bias=False), norm, extra_padding=1)


def test_fused_inference_scope_restores_every_flag_also_on_error():
    model, _ = small_model()
    flagged = [m for m in model.modules() if hasattr(m, "fused_inference")]
    assert [type(m).__name__ for m in flagged] == [
        "PillarVFE", "PointPillarScatter", "BaseBEVBackbone", "AnchorHeadSingle"
    ]  # fmt: skip
    with fused_inference_scope(model) as inside:
        assert inside is model and all(m.fused_inference for m in flagged)
    assert not any(m.fused_inference for m in flagged)
    model.backbone_2d.fused_inference = True  # set by the caller before: it stays set
    with pytest.raises(RuntimeError, match="boom"), fused_inference_scope(model, enabled=False):
        assert not any(m.fused_inference for m in flagged)
        raise RuntimeError("boom")
    assert [m.fused_inference for m in flagged] == [False, False, True, False]
