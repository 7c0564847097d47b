"""The synthetic dataset: deterministic, decodable, labelled where the shapes really are."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from cache_schema.spec import check_windows
from extract.synthetic import COLOURS, DIRECTIONS, SHAPES, generate_synthetic, main, plan_video, render_video
from extract.video import decode_frames_at, probe_video, sample_video

N_VIDEOS = 5
KEYS = ["qid", "video", "vid", "query", "windows", "split", "duration"]
WORDS_FOR_DIRECTION = {"left", "right", "up", "down", "upward", "downward"}


def read_rows(annotations: Path) -> list[dict]:
    return [json.loads(line) for line in annotations.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    first = generate_synthetic(tmp_path_factory.mktemp("a"), n_videos=N_VIDEOS, seed=0)
    second = generate_synthetic(tmp_path_factory.mktemp("b"), n_videos=N_VIDEOS, seed=0)
    return first, second


def test_same_seed_same_dataset(twice):
    first, second = twice
    assert first.read_bytes() == second.read_bytes()
    for row in read_rows(first)[:: 4]:
        plan = plan_video(0, int(row["vid"][3:]))
        np.testing.assert_array_equal(render_video(plan, 0), render_video(plan, 0))
        # x264 occasionally encodes the same frames into other bytes (a few grey levels in a few
        # macroblocks; see extract.synthetic), so the decoded videos are compared closely.
        a = sample_video(first.parent / row["video"], 2.0, backend="pyav").frames.astype(np.int16)
        b = sample_video(second.parent / row["video"], 2.0, backend="pyav").frames.astype(np.int16)
        assert a.shape == b.shape, row["video"]
        assert np.abs(a - b).mean() < 0.5, row["video"]


def test_other_seed_other_dataset(tmp_path, twice):
    other = generate_synthetic(tmp_path, n_videos=3, seed=1)
    assert other.read_bytes() != twice[0].read_bytes()


def test_annotations_are_well_formed(twice):
    annotations = twice[0]
    rows = read_rows(annotations)
    assert all(list(row) == KEYS for row in rows)
    assert len({row["qid"] for row in rows}) == len(rows)
    vids = {row["vid"] for row in rows}
    assert vids == {f"syn{i:04d}" for i in range(N_VIDEOS)}
    for row in rows:
        info = probe_video(annotations.parent / row["video"])
        assert row["video"] == f"videos/{row['vid']}.mp4"
        assert row["duration"] == info.duration_sec
        assert row["windows"] and not check_windows(row["qid"], row["windows"], row["duration"], atol=0.0)
        words = set(row["query"].split())
        assert words & set(COLOURS) and words & set(SHAPES) and words & WORDS_FOR_DIRECTION, row["query"]
    # Every video sits in exactly one split, and no split is empty.
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["vid"], row["split"]) == row["split"]
    assert set(split_of.values()) == {"train", "val", "test"}


def test_videos_have_planned_frames_and_rates(twice):
    root = twice[0].parent
    for index in range(N_VIDEOS):
        plan = plan_video(0, index)
        info = probe_video(root / "videos" / f"{plan.vid}.mp4")
        assert info.n_frames == plan.n_frames
        assert (info.height, info.width) == (plan.height, plan.width)
        assert info.duration_sec == pytest.approx(float(plan.n_frames / plan.fps), abs=1e-9)
    assert plan_video(0, 1).fps == Fraction(30000, 1001)
    assert probe_video(root / "videos" / "syn0001.mp4").fps == pytest.approx(29.97, abs=1e-3)
    assert plan_video(0, 0).n_frames / plan_video(0, 0).fps == pytest.approx(90.0, abs=0.1)


def _colour_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.abs(frame.astype(int) - COLOURS[colour]).sum(axis=-1) < 90


def test_shapes_are_where_the_windows_say(twice):
    root = twice[0].parent
    for index in range(N_VIDEOS):
        plan = plan_video(0, index)
        path = root / "videos" / f"{plan.vid}.mp4"
        for event in plan.events:
            length = event.end_sec - event.start_sec
            times = [event.start_sec + 0.2 * length, event.start_sec + 0.8 * length]
            inside = decode_frames_at(path, times)
            masks = [_colour_mask(frame, event.colour) for frame in inside]
            area = 0.04 * min(plan.height, plan.width) ** 2  # a quarter of the shape's box, at least
            assert all(mask.sum() > area for mask in masks), (plan.vid, event)
            shared = [e for e in plan.events if e != event and e.colour == event.colour
                      and e.start_sec < event.end_sec and event.start_sec < e.end_sec]
            if shared:  # another shape of this colour on screen: centroids would mix
                continue
            # The shape travels in the named direction (image y grows downwards).
            centroids = [np.argwhere(mask).mean(axis=0)[::-1] for mask in masks]  # (x, y)
            step = centroids[1] - centroids[0]
            dx, dy = DIRECTIONS[event.direction]
            assert step @ np.array([dx, dy]) > 0.2 * min(plan.height, plan.width), (plan.vid, event)
        # Before the first event the frame holds no saturated shape colour at all.
        first = min(e.start_sec for e in plan.events)
        if first >= 0.5:
            before = decode_frames_at(path, [first - 0.3])[0]
            assert not any(_colour_mask(before, c).sum() > 20 for c in COLOURS), plan.vid


def test_defaults_match_the_demo_spec():
    plans = [plan_video(0, i) for i in range(60)]
    seconds = np.array([float(p.n_frames / p.fps) for p in plans])
    assert seconds.max() == pytest.approx(90.0, abs=0.1) and seconds.min() >= 5.0
    assert np.mean((seconds >= 8.0) & (seconds <= 40.0)) >= 0.8
    assert {p.fps for p in plans} <= {Fraction(24), Fraction(25), Fraction(30), Fraction(30000, 1001)}
    assert all(64 <= side <= 128 for p in plans for side in (p.height, p.width))
    assert any(len(w) == 2 for p in plans for _, w in p.queries)  # some queries have two windows


def test_main_writes_the_dataset(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--n-videos", "3", "--seed", "2"]) == 0
    rows = read_rows(tmp_path / "annotations.jsonl")
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    assert "3 videos" in capsys.readouterr().out


def test_too_few_videos_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_videos"):
        generate_synthetic(tmp_path, n_videos=2)


def test_extra_test_videos_keep_the_smaller_sets_videos_and_splits(tmp_path, twice):
    base = read_rows(twice[0])
    grown = read_rows(generate_synthetic(tmp_path, n_videos=N_VIDEOS, seed=0, extra_test_videos=2))
    # The first N_VIDEOS videos: the same queries, windows and splits as the set without extras.
    assert grown[: len(base)] == base
    extra = grown[len(base):]
    assert {row["vid"] for row in extra} == {f"syn{i:04d}" for i in range(N_VIDEOS, N_VIDEOS + 2)}
    assert extra and {row["split"] for row in extra} == {"test"}
    with pytest.raises(ValueError, match="extra_test_videos must be >= 0"):
        generate_synthetic(tmp_path, n_videos=N_VIDEOS, extra_test_videos=-1)


@pytest.mark.parametrize(("argv", "message"), [(["--n-videos", "2"], "--n-videos must be >= 3"),
                                               (["--seed", "-1"], "--seed must be >= 0")])  # fmt: skip
def test_bad_generator_options_are_usage_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(tmp_path / "syn"), *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
