"""Training over several encoders of a grown cache: only videos where all are committed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.data import GroundingDataModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache_schema"))
from test_grow import _grow  # noqa: E402  (adds added_video / added_text, committed for a prefix)

TINY = [
    "--model.hparams.hidden_dim",
    "32",
    "--model.hparams.num_layers",
    "1",
    "--model.hparams.num_heads",
    "2",
]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(params=["cache.h5", "cache.zarr"])
def grown(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """12 videos (train/val/test round robin, 2 queries each); added_video committed for 8."""
    path = tmp_path / request.param
    write_fake_cache(path, n_videos=12, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    _grow(path, n_video=8, n_text=None)
    return path


def test_two_encoders_with_partial_coverage_error_then_skip(grown: Path, caplog) -> None:
    encoders = ["fake_video0", "added_video"]
    data = GroundingDataModule(str(grown), video_encoders=encoders, text_encoder="fake_text")
    with pytest.raises(Exception, match=r"split 'train': 2 of 8 queries \(1 videos\) lack") as err:
        data.load("train")
    assert type(err.value).__name__ == "UncoveredItemsError"
    skip = GroundingDataModule(
        str(grown), video_encoders=encoders, text_encoder="fake_text", uncovered="skip"
    )
    with caplog.at_level("WARNING"):
        split = skip.load("train")
    assert skip.skipped["train"] == (2, 1) and len(split) == 6
    assert "skipped 2 queries of 1 videos" in caplog.text
    assert skip.video_dim == 32 + 12
    # One encoder that covers everything: nothing skipped.
    full = GroundingDataModule(str(grown), video_encoders=["fake_video0"], text_encoder="fake_text")
    assert len(full.load("train")) == 8 and full.skipped["train"] == (0, 0)


def test_cli_fit_over_two_encoders(grown: Path, tmp_path: Path, capsys) -> None:
    args = [
        "fit",
        "--data.cache", str(grown),
        "--data.video_encoders", '["fake_video0", "added_video"]',
        "--data.text_encoder", "fake_text",
        "--data.batch_size", "4",
        "--model", "ground/configs/model/span.yaml",
        *TINY,
        "--run_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.fast_dev_run", "true",
    ]  # fmt: skip
    assert ground_main(args) == 2
    err = capsys.readouterr().err
    assert "2 of 8 queries (1 videos) lack" in err and "Traceback" not in err
    assert ground_main([*args, "--data.uncovered", "skip"]) == 0
