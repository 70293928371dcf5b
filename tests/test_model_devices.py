"""A PointPillars forward (eval with post-processing, and a training loss with backward) on every available device
(the ``device`` fixture), against the same model run in float64 on the CPU."""

from __future__ import annotations

import copy

import numpy as np
import torch
from test_anchor_head import small_model
from test_inference_fast_paths import _random_pillars

from pcdet.models import load_data_to_gpu


def _batch(device: torch.device, dtype: torch.dtype, with_gt: bool) -> dict:
    batch = _random_pillars(np.random.default_rng(11))
    if with_gt:  # two cars inside small_model's 5.12 x 5.12 m range, class label 1
        batch["gt_boxes"] = np.array(
            [[[1.5, -1.0, -1.0, 3.9, 1.6, 1.56, 0.3, 1], [3.5, 1.2, -1.0, 3.9, 1.6, 1.5, 1.9, 1]]]
        )
    batch = load_data_to_gpu(batch, device=device)
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


def _float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(model).double()
    reference.dense_head.anchors = [a.double() for a in reference.dense_head.anchors]  # a plain list, not buffers
    return reference


def test_eval_forward_on_device_matches_float64_cpu(device):
    model, _ = small_model()
    model.eval()
    reference = _float64_copy(model)
    with torch.no_grad():
        preds, _ = model.to(device)(out := _batch(device, torch.float32, with_gt=False))
        ref_preds, _ = reference(ref := _batch(torch.device("cpu"), torch.float64, with_gt=False))
    for key in ("batch_cls_preds", "batch_box_preds"):
        assert out[key].device == device
        torch.testing.assert_close(out[key].cpu().double(), ref[key].double(), atol=2e-4, rtol=1e-4)
    assert len(preds) == 1 and preds[0]["pred_boxes"].device == device
    assert torch.isfinite(preds[0]["pred_boxes"]).all()


def test_training_loss_and_gradients_on_device_match_float64_cpu(device):
    model, _ = small_model()
    model.train()
    reference = _float64_copy(model)
    model.to(device)
    loss, _, _ = model(_batch(device, torch.float32, with_gt=True))
    ref_loss, _, _ = reference(_batch(torch.device("cpu"), torch.float64, with_gt=True))
    loss["loss"].backward()
    ref_loss["loss"].backward()
    assert loss["loss"].device == device
    torch.testing.assert_close(loss["loss"].detach().cpu().double(), ref_loss["loss"].detach(), atol=1e-4, rtol=1e-4)
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad.cpu().double(), q.grad, atol=1e-3, rtol=1e-2, msg=name)
