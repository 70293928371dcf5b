"""Detection losses (pcdet.utils.loss_utils) and box coders (pcdet.utils.box_coder_utils) on hand-computed values."""

import math

import numpy as np
import pytest
import torch

from pcdet.utils import box_coder_utils, loss_utils

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------------- losses
def test_sigmoid_focal_loss_hand_values():
    loss_fn = loss_utils.SigmoidFocalClassificationLoss(gamma=2.0, alpha=0.25)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), -math.log(3.0)]]])  # p = 0.5, 0.5 | 0.75, 0.25
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    weights = torch.tensor([[1.0, 2.0]])
    out = loss_fn(logits, target, weights)
    expected = torch.tensor(
        [
            [
                [0.25 * 0.5**2 * LN2, 0.75 * 0.5**2 * LN2],
                # positive with p = 0.75: 0.25 · 0.25² · -ln 0.75; negative with p = 0.25: 0.75 · 0.25² · -ln 0.75
                [2 * 0.25 * 0.0625 * -math.log(0.75), 2 * 0.75 * 0.0625 * -math.log(0.75)],
            ]
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_sigmoid_focal_loss_is_stable_for_huge_logits_and_checks_weight_shape():
    loss_fn = loss_utils.SigmoidFocalClassificationLoss()
    logits = torch.tensor([[[200.0, -200.0]]], requires_grad=True)
    out = loss_fn(logits, torch.tensor([[[0.0, 1.0]]]), torch.ones(1, 1))
    # Confidently wrong: BCE = 200, focal weight = alpha_t · 1 → 0.75 · 200 and 0.25 · 200.
    torch.testing.assert_close(out, torch.tensor([[[150.0, 50.0]]]))
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="do not match"):
        loss_fn(logits, torch.zeros(1, 1, 2), torch.ones(1, 1, 1, 1))


def test_weighted_smooth_l1_hand_values_code_weights_and_nan_targets():
    loss_fn = loss_utils.WeightedSmoothL1Loss(beta=1.0 / 9.0, code_weights=[1.0, 2.0, 1.0])
    pred = torch.tensor([[[0.05, 0.5, 1.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[[0.0, 0.0, float("nan")], [1.0, -0.02, 0.0]]])
    weights = torch.tensor([[1.0, 3.0]])
    out = loss_fn(pred, target, weights)
    expected = torch.tensor(
        [
            [
                [0.5 * 0.05**2 * 9, 1.0 - 0.5 / 9, 0.0],  # quadratic zone; |2·0.5| = 1 linear; NaN → no loss
                [3 * (1.0 - 0.5 / 9), 3 * 0.5 * 0.04**2 * 9, 0.0],
            ]
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert pred.grad[0, 0, 2] == 0  # a NaN target gives no gradient
    assert loss_fn.state_dict() == {}  # code weights never leak into a head's checkpoint
    with pytest.raises(ValueError, match="do not match"):
        loss_fn(pred, target, torch.ones(1, 3))


def test_smooth_l1_with_zero_beta_is_l1_and_weighted_l1():
    diff = torch.tensor([-2.0, 0.01, 0.5])
    torch.testing.assert_close(loss_utils.WeightedSmoothL1Loss.smooth_l1_loss(diff, 0.0), diff.abs())
    l1 = loss_utils.WeightedL1Loss(code_weights=[1.0, 0.5])
    out = l1(torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[3.0, float("nan")]]]), torch.tensor([[2.0]]))
    torch.testing.assert_close(out, torch.tensor([[[4.0, 0.0]]]))
    assert loss_utils.WeightedL1Loss()(torch.zeros(1, 1, 2), torch.ones(1, 1, 2)).sum().item() == 2.0


def test_code_weights_follow_module_device_and_dtype():
    loss_fn = loss_utils.WeightedSmoothL1Loss(code_weights=[1.0, 2.0]).double()
    out = loss_fn(torch.ones(1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, 2, dtype=torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([[[1 - 0.5 / 9, 2 - 0.5 / 9]]], dtype=torch.float64))


def test_weighted_cross_entropy_hand_values():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # softmax (0.5, 0.5) and (0.75, 0.25)
    target = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    out = loss_utils.WeightedCrossEntropyLoss()(logits, target, torch.tensor([[1.0, 0.5]]))
    torch.testing.assert_close(out, torch.tensor([[LN2, 0.5 * -math.log(0.25)]]))


def test_corner_loss_zero_for_same_or_flipped_box_and_hand_value_for_shift():
    gt = torch.tensor([[1.0, 2.0, -1.0, 3.9, 1.6, 1.5, 0.4], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    flipped = gt.clone()
    flipped[:, 6] += math.pi
    torch.testing.assert_close(loss_utils.get_corner_loss_lidar(flipped, gt), torch.zeros(2), atol=1e-5, rtol=0)
    shifted = gt.clone()
    shifted[0, 0] += 0.5  # every corner moves 0.5 → smooth-L1(beta 1) = 0.5 · 0.25
    shifted[1, 2] += 2.0  # 2 up: the flipped twin's corners are farther still, so 2 - 0.5
    torch.testing.assert_close(
        loss_utils.get_corner_loss_lidar(shifted, gt), torch.tensor([0.125, 1.5]), atol=1e-5, rtol=0
    )


def test_centernet_focal_loss_hand_values():
    pred = torch.tensor([0.5, 0.2, 0.9]).view(1, 1, 1, 3)
    gt = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 3)
    pos = math.log(0.5) * 0.25
    neg = math.log(0.8) * 0.04 * 0.5**4 + math.log(0.1) * 0.81
    out = loss_utils.FocalLossCenterNet()(pred, gt)
    assert out.item() == pytest.approx(-(pos + neg), rel=1e-5)
    no_pos = loss_utils.neg_loss_cornernet(pred[..., 1:], gt[..., 1:])
    assert no_pos.item() == pytest.approx(-neg, rel=1e-5)
    masked = loss_utils.FocalLossCenterNet()(pred, gt, mask=torch.tensor([[[1.0, 1.0, 0.0]]]))
    assert masked.item() == pytest.approx(-(pos + math.log(0.8) * 0.04 * 0.5**4), rel=1e-5)


def test_centernet_reg_loss_gathers_centres_and_masks():
    output = torch.arange(2 * 2 * 3, dtype=torch.float32).view(1, 2, 2, 3)  # channel c, cell y·3+x = 6c + cell
    ind = torch.tensor([[4, 1, 0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    target = torch.tensor([[[4.0, 12.0], [0.0, float("nan")], [100.0, 100.0]]])
    # gathered: (4, 10), (1, 7), (0, 6); |diff| summed over valid objects: c0 = 0 + 1, c1 = 2 (NaN skipped); / 2
    out = loss_utils.RegLossCenterNet()(output, mask, ind=ind, target=target)
    torch.testing.assert_close(out, torch.tensor([0.5, 1.0]))


# ------------------------------------------------------------------------------------------------------ coders
def test_residual_coder_hand_computed_encoding():
    anchor = torch.tensor([[10.0, 20.0, -1.0, 3.0, 4.0, 2.0, 0.5]])  # diagonal 5
    gt = torch.tensor([[15.0, 10.0, 0.0, 6.0, 4.0, 1.0, 0.2, 1.5, -2.0]])
    anchor_v = torch.cat([anchor, torch.tensor([[0.5, 0.5]])], dim=1)
    code = box_coder_utils.ResidualCoder(code_size=9).encode_torch(gt, anchor_v)
    expected = torch.tensor([[1.0, -2.0, 0.5, math.log(2.0), 0.0, math.log(0.5), -0.3, 1.0, -2.5]])
    torch.testing.assert_close(code, expected)
    sincos = box_coder_utils.ResidualCoder(encode_angle_by_sincos=True)
    assert sincos.code_size == 8
    code = sincos.encode_torch(gt[:, :7], anchor)
    torch.testing.assert_close(
        code[0, 6:8], torch.tensor([math.cos(0.2) - math.cos(0.5), math.sin(0.2) - math.sin(0.5)])
    )


@pytest.mark.parametrize("sincos", [False, True])
def test_residual_coder_round_trip_with_batch_dims_and_extra_columns(sincos):
    gen = torch.Generator().manual_seed(0)
    anchors = torch.rand(2, 50, 9, generator=gen, dtype=torch.float64) * 4 + 0.5
    boxes = torch.rand(2, 50, 9, generator=gen, dtype=torch.float64) * 4 + 0.5
    boxes[..., 6] = (torch.rand(2, 50, generator=gen, dtype=torch.float64) - 0.5) * 2  # within (-π, π) for atan2
    coder = box_coder_utils.ResidualCoder(code_size=9, encode_angle_by_sincos=sincos)
    code = coder.encode_torch(boxes, anchors)
    assert code.shape[-1] == coder.code_size
    torch.testing.assert_close(coder.decode_torch(code, anchors), boxes)


def test_residual_coder_clamps_sizes_without_touching_inputs():
    anchors = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0]])
    boxes = torch.tensor([[0.0, 0, 0, 0, 1, 1, 0]])
    code = box_coder_utils.ResidualCoder().encode_torch(boxes, anchors)
    assert code[0, 3].item() == pytest.approx(math.log(1e-5))
    assert boxes[0, 3].item() == 0.0  # caller's tensor is not modified


def test_previous_residual_decoders_use_the_legacy_layout():
    anchor = torch.tensor([[10.0, 20.0, -1.0, 3.0, 4.0, 2.0, 0.5]])
    code = torch.tensor([[1.0, -2.0, 0.5, math.log(0.5), math.log(2.0), 0.0, 0.2]])  # x y z w l h r
    box = box_coder_utils.PreviousResidualDecoder.decode_torch(code, anchor)
    torch.testing.assert_close(box, torch.tensor([[15.0, 10.0, 0.0, 6.0, 2.0, 2.0, 0.7]]))
    roi = box_coder_utils.PreviousResidualRoIDecoder(code_size=7).decode_torch(code, anchor)
    torch.testing.assert_close(roi, torch.tensor([[15.0, 10.0, 0.0, 6.0, 2.0, 2.0, 0.3]]))


def test_point_residual_coder_hand_value_and_round_trip():
    mean_size = [[3.0, 4.0, 2.0], [0.8, 0.6, 1.7]]
    coder = box_coder_utils.PointResidualCoder(mean_size=mean_size)
    points = torch.tensor([[10.0, 20.0, -1.0], [0.0, 0.0, 0.0]])
    gt = torch.tensor([[15.0, 10.0, 0.0, 6.0, 4.0, 1.0, 0.2], [0.3, -0.1, 0.2, 0.9, 0.5, 1.8, -2.0]])
    classes = torch.tensor([1, 2])
    code = coder.encode_torch(gt, points, classes)
    torch.testing.assert_close(
        code[0], torch.tensor([1.0, -2.0, 0.5, math.log(2.0), 0.0, math.log(0.5), math.cos(0.2), math.sin(0.2)])
    )
    torch.testing.assert_close(coder.decode_torch(code, points, classes), gt)
    plain = box_coder_utils.PointResidualCoder(use_mean_size=False)
    code = plain.encode_torch(gt, points)
    torch.testing.assert_close(code[0, :6], torch.tensor([5.0, -10.0, 1.0, math.log(6.0), math.log(4.0), 0.0]))
    torch.testing.assert_close(plain.decode_torch(code, points), gt)
    with pytest.raises(ValueError, match="class labels"):
        coder.encode_torch(gt, points, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="positive"):
        box_coder_utils.PointResidualCoder(mean_size=[[1.0, 0.0, 1.0]])


def test_coders_keep_dtype_and_device_of_inputs():
    coder = box_coder_utils.ResidualCoder()
    anchors = torch.tensor(np.tile([0.0, 0, 0, 3.9, 1.6, 1.56, 0], (4, 1)), dtype=torch.float32)
    code = coder.encode_torch(anchors + 0.1, anchors)
    assert code.dtype == torch.float32 and code.shape == (4, 7)


def test_point_bin_residual_coder_round_trip_bins_and_hand_value():
    mean_size = [[3.9, 1.6, 1.56], [0.8, 0.6, 1.73]]
    coder = box_coder_utils.PointBinResidualCoder(mean_size=mean_size, angle_bin_num=12)
    assert coder.code_size == 30
    rng = np.random.default_rng(0)
    n = 200
    headings = np.concatenate([rng.uniform(-np.pi, np.pi, n - 4), [0.0, np.pi / 12, -np.pi + 1e-4, np.pi - 1e-4]])
    gt = torch.tensor(np.column_stack([rng.uniform(-20, 20, (n, 3)), rng.uniform(0.5, 5, (n, 3)), headings]),
                      dtype=torch.float64)  # fmt: skip
    points = gt[:, 0:3] + torch.tensor(rng.normal(0, 0.5, (n, 3)))
    classes = torch.tensor(rng.integers(1, 3, n))
    code = coder.encode_torch(gt, points, classes)
    assert code.shape == (n, 30)
    torch.testing.assert_close(code[:, 0:6], box_coder_utils.PointResidualCoder(mean_size=mean_size).encode_torch(
        gt, points, classes)[:, 0:6])  # fmt: skip
    # One bin per box, the residual only in that bin's slot, within half a bin width.
    one_hot, residual = code[:, 6:18], code[:, 18:30]
    assert torch.equal(one_hot.sum(dim=1), torch.ones(n, dtype=torch.float64))
    assert (residual[one_hot == 0] == 0).all() and (residual.abs() <= 0.5 + 1e-9).all()
    # Naive bin: the nearest bin centre k * 30 degrees, a heading half-way between two going to the upper one.
    naive_bin = [min(range(13), key=lambda k: (abs(np.mod(h, 2 * np.pi) - k * np.pi / 6), -k)) % 12 for h in headings]
    assert one_hot.argmax(dim=1).tolist() == naive_bin
    decoded = coder.decode_torch(code, points, classes)
    torch.testing.assert_close(decoded[:, 0:6], gt[:, 0:6])
    wrapped = torch.remainder(decoded[:, 6] - gt[:, 6] + np.pi, 2 * np.pi) - np.pi
    assert wrapped.abs().max() < 1e-9 and (decoded[:, 6] >= -np.pi).all() and (decoded[:, 6] < np.pi).all()
    # Hand value: heading 100 degrees -> bin 3 (90 +- 15 degrees), residual 10 / 30.
    hand = coder.encode_torch(torch.tensor([[0.0, 0, 0, 3.9, 1.6, 1.56, math.radians(100)]]), torch.zeros(1, 3),
                              torch.tensor([1]))  # fmt: skip
    assert hand[0, 6:18].argmax() == 3
    torch.testing.assert_close(hand[0, 18 + 3], torch.tensor(1.0 / 3.0))
    # Decoding follows the highest bin score (logits, not a one-hot).
    logits = hand.clone()
    logits[0, 6:18] = torch.linspace(-1, 1, 12)
    logits[0, 18 + 11] = -0.25
    torch.testing.assert_close(coder.decode_torch(logits, torch.zeros(1, 3), torch.tensor([1]))[0, 6],
                               torch.tensor(math.radians(-37.5)))  # fmt: skip
