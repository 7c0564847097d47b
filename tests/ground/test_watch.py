"""`ground watch`: a synthetic MPEG-TS played as a stream (file, loopback TCP, stdin pipe).

Whether the trained tiny checkpoint finds a red square is luck; the stream machinery is tested
with an oracle network instead: it marks the clips whose feature is nearer the red-square frame's
feature than the background's, so the known windows are the right answer and any difference is
the watcher's (sampling, ring buffer, shifting times, hysteresis).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import record_encode_rows
from test_predict import World, grounding_world

from ground.models.blocks import Predictions
from ground.predict import Grounder
from ground.watch.bench import long_run, match_rate, offline_passes
from ground.watch.ring import FeatureRing
from ground.watch.source import SourceError, SourceEvent, StreamSource
from ground.watch.tracker import OccurrenceTracker
from ground.watch.watcher import Watcher, run_watch

REPO = Path(__file__).resolve().parents[2]
FPS = 10
SECONDS = 16
RED = (230, 30, 30)
EVENTS_SEC = [(4.0, 8.0), (11.0, 13.0)]
"""When the red square is on screen; 1-s clips, so these are exact clip edges."""


def _frames() -> np.ndarray:
    frames = np.full((SECONDS * FPS, 64, 64, 3), 90, dtype=np.uint8)
    frames[:, ::8] = 60
    for start, end in EVENTS_SEC:
        frames[round(start * FPS) : round(end * FPS), 16:48, 16:48] = RED
    return frames  # (N, H, W, 3)


def ts_chunks(frames: np.ndarray, fps: int = FPS) -> list[tuple[float, bytes]]:
    """An MPEG-TS of the frames, cut into (stream time, bytes) as the muxer wrote them."""
    buf = io.BytesIO()
    chunks: list[tuple[float, bytes]] = []
    written = 0
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # A keyframe every second: a client that joins (or rejoins) mid-stream can start decoding.
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "bf": "0", "g": str(fps)}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
            data = buf.getvalue()
            chunks.append((i / fps, data[written:]))
            written = len(data)
        container.mux(stream.encode(None))
    data = buf.getvalue()
    chunks.append((len(frames) / fps, data[written:]))
    return chunks


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    torch.set_num_threads(1)
    return grounding_world(tmp_path_factory)


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "squares.ts"
    path.write_bytes(b"".join(chunk for _, chunk in ts_chunks(_frames())))
    return path


class RedOracle(torch.nn.Module):
    """Finds the latest run of clips whose feature is nearer `red` than `background`."""

    def __init__(self, red: np.ndarray, background: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("red", torch.as_tensor(red, dtype=torch.float32))
        self.register_buffer("background", torch.as_tensor(background, dtype=torch.float32))

    def forward(self, batch: dict) -> torch.Tensor:
        video = batch["video"].float()  # (B, T, D)
        return (video - self.background).norm(dim=-1) - (video - self.red).norm(dim=-1)  # (B, T)

    def decode(self, output: torch.Tensor, batch: dict, k: int) -> Predictions:
        windows, scores, presence = [], [], []
        for b, margin in enumerate(output):
            on = (margin > 0).tolist()
            best, run = (0, 0), None
            for i, flag in enumerate([*on, False]):
                if flag and run is None:
                    run = i
                elif not flag and run is not None:
                    best = (run, i)  # the latest run: what a live view is about
                    run = None
            ts = batch["timestamps"][b]  # (T, 2)
            first, last = best if best[1] > best[0] else (0, 1)
            windows.append([float(ts[first, 0]), float(ts[last - 1, 1])])
            scores.append(float(best[1] - best[0]))
            presence.append(1.0 if best[1] > best[0] else 0.0)
        return Predictions(
            windows=torch.tensor(windows)[:, None].expand(-1, k, -1).clone(),  # (B, K, 2)
            scores=torch.tensor(scores)[:, None].expand(-1, k).clone(),
            presence=torch.tensor(presence),
        )


@pytest.fixture(scope="module")
def oracle(world: World) -> Grounder:
    trained = Grounder.from_checkpoint(world.ckpt)
    frames = _frames()
    red, background = trained.encode_frames([frames[round(5 * FPS)], frames[0]])
    return Grounder(RedOracle(red, background), trained.encoder_record, checkpoint="oracle")


def _run(
    grounder: Grounder, source: StreamSource, stop_after_sec: float | None = None
) -> tuple[list[dict], dict]:
    """Watch until the source ends, or (a source that reconnects forever) until it is disconnected
    after `stop_after_sec` of stream time."""
    events: list[dict] = []
    stop = threading.Event()

    def emit(event: dict) -> None:
        events.append(event)
        if stop_after_sec is not None and event["state"] == "disconnected":
            if event["stream_time"] >= stop_after_sec:
                stop.set()

    # A 4-s window holds one red run at a time.
    watcher = Watcher(grounder, ["a red square appears"], emit, window_sec=4.0, hop_sec=1.0)
    summary = run_watch(source, watcher, emit, stop)
    return events, summary


def _occurrences(events: list[dict]) -> list[tuple[float, float]]:
    return [(e["start_sec"], e["end_sec"]) for e in events if e["query"] and e["state"] == "ended"]


# -- units ------------------------------------------------------------------------------------------


def test_ring_keeps_the_newest_clips_in_order() -> None:
    ring = FeatureRing(3, 2)
    ring.push(np.arange(10, dtype=np.float32).reshape(5, 2), np.array([[i, i + 1] for i in range(5)], float))
    features, times = ring.window()
    np.testing.assert_array_equal(features, [[4, 5], [6, 7], [8, 9]])
    np.testing.assert_array_equal(times[:, 0], [2, 3, 4])
    assert len(ring) == 3 and ring.pushed == 5


def test_tracker_reports_one_occurrence_once_then_updates_it() -> None:
    tracker = OccurrenceTracker("q", on=0.5, off=0.4, clip_sec=1.0, settle_sec=2.0)
    states = []
    # presence, best window, view
    for presence, window, view in [
        (0.3, (0, 1, 0), (0, 4)),  # nothing yet
        (0.6, (3, 5, 1), (0, 5)),  # starts
        (0.45, (3, 6, 1), (0, 6)),  # in the hysteresis band: still ongoing, end grows
        (0.45, (3, 6, 1), (1, 7)),  # end did not move
        (0.45, (3, 6, 1), (2, 8)),  # ... for 2 s: ended
        (0.9, (3, 6, 1), (3, 9)),  # the same window again: not a new occurrence
        (0.9, (8, 9, 1), (4, 10)),  # a new one
        (0.2, (8, 9, 1), (5, 11)),  # presence drops below off: ended
    ]:
        states.append([(e.state, e.start_sec, e.end_sec) for e in tracker.update(window, presence, view)])
    assert states == [
        [],
        [("started", 3, 5)],
        [("ongoing", 3, 6)],
        [("ongoing", 3, 6)],
        [("ended", 3, 6)],
        [],
        [("started", 8, 9)],
        [("ended", 8, 9)],
    ]


# -- streams ----------------------------------------------------------------------------------------


def test_stream_features_equal_the_offline_features(oracle: Grounder, stream_file: Path) -> None:
    source = StreamSource(str(stream_file), fps=1.0, speed=0)
    source.start()
    frames = []
    while not isinstance(item := source.get(timeout_sec=60), SourceEvent):
        assert item is not None, "the source stalled on a file"
        frames.append(item)
    assert item.state == "ended"
    offline, timestamps_sec, _ = oracle._feature_extractor().encode_video(stream_file)
    assert [f.window_sec for f in frames] == [tuple(t) for t in timestamps_sec.tolist()]
    # The same frames; encoded in the watcher's small passes (1 and 2 rows, not the offline 64),
    # the float32 features differ by rounding only, so the stored float16 values by at most one step.
    offline = offline["tiny_clip"].astype(np.float32)  # (T, D)
    for size in (1, 2):
        live = np.concatenate(
            [oracle.encode_frames([f.rgb for f in frames[i : i + size]]) for i in range(0, len(frames), size)]
        )
        np.testing.assert_allclose(live, offline, rtol=2**-10, atol=1e-6)
    assert np.abs(offline).max() > 0.1


def test_the_watcher_encodes_only_the_new_frames(oracle: Grounder, stream_file: Path) -> None:
    """Each pass encodes the frames that came since the last one: 1 row a hop at hop 1 s, not 64."""
    encoder = oracle._feature_extractor().video_encoders["tiny_clip"]
    rows = record_encode_rows(encoder)
    try:
        events, summary = _run(oracle, StreamSource(str(stream_file), fps=1.0, speed=0))
    finally:
        del encoder.encode_video  # the class's method again
    assert rows == [1] * SECONDS and summary["passes"] == SECONDS
    assert _occurrences(events) == EVENTS_SEC


def test_watch_reports_the_known_windows(oracle: Grounder, stream_file: Path) -> None:
    events, summary = _run(oracle, StreamSource(str(stream_file), fps=1.0, speed=0))
    assert _occurrences(events) == EVENTS_SEC
    started = [e for e in events if e["state"] == "started"]
    # Reported at the first pass after the first red clip is complete.
    assert [e["stream_time"] for e in started] == [5.0, 12.0]
    assert summary["windows"] == SECONDS and summary["corrupt_packets"] == 0
    # Faster than real time, and at 4x real time, the same events.
    paced, _ = _run(oracle, StreamSource(str(stream_file), fps=1.0, speed=4.0))
    assert [(e["state"], e["start_sec"], e["end_sec"]) for e in paced if e["query"]] == [
        (e["state"], e["start_sec"], e["end_sec"]) for e in events if e["query"]
    ]


class LoopbackServer:
    """Serves the TS chunks over TCP on 127.0.0.1 at real rate; drops the first connection at `cut_sec`."""

    def __init__(self, chunks: list[tuple[float, bytes]], cut_sec: float) -> None:
        self.chunks, self.cut_sec = chunks, cut_sec
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        position = 0
        for connection in range(2):
            conn, _ = self.sock.accept()
            with conn:
                start = time.monotonic() - (self.chunks[position][0] if connection else 0.0)
                while position < len(self.chunks):
                    at, data = self.chunks[position]
                    if connection == 0 and at >= self.cut_sec:
                        break  # the disconnect
                    time.sleep(max(0.0, start + at - time.monotonic()))
                    conn.sendall(data)
                    position += 1
        self.sock.close()


def test_a_disconnect_reconnects_and_says_so(oracle: Grounder) -> None:
    chunks = ts_chunks(_frames())
    server = LoopbackServer(chunks, cut_sec=9.5)
    source = StreamSource(
        f"tcp://127.0.0.1:{server.port}", fps=1.0, backoff_sec=(0.1, 0.1), read_timeout_sec=5.0
    )
    assert source.reconnect  # URLs reconnect by default
    events, summary = _run(oracle, source, stop_after_sec=SECONDS - 1)
    states = [e["state"] for e in events if e["query"] is None]
    assert "disconnected" in states and states.index("reconnected") > states.index("disconnected")
    assert summary["connections"] >= 2
    # The time line continues across the reconnect: both occurrences where they are.
    assert _occurrences(events) == EVENTS_SEC


def test_corrupt_packets_are_skipped_and_counted(oracle: Grounder, stream_file: Path, tmp_path: Path) -> None:
    """12 TS packets lost in the middle (as on a lossy network): the demuxer flags the broken packet."""
    data = stream_file.read_bytes()
    cut = (len(data) // 188 // 3) * 188
    broken = tmp_path / "broken.ts"
    broken.write_bytes(data[:cut] + data[cut + 12 * 188 :])
    events, summary = _run(oracle, StreamSource(str(broken), fps=1.0, speed=0))
    assert summary["detail"] == "source ended: end of stream"
    assert summary["corrupt_packets"] >= 1
    assert summary["windows"] == SECONDS  # the rest of the stream still arrived
    assert _occurrences(events) == EVENTS_SEC


def test_stdin_stall_and_sigterm(world: World, tmp_path: Path) -> None:
    """The real command on a pipe: a stall is reported, SIGTERM flushes the events and exits 0."""
    out = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ground", "watch", "--ckpt", str(world.ckpt), "--source", "-"]
    command += ["--query", "a red square appears", "--out", str(out), "--stall-sec", "1", "--hop-sec", "1"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    chunks = ts_chunks(_frames())
    half = next(i for i, (at, _) in enumerate(chunks) if at >= 8.0)
    process.stdin.write(b"".join(data for _, data in chunks[:half]))
    process.stdin.flush()

    def lines() -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    # Wait (no deadline asserted: the machine may be slow) until the stall is reported.
    while not any(e["state"] == "stalled" for e in lines()):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 0, process.stderr.read().decode()
    events = lines()
    assert events[-1]["state"] == "stopped" and events[-1]["detail"] == "stopped by signal"
    passes = [e for e in events if e["query"] == "a red square appears"]
    assert passes and all(
        set(e) >= {"start_sec", "end_sec", "score", "presence", "wall_time"} for e in passes
    )
    # Frames up to the stall were grounded (the decoder may still hold the last few).
    assert events[-1]["stream_time"] >= 6.0
    process.stdin.close()


def test_the_stream_reports_what_ground_video_finds(oracle: Grounder, stream_file: Path) -> None:
    events, _ = _run(oracle, StreamSource(str(stream_file), fps=1.0, speed=0))
    offline = offline_passes(oracle, stream_file, ["a red square appears"], window_sec=4.0, hop_sec=1.0)
    found = [o for o in offline if o["presence"] >= oracle.presence_threshold]
    assert [o["pass_end_sec"] for o in offline] == [float(k) for k in range(1, SECONDS + 1)]
    # A 4-s window shows red at the passes ending at 5..11 s (clips 4-7) and 12..16 s (clips 11-12).
    assert [o["pass_end_sec"] for o in found] == [float(k) for k in [*range(5, 12), *range(12, 17)]]
    assert match_rate(offline, events, oracle.presence_threshold, 1.0, 1.0) == (len(found), len(found))
    # The check can fail: without the second occurrence's events, its windows are missed.
    first_only = [e for e in events if e["query"] is None or e["start_sec"] < 10]
    reported, total = match_rate(offline, first_only, oracle.presence_threshold, 1.0, 1.0)
    assert 0 < reported < total


def test_watch_refuses_a_missing_source_in_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from ground.cli import main as ground_main

    argv = ["watch", "--ckpt", str(world.ckpt), "--source", "/no/such/cam.ts", "--query", "x"]
    assert ground_main(argv) == 2
    err = capsys.readouterr().err
    assert "/no/such/cam.ts" in err and "no such file" in err and "Traceback" not in err
    assert ground_main([*argv[:3], "--source", "-", "--query", "x", "--hop-sec", "0.1"]) == 2
    assert "--hop-sec must be at least one clip" in capsys.readouterr().err


# -- long runs --------------------------------------------------------------------------------------


def _sampled(source: StreamSource) -> tuple[list, SourceEvent]:
    source.start()
    frames = []
    while not isinstance(item := source.get(timeout_sec=60), SourceEvent):
        assert item is not None, "the source stalled on a file"
        frames.append(item)
    return frames, item


def test_a_looped_file_is_one_continuous_stream(stream_file: Path) -> None:
    once, _ = _sampled(StreamSource(str(stream_file), fps=1.0, speed=0))
    source = StreamSource(str(stream_file), fps=1.0, speed=0, loop_until_sec=2.5 * SECONDS)
    looped, end = _sampled(source)
    assert end.state == "ended" and end.detail == f"looped stream reached {2.5 * SECONDS:g} s"
    # Every window below the length, none past it; each replay continues the time line by one
    # frame, so window i holds the frame window i % 16 holds in one play.
    assert [f.window_sec for f in looped] == [(float(i), float(i + 1)) for i in range(40)]
    for frame in looped:
        np.testing.assert_array_equal(frame.rgb, once[frame.index % SECONDS].rgb)
    assert source.counts.connections == 3 and source.counts.corrupt_packets == 0
    with pytest.raises(SourceError, match="only a file can be looped"):
        StreamSource("-", fps=1.0, loop_until_sec=10.0)


def test_long_run_loops_the_file_and_samples_rss(oracle: Grounder, stream_file: Path) -> None:
    result = long_run(
        oracle,
        str(stream_file),
        ["a red square appears"],
        stream_sec=60.0,
        every_sec=15.0,
        window_sec=4.0,
        hop_sec=1.0,
    )
    assert result["detail"] == "source ended: looped stream reached 60 s"
    assert result["stream_sec"] == 60.0 and result["windows"] == 60 and result["passes"] == 60
    assert result["cpu_sec"] > 0
    assert result["file_plays"] == 4  # 16-s file: 3 whole plays and part of a fourth
    # Red at 4-8 and 11-13 s of every 16: in 60 s, 2 + 2 + 2 + the 4th play's first (from 52 s)
    # and its second cut at 60 s (from 59 s), each started and ended once.
    events = result["query_events"]
    assert events == {"started": 8, "ongoing": events["ongoing"], "ended": 8} and events["ongoing"] > 0
    assert result["source_events"] == {"ended": 1, "stopped": 1}
    samples = result["rss_samples"]
    assert [s["stream_sec"] for s in samples] == [0.0, 15.0, 30.0, 45.0, 60.0]
    # Current RSS, read from /proc: positive and never above the process's peak.
    assert all(0 < s["rss_mib"] <= result["peak_rss_mib"] + 1 for s in samples)
    assert result["rss_mib_first_sample"] == samples[1]["rss_mib"]
    assert result["rss_mib_end"] == samples[-1]["rss_mib"]
    assert result["rss_growth_mib_after_first_sample"] == pytest.approx(
        samples[-1]["rss_mib"] - samples[1]["rss_mib"], abs=0.05
    )


def test_bench_watch_long_run_refuses_bad_input_in_one_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ground.cli import main as ground_main

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    argv = ["bench-watch", "--ckpt", str(world.ckpt), "--query", "x", "--stream-minutes", "1"]
    assert ground_main([*argv, "--video", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert str(garbage) in err and "source failed" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one line
        ground_main([*argv, "--video", str(garbage), "--video", str(garbage)])
    assert exit_info.value.code == 2
    assert "--stream-minutes loops one --video, got 2" in capsys.readouterr().err


def test_bench_watch_reports_match_rate_and_cost(
    world: World, stream_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ground.cli import main as ground_main

    argv = ["bench-watch", "--ckpt", str(world.ckpt), "--video", str(stream_file)]
    argv += ["--query", "a red square appears", "--window-sec", "4", "--hop-sec", "1"]
    assert ground_main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    # 16 passes of one query; whether the 2-epoch checkpoint finds red is luck, not asserted.
    assert result["stream_sec"] == SECONDS and result["videos"] == 1 and result["queries"] == 1
    assert 0 <= result["reported_by_stream"] <= result["offline_windows_found"] <= SECONDS
    assert result["cpu_sec"] > 0 and result["wall_sec"] > 0
