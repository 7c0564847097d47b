"""`make zoo` reports highlight detection beside moment retrieval (issue 18, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cache_schema.fake import write_fake_cache
from ground import zoo
from ground.data import GroundingDataModule
from ground.models.blocks import Predictions, clips_in_windows
from ground.module import GroundingModule


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> GroundingDataModule:
    path = tmp_path_factory.mktemp("zoo") / "cache.h5"
    write_fake_cache(path, n_videos=12, queries_per_video=1, duration_range_sec=(20.0, 30.0), seed=5)
    data = GroundingDataModule(str(path), batch_size=4)
    data.setup("test")
    return data


def _module(name: str, data: GroundingDataModule, **overrides: object) -> GroundingModule:
    torch.manual_seed(0)
    hparams = zoo._config(name)["hparams"] | overrides
    return GroundingModule(name=name, hparams=hparams, video_dim=data.video_dim, text_dim=data.text_dim)


def _saliency_from_windows(module: GroundingModule, sign: float) -> None:
    """Make the module predict saliency +-1 inside the windows (its own windows, not a model's)."""
    real_predict = module.predict_batch

    def predict(batch: dict) -> Predictions:
        preds = real_predict(batch)
        inside = clips_in_windows(batch["timestamps"], batch["windows"], batch["window_mask"]).float()
        # A tiny rising term breaks the ties among clips of the same side in time order.
        order = torch.arange(inside.shape[1], dtype=torch.float32) * 1e-3
        return Predictions(
            preds.windows, preds.scores, saliency=sign * inside + order, presence=preds.presence
        )

    module.predict_batch = predict  # type: ignore[method-assign]


def test_window_highlights_score_a_perfect_and_an_inverted_saliency(data: GroundingDataModule) -> None:
    module = _module("span", data)
    _saliency_from_windows(module, sign=1.0)
    perfect = zoo.window_highlight_metrics(module, data)
    assert perfect == {"HD-window-mAP": 100.0, "HD-window-Hit1": 100.0}
    _saliency_from_windows(module, sign=-1.0)
    inverted = zoo.window_highlight_metrics(module, data)
    assert inverted is not None
    assert inverted["HD-window-Hit1"] == 0.0  # the top clip is always outside every window
    assert inverted["HD-window-mAP"] < 60.0


def test_a_model_without_saliency_says_so(data: GroundingDataModule) -> None:
    assert zoo.window_highlight_metrics(_module("regress", data, clip_evidence=False), data) is None
    scored = zoo.window_highlight_metrics(_module("span", data), data)
    assert scored is not None and 0.0 <= scored["HD-window-mAP"] <= 100.0
    rows = [
        {"model": "span", "trainable": True, "params": 2e6, "train_sec": 10.0, "epochs": 2,
         "samples_per_sec": 12.34, "MR-full-R1@0.5": 50.0, "HD-window-mAP": 61.25, "HD-window-Hit1": 75.0},
        {"model": "regress", "trainable": True, "params": 1e6, "train_sec": 5.0, "epochs": 2,
         "MR-full-R1@0.5": 40.0},
    ]  # fmt: skip
    text = zoo.table(rows, Path("cache.h5"), "test machine")
    assert "HD-window-mAP | HD-window-Hit1 |" in text
    assert "| span | 2.00 M | 10 s / 2 ep | 12.3 | 50.0 |" in text and "| 61.2 | 75.0 |" in text
    assert "| regress | 1.00 M | 5 s / 2 ep | - | 40.0 |" in text  # no speed measured: "-"
    assert text.splitlines()[-1].endswith(f"| {zoo.NO_SALIENCY} | {zoo.NO_SALIENCY} |")


def test_seeds_are_reported_as_mean_and_spread() -> None:
    base = {"model": "m", "trainable": True, "params": 10, "epochs": 2, "samples_per_sec": 5.0, "seeds": 1}
    rows = [base | {"train_sec": 10.0, "MR-full-R1@0.5": 50.0, "HD-window-mAP": 20.0},
            base | {"train_sec": 30.0, "MR-full-R1@0.5": 60.0, "HD-window-mAP": 20.0,
                    "samples_per_sec": None}]
    merged = zoo.over_seeds(rows)
    assert merged["MR-full-R1@0.5"] == 55.0 and merged["MR-full-R1@0.5 sd"] == 5.0
    assert merged["train_sec"] == 20.0 and merged["samples_per_sec"] == 5.0 and merged["seeds"] == 2
    text = zoo.table([merged], Path("cache.h5"), "machine")
    assert "| 55.0 ± 5.0 |" in text and "| 20.0 ± 0.0 |" in text and "over 2 seeds" in text
    assert "±" not in zoo.table([rows[0]], Path("cache.h5"), "machine")
