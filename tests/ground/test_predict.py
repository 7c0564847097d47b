"""Grounder: new video files, cached ids without decoding, coarse-to-fine, presence threshold, errors.

The world (videos -> tiny_clip cache via `python -m extract` -> a checkpoint trained for two
epochs) is built once per session by `grounding_world` and reused by test_serve/test_browser.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from cache_schema.fake import write_fake_cache
from extract.__main__ import main as extract_main
from extract.video import probe_video, write_video
from ground.cli import main as ground_main
from ground.data import GroundingDataModule
from ground.errors import CheckpointError
from ground.module import GroundingModule
from ground.predict import (
    FINE_FACTOR,
    EncoderMismatchError,
    Grounder,
    VideoNotFoundError,
    VideoReadError,
    calibrate_presence,
    fine_grid,
    ground_video_main,
    presence_path,
)

COLOURS = {"red": (230, 30, 30), "blue": (30, 60, 235), "green": (30, 200, 40), "yellow": (240, 220, 30)}
# (vid, seconds, split, [(colour, start_sec, end_sec)]): one query per event.
VIDEOS = [
    ("amber", 8.0, "train", [("red", 1.0, 3.5), ("blue", 5.0, 7.0)]),
    ("basil", 9.0, "train", [("green", 2.0, 6.0), ("red", 6.5, 8.5)]),
    ("cedar", 6.0, "val", [("yellow", 0.5, 2.5), ("blue", 3.0, 5.5)]),
    ("dune", 7.0, "val", [("red", 4.0, 6.5)]),
]
FPS = 10


def query_text(colour: str) -> str:
    return f"a {colour} square appears"


@dataclass(frozen=True)
class World:
    root: Path  # the media root: videos/<vid>.mp4
    cache: Path
    ckpt: Path

    def video(self, vid: str) -> Path:
        return self.root / "videos" / f"{vid}.mp4"


def _write_videos(root: Path) -> None:
    rows = []
    for vid, seconds, split, events in VIDEOS:
        n = round(seconds * FPS)
        frames = np.full((n, 64, 64, 3), 90, dtype=np.uint8)
        frames[:, ::8] = 60  # stripes, so frames are not flat
        for colour, start, end in events:
            frames[round(start * FPS) : round(end * FPS), 16:48, 16:48] = COLOURS[colour]
        path = write_video(root / "videos" / f"{vid}.mp4", frames, Fraction(FPS))
        duration = probe_video(path).duration_sec
        for k, (colour, start, end) in enumerate(events):
            rows.append(
                {
                    "qid": f"{vid}_q{k}",
                    "video": f"videos/{vid}.mp4",
                    "query": query_text(colour),
                    "windows": [[start, end]],
                    "split": split,
                    "duration": duration,
                }
            )
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _extract(root: Path, cache: Path) -> None:
    config = {
        "dataset": "tiny_squares",
        "adapter": "custom",
        "annotations": str(root / "annotations.jsonl"),
        "video_root": str(root),
        "output": str(cache),
        "video_encoders": [{"name": "tiny_clip", "weights": "none"}],
        "text_encoders": [{"name": "tiny_clip", "weights": "none"}],
        "batch_size": 16,
        "num_workers": 0,
    }
    path = root.parent / "extract.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    assert extract_main(["--config", str(path)]) == 0


def _train(cache: Path, ckpt: Path) -> None:
    L.seed_everything(0, verbose=False)
    data = GroundingDataModule(str(cache), batch_size=4)
    model = GroundingModule(
        name="span",
        video_dim=data.video_dim,
        text_dim=data.text_dim,
        lr=3e-3,
        hparams={"hidden_dim": 32, "num_layers": 1, "num_heads": 2, "conv_dilations": [1, 2]},
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(ckpt)


def grounding_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Build the world once per test session (the other modules of this folder reuse it)."""
    base = tmp_path_factory.getbasetemp() / "grounding_world"
    world = World(root=base / "media", cache=base / "cache.h5", ckpt=base / "span.ckpt")
    if not world.ckpt.exists():
        torch.set_num_threads(1)
        world.root.mkdir(parents=True, exist_ok=True)
        _write_videos(world.root)
        _extract(world.root, world.cache)
        _train(world.cache, world.ckpt.with_suffix(".tmp"))
        world.ckpt.with_suffix(".tmp").rename(world.ckpt)
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return grounding_world(tmp_path_factory)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def grounder(world: World) -> Grounder:
    return Grounder.from_checkpoint(world.ckpt, cache=world.cache)


