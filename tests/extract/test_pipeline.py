"""`python -m extract` end to end on tiny generated videos with `tiny_clip` (offline, random init)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pytest

from cache_schema.store import CacheReader
from cache_schema.validate import validate
from extract.__main__ import main
from extract.api import FeatureExtractor
from extract.encoders.registry import Encoder
from extract.pipeline import failures_path, problems_path
from extract.video import probe_video, write_video

REPO = Path(__file__).resolve().parents[2]
ENCODER = "tiny_clip"
# (vid, seconds, fps, height, width, query texts); texts repeat across videos on purpose.
GOOD_VIDEOS = [
    ("alpha", 6.0, 10, 64, 80, ["a person walks", "a dog runs"]),
    ("bravo", 5.0, 12, 80, 64, ["a person walks", "the door opens"]),
    ("charlie", 7.5, 10, 64, 80, ["a dog runs", "a car turns left"]),
    ("delta", 5.2, 8, 64, 64, ["a person walks", "someone claps"]),
    ("echo", 8.0, 10, 80, 64, ["a bird flies", "a dog runs"]),
]


def write_noise_video(path: Path, seconds: float, fps: int, height: int, width: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(round(seconds * fps), height, width, 3), dtype=np.uint8)
    write_video(path, frames, Fraction(fps))
    return probe_video(path).duration_sec


def write_dataset(root: Path, videos=GOOD_VIDEOS) -> Path:
    """Videos under root/videos and a custom jsonl whose durations are the decoded ones."""
    rows = []
    for i, (vid, seconds, fps, height, width, texts) in enumerate(videos):
        duration = write_noise_video(root / "videos" / f"{vid}.mp4", seconds, fps, height, width, seed=i)
        for k, text in enumerate(texts):
            rows.append(
                {
                    "qid": f"{vid}_q{k}",
                    "video": f"videos/{vid}.mp4",
                    "query": text,
                    "windows": [[1.0, min(3.0 + k, duration)]],
                    "split": "train",
                    "duration": duration,
                }
            )
    annotations = root / "annotations.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return annotations


def write_config(path: Path, root: Path, output: Path, **fields: object) -> Path:
    config = {
        "dataset": "tiny",
        "adapter": "custom",
        "annotations": str(root / "annotations.jsonl"),
        "video_root": str(root),
        "output": str(output),
        "video_encoders": [{"name": ENCODER, "weights": "none"}],
        "text_encoders": [{"name": ENCODER, "weights": "none"}],
        "batch_size": 16,
        "num_workers": 1,
        **fields,
    }
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def assert_same_cache(a: Path, b: Path, only_videos: list[str] | None = None) -> None:
    """Same videos, queries and bit-identical (fp16) features (of `only_videos` of b, if given)."""
    with CacheReader(a) as ra, CacheReader(b) as rb:
        vids_b = rb.video_ids if only_videos is None else only_videos
        assert sorted(ra.video_ids) == sorted(vids_b)
        assert sorted(ra.query_ids) == sorted(
            q for q in rb.query_ids if rb.query(q, features=False).vid in vids_b
        )
        for vid in ra.video_ids:
            np.testing.assert_array_equal(ra.video_features(vid, ENCODER), rb.video_features(vid, ENCODER))
            np.testing.assert_array_equal(
                ra.video_timestamps(vid, ENCODER), rb.video_timestamps(vid, ENCODER)
            )
        for qid in ra.query_ids:
            np.testing.assert_array_equal(ra.query_tokens(qid, ENCODER), rb.query_tokens(qid, ENCODER))
            np.testing.assert_array_equal(ra.query_pooled(qid, ENCODER), rb.query_pooled(qid, ENCODER))
            assert ra.query(qid, features=False) == rb.query(qid, features=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root)
    return root


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted in-process run over the whole tiny dataset."""
    out = tmp_path_factory.mktemp("reference") / "cache.h5"
    config = write_config(out.parent / "config.yaml", dataset, out)
    assert main(["--config", str(config)]) == 0
    return out


