"""`python -m extract` with block inputs (issue 14): written, resumable after kill -9, refused when bad."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from test_pipeline import DRIVER, GOOD_VIDEOS, REPO, _committed_videos, write_config, write_dataset

from cache_schema.store import CacheReader
from cache_schema.validate import validate
from extract.__main__ import main
from extract.encoders import build_encoder

ENCODER = "tiny_clip"
BLOCKS = [{"name": ENCODER, "weights": "none", "block_inputs": 1}]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_blocks")
    write_dataset(root, GOOD_VIDEOS[:3])
    return root


@pytest.fixture(scope="module")
def with_blocks(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("blocks") / "cache.h5"
    assert (
        main(["--config", str(write_config(out.parent / "c.yaml", dataset, out, video_encoders=BLOCKS))]) == 0
    )
    return out


def test_block_inputs_are_written_and_reproduce_the_features(
    with_blocks: Path, dataset: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.h5"
    assert main(["--config", str(write_config(tmp_path / "c.yaml", dataset, plain))]) == 0
    assert validate(with_blocks) == []
    encoder = build_encoder(ENCODER, weights="none")
    split = encoder.visual_split()
    with CacheReader(with_blocks) as reader, CacheReader(plain) as ref:
        assert reader.schema_version == "1.3.0" and reader.min_reader_version == "1.3.0"
        spec = reader.block_inputs[ENCODER]
        # tiny_clip: 2 blocks, 32 px / 8 px patches = 4 x 4 grid + class token, width 64.
        assert (spec.blocks, spec.depth, spec.tokens, spec.width, spec.prefix_tokens, spec.pool) == (
            1,
            2,
            17,
            64,
            1,
            1,
        )
        assert ref.block_inputs == {}
        for vid in reader.video_ids:
            features = reader.video_features(vid, ENCODER)
            # Storing block inputs changes nothing in the features.
            np.testing.assert_array_equal(features, ref.video_features(vid, ENCODER))
            hidden = reader.video_block_inputs(vid, ENCODER)
            assert hidden.shape == (len(features), 17, 64) and hidden.dtype == np.float16
            with torch.no_grad():
                rebuilt = split.tail(torch.from_numpy(hidden).float(), 1).numpy()
            # The last block and the head, run on the cached fp16 inputs, give the cached features.
            np.testing.assert_allclose(rebuilt, features.astype(np.float32), atol=2e-2, rtol=1e-2)


def test_resume_after_kill_9_keeps_block_inputs_aligned(
    with_blocks: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", dataset, out, video_encoders=BLOCKS)
    marker = tmp_path / "paused"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(marker), "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        committed = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if marker.exists() and out.exists():
                committed = _committed_videos(out)
                if committed >= 1:
                    break
            time.sleep(0.05)
        assert committed >= 1, f"the run never committed a video: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    with h5py.File(out, "r") as f:  # the second video's block inputs lie past the commit point
        end = f[f"videos/offsets/{ENCODER}"][0, 1]
        assert f[f"video/{ENCODER}/block_inputs"].shape[0] > end
    assert main(["--config", str(config)]) == 0
    assert validate(out) == []
    with CacheReader(out) as got, CacheReader(with_blocks) as want:
        assert sorted(got.video_ids) == sorted(want.video_ids)
        for vid in want.video_ids:
            np.testing.assert_array_equal(
                got.video_block_inputs(vid, ENCODER), want.video_block_inputs(vid, ENCODER)
            )
            np.testing.assert_array_equal(got.video_features(vid, ENCODER), want.video_features(vid, ENCODER))


def test_resume_without_block_inputs_is_refused_naming_both(
    with_blocks: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cache.h5"
    assert (
        main(["--config", str(write_config(tmp_path / "a.yaml", dataset, out, video_encoders=BLOCKS))]) == 0
    )
    capsys.readouterr()
    assert main(["--config", str(write_config(tmp_path / "b.yaml", dataset, out))]) != 0
    err = capsys.readouterr().err
    assert "block inputs" in err and "'blocks': 1" in err and "this run writes none" in err


def test_k_beyond_the_depth_is_one_line_naming_both(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    choice = [{"name": ENCODER, "weights": "none", "block_inputs": 3}]
    config = write_config(tmp_path / "c.yaml", dataset, tmp_path / "cache.h5", video_encoders=choice)
    assert main(["--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert "K=3" in err and "depth 2" in err and "tiny_clip" in err
    assert "Traceback" not in err


def test_adding_block_inputs_to_an_existing_cache_is_one_line_naming_it(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cache.h5"
    assert main(["--config", str(write_config(tmp_path / "a.yaml", dataset, out))]) == 0
    capsys.readouterr()
    config = write_config(tmp_path / "b.yaml", dataset, out, video_encoders=BLOCKS)
    assert main(["--config", str(config), "--add-encoder", ENCODER]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{out}: add_encoder ['{ENCODER}'] ask for block_inputs" in err
    assert "extract a new cache with them" in err
    with CacheReader(out) as reader:
        assert reader.block_inputs == {}


def test_a_run_larger_than_the_free_disk_is_refused_with_both_numbers(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import extract.pipeline as pipeline

    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: SimpleNamespace(free=10_000))
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "c.yaml", dataset, out, video_encoders=BLOCKS)
    assert main(["--config", str(config)]) != 0
    err = " ".join(capsys.readouterr().err.split())
    # 3 videos of 6 + 5 + 7.5 s at 1 fps: 6 + 5 + 8 = 19 frames of 17 x 64 fp16 (2176 B) = 41344 B.
    assert "19 frames need 41.3 kB" in err and "10 kB free" in err
    assert not out.exists()
