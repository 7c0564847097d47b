"""Tests of the model registry, the contract every registered network keeps, and `span` itself.

The contract tests are parametrized over ``list_models()`` and build each network from its
``ground/configs/model/<name>.yaml``, so a newly registered model is tested without new code.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from ground.models import build_model, get_model_class, list_models, register_model, trainable_models
from ground.models.blocks import Predictions, clips_in_windows, temporal_iou
from ground.models.span import QuerySaliencyHead, SpanNet, clip_window_bce

CONFIG_DIR = Path(__file__).resolve().parents[2] / "ground" / "configs" / "model"
VIDEO_DIM, TEXT_DIM = 24, 24  # equal: the zero-shot baseline compares them in one space


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_batch(
    video_lengths: list[int], text_lengths: list[int] | None = None, stride_sec: float = 1.0, seed: int = 0
) -> dict:
    """A right-padded batch in the ``ground.data`` layout with one or two windows per query."""
    gen = torch.Generator().manual_seed(seed)
    batch_size, n_clips = len(video_lengths), max(video_lengths)
    text_lengths = text_lengths or [4] * batch_size
    n_tokens = max(text_lengths)
    video_mask = torch.arange(n_clips)[None] < torch.tensor(video_lengths)[:, None]  # (B, T)
    text_mask = torch.arange(n_tokens)[None] < torch.tensor(text_lengths)[:, None]  # (B, L)
    start = torch.arange(n_clips, dtype=torch.float32) * stride_sec
    timestamps = torch.stack([start, start + stride_sec], dim=-1).expand(batch_size, n_clips, 2)
    timestamps = timestamps * video_mask.unsqueeze(-1)  # padding clips carry zeros, as the collate does
    duration = torch.tensor(video_lengths, dtype=torch.float32) * stride_sec
    windows = torch.zeros(batch_size, 2, 2)
    window_mask = torch.zeros(batch_size, 2, dtype=torch.bool)
    for b, n in enumerate(video_lengths):
        first = int(torch.randint(0, n, (1,), generator=gen))
        last = int(torch.randint(first, n, (1,), generator=gen))
        windows[b, 0] = torch.tensor([first, last + 1]) * stride_sec
        window_mask[b, 0] = True
        if n > 3 and b % 2:
            windows[b, 1] = torch.tensor([0.0, 1.0]) * stride_sec
            window_mask[b, 1] = True
    saliency_mask = video_mask & (torch.rand(batch_size, n_clips, generator=gen) > 0.5)
    saliency_mask[0] = False  # one query without saliency labels, as in Charades-STA
    return {
        "video": torch.randn(batch_size, n_clips, VIDEO_DIM, generator=gen) * video_mask.unsqueeze(-1),
        "video_mask": video_mask,
        "timestamps": timestamps,
        "duration": duration,
        "text": torch.randn(batch_size, n_tokens, TEXT_DIM, generator=gen) * text_mask.unsqueeze(-1),
        "text_mask": text_mask,
        "text_pooled": torch.randn(batch_size, TEXT_DIM, generator=gen),
        "windows": windows,
        "window_mask": window_mask,
        "saliency": torch.rand(batch_size, n_clips, generator=gen) * saliency_mask,
        "saliency_mask": saliency_mask,
        "qid": [f"q{b}" for b in range(batch_size)],
        "vid": [f"v{b}" for b in range(batch_size)],
    }


def planted_batch() -> dict:
    """Eight queries whose one ground-truth window holds a shared feature pattern (seeded)."""
    torch.manual_seed(0)
    lengths = [16, 20, 24, 28, 32, 18, 26, 30]
    batch = make_batch(lengths, text_lengths=[3, 4, 5, 6, 3, 4, 5, 6], seed=3)
    pattern = torch.randn(VIDEO_DIM) * 1.5
    gen = torch.Generator().manual_seed(5)
    batch["window_mask"][:, 1] = False
    for b, n in enumerate(lengths):
        width = int(torch.randint(3, n // 2, (1,), generator=gen))
        first = int(torch.randint(0, n - width + 1, (1,), generator=gen))
        batch["windows"][b, 0] = torch.tensor([first, first + width], dtype=torch.float32)
        batch["video"][b, first : first + width] += pattern
    return batch


def train_steps(model: nn.Module, batch: dict, steps: int, lr: float = 1e-3) -> None:
    """Full-batch Adam steps on the network's own loss, then eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss(model(batch), batch)["loss"].backward()
        optimizer.step()
    model.eval()