def test_end_to_end_cache_is_valid_and_complete(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    original = Encoder.encode_text

    def recording(self: Encoder, texts: list[str]):
        calls.append(list(texts))
        return original(self, texts)

    monkeypatch.setattr(Encoder, "encode_text", recording)
    out = tmp_path / "cache.zarr"
    config = write_config(tmp_path / "config.yaml", dataset, out, fps=2.0, num_workers=2, batch_size=8)
    assert main(["--config", str(config)]) == 0

    assert validate(out) == []
    assert failures_path(out).read_text() == ""
    unique_texts = {t for *_, texts in GOOD_VIDEOS for t in texts}
    with CacheReader(out) as reader:
        assert sorted(reader.video_ids) == sorted(v[0] for v in GOOD_VIDEOS)
        for vid in reader.video_ids:
            meta = reader.video_meta(vid)
            assert len(reader.video_features(vid, ENCODER)) == math.ceil(meta.duration_sec * 2.0 - 1e-6)
            assert meta.duration_sec == pytest.approx(
                probe_video(dataset / "videos" / f"{vid}.mp4").duration_sec
            )
        assert reader.n_queries == sum(len(v[-1]) for v in GOOD_VIDEOS)
        for query in reader.queries():
            tokens = reader.query_tokens(query.qid, ENCODER)
            assert tokens.shape[0] >= 3 and tokens.shape[1] == 32  # start, words..., end of text
            assert np.all(np.isfinite(tokens))
    # Each unique text went through the encoder in exactly one call; a call only repeats its own
    # last text (padding to the fixed batch shape).
    seen: Counter[str] = Counter()
    for texts in calls:
        real = list(dict.fromkeys(texts))
        assert texts[len(real) :] == [real[-1]] * (len(texts) - len(real))
        seen.update(real)
    assert set(seen) == unique_texts
    assert max(seen.values()) == 1


def test_limit_takes_the_first_videos(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", dataset, out)
    assert main(["--config", str(config), "--limit", "2"]) == 0
    with CacheReader(out) as reader:
        assert reader.video_ids == ["alpha", "bravo"]
        assert {q.vid for q in reader.queries()} == {"alpha", "bravo"}
    # Raising the limit resumes: the first two are skipped, the third is added.
    assert main(["--config", str(config), "--limit", "3"]) == 0
    with CacheReader(out) as reader:
        assert reader.video_ids == ["alpha", "bravo", "charlie"]


def test_rerun_skips_and_matches_reference(reference: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", dataset, out, batch_size=16, num_workers=0)
    assert main(["--config", str(config), "--limit", "3"]) == 0
    assert main(["--config", str(config)]) == 0  # the two missing videos, batched differently
    assert validate(out) == []
    assert_same_cache(out, reference)


DRIVER = textwrap.dedent("""
    # Runs `python -m extract` and, on the second video, writes its rows but stops before the
    # manifest commits them, announcing the pause in a marker file (the test then kills -9).
    import sys, time
    from pathlib import Path
    from cache_schema.store import CacheWriter
    from extract.__main__ import main

    marker = Path(sys.argv[1])
    add_video, commit = CacheWriter.add_video, CacheWriter._commit
    videos = [0]

    def counting_add_video(self, item):
        videos[0] += 1
        return add_video(self, item)

    def pausing_commit(self):
        if videos[0] == 2 and not marker.exists():
            self._store.flush()
            marker.touch()
            time.sleep(600)
        return commit(self)

    CacheWriter.add_video, CacheWriter._commit = counting_add_video, pausing_commit
    raise SystemExit(main(sys.argv[2:]))
""")


def _committed_videos(path: Path) -> int:
    # The writer holds the HDF5 file: read without the lock (the writer is paused after a flush).
    with h5py.File(path, "r", locking=False) as f:
        return json.loads(f.attrs["manifest"])["videos"]


def test_resume_after_kill_9_gives_identical_features(reference: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", dataset, out)
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
    assert proc.returncode == -signal.SIGKILL

    # The second video's rows are on disk past the commit point: a partial tail to truncate.
    with h5py.File(out, "r") as f:
        manifest = json.loads(f.attrs["manifest"])
        assert manifest["videos"] == 1
        assert f[f"video/{ENCODER}/features"].shape[0] > f[f"videos/offsets/{ENCODER}"][0, 1]

    assert main(["--config", str(config)]) == 0
    assert validate(out) == []
    assert_same_cache(out, reference)


def test_feature_extractor_reproduces_the_cache(reference: Path, dataset: Path) -> None:
    fx = FeatureExtractor.from_cache(reference, batch_size=16)
    with CacheReader(reference) as reader:
        features, timestamps, duration = fx.encode_video(dataset / "videos" / "bravo.mp4")
        np.testing.assert_array_equal(features[ENCODER], reader.video_features("bravo", ENCODER))
        np.testing.assert_array_equal(timestamps, reader.video_timestamps("bravo", ENCODER))
        assert duration == reader.video_meta("bravo").duration_sec
        at = fx.encode_video_at(dataset / "videos" / "bravo.mp4", timestamps.mean(axis=1))
        np.testing.assert_array_equal(at[ENCODER], features[ENCODER])
        ((tokens, pooled),) = fx.encode_texts(["the door opens"])
        np.testing.assert_array_equal(tokens, reader.query_tokens("bravo_q1", ENCODER))
        np.testing.assert_array_equal(pooled, reader.query_pooled("bravo_q1", ENCODER))


# -- bad inputs ------------------------------------------------------------------------------------


def _audio_only(path: Path) -> None:
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_bad_inputs_fail_one_by_one_and_the_rest_finish(tmp_path: Path) -> None:
    root = tmp_path / "data"
    videos = root / "videos"
    videos.mkdir(parents=True)
    good = write_noise_video(videos / "good.mp4", 5.0, 10, 64, 64, seed=1)
    one_frame = write_noise_video(videos / "one_frame.mp4", 0.1, 10, 64, 64, seed=2)
    wide = write_noise_video(videos / "wide.mp4", 5.0, 10, 16, 640, seed=3)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    _audio_only(videos / "audio_only.mp4")
    write_noise_video(videos / "truncated.mp4", 6.0, 10, 64, 64, seed=4)
    data = (videos / "truncated.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) * 2 // 3])
    mismatch = write_noise_video(videos / "mismatch.mp4", 5.0, 10, 64, 64, seed=5)
    past_end = write_noise_video(videos / "past_end.mp4", 5.0, 10, 64, 64, seed=6)

    def row(vid: str, duration: float | None, windows=((0.5, 2.0),)) -> dict:
        r = {
            "qid": f"{vid}_q",
            "video": f"videos/{vid}.mp4",
            "query": f"something in {vid}",
            "windows": [list(w) for w in windows],
            "split": "test",
        }
        return r | ({"duration": duration} if duration is not None else {})

    rows = [
        row("good", good),
        row("one_frame", one_frame, windows=((0.0, 0.1),)),
        row("wide", wide),
        row("missing", None),
        row("empty", None),
        row("corrupt", None),
        row("audio_only", None),
        row("truncated", 6.0),
        row("mismatch", mismatch + 5.0),
        # annotated 0.5 s longer than decoded (inside the tolerance): the window is clipped, reported
        row("past_end", past_end + 0.5, windows=((1.0, past_end + 0.4),)),
    ]
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", root, out)

    assert main(["--config", str(config)]) == 1
    failures = {f["vid"]: f for f in map(json.loads, failures_path(out).read_text().splitlines())}
    assert sorted(failures) == ["audio_only", "corrupt", "empty", "mismatch", "missing", "truncated"]
    assert "no such file" in failures["missing"]["reason"]
    assert "empty" in failures["empty"]["reason"]
    assert "no video stream" in failures["audio_only"]["reason"]
    assert "truncated" in failures["truncated"]["reason"] or "unreadable" in failures["truncated"]["reason"]
    assert failures["mismatch"]["stage"] == "annotation" and "duration" in failures["mismatch"]["reason"]
    for vid, failure in failures.items():
        assert failure["path"].endswith(f"{vid}.mp4")

    assert validate(out) == []
    with CacheReader(out) as reader:
        assert sorted(reader.video_ids) == ["good", "one_frame", "past_end", "wide"]
        assert len(reader.video_features("one_frame", ENCODER)) == 1
        assert len(reader.video_features("wide", ENCODER)) == 5
        end = reader.query("past_end_q").windows[0][1]
        assert end == pytest.approx(reader.video_meta("past_end").duration_sec)
    problems = [json.loads(line) for line in problems_path(out).read_text().splitlines()]
    assert any(
        p["kind"] == "end_past_duration" and p["vid"] == "past_end" and p["action"] == "clip"
        for p in problems
    )
    assert any(p["kind"] == "duration_mismatch" and p["vid"] == "mismatch" for p in problems)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_decoder_segfault_fails_only_its_video(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, num_workers: int
) -> None:
    """A native crash (decord on a malformed file) kills a decode worker, not the run."""
    import extract.pipeline as pipeline

    real = pipeline.sample_for_encoders

    def crashing(path, *args, **kwargs):
        if Path(path).stem == "charlie":
            os.kill(os.getpid(), signal.SIGSEGV)  # in the forked worker
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "sample_for_encoders", crashing)
    out = tmp_path / "cache.h5"
    config = write_config(tmp_path / "config.yaml", dataset, out, num_workers=num_workers)
    assert main(["--config", str(config)]) == 1
    failures = [json.loads(line) for line in failures_path(out).read_text().splitlines()]
    assert [(f["vid"], f["stage"]) for f in failures] == [("charlie", "decode")]
    assert "charlie.mp4: decode worker killed by SIGSEGV" in failures[0]["reason"]
    assert validate(out) == []
    with CacheReader(out) as reader:
        assert sorted(reader.video_ids) == ["alpha", "bravo", "delta", "echo"]

    monkeypatch.setattr(pipeline, "sample_for_encoders", real)  # the file is fixed: a rerun completes it
    assert main(["--config", str(config)]) == 0
    with CacheReader(out) as reader:
        assert sorted(reader.video_ids) == ["alpha", "bravo", "charlie", "delta", "echo"]


# Delay 0 kills while the store is being created (this is the case that once left a 0-byte HDF5
# file); the longer delays, run with -m slow, land just after its creation.
@pytest.mark.parametrize(
    "delay_sec",
    [0.0, pytest.param(0.005, marks=pytest.mark.slow), pytest.param(0.02, marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_a_kill_as_the_cache_appears_resumes_to_a_clean_run(
    reference: Path, dataset: Path, tmp_path: Path, suffix: str, delay_sec: float
) -> None:
    """SIGKILL `delay_sec` after the store (or anything named after it) first appears on disk.

    Before stores were created atomically, this left a 0- or 96-byte HDF5 file or a Zarr folder
    without a manifest, and every resume refused it with a traceback.
    """
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"cache{suffix}"
    config = write_config(tmp_path / "config.yaml", dataset, out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "extract", "--config", str(config), "--limit", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        appeared: list[str] = []
        while not appeared and proc.poll() is None:
            appeared = [n for n in os.listdir(out_dir) if n.startswith((out.name, f".{out.name}"))]
            time.sleep(0.001)
        assert appeared, f"the run ended before creating its cache: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(delay_sec)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # At the cache's path: nothing, or a complete store.
    assert not out.exists() or validate(out) == []

    assert main(["--config", str(config), "--limit", "2"]) == 0
    assert validate(out) == []
    assert_same_cache(out, reference, only_videos=["alpha", "bravo"])
    # Whatever the killed run left beside the cache is gone or was cleaned up.
    assert sorted(os.listdir(out_dir)) == sorted([out.name, failures_path(out).name, problems_path(out).name])


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_an_incomplete_cache_is_refused_in_one_line(
    dataset: Path, tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """What an older groundcache killed while creating its cache left: refused, untouched."""
    monkeypatch.setenv("COLUMNS", "1000")  # rich would fold the line at 80 columns
    out = tmp_path / f"cache{suffix}"
    if suffix == ".h5":
        out.write_bytes(b"")
    else:
        out.mkdir()
    config = write_config(tmp_path / "config.yaml", dataset, out)
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert str(out) in line and "--overwrite" in line and "Traceback" not in err
    assert (out.stat().st_size == 0) if suffix == ".h5" else (list(out.iterdir()) == [])
