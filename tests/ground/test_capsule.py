"""Tests of the `capsule` network: routing, its three losses by hand, both decoders, overfitting.

The registry contract (T in {1, 7, 300}, padding invariance, decode validity, bad batches) runs on
`capsule` from tests/ground/test_span.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_span import TEXT_DIM, VIDEO_DIM, assert_recall_at_1, make_batch, planted_batch, train_steps

from ground.models.blocks import decode_spans, temporal_iou
from ground.models.capsule import CapsuleNet, CapsuleRouting, squash

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_capsule(**overrides: object) -> CapsuleNet:
    torch.manual_seed(0)
    hparams = {
        "hidden_dim": 32,
        "branch_dim": 8,
        "num_capsules": 4,
        "capsule_dim": 8,
        "num_heads": 4,
        "dropout": 0.0,
    } | overrides
    return CapsuleNet(video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **hparams)


def zero_output(batch: dict, n_capsules: int = 2, capsule_dim: int = 2) -> dict:
    """A forward output with uniform logits and zero embeddings, to set parts of by hand."""
    b, t = batch["video_mask"].shape
    return {
        "start_logits": torch.zeros(b, t),
        "end_logits": torch.zeros(b, t),
        "clip_embedding": torch.zeros(b, t, 2),
        "query_embedding": torch.zeros(b, 2),
        "capsules": torch.zeros(b, batch["text_mask"].shape[1], n_capsules, capsule_dim),
    }


def test_capsule_rejects_inconsistent_hparams() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        CapsuleNet(video_dim=4, text_dim=4, hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="kernel_sizes"):
        CapsuleNet(video_dim=4, text_dim=4, kernel_sizes=(1, 2))
    with pytest.raises(ValueError, match="routing_iterations"):
        CapsuleNet(video_dim=4, text_dim=4, routing_iterations=0)
    with pytest.raises(ValueError, match="decode_mode"):
        CapsuleNet(video_dim=4, text_dim=4, decode_mode="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boundary_sigma_fraction"):
        CapsuleNet(video_dim=4, text_dim=4, boundary_sigma_fraction=0.0)


def test_squash_by_hand() -> None:
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    v = squash(s)
    # |s| = 5: length 25 / 26, same direction; the zero vector stays zero with a finite gradient.
    torch.testing.assert_close(v[0], torch.tensor([3.0, 4.0]) / 5 * 25 / 26)
    assert v[1].abs().sum() == 0
    v.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_routing_masks_padding_and_spreads_the_paper_agreement_over_frames() -> None:
    torch.manual_seed(0)
    routing = CapsuleRouting(dim=16, num_capsules=3, capsule_dim=4, iterations=3)
    frames, text = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    video_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    text_mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    coupling, capsules, agreement = routing(frames, video_mask, text, text_mask)
    # Every real frame distributes all of itself over the real tokens; padding takes no part.
    sums = coupling.sum(dim=2)  # (B, T, C)
    torch.testing.assert_close(sums, video_mask[:, :, None].float().expand_as(sums))
    assert (coupling[1][:, 2:] == 0).all()
    assert (capsules[1, 2:] == 0).all()
    assert (capsules.norm(dim=-1) < 1).all()  # squashed
    assert agreement.shape == (2, 6, 3)
    # The coupling-weighted mean over frames of each frame's last agreement is the paper's v_j . q_j.
    u = routing.vote(frames).view(2, 6, 3, 4)
    q = routing.token(text).view(2, 5, 3, 4)
    match = torch.einsum("btce,blce->btlc", u, q) / 2.0  # sqrt(capsule_dim) = 2
    mass = (video_mask.sum(1) / text_mask.sum(1))[:, None, None]
    # squash(s) = scale * s with scale = |s| / (1 + |s|^2); recover s from v: |v| = |s|^2 / (1 + |s|^2).
    v_norm = capsules.norm(dim=-1).clamp(max=1 - 1e-6)
    s_norm = torch.sqrt(v_norm / (1 - v_norm))
    scale = s_norm / (1 + s_norm**2)
    spread = (coupling * match * scale[:, None]).sum(dim=1) / mass  # (B, L, C)
    paper = (capsules * q).sum(-1) / 2.0  # (v_j . q_j) / sqrt(E)
    real_tokens = text_mask[:, :, None].expand_as(paper)
    torch.testing.assert_close(spread[real_tokens], paper[real_tokens], atol=1e-5, rtol=1e-4)


def test_localization_loss_by_hand() -> None:
    model = tiny_capsule()
    batch = make_batch([3])
    batch["windows"][0, 0] = torch.tensor([1.0, 2.0])
    output = zero_output(batch)
    # Logit 0 costs log 2 on every clip whatever the target: start + end = 2 log 2.
    assert model.loss(output, batch)["localization"].item() == pytest.approx(2 * math.log(2))
    # sigma = 0.1 * 3 s; start edges 0, 1, 2 s are 1, 0, 1 s from the start boundary, end edges
    # 1, 2, 3 s likewise from the end: both targets are [g, 1, g] with g = exp(-1 / (2 * 0.09)).
    g = math.exp(-1 / (2 * 0.3**2))
    logits = torch.tensor([[-2.0, 3.0, 1.0]])
    output |= {"start_logits": logits, "end_logits": logits}

    def bce(x: float, y: float) -> float:
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 / (1 + math.exp(x))))

    expected = 2 * (bce(-2.0, g) + bce(3.0, 1.0) + bce(1.0, g)) / 3
    assert model.loss(output, batch)["localization"].item() == pytest.approx(expected, rel=1e-5)


def test_alignment_loss_by_hand() -> None:
    model = tiny_capsule(alignment_temperature=0.5)
    batch = make_batch([4, 4])
    batch["window_mask"][:, 1] = False
    batch["windows"][:, 0] = torch.tensor([[0.0, 2.0], [2.5, 4.0]])
    output = zero_output(batch)
    # Clips 0-1 point along x, clips 2-3 along y in both videos. Window 0 pools x, window 1 pools
    # 0.5 s of clip 2 and 1 s of clip 3: y. Query 0 is x, query 1 is y.
    output["clip_embedding"] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]).expand(2, 4, 2)
    output["query_embedding"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))  # cos 1 vs 0, tau 0.5
    assert model.loss(output, batch)["alignment"].item() == pytest.approx(expected, rel=1e-5)
    # Two queries of one video are not each other's negatives: nothing is left to contrast.
    batch["vid"] = ["v0", "v0"]
    assert model.loss(output, batch)["alignment"].item() == pytest.approx(0.0, abs=1e-6)
    # A zero-length window covers no clip time: the clip nearest to it stands in, still finite.
    batch["vid"] = ["v0", "v1"]
    batch["windows"][:, 0] = torch.tensor([[0.5, 0.5], [3.2, 3.2]])
    assert model.loss(output, batch)["alignment"].item() == pytest.approx(expected, rel=1e-5)


def test_diversity_loss_by_hand_and_switched_on_by_the_epoch() -> None:
    model = tiny_capsule(diversity_weight=0.1, diversity_start_epoch=10)
    batch = make_batch([3], text_lengths=[2])
    output = zero_output(batch)
    # Token 0: capsules (1, 0) and (0.5, -0.5): |dot| = 0.5 counted for both ordered pairs = 1.
    # Token 1: orthogonal capsules = 0. Mean over the two real tokens = 0.5.
    output["capsules"] = torch.tensor([[[[1.0, 0.0], [0.5, -0.5]], [[0.0, 1.0], [1.0, 0.0]]]])
    before = model.loss(output, batch)
    assert before["diversity"].item() == pytest.approx(0.5)
    without_diversity = before["localization"].item() + 0.5 * before["alignment"].item()
    assert before["loss"].item() == pytest.approx(without_diversity)
    model.set_epoch(10)
    after = model.loss(output, batch)
    assert after["loss"].item() == pytest.approx(before["loss"].item() + 0.1 * 0.5)


def test_argmax_decoding_is_span_decoding() -> None:
    model = tiny_capsule(decode_mode="argmax").eval()
    batch = make_batch([1, 7, 40], stride_sec=0.5)
    with torch.no_grad():
        output = model(batch)
        preds = model.decode(output, batch, k=5)
    windows, scores = decode_spans(
        output["start_logits"],
        output["end_logits"],
        batch["timestamps"],
        batch["video_mask"],
        batch["duration"],
        5,
        0.7,
    )
    torch.testing.assert_close(preds.windows, windows)
    torch.testing.assert_close(preds.scores, scores)


def test_soft_decoding_puts_the_expected_window_first() -> None:
    model = tiny_capsule(decode_mode="soft", nms_iou_threshold=0.5)
    batch = make_batch([4, 1], stride_sec=1.0)
    output = zero_output(batch)
    output["start_logits"][1, 1:] = float("-inf")  # padding of the one-clip video
    output["end_logits"][1, 1:] = float("-inf")
    preds = model.decode(output, batch, k=4)
    # Uniform over 4 clips: expected start mean(0, 1, 2, 3) = 1.5 s, end mean(1, 2, 3, 4) = 2.5 s.
    assert preds.windows[0, 0].tolist() == [1.5, 2.5]
    assert preds.scores[0, 0].item() == pytest.approx(2 * math.log(1 / 4))  # the best span's score
    assert (preds.scores[0, :-1] >= preds.scores[0, 1:]).all()
    real = preds.windows[0][preds.window_mask[0]]
    iou = temporal_iou(real, real)
    assert (iou[~torch.eye(len(real), dtype=torch.bool)] <= 0.5).all()
    # One clip: the expected window is the clip; its only span repeats it and is suppressed.
    assert preds.windows[1].tolist() == [[0.0, 1.0]] * 4
    assert preds.window_mask[1].tolist() == [True, False, False, False]


def test_capsule_overfits_eight_samples_in_both_decode_modes() -> None:
    """Clips inside the ground-truth window carry a shared pattern; the network must find them."""
    batch = planted_batch()
    model = tiny_capsule(hidden_dim=64, branch_dim=16, capsule_dim=16)
    model.set_epoch(10)  # with the diversity term on
    train_steps(model, batch, steps=250, lr=1e-3)
    with torch.no_grad():
        output = model(batch)
    for mode in ("argmax", "soft"):
        model.decode_mode = mode
        assert_recall_at_1(model, batch, output, label=f"{mode}: ")
