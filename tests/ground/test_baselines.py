"""Baselines against hand-computed expectations on a tiny split."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ground.models import build_model, list_models, trainable_models


def _train(windows: list[list[float]], durations: list[float]) -> SimpleNamespace:
    """A train split with one window per query, one video per query (the fields baselines read)."""
    return SimpleNamespace(
        windows=torch.tensor(windows)[:, None, :],
        window_counts=torch.ones(len(windows)).long(),
        video_index=torch.arange(len(windows)),
        duration=torch.tensor(durations),
    )


def _batch(durations: list[float], dim: int = 4, n_clips: int = 10) -> dict:
    b = len(durations)
    starts = torch.arange(n_clips, dtype=torch.float32)
    return {
        "video": torch.zeros(b, n_clips, dim),
        "video_mask": torch.ones(b, n_clips, dtype=torch.bool),
        "timestamps": torch.stack([starts, starts + 1], -1).expand(b, n_clips, 2).clone(),
        "duration": torch.tensor(durations),
        "text_pooled": torch.zeros(b, dim),
        "qid": [f"q{i}" for i in range(b)],
        "vid": [f"v{i}" for i in range(b)],
    }


def test_baselines_are_registered_and_not_trainable() -> None:
    assert {"random", "centered", "prior", "zeroshot"} <= set(list_models())
    assert not {"random", "centered", "prior", "zeroshot"} & set(trainable_models())
    with pytest.raises(RuntimeError, match="nothing to fit"):
        build_model("random", video_dim=4, text_dim=4).loss({}, {})


def test_centered_uses_training_median_length() -> None:
    net = build_model("centered", video_dim=4, text_dim=4)
    net.fit_statistics(_train([[0, 2], [1, 5], [3, 9]], [10, 10, 10]))  # lengths 2, 4, 6 -> median 4
    preds = net.decode({}, _batch([10.0, 3.0]), k=5)
    torch.testing.assert_close(preds.windows[0, 0], torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(
        preds.windows[1, 0], torch.tensor([0.0, 3.0])
    )  # longer than the video: whole video
    assert preds.window_mask.sum(1).tolist() == [1, 1]


def test_prior_returns_most_frequent_normalized_windows() -> None:
    net = build_model("prior", video_dim=4, text_dim=4, bins=10)
    # Normalized windows: (0.0, 0.5) twice, (0.5, 1.0) once -> cells (0, 4) then (5, 9).
    net.fit_statistics(_train([[0, 5], [0, 10], [10, 20]], [10, 20, 20]))
    preds = net.decode({}, _batch([30.0]), k=3)
    torch.testing.assert_close(preds.windows[0, :2], torch.tensor([[0.0, 15.0], [15.0, 30.0]]))
    torch.testing.assert_close(preds.scores[0, :2], torch.tensor([2 / 3, 1 / 3]))
    assert preds.window_mask[0].tolist() == [True, True, False]


def test_random_is_valid_and_reproducible() -> None:
    net = build_model("random", video_dim=4, text_dim=4)
    a = net.decode({}, _batch([12.0, 40.0]), k=5)
    b = net.decode({}, _batch([12.0, 40.0]), k=5)
    torch.testing.assert_close(a.windows, b.windows)
    assert (a.windows[..., 0] <= a.windows[..., 1]).all() and (a.windows >= 0).all()
    assert (a.windows[0] <= 12.0).all() and (a.windows[1] <= 40.0).all()


def test_zeroshot_groups_similar_frames_into_windows() -> None:
    net = build_model("zeroshot", video_dim=4, text_dim=4, threshold_std=0.5)
    batch = _batch([10.0])
    batch["text_pooled"][0] = torch.tensor([1.0, 0, 0, 0])
    batch["video"][0, :, 1] = 1.0  # orthogonal to the query everywhere...
    batch["video"][0, 2:5, 0] = 3.0  # ...except clips 2-4, and clip 8 a little
    batch["video"][0, 8, 0] = 1.0
    preds = net.decode({}, batch, k=3)
    # Similarities: clips 2-4 0.949, clip 8 0.707, others 0 -> mean 0.355, std 0.415: threshold 0.562.
    torch.testing.assert_close(preds.windows[0, :2], torch.tensor([[2.0, 5.0], [8.0, 9.0]]))
    torch.testing.assert_close(preds.scores[0, :2], torch.tensor([0.9487, 0.7071]), atol=1e-4, rtol=0)
    batch["text_pooled"] = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="one joint space.*q0"):
        net.decode({}, batch, k=3)
