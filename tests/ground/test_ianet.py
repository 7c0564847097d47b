"""Tests of the `ianet` network: anchors, calibration, the loss by hand, decoding, overfitting.

The registry contract (T in {1, 7, 300}, padding invariance, decode validity, bad batches) runs on
`ianet` from tests/ground/test_span.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_span import TEXT_DIM, VIDEO_DIM, assert_recall_at_1, make_batch, planted_batch, train_steps

from ground.models.blocks import nms_1d, temporal_iou
from ground.models.ianet import Calibration, IANet, anchor_windows, nms_top_k

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_ianet(**overrides: object) -> IANet:
    torch.manual_seed(0)
    hparams = {"hidden_dim": 32, "num_blocks": 2, "dropout": 0.0} | overrides
    return IANet(video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **hparams)


def test_ianet_rejects_inconsistent_hparams() -> None:
    with pytest.raises(ValueError, match="num_maps"):
        IANet(video_dim=4, text_dim=4, hidden_dim=30, num_maps=4)
    with pytest.raises(ValueError, match="anchor_fractions"):
        IANet(video_dim=4, text_dim=4, anchor_fractions=(0.5, 1.5))
    with pytest.raises(ValueError, match="both empty"):
        IANet(video_dim=4, text_dim=4, anchor_clips=(), anchor_fractions=())
    with pytest.raises(ValueError, match="num_pads"):
        IANet(video_dim=4, text_dim=4, num_pads=0)


def test_anchor_windows_are_centred_and_clipped_to_the_real_clips() -> None:
    batch = make_batch([5, 3], stride_sec=1.0)
    widths = torch.tensor([[1, 2, 3, 8], [1, 2, 3, 8]])
    anchors = anchor_windows(batch["timestamps"], batch["video_mask"], widths)  # (B, T, A, 2)
    assert anchors.shape == (2, 5, 4, 2)
    # Width w at clip t covers clips t - (w - 1) // 2 .. t + w // 2, cut to the real clips.
    assert anchors[0, 0].tolist() == [[0.0, 1.0], [0.0, 2.0], [0.0, 2.0], [0.0, 5.0]]
    assert anchors[0, 2].tolist() == [[2.0, 3.0], [2.0, 4.0], [1.0, 4.0], [0.0, 5.0]]
    assert anchors[0, 4].tolist() == [[4.0, 5.0], [4.0, 5.0], [3.0, 5.0], [1.0, 5.0]]
    # The 3-clip video: its anchors end by 3 s, and padding clips carry no anchor.
    assert anchors[1, 2].tolist() == [[2.0, 3.0], [2.0, 3.0], [1.0, 3.0], [0.0, 3.0]]
    assert (anchors[1, 3:] == 0).all()


def test_anchor_widths_scale_with_the_number_of_real_clips() -> None:
    model = tiny_ianet(anchor_clips=(2, 4), anchor_fractions=(0.25, 1.0))
    mask = torch.arange(40)[None] < torch.tensor([[8], [40], [1]])
    assert model.anchor_widths(mask).tolist() == [[2, 4, 2, 8], [2, 4, 10, 40], [2, 4, 1, 1]]


def test_calibration_gate_by_hand() -> None:
    gate = Calibration(dim=3)
    with torch.no_grad():
        for linear in (gate.fusion, gate.gate):
            linear.weight.zero_()
        gate.fusion.bias.fill_(0.5)
        gate.gate.bias.zero_()
    x, attended = torch.tensor([[[1.0, -2.0, 4.0]]]), torch.randn(1, 1, 3)
    # Z = sigmoid(0) = 1/2 and R = tanh(0.5): out = x / 2 + tanh(0.5) / 2.
    torch.testing.assert_close(gate(x, attended), x / 2 + math.tanh(0.5) / 2)


def test_batches_that_are_not_right_padded_name_the_query() -> None:
    model = tiny_ianet()
    batch = make_batch([4, 6], text_lengths=[3, 3])
    batch["text_mask"][1] = torch.tensor([False, True, True])
    with pytest.raises(ValueError, match="text_mask is not right-padded.*q1"):
        model(batch)


def test_loss_by_hand() -> None:
    model = tiny_ianet(positive_iou=0.45, boundary_weight=2.0)
    batch = make_batch([2])
    batch["window_mask"][0, 1] = False
    batch["windows"][0, 0] = torch.tensor([0.0, 1.0])
    # Two clips of one anchor each: [0, 1] (IoU 1) and [0, 2] (IoU 0.5), both positive.
    output = {
        "anchors": torch.tensor([[[[0.0, 1.0]], [[0.0, 2.0]]]]),
        "confidence_logits": torch.zeros(1, 2, 1),
        "offsets": torch.zeros(1, 2, 1, 2),
    }
    losses = model.loss(output, batch)
    # Logit 0 costs log 2 whatever the IoU target.
    assert losses["alignment"].item() == pytest.approx(math.log(2))
    # Offset targets in anchor lengths: (0, 0) and (0, (1 - 2) / 2 = -0.5); smooth L1 of -0.5 is
    # 0.5 * 0.25 = 0.125; averaged over the two positives.
    assert losses["boundary"].item() == pytest.approx(0.125 / 2)
    assert losses["loss"].item() == pytest.approx(math.log(2) + 2.0 * 0.125 / 2)
    # Confident logits matching the IoU targets cost only their binary entropy.
    output["confidence_logits"] = torch.logit(torch.tensor([[[1 - 1e-6], [0.5]]]))
    entropy = (0.0 + math.log(2)) / 2
    assert model.loss(output, batch)["alignment"].item() == pytest.approx(entropy, abs=1e-4)


def test_best_anchor_is_positive_even_below_the_threshold() -> None:
    model = tiny_ianet(positive_iou=0.45)
    batch = make_batch([2])
    batch["window_mask"][0, 1] = False
    batch["windows"][0, 0] = torch.tensor([0.0, 0.25])
    output = {
        "anchors": torch.tensor([[[[0.0, 1.0]], [[1.0, 2.0]]]]),  # IoU 0.25 and 0
        "confidence_logits": torch.zeros(1, 2, 1),
        "offsets": torch.zeros(1, 2, 1, 2),
    }
    # Only the first anchor trains its offsets: target (0, (0.25 - 1) / 1) = (0, -0.75), whose
    # smooth L1 is 0.5 * 0.75^2.
    assert model.loss(output, batch)["boundary"].item() == pytest.approx(0.5 * 0.75**2)


def test_decode_clips_to_the_video_suppresses_overlaps_and_scores_probabilities() -> None:
    model = tiny_ianet(nms_iou_threshold=0.5).eval()
    batch = make_batch([1, 9, 30], stride_sec=0.5)
    with torch.no_grad():
        output = model(batch)
    output["offsets"] = torch.randn(output["offsets"].shape) * 5  # push windows far outside
    preds = model.decode(output, batch, k=6)
    start, end = preds.windows[..., 0], preds.windows[..., 1]
    assert (start >= 0).all() and (end <= batch["duration"][:, None]).all() and (start <= end).all()
    real = preds.scores[preds.window_mask]
    assert ((real > 0) & (real < 1)).all()
    assert (preds.scores[:, :-1] >= preds.scores[:, 1:]).all()
    for b in range(3):
        kept = preds.windows[b][preds.window_mask[b]]
        iou = temporal_iou(kept, kept)
        assert (iou[~torch.eye(len(kept), dtype=torch.bool)] <= 0.5).all()


def test_nms_top_k_matches_full_nms() -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.rand(3000, generator=gen) * 100
    windows = torch.stack([start, start + torch.rand(3000, generator=gen) * 20], dim=-1)
    scores = torch.rand(3000, generator=gen)
    for k in (1, 5, 40):
        torch.testing.assert_close(nms_top_k(windows, scores, 0.3, k), nms_1d(windows, scores, 0.3)[:k])


def test_ianet_overfits_eight_samples() -> None:
    """Clips inside the ground-truth window carry a shared pattern; the network must find them."""
    batch = planted_batch()
    model = tiny_ianet()
    train_steps(model, batch, steps=150, lr=2e-3)
    assert_recall_at_1(model, batch)
