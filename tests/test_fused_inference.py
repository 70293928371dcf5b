"""The opt-in fused eval path (``enable_fused_inference``) against the reference forward: every intermediate output
equal up to float32 round-off, the detections the same, and training / the default eval forward untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_anchor_head import fake_dataset, load_pp_cfg, small_model
from test_inference_fast_paths import _random_pillars

from pcdet.models import build_network, load_data_to_gpu
from pcdet.models.backbones_3d.vfe.pillar_vfe import PillarVFE
from pcdet.models.model_utils.fused_inference import enable_fused_inference


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detections_equal_the_reference(seed):
    model, _ = small_model()
    _randomise_norms(model, seed)
    _separated_head(model, seed)
    reference, fused = _pair(model)
    batch = _random_pillars(np.random.default_rng(10 + seed))
    expected, _ = _forward(reference, batch)
    actual, _ = _forward(fused, batch)
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
