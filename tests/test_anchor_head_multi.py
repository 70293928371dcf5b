"""PointPillars multi-head (cbgs_pp_multihead.yaml): OpenPCDet's state-dict layout, the multi-head anchor and
output layouts by hand, targets → decoding round trip, per-head labels in post-processing, and a training step /
eval forward of the detector on a tiny batch (on every device of the ``device`` fixture)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _nuscenes_models import REF, hand_batch, load_cfg, read_keys_tsv, state_rows, stub_dataset, voxel_size_of

from pcdet.models import build_network, load_data_to_gpu

CFG = "cbgs_pp_multihead.yaml"
needs_reference = pytest.mark.skipif(not REF.is_dir(), reason="shared OpenPCDet reference files not available")
# 12.8 m square, 0.2 m pillars: a 64 x 64 grid, the head at stride 4 on 16 x 16 cells.
TINY_PCR = [-6.4, -6.4, -5.0, 6.4, 6.4, 3.0]


@needs_reference
def test_state_dict_equals_openpcdet():
    cfg = load_cfg(CFG)
    dataset = stub_dataset(cfg.CLASS_NAMES, cfg.DATA_CONFIG.POINT_CLOUD_RANGE, voxel_size_of(cfg))
    summary = json.loads((REF / "summary.json").read_text())["cbgs_pp_multihead"]
    assert dataset.grid_size.tolist() == summary["grid_size"]
    model = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    assert state_rows(model) == read_keys_tsv(REF / "cbgs_pp_multihead.keys.tsv")
    assert len(model.state_dict()) == summary["n_keys"] == 421
    assert sum(p.numel() for p in model.parameters()) == summary["n_params"]
    assert [type(m).__name__ for m in model.module_list] == summary["modules"]
    assert model.dense_head.num_anchors_per_location == summary["num_anchors_per_location"]
    labels = [h.head_label_indices.tolist() for h in model.dense_head.rpn_heads]
    assert labels == [[1], [2, 3], [4, 5], [6], [7, 8], [9, 10]]


def tiny_model(seed: int = 0):
    cfg = load_cfg(CFG)
    torch.manual_seed(seed)
    dataset = stub_dataset(cfg.CLASS_NAMES, TINY_PCR, voxel_size_of(cfg))
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset), cfg


def test_anchor_and_output_layouts_by_hand():
    model, _ = tiny_model()
    head = model.dense_head
    anchors = head.flat_anchors(torch.device("cpu"))
    assert anchors.shape == (10 * 2 * 16 * 16, 10)  # zero-padded to the code size, as OpenPCDet pads them
    # Class after class; within a class (size, rotation, y, x): x fastest, then y, then rotation.
    per_class = 2 * 16 * 16
    car, truck = anchors[:per_class].view(2, 16, 16, 10), anchors[per_class : 2 * per_class].view(2, 16, 16, 10)
    assert torch.allclose(car[..., 3], torch.tensor(4.63)) and torch.allclose(truck[..., 3], torch.tensor(6.93))
    assert car[0, 0, 1, 0] > car[0, 0, 0, 0] and car[0, 1, 0, 1] > car[0, 0, 0, 1]
    assert torch.all(anchors[:, 7:] == 0)
    assert car[0, 5, 7, 6] == 0 and car[1, 5, 7, 6] == pytest.approx(1.57)
    assert torch.equal(car[1, :, :, :2], car[0, :, :, :2])

    # A head's output channel block a·C + c at (y, x) lands at row a·H·W + y·W + x, column c.
    single = head.rpn_heads[1]  # truck + construction_vehicle: 4 anchors, 2 classes
    b, a, c, h, w = 2, 4, 2, 3, 5
    x = torch.arange(b * a * c * h * w, dtype=torch.float32).view(b, a * c, h, w)
    out = single._per_anchor(x, c)
    for bi, ai, ci, yi, xi in [(0, 0, 0, 0, 0), (1, 3, 1, 2, 4), (0, 2, 1, 1, 3)]:
        assert out[bi, ai * h * w + yi * w + xi, ci] == x[bi, ai * c + ci, yi, xi]


def test_forward_loss_shapes_and_decode_round_trip():
    model, _ = tiny_model()
    head = model.dense_head
    gt = torch.tensor(
        [
            [[1.0, 0.5, -0.1, 4.6, 1.9, 1.7, 0.1, 2.0, -1.0, 1], [-3.0, 2.0, 0.3, 0.7, 0.7, 1.8, 1.5, 0.5, 0.0, 9]],
            [[2.0, -2.0, 0.6, 6.9, 2.5, 2.8, 1.6, 0.0, 3.0, 2], [0.0] * 10],
        ]
    )
    features = torch.randn(2, 384, 16, 16)
    head.train()
    out = head({"spatial_features_2d": features, "gt_boxes": gt, "batch_size": 2})
    ret = head.forward_ret_dict
    heads = ((2, 1), (4, 2), (4, 2), (2, 1), (4, 2), (4, 2))  # (anchors per location, classes) per head
    assert [tuple(p.shape) for p in ret["cls_preds"]] == [(2, n * 256, k) for n, k in heads]
    assert ret["box_preds"].shape == (2, 5120, 10) and ret["dir_cls_preds"] is None
    assert ret["box_cls_labels"].shape == (2, 5120) and ret["box_reg_targets"].shape == (2, 5120, 10)
    assert "batch_cls_preds" not in out  # no prediction in training (single stage)
    loss, tb = head.get_loss()
    assert torch.isfinite(loss) and tb["rpn_loss_cls"] > 0 and tb["rpn_loss_loc"] > 0

    # Positives sit in their class's anchor slice; the regression targets decode back to their gt boxes.
    labels = ret["box_cls_labels"]
    for b, cls in ((0, 1), (0, 9), (1, 2)):
        rows = torch.nonzero(labels[b] == cls)[:, 0]
        assert rows.numel() > 0 and ((rows // 512) == cls - 1).all()
    _, boxes = head.generate_predicted_boxes(2, ret["cls_preds"], ret["box_reg_targets"])
    for b, row in ((0, 0), (0, 1), (1, 0)):
        positives = labels[b] == int(gt[b, row, -1])
        decoded = boxes[b, positives]
        want = gt[b, row, :9].expand_as(decoded).clone()
        # The sin/cos code gives the heading in (−π, π].
        torch.testing.assert_close(decoded, want, atol=1e-4, rtol=1e-4)


def test_post_processing_maps_each_heads_classes():
    model, _ = tiny_model()
    model.eval()
    boxes = torch.zeros(1, 5120, 9)
    boxes[..., 3:6] = 1.0
    heads = ((2, 1), (4, 2), (4, 2), (2, 1), (4, 2), (4, 2))
    cls = [torch.full((1, n * 256, k), -10.0) for n, k in heads]
    starts = np.cumsum([0] + [c.shape[1] for c in cls])
    # Head 1's second class (construction_vehicle, label 3) and head 5's first (pedestrian, label 9).
    cls[1][0, 7, 1] = 5.0
    boxes[0, starts[1] + 7, :2] = torch.tensor([1.0, 1.0])
    cls[5][0, 30, 0] = 4.0
    boxes[0, starts[5] + 30, :2] = torch.tensor([-2.0, 3.0])
    batch = {
        "batch_size": 1,
        "batch_cls_preds": cls,
        "batch_box_preds": boxes,
        "cls_preds_normalized": False,
        "multihead_label_mapping": [h.head_label_indices for h in model.dense_head.rpn_heads],
    }
    for multi_classes in (True, False):  # per-class NMS, or one NMS per head over its best class
        model.model_cfg.POST_PROCESSING.NMS_CONFIG.MULTI_CLASSES_NMS = multi_classes
        preds, _ = model.post_processing(batch)
        assert preds[0]["pred_labels"].tolist() == [3, 9]
        torch.testing.assert_close(preds[0]["pred_boxes"][:, :2], torch.tensor([[1.0, 1.0], [-2.0, 3.0]]))
        torch.testing.assert_close(preds[0]["pred_scores"], torch.sigmoid(torch.tensor([5.0, 4.0])))


def test_training_step_and_eval_forward(device):
    model, cfg = tiny_model()
    model.to(device)
    voxel = voxel_size_of(cfg)
    boxes = [
        np.array([[1.0, 0.5, -0.1, 4.6, 1.9, 1.7, 0.1, 2.0, -1.0, 1], [-3.0, 2.0, 0.3, 0.7, 0.7, 1.8, 1.5, 0, 0, 9]]),
        np.array([[2.0, -2.0, 0.6, 6.9, 2.5, 2.8, 1.6, 0.0, 3.0, 2]]),
    ]
    batch = load_data_to_gpu(hand_batch(TINY_PCR, voxel, 20, boxes), device=device)
    model.train()
    ret, tb, _ = model(batch)
    assert batch["pillar_features"].shape[1] == 64 and batch["spatial_features_2d"].shape == (2, 384, 16, 16)
    assert torch.isfinite(ret["loss"])
    ret["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # (The towers' channels are read as OpenPCDet reads them: conv_reg feeds the first anchor, rotation 0, whose
    # positive is the car here; conv_velo feeds the second anchor's codes 6-9 and gets no gradient.)
    assert model.dense_head.rpn_heads[0].conv_box["conv_reg"][-1].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        preds, recall = model(load_data_to_gpu(hand_batch(TINY_PCR, voxel, 20, boxes, seed=1), device=device))
    assert len(preds) == 2 and recall["gt"] == 3
    for pred in preds:
        assert pred["pred_boxes"].device.type == device.type and pred["pred_boxes"].shape[1] == 9
        assert ((pred["pred_labels"] >= 1) & (pred["pred_labels"] <= 10)).all()