def _check_result(result, duration_sec: float, top_k: int) -> None:
    assert 1 <= len(result.windows) <= top_k
    for start, end, _ in result.windows:
        assert 0.0 <= start <= end <= duration_sec
    scores = [s for _, _, s in result.windows]
    assert scores == sorted(scores, reverse=True)
    assert result.presence is not None and 0.0 <= result.presence <= 1.0
    assert result.duration_sec == pytest.approx(duration_sec)


def test_ground_a_video_file(world: World) -> None:
    grounder = Grounder.from_checkpoint(world.ckpt)  # no cache: everything is encoded
    queries = [query_text("red"), query_text("blue"), "a purple triangle spins"]
    path = world.video("amber")
    duration = probe_video(path).duration_sec
    results = grounder.ground(path, queries, top_k=3, coarse_to_fine=False)
    assert [r.query for r in results] == queries
    for result in results:
        _check_result(result, duration, top_k=3)
        assert result.found == (result.presence >= grounder.presence_threshold)
        assert not result.refined
        # One saliency score per 1-s feature, at the feature centres.
        assert [t for t, _ in result.saliency] == pytest.approx([0.5 + i for i in range(8)])


def test_cached_video_is_answered_without_decoding(
    grounder: Grounder, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_results = grounder.ground(world.video("cedar"), [query_text("yellow")], coarse_to_fine=False)
    # extract.api cannot even be imported: cached features and cached query texts only.
    fresh = Grounder.from_checkpoint(world.ckpt, cache=world.cache)
    monkeypatch.setitem(sys.modules, "extract.api", None)
    with pytest.raises(ImportError):
        import extract.api  # noqa: F401
    [cached] = fresh.ground("cedar", [query_text("yellow")])
    assert fresh._extractor is None
    _check_result(cached, file_results[0].duration_sec, top_k=5)
    # The cache holds the features the file gives: same answer up to fp16 batching noise.
    assert cached.windows[0][:2] == pytest.approx(file_results[0].windows[0][:2], abs=1e-6)
    assert cached.presence == pytest.approx(file_results[0].presence, abs=1e-2)
    with pytest.raises(ValueError, match="cached features"):
        fresh.ground("cedar", [query_text("yellow")], coarse_to_fine=True)


def test_new_text_on_cached_video_encodes_text_only(
    grounder: Grounder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import extract.api as api

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached video was decoded")

    monkeypatch.setattr(api, "sample_video", no_decoding)
    monkeypatch.setattr(api, "decode_frames_at", no_decoding)
    [result] = grounder.ground("dune", ["an orange star blinks"], top_k=2)
    _check_result(result, grounder.cache.video_meta("dune").duration_sec, top_k=2)


def test_coarse_to_fine_stays_inside_the_video(
    grounder: Grounder, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    extractor = grounder._feature_extractor()
    asked: list[np.ndarray] = []
    original = extractor.encode_video_at

    def spy(path, times_sec):
        asked.append(np.asarray(times_sec))
        return original(path, times_sec)

    monkeypatch.setattr(extractor, "encode_video_at", spy)
    for vid, *_ in VIDEOS:
        path = world.video(vid)
        duration = probe_video(path).duration_sec
        queries = [query_text(c) for c in COLOURS]
        results = grounder.ground(path, queries, top_k=5, coarse_to_fine=True)
        for result in results:
            _check_result(result, duration, top_k=5)
        times = asked[-1]
        assert np.all((times >= 0) & (times <= duration))
        # The fine pass samples at FINE_FACTOR x the feature rate.
        steps = np.diff(np.unique(times))
        assert steps.min() == pytest.approx(1.0 / FINE_FACTOR, abs=1e-6)
    assert len(asked) == len(VIDEOS)


def test_fine_grid_covers_the_region_exactly() -> None:
    grid = fine_grid(1.3, 4.0, 0.25)
    assert grid[0, 0] == 1.3 and grid[-1, 1] == 4.0
    np.testing.assert_allclose(grid[1:, 0], grid[:-1, 1])
    assert np.all(grid[:, 1] > grid[:, 0]) and np.all(grid[:, 1] - grid[:, 0] <= 0.25 + 1e-12)
    with pytest.raises(ValueError, match="empty region"):
        fine_grid(2.0, 2.0, 0.25)


def test_long_videos_use_sliding_windows(grounder: Grounder, world: World) -> None:
    whole = grounder.ground("basil", [query_text("green")], top_k=3)[0]
    grounder.max_clips = 4  # basil has 9 clips: decoded in overlapping chunks
    try:
        chunked = grounder.ground("basil", [query_text("green")], top_k=3)[0]
    finally:
        grounder.max_clips = 1024
    _check_result(chunked, whole.duration_sec, top_k=3)
    assert len(chunked.saliency) == len(whole.saliency)


def test_presence_threshold_round_trip(world: World, tmp_path: Path) -> None:
    ckpt = tmp_path / "span.ckpt"
    ckpt.write_bytes(world.ckpt.read_bytes())
    grounder = Grounder.from_checkpoint(ckpt, cache=world.cache)
    threshold = calibrate_presence(grounder, world.cache, split="val")
    record = json.loads(presence_path(ckpt).read_text())
    assert record["threshold"] == threshold and record["criterion"] == "youden_j"
    assert record["n_positive"] == record["n_negative"] == 3
    assert 0.0 <= threshold <= 1.0
    reloaded = Grounder.from_checkpoint(ckpt, cache=world.cache)
    assert reloaded.presence_threshold == threshold
    # Above every probability, nothing is found: the answer says so.
    presence_path(ckpt).write_text(json.dumps({**record, "threshold": 1.5}))
    strict = Grounder.from_checkpoint(ckpt, cache=world.cache)
    results = strict.ground("amber", [query_text("red"), query_text("blue")])
    assert [r.found for r in results] == [False, False]
    assert all(r.windows for r in results)  # windows are still given, ranked


def test_checkpoint_with_other_encoders_is_refused(world: World, tmp_path: Path) -> None:
    fake = tmp_path / "fake.h5"
    write_fake_cache(fake, n_videos=3, video_dims=(32,), text_dim=32)
    with pytest.raises(EncoderMismatchError) as err:
        Grounder.from_checkpoint(world.ckpt, cache=fake)
    message = str(err.value)
    assert "tiny_clip" in message and "fake_video0" in message and "fake_text" in message
    with pytest.raises(EncoderMismatchError):
        calibrate_presence(Grounder.from_checkpoint(world.ckpt), fake)


def test_checkpoint_without_encoder_record_is_refused(world: World, tmp_path: Path) -> None:
    checkpoint = torch.load(world.ckpt, weights_only=True)
    del checkpoint["groundcache"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    with pytest.raises(CheckpointError, match="bare.ckpt: no encoder record"):
        Grounder.from_checkpoint(bare)


def test_bad_requests_name_the_problem(grounder: Grounder, world: World, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no queries"):
        grounder.ground("amber", [])
    with pytest.raises(ValueError, match="query 1 is empty"):
        grounder.ground("amber", ["a red square appears", "  "])
    with pytest.raises(ValueError, match="top_k"):
        grounder.ground("amber", ["x"], top_k=0)
    with pytest.raises(VideoNotFoundError, match="nosuch"):
        grounder.ground("nosuch", ["x"])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(VideoReadError, match="junk.mp4"):
        grounder.ground(junk, ["x"])


def test_cli_prints_json_and_tables(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--ckpt",
        str(world.ckpt),
        "--cache",
        str(world.cache),
        "--video",
        "amber",
        "--query",
        query_text("red"),
        "--query",
        query_text("blue"),
        "--top-k",
        "2",
    ]
    assert ground_video_main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in out] == [query_text("red"), query_text("blue")]
    assert all(1 <= len(r["windows"]) <= 2 for r in out)
    assert ground_video_main(args) == 0
    table = capsys.readouterr().out
    assert "amber" in table and "square" in table and "presence threshold" in table
    # Through `python -m ground`'s error boundary: one line naming the video, exit 2.
    assert ground_main(["ground-video", *args[:4], "--video", "nosuch", "--query", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nosuch' is not a file" in err and "Traceback" not in err
