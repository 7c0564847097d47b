"""Tests of `regress`: its loss by hand, the observed-span normalisation, the top-k variants,
overfitting, and one fit through the model-agnostic trainer.

The registry-wide contract (forward/backward, padding invariance, decode validity, bad batches)
is tested for every model in test_span.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_span import TEXT_DIM, VIDEO_DIM, assert_recall_at_1, make_batch, planted_batch, train_steps

from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.errors import ModelConfigError
from ground.models import build_model
from ground.models.regress import MIN_SPAN_SEC, RegressNet, observed_span

CONFIG = Path(__file__).resolve().parents[2] / "ground" / "configs" / "model" / "regress.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_regress(**overrides: object) -> RegressNet:
    torch.manual_seed(0)
    hparams = {"hidden_dim": 32, "num_heads": 4, "feedforward_dim": 64, "dropout": 0.0} | overrides
    return RegressNet(video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **hparams)


def one_window_batch(n_clips: int, window_sec: tuple[float, float], offset_sec: float = 0.0) -> dict:
    """One query over 1-s clips starting at ``offset_sec`` (a crop when > 0), one window."""
    batch = make_batch([n_clips])
    batch["timestamps"] = batch["timestamps"] + offset_sec
    batch["duration"] = batch["duration"] + 2 * offset_sec
    batch["windows"][0, 0] = torch.tensor(window_sec)
    batch["window_mask"][0, 1] = False
    return batch


def test_regress_rejects_inconsistent_hparams() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        RegressNet(video_dim=4, text_dim=4, hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="topk_shifts"):
        RegressNet(video_dim=4, text_dim=4, topk_shifts=(0.5, 0.0))
    with pytest.raises(ValueError, match="topk_scales"):
        RegressNet(video_dim=4, text_dim=4, topk_scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="loss weights"):
        RegressNet(video_dim=4, text_dim=4, eiou_weight=0.0, l1_weight=0.0)


def test_observed_span_ignores_padding_and_survives_a_zero_length_placeholder() -> None:
    batch = make_batch([3, 5], stride_sec=0.5)
    torch.testing.assert_close(
        observed_span(batch["timestamps"], batch["video_mask"]), torch.tensor([[0.0, 1.5], [0.0, 2.5]])
    )
    # Sliding-window decoding gives a sample whose video has ended one placeholder clip [0, 0).
    batch["timestamps"][1] = 0.0
    batch["video_mask"][1] = torch.arange(5) < 1
    model = tiny_regress().eval()
    with torch.no_grad():
        preds = model.decode(model(batch), batch, k=3)
    assert torch.isfinite(preds.windows).all()
    assert (preds.windows[1] >= 0.0).all() and (preds.windows[1] <= MIN_SPAN_SEC).all()


def test_regress_forward_gives_an_ordered_window_inside_the_span() -> None:
    model = tiny_regress().eval()
    batch = make_batch([1, 7, 40], stride_sec=0.5)
    with torch.no_grad():
        output = model(batch)
    window = output["window_norm"]
    assert window.shape == (3, 2)
    assert (window[:, 0] <= window[:, 1]).all() and (window >= 0).all() and (window <= 1).all()
    torch.testing.assert_close(output["span_sec"][:, 1], batch["duration"])


@pytest.mark.parametrize("offset_sec", [0.0, 20.0])
def test_regress_loss_by_hand(offset_sec: float) -> None:
    """Window [2, 6] s of a 10-clip span is [0.2, 0.6]; the same holds in a crop starting at 20 s."""
    model = tiny_regress()
    batch = one_window_batch(10, (offset_sec + 2.0, offset_sec + 6.0), offset_sec)
    output = {
        "window_norm": torch.tensor([[0.1, 0.5]]),
        "span_sec": observed_span(batch["timestamps"], batch["video_mask"]),
    }
    losses = model.loss(output, batch)
    # IoU 0.3 / 0.5 = 0.6, enclosing 0.5, centres 0.3 vs 0.4, equal widths.
    assert losses["eiou"].item() == pytest.approx(1 - 0.6 + 0.1**2 / 0.5**2, rel=1e-4)
    assert losses["l1"].item() == pytest.approx(0.1, rel=1e-4)
    assert losses["iou"].item() == pytest.approx(0.6, rel=1e-4)
    assert losses["loss"].item() == pytest.approx(0.44 + 0.1, rel=1e-4)
    weighted = tiny_regress(eiou_weight=2.0, l1_weight=0.5).loss(output, batch)["loss"]
    assert weighted.item() == pytest.approx(2 * 0.44 + 0.5 * 0.1, rel=1e-4)


def test_the_pooling_logits_clip_loss_by_hand() -> None:
    """`inside_weight`: cross-entropy of the pooling logits against the clips inside the longest window."""
    batch = one_window_batch(10, (2.0, 6.0))
    batch["windows"][0, 1] = torch.tensor([7.0, 8.0])  # shorter: not the target, so its clip is "outside"
    batch["window_mask"][0, 1] = True
    inside = torch.tensor([[False, False, True, True, True, True, False, False, False, False]])
    output = {
        "window_norm": torch.tensor([[0.2, 0.6]]),  # the target itself: EIoU and L1 are 0
        "span_sec": observed_span(batch["timestamps"], batch["video_mask"]),
        "inside_logits": torch.where(inside, 2.0, -2.0),
    }
    losses = tiny_regress(inside_weight=0.5).loss(output, batch)
    assert losses["inside"].item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(0.5 * math.log1p(math.exp(-2.0)), abs=1e-5)
    assert "inside" not in tiny_regress().loss(output, batch)  # inside_weight 0: the design's loss
    with pytest.raises(ModelConfigError, match="model regress: inside_weight must be a number >= 0"):
        build_model("regress", VIDEO_DIM, TEXT_DIM, inside_weight=-1.0)


def test_the_pooling_logits_get_their_clip_loss_through_forward() -> None:
    model = tiny_regress(inside_weight=1.0)
    batch = one_window_batch(10, (2.0, 6.0))
    output = model(batch)
    assert output["inside_logits"].shape == (1, 10)
    model.loss(output, batch)["inside"].backward()
    assert model.attention.weight.grad.abs().sum() > 0


def test_regress_loss_uses_the_longest_window_and_names_a_query_without_one() -> None:
    model = tiny_regress()
    batch = one_window_batch(10, (2.0, 4.0))
    batch["windows"][0, 1] = torch.tensor([5.0, 9.0])
    batch["window_mask"][0, 1] = True
    output = {"window_norm": torch.tensor([[0.5, 0.9]]), "span_sec": torch.tensor([[0.0, 10.0]])}
    assert model.loss(output, batch)["l1"].item() == pytest.approx(0.0, abs=1e-6)
    batch["window_mask"][:] = False
    with pytest.raises(ValueError, match="q0"):
        model.loss(output, batch)


def test_regress_decode_ranks_the_documented_variants() -> None:
    model = tiny_regress()
    batch = one_window_batch(10, (2.0, 6.0))
    output = {"window_norm": torch.tensor([[0.2, 0.6]]), "span_sec": torch.tensor([[0.0, 10.0]])}
    preds = model.decode(output, batch, k=5)
    # Regressed window (IoU 1), then width x1.25 (IoU 0.8), x0.75 (0.75), x1.5 (2/3), then the
    # tie at 2/3 goes by grid order: shift -1/4 width with x1.5 comes before shift +1/4 with x1.5.
    expected = [[2.0, 6.0], [1.5, 6.5], [2.5, 5.5], [1.0, 7.0], [0.0, 6.0]]
    torch.testing.assert_close(preds.windows[0], torch.tensor(expected))
    torch.testing.assert_close(preds.scores[0], torch.tensor([1.0, 0.8, 0.75, 2 / 3, 2 / 3]))
    assert preds.saliency is None and preds.presence is None


def test_regress_decode_clips_to_the_video_and_drops_repeated_variants() -> None:
    model = tiny_regress()
    batch = make_batch([8, 8])
    output = {
        "window_norm": torch.tensor([[0.0, 1.0], [0.5, 0.5]]),
        "span_sec": torch.tensor([[0.0, 8.0], [0.0, 8.0]]),
    }
    preds = model.decode(output, batch, k=25)
    assert (preds.windows >= 0).all() and (preds.windows <= 8.0).all()
    for b in range(2):
        real = preds.windows[b][preds.window_mask[b]]
        assert len(torch.unique(real, dim=0)) == len(real), "a window was returned twice"
    # The whole video: every wider variant clips back to it; a zero-length window has no variants.
    assert preds.windows[0, 0].tolist() == [0.0, 8.0] and preds.scores[0, 0] == 1.0
    assert preds.window_mask[0].sum() < 25
    assert preds.window_mask[1].tolist() == [True] + [False] * 24
    assert preds.windows[1, 0].tolist() == [4.0, 4.0] and preds.scores[1, 0] == 1.0


def test_attention_pooling_starts_from_the_window_the_evidence_describes() -> None:
    """Clips 2-5 of 10 (window [2, 6] s) scored inside by the evidence: with the head's correction
    at its zero start, the window is the weights' centre +- sqrt(3) spread, close to [0.2, 0.6]."""
    model = tiny_regress().eval()
    batch = one_window_batch(10, (2.0, 6.0))
    inside = (torch.arange(10) >= 2) & (torch.arange(10) <= 5)
    batch["video"].zero_()
    batch["video"][0, :, 0] = inside.float()
    with torch.no_grad():
        model.evidence.linear[0] = 20.0  # logit +10 inside, -10 outside
        model.evidence.bias.fill_(-10.0)
        model.attention.weight.zero_()
        model.attention.bias.zero_()
        window = model(batch)["window_norm"][0]
    centres = (torch.arange(2, 6) + 0.5) / 10
    half = math.sqrt(3.0) * centres.std(unbiased=False)
    expected = torch.stack([centres.mean() - half, centres.mean() + half])
    torch.testing.assert_close(window, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(window, torch.tensor([0.2, 0.6]), atol=0.01, rtol=0)
    mean_pooled = tiny_regress(pooling="mean")
    assert mean_pooled.attention is None and mean_pooled.head[0].in_features == 32
    with pytest.raises(ValueError, match="pooling"):
        tiny_regress(pooling="max")


def test_regress_decode_drops_variants_equal_up_to_rounding() -> None:
    """Variants 1e-7 s apart (clipping and float rounding make them) are one window, not two."""
    model = tiny_regress()
    model.variant_grid = torch.tensor([[0.0, 1.0], [1e-8, 1.0], [0.5, 1.0]])
    batch = one_window_batch(10, (2.0, 6.0))
    output = {"window_norm": torch.tensor([[0.2, 0.6]]), "span_sec": torch.tensor([[0.0, 10.0]])}
    preds = model.decode(output, batch, k=3)
    assert preds.window_mask[0].tolist() == [True, True, False]
    torch.testing.assert_close(preds.windows[0, :2], torch.tensor([[2.0, 6.0], [4.0, 8.0]]))


def test_regress_overfits_eight_samples() -> None:
    """Clips inside the ground-truth window carry a shared pattern; regress must find it."""
    batch = planted_batch()
    model = tiny_regress(hidden_dim=64, feedforward_dim=128)
    train_steps(model, batch, steps=200, lr=1e-3)
    assert_recall_at_1(model, batch)


def test_regress_fits_through_the_trainer(tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    write_fake_cache(cache, n_videos=6, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    args = [
        "fit",
        "--data.cache",
        str(cache),
        "--data.batch_size",
        "4",
        "--model",
        str(CONFIG),
        "--model.hparams.hidden_dim",
        "32",
        "--model.hparams.num_heads",
        "2",
        "--model.hparams.feedforward_dim",
        "64",
        "--run_dir",
        str(tmp_path / "runs"),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert ground_main(args) == 0