def assert_recall_at_1(model: nn.Module, batch: dict, output: dict | None = None, label: str = "") -> None:
    """The decoded top-1 window reaches IoU >= 0.5 with the first ground-truth window of every query."""
    with torch.no_grad():
        output = model(batch) if output is None else output
        preds = model.decode(output, batch, k=1)
    iou = temporal_iou(preds.windows[:, :1], batch["windows"][:, :1])[:, 0, 0]  # (B,)
    recall_at_1 = (iou >= 0.5).float().mean().item()
    assert recall_at_1 == 1.0, f"{label}R1@0.5 = {recall_at_1}, IoU per sample {iou.tolist()}"


def select(batch: dict, index: int, n_clips: int, n_tokens: int) -> dict:
    """Sample ``index`` of a batch alone, cut to its real length."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, list):
            out[key] = [value[index]]
        elif key in ("video", "video_mask", "timestamps", "saliency", "saliency_mask"):
            out[key] = value[index : index + 1, :n_clips]
        elif key in ("text", "text_mask"):
            out[key] = value[index : index + 1, :n_tokens]
        else:
            out[key] = value[index : index + 1]
    return out


def load_config(name: str) -> dict:
    path = CONFIG_DIR / f"{name}.yaml"
    assert path.is_file(), f"registered model {name!r} has no config {path}"
    return yaml.safe_load(path.read_text())


def build_from_config(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **load_config(name)["hparams"])


# ---- registry -------------------------------------------------------------------------------


def test_registry_lists_span_and_names_unknown_models() -> None:
    assert "span" in list_models()
    assert get_model_class("span") is SpanNet
    with pytest.raises(KeyError, match=r"available models: .*span"):
        build_model("no_such_model", video_dim=4, text_dim=4)


def test_registry_refuses_a_taken_name() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_model("span")
        class Impostor(nn.Module):
            pass


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_builds_its_registered_model(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert set(config) == {"name", "hparams"}, f"{path}: expected keys name, hparams"
    assert config["name"] == path.stem
    cls = get_model_class(config["name"])
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "video_dim", "text_dim"}
    assert set(config["hparams"]) <= accepted, f"{path}: unknown hparams {set(config['hparams']) - accepted}"
    build_model(config["name"], video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **config["hparams"])


# ---- contract of every registered model -----------------------------------------------------


@pytest.mark.parametrize("name", trainable_models())
@pytest.mark.parametrize("n_clips", [1, 7, 300])
def test_forward_backward_with_padding(name: str, n_clips: int) -> None:
    model = build_from_config(name).train()
    other = {1: 4, 7: 3, 300: 120}[n_clips]  # a second, different length so the batch is padded
    batch = make_batch([n_clips, other, n_clips], text_lengths=[3, 5, 2])
    output = model(batch)
    losses = model.loss(output, batch)
    assert "loss" in losses
    for part, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), f"{name}: loss part {part!r} is {value}"
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", trainable_models())
def test_padding_does_not_change_real_outputs(name: str) -> None:
    model = build_from_config(name).eval()
    batch = make_batch([5, 12, 9], text_lengths=[3, 6, 4])
    with torch.no_grad():
        padded_out = model(batch)
        padded_preds = model.decode(padded_out, batch, k=5)
        alone = select(batch, 0, n_clips=5, n_tokens=3)
        alone_out = model(alone)
        alone_preds = model.decode(alone_out, alone, k=5)
    for key, value in alone_out.items():
        real, expected = value[0], padded_out[key][0]
        if expected.shape != real.shape:  # a per-clip output: compare the real clips only
            expected = expected[: real.shape[0]]
        torch.testing.assert_close(expected, real, atol=1e-5, rtol=1e-5, msg=f"{name}: output {key!r}")
    torch.testing.assert_close(padded_preds.windows[0], alone_preds.windows[0])
    torch.testing.assert_close(padded_preds.scores[0], alone_preds.scores[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_decode_returns_valid_sorted_windows(name: str) -> None:
    model = build_from_config(name).eval()
    batch = make_batch([1, 7, 40], stride_sec=0.5)
    if hasattr(model, "fit_statistics"):  # baselines estimated from training windows
        model.fit_statistics(
            SimpleNamespace(
                windows=batch["windows"],
                window_counts=batch["window_mask"].sum(1),
                video_index=torch.arange(3),
                duration=batch["duration"],
            )
        )
    k = 5
    with torch.no_grad():
        preds = model.decode(model(batch), batch, k=k)
    assert isinstance(preds, Predictions)
    assert preds.windows.shape == (3, k, 2) and preds.scores.shape == (3, k)
    start, end = preds.windows[..., 0], preds.windows[..., 1]
    assert (start <= end).all()
    assert (start >= 0).all() and (end <= batch["duration"][:, None] + 1e-6).all()
    assert (preds.scores[:, :-1] >= preds.scores[:, 1:]).all()
    assert preds.window_mask[:, 0].all()
    if preds.saliency is not None:
        assert preds.saliency.shape == batch["video_mask"].shape


@pytest.mark.parametrize("name", trainable_models())
def test_bad_batches_name_the_query(name: str) -> None:
    model = build_from_config(name).train()
    batch = make_batch([4, 6])
    batch["video_mask"][1] = False
    with pytest.raises(ValueError, match="q1"):
        model(batch)
    batch = make_batch([4, 6])
    batch["window_mask"][0] = False
    with pytest.raises(ValueError, match="q0"):
        model.loss(model(batch), batch)


# ---- span specifics -------------------------------------------------------------------------


def tiny_span(**overrides: object) -> SpanNet:
    torch.manual_seed(0)
    hparams = {"hidden_dim": 32, "num_layers": 2, "num_heads": 4, "dropout": 0.0} | overrides
    return SpanNet(video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **hparams)


def test_span_rejects_inconsistent_hparams_and_features() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        SpanNet(video_dim=4, text_dim=4, hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="odd"):
        SpanNet(video_dim=4, text_dim=4, conv_kernel_size=4)
    with pytest.raises(ValueError, match="context term, the probe term or both"):
        SpanNet(video_dim=4, text_dim=4, saliency_probe=False, saliency_context=False)
    with pytest.raises(ValueError, match="max_span_fraction"):
        SpanNet(video_dim=4, text_dim=4, max_span_fraction=0.0)
    model = SpanNet(video_dim=VIDEO_DIM + 1, text_dim=TEXT_DIM, hidden_dim=32, num_heads=4)
    with pytest.raises(ValueError, match=f"video_dim={VIDEO_DIM + 1}"):
        model(make_batch([3]))


@pytest.mark.parametrize("n_clips", [1, 7, 300])
def test_span_gives_padding_clips_no_probability(n_clips: int) -> None:
    model = tiny_span().train()
    batch = make_batch([n_clips, {1: 4, 7: 3, 300: 120}[n_clips]])
    output = model(batch)
    padding = ~batch["video_mask"]
    for key in ("start_logits", "end_logits"):
        prob = torch.softmax(output[key], dim=-1)  # (B, T)
        assert torch.isfinite(prob).all()
        assert (prob[padding] == 0).all(), f"{key}: padding clips get probability"
        assert prob.sum(-1).allclose(torch.ones(2))
    assert torch.isneginf(output["saliency"][padding]).all()


def test_span_decodes_a_one_clip_video_to_that_clip() -> None:
    model = tiny_span().eval()
    batch = make_batch([1, 6], stride_sec=0.5)
    with torch.no_grad():
        preds = model.decode(model(batch), batch, k=4)
    # One clip has exactly one span: the clip itself; the other slots are marked fillers.
    assert preds.windows[0].tolist() == [[0.0, 0.5]] * 4
    assert preds.window_mask[0].tolist() == [True, False, False, False]
    assert preds.scores[0, 0].item() == 0.0  # log 1 + log 1
    assert preds.window_mask[1].all()


def test_span_decode_respects_max_span_in_seconds_and_as_fraction() -> None:
    batch = make_batch([40, 25], stride_sec=0.5)
    for model, limit in (
        (tiny_span(max_span_sec=3.0), torch.tensor([3.0, 3.0])),
        (tiny_span(max_span_fraction=0.25), batch["duration"] * 0.25),
    ):
        model.eval()
        with torch.no_grad():
            preds = model.decode(model(batch), batch, k=30)
        length = preds.windows[..., 1] - preds.windows[..., 0]  # (B, K)
        assert (length <= limit[:, None] + 1e-6).all()
        assert preds.window_mask.all()


def test_span_presence_negatives_pair_each_query_with_the_previous_video() -> None:
    model = tiny_span(presence_negative_fraction=1.0).train()
    batch = make_batch([6, 8, 5])
    batch["vid"] = ["v0", "v0", "v1"]  # two queries of one video: that pair is no negative
    output = model(batch)
    assert output["negative_valid"].tolist() == [True, False, True]
    assert output["presence_logit_negative"].shape == (3,)
    model.eval()
    with torch.no_grad():
        eval_output = model(batch)
        preds = model.decode(eval_output, batch, k=2)
    assert "presence_logit_negative" not in eval_output
    assert preds.presence is not None and ((preds.presence > 0) & (preds.presence < 1)).all()


def test_span_presence_loss_by_hand() -> None:
    model = tiny_span()
    batch = make_batch([3, 3])
    output = {
        "start_logits": torch.zeros(2, 3),
        "end_logits": torch.zeros(2, 3),
        "saliency": torch.zeros(2, 3),
        "presence_logit": torch.tensor([0.0, 2.0]),
        "presence_logit_negative": torch.tensor([1.0, -3.0]),
        "negative_valid": torch.tensor([True, False]),
    }
    expected = (math.log(2) + math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 3
    assert model.loss(output, batch)["presence"].item() == pytest.approx(expected, rel=1e-5)


def test_span_start_end_loss_by_hand() -> None:
    model = tiny_span()
    batch = make_batch([3])
    output = {
        "start_logits": torch.zeros(1, 3),
        "end_logits": torch.zeros(1, 3),
        "saliency": torch.zeros(1, 3),
        "presence_logit": torch.zeros(1),
    }
    # Uniform logits: cross-entropy against any distribution over 3 clips is log 3.
    assert model.loss(output, batch)["start_end"].item() == pytest.approx(math.log(3))
    # Window [1, 2] on 1 s clips: start edges 0, 1, 2 and end edges 1, 2, 3 are 1, 0, 1 clip
    # lengths from the boundaries, so both targets are softmax(-[1, 0, 1] / 2) (sigma = 1 clip).
    batch["windows"][0, 0] = torch.tensor([1.0, 2.0])
    target = torch.softmax(torch.tensor([[-0.5, 0.0, -0.5]]), dim=-1)
    output |= {"start_logits": target.log(), "end_logits": target.log()}
    entropy = -(target * target.log()).sum().item()
    assert model.loss(output, batch)["start_end"].item() == pytest.approx(entropy, rel=1e-5)
    output |= {"start_logits": target.log().roll(1, dims=-1)}
    assert model.loss(output, batch)["start_end"].item() > entropy + 0.01


def test_span_saliency_loss_by_hand() -> None:
    model = tiny_span(saliency_margin=0.5)
    batch = make_batch([4])
    batch["windows"][0, 0] = torch.tensor([0.0, 2.0])  # clips 0 and 1 inside, 2 and 3 outside
    batch["saliency"] = torch.tensor([[0.9, 0.4, 0.0, 0.0]])
    batch["saliency_mask"] = torch.tensor([[True, True, False, False]])
    output = {
        "start_logits": torch.zeros(1, 4),
        "end_logits": torch.zeros(1, 4),
        "presence_logit": torch.zeros(1),
        "saliency": torch.tensor([[1.0, 0.8, 0.6, -1.0]]),
    }
    # Clip cross-entropy, clips 0 and 1 inside: softplus(-1.0), softplus(-0.8), softplus(0.6), softplus(-1.0).
    bce = (_softplus(-1.0) + _softplus(-0.8) + _softplus(0.6) + _softplus(-1.0)) / 4
    # Ranking pair (0 over 1): relu(0.5 - 0.2) = 0.3. Contrast pairs (0|1 over 2|3):
    # relu(0.5 - 0.4) = 0.1, relu(0.5 - 2.0) = 0, relu(0.5 - 0.2) = 0.3, relu(0.5 - 1.8) = 0.
    assert model.loss(output, batch)["saliency"].item() == pytest.approx(bce + 0.3 + 0.4 / 4)
    batch["saliency_mask"][:] = False  # no labels (Charades-STA): the windows still teach the clips
    assert model.loss(output, batch)["saliency"].item() == pytest.approx(bce)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_clip_window_bce_by_hand_and_without_clips() -> None:
    scores = torch.tensor([[2.0, -1.0, float("-inf")], [0.5, 0.0, 3.0]])  # (B, T), -inf on padding
    inside = torch.tensor([[True, False, False], [False, True, True]])
    scored = torch.tensor([[True, True, False], [True, True, True]])
    expected = (_softplus(-2.0) + _softplus(-1.0) + _softplus(0.5) + _softplus(0.0) + _softplus(-3.0)) / 5
    assert clip_window_bce(scores, inside, scored).item() == pytest.approx(expected)
    leaf = torch.zeros(2, 3, requires_grad=True)
    none = clip_window_bce(leaf + scores, inside, torch.zeros_like(scored))
    assert none.item() == 0.0 and none.requires_grad  # zero, but the head stays in the graph


def test_saliency_cross_entropy_sees_other_videos_where_the_hinges_do_not() -> None:
    """Shifting one video's scores leaves every within-video ranking as it was, not the batch loss."""
    model = tiny_span(saliency_margin=0.5)
    batch = make_batch([6, 6], seed=1)
    batch["saliency_mask"][:] = batch["video_mask"]
    output = {
        "start_logits": torch.zeros(2, 6),
        "end_logits": torch.zeros(2, 6),
        "presence_logit": torch.zeros(2),
        "saliency": torch.randn(2, 6, generator=torch.Generator().manual_seed(0)),
    }
    inside = clips_in_windows(batch["timestamps"], batch["windows"], batch["window_mask"])
    bce = clip_window_bce(output["saliency"], inside, batch["video_mask"]).item()
    hinges = model.loss(output, batch)["saliency"].item() - bce
    shifted = output | {"saliency": output["saliency"] + torch.tensor([[5.0], [0.0]])}
    bce_shifted = clip_window_bce(shifted["saliency"], inside, batch["video_mask"]).item()
    assert bce_shifted != pytest.approx(bce, abs=1e-3)
    assert model.loss(shifted, batch)["saliency"].item() == pytest.approx(hinges + bce_shifted, abs=1e-5)


