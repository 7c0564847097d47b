"""`span`'s faster training step computes what the plain one did.

The presence negatives reuse the video branch (which never sees the query) and run the fusion
layers on a fraction of the batch; with dropout off these must equal a full second `fuse` pass
over the rolled videos, the path `span` took before, on a fixed batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.ground.test_span import make_batch, tiny_span

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def old_negative_logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The previous path: a whole second `fuse` over the batch's videos rolled by one."""
    rolled = {key: batch[key].roll(1, dims=0) for key in ("video", "video_mask", "timestamps", "duration")}
    _, _, frames = model.fuse(rolled["video"], rolled["video_mask"], rolled["timestamps"], rolled["duration"],
                              batch["text"], batch["text_mask"])  # (B, T, D)
    return model.presence_logit(frames, rolled["video_mask"])  # (B,)


def test_reused_video_branch_gives_the_old_negatives_and_outputs() -> None:
    batch = make_batch([6, 8, 5, 8, 3], seed=3)
    model = tiny_span(presence_negative_fraction=1.0).train()  # dropout 0: deterministic in train mode
    with torch.no_grad():  # the probe term starts at zero; make the saliency the fusion reads non-trivial
        model.saliency_head.bilinear.normal_()
        model.saliency_head.linear.normal_()
        output = model(batch)
        expected_negative = old_negative_logits(model, batch)
        _, _, frames = model.fuse(batch["video"], batch["video_mask"], batch["timestamps"], batch["duration"],
                               batch["text"], batch["text_mask"])
    torch.testing.assert_close(output["presence_logit_negative"], expected_negative, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output["presence_logit"], model.presence_logit(frames, batch["video_mask"]))
    start = model.span_head(frames)[..., 0].masked_fill(~batch["video_mask"], float("-inf"))
    torch.testing.assert_close(output["start_logits"], start)


@pytest.mark.parametrize(("fraction", "expected_m"), [(0.25, 2), (0.5, 3), (0.01, 1)])
def test_a_fraction_of_negatives_is_the_first_m_of_the_full_set(fraction: float, expected_m: int) -> None:
    batch = make_batch([6, 8, 5, 8, 3, 7], seed=4)
    batch["vid"] = ["v0", "v0", "v1", "v2", "v3", "v4"]
    model = tiny_span(presence_negative_fraction=fraction).train()
    with torch.no_grad():
        output = model(batch)
        expected = old_negative_logits(model, batch)[:expected_m]
    assert output["presence_logit_negative"].shape == (expected_m,)
    torch.testing.assert_close(output["presence_logit_negative"], expected, rtol=1e-5, atol=1e-6)
    assert output["negative_valid"].tolist() == [True, False, True][:expected_m]


def test_presence_loss_weighs_a_fraction_of_negatives_like_a_full_set() -> None:
    model = tiny_span()
    batch = make_batch([3, 3, 3, 3])
    positive = torch.tensor([0.0, 2.0, -1.0, 1.0])
    negative = torch.tensor([1.0, -3.0])
    output = {
        "start_logits": torch.zeros(4, 3),
        "end_logits": torch.zeros(4, 3),
        "saliency": torch.zeros(4, 3),
        "presence_logit": positive,
        "presence_logit_negative": negative,
        "negative_valid": torch.tensor([True, True]),
    }
    pos = F.softplus(-positive)  # BCE of a positive label
    neg = F.softplus(negative)  # BCE of a negative label
    # Two negatives for four queries: each weighs 2, as if every query had one of their kind.
    expected = (pos.sum() + 2 * neg.sum()) / (4 + 2 * 2)
    assert model.loss(output, batch)["presence"].item() == pytest.approx(expected.item(), rel=1e-6)
    output["negative_valid"] = torch.tensor([True, False])  # same video: left out entirely
    expected = (pos.sum() + 2 * neg[0]) / (4 + 2)
    assert model.loss(output, batch)["presence"].item() == pytest.approx(expected.item(), rel=1e-6)
    # Every query with a negative: the plain mean over positives and valid negatives, as before.
    output |= {"presence_logit_negative": torch.tensor([1.0, -3.0, 0.5, 0.0]),
               "negative_valid": torch.ones(4, dtype=torch.bool)}
    plain = F.binary_cross_entropy_with_logits(
        torch.cat([positive, output["presence_logit_negative"]]), torch.tensor([1.0] * 4 + [0.0] * 4)
    )
    assert model.loss(output, batch)["presence"].item() == pytest.approx(plain.item(), rel=1e-6)


def test_span_refuses_a_negative_fraction_outside_zero_one() -> None:
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="presence_negative_fraction"):
            tiny_span(presence_negative_fraction=bad)


@pytest.mark.parametrize("cross", [False, True])
def test_batch_first_attention_is_the_modules_own_math(cross: bool) -> None:
    """`blocks.batch_first_attention` skips nn.MultiheadAttention's layout copies, not its math:
    same outputs and same gradients, padded keys included."""
    from ground.models.blocks import batch_first_attention

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True).train()  # dropout 0
    query = torch.randn(3, 7, 16, requires_grad=True)
    keys = torch.randn(3, 5, 16, requires_grad=True) if cross else query
    key_mask = torch.ones(3, keys.shape[1], dtype=torch.bool)
    key_mask[0, 3:] = False
    key_mask[2, 1:] = False
    ours = batch_first_attention(attn, query, keys, key_mask)
    wrt = [query, attn.in_proj_weight, attn.out_proj.weight]
    ours_grads = torch.autograd.grad(ours.square().sum(), wrt)
    theirs, _ = attn(query, keys, keys, key_padding_mask=~key_mask, need_weights=False)
    theirs_grads = torch.autograd.grad(theirs.square().sum(), wrt)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