def test_query_saliency_head_by_hand() -> None:
    head = QuerySaliencyHead(4)
    with torch.no_grad():
        head.query.weight.copy_(torch.eye(4))
        head.query.bias.zero_()
    context = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]]])  # (1, 3, 4)
    video_mask = torch.tensor([[True, True, False]])
    text = torch.tensor([[[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 4.0, 0, 0]]])  # (1, 3, 4)
    text_mask = torch.tensor([[True, True, False]])  # the third token is padding: ignored
    scores = head(context, video_mask, text, text_mask)
    # Query = mean of the real tokens = [1, 0, 0, 0]; scores = context . query / sqrt(4).
    assert scores[0, :2].tolist() == pytest.approx([0.5, 0.0])
    assert torch.isneginf(scores[0, 2])


def test_query_saliency_head_probe_term_is_the_probes_model() -> None:
    """With the probe term, the head adds exactly `probe`'s ``t^T P v + u^T v`` on the cached features."""
    from ground.models.probe import ProbeNet

    torch.manual_seed(1)
    head = QuerySaliencyHead(4, video_dim=VIDEO_DIM, text_dim=TEXT_DIM)
    probe = ProbeNet(VIDEO_DIM, TEXT_DIM)
    with torch.no_grad():
        head.bilinear.copy_(probe.bilinear)
        head.linear.copy_(probe.linear)
    batch = make_batch([6, 4], seed=2)
    context = torch.randn(2, batch["video"].shape[1], 4)
    text = torch.randn(2, batch["text"].shape[1], 4)
    plain = QuerySaliencyHead(4)
    plain.load_state_dict(head.state_dict(), strict=False)
    expected = plain(context, batch["video_mask"], text, batch["text_mask"]) + probe(batch)["logits"]
    scores = head(context, batch["video_mask"], text, batch["text_mask"], batch["video"], batch["text"])
    torch.testing.assert_close(scores, expected)
    assert torch.isneginf(scores[1, 4:]).all()


def test_span_overfits_eight_samples() -> None:
    """Clips inside the ground-truth window carry a shared pattern; span must learn to find it."""
    batch = planted_batch()
    model = tiny_span(hidden_dim=64)
    train_steps(model, batch, steps=300, lr=1e-3)
    assert_recall_at_1(model, batch)
