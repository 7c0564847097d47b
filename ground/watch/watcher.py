"""Standing queries on a stream: batch encoding, the window, grounding every hop, and `ground watch`."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ground.errors import GroundingInputError
from ground.predict import Grounder
from ground.watch.ring import FeatureRing
from ground.watch.source import SampledFrame, SourceError, SourceEvent, StreamSource
from ground.watch.tracker import OccurrenceTracker, QueryEvent

DEFAULT_WINDOW_SEC = 30.0
DEFAULT_HOP_SEC = 2.0
DEFAULT_HYSTERESIS = 0.1
DEFAULT_STALL_SEC = 5.0
BATCH_FRAMES = 8
"""Frames encoded per forward pass at most; a pass also runs whenever a grounding pass is due."""


class Watcher:
    """Standing queries grounded on the last `window_sec` seconds of a stream every `hop_sec`.

    Feed it `SampledFrame`s in stream order (`push`); it calls `emit` with each event dict
    (`QueryEvent.to_dict()` plus `wall_time`, Unix seconds). Queries may be added and removed
    from another thread while frames arrive.

    Args:
        grounder: the checkpoint and its encoders (image encoders only).
        queries: the standing queries, encoded once here.
        emit: receives every event.
        window_sec: seconds of features each pass sees (a ring buffer of that many clips).
        hop_sec: stream seconds between passes.
        hysteresis: an occurrence ends below presence threshold - hysteresis.
        min_score: an occurrence starts only at this score or above (None: any).
        settle_sec: an occurrence whose end has not moved for this long ended (None: one hop plus
            one clip).
        batch_frames: frames encoded per forward pass at most.
    """

    def __init__(
        self,
        grounder: Grounder,
        queries: Sequence[str],
        emit: Callable[[dict], None],
        *,
        window_sec: float = DEFAULT_WINDOW_SEC,
        hop_sec: float = DEFAULT_HOP_SEC,
        hysteresis: float = DEFAULT_HYSTERESIS,
        min_score: float | None = None,
        settle_sec: float | None = None,
        batch_frames: int = BATCH_FRAMES,
    ) -> None:
        self.grounder = grounder
        self.clip_sec = grounder.stride_sec
        for name, value in (("window_sec", window_sec), ("hop_sec", hop_sec)):
            if not (math.isfinite(value) and value >= self.clip_sec):
                raise GroundingInputError(
                    f"--{name.replace('_', '-')} must be at least one clip ({self.clip_sec} s), got {value}"
                )
        if not (0 <= hysteresis <= grounder.presence_threshold):
            raise GroundingInputError(
                f"--hysteresis must lie in [0, {grounder.presence_threshold}] (the presence threshold), "
                f"got {hysteresis}"
            )
        self.window_sec, self.hop_sec = window_sec, hop_sec
        self.hysteresis, self.min_score = hysteresis, min_score
        self.settle_sec = hop_sec + self.clip_sec if settle_sec is None else settle_sec
        self.batch_frames = batch_frames
        self.emit = emit
        self.ring = FeatureRing(
            math.ceil(window_sec / self.clip_sec - 1e-9), sum(grounder.video_dims.values())
        )
        self._pending: list[SampledFrame] = []
        self.ring_end_sec = 0.0
        """Stream time of the end of the newest frame's window (0 before any)."""
        self._next_pass_sec = hop_sec
        self._last_pass_end_sec = 0.0
        self._lock = threading.Lock()  # guards the queries
        self._text: dict[str, tuple] = {}
        self._trackers: dict[str, OccurrenceTracker] = {}
        self.passes = 0
        self.add_queries(queries)

    # -- standing queries -------------------------------------------------------------------------

    @property
    def queries(self) -> list[str]:
        with self._lock:
            return list(self._trackers)

    def add_queries(self, queries: Sequence[str]) -> None:
        """Encode new standing queries once (a query already standing is left as it is)."""
        new = [q for q in dict.fromkeys(queries) if q not in self._trackers]
        if not new:
            return
        text = self.grounder.encode_queries(new)
        on = self.grounder.presence_threshold
        with self._lock:
            for query, features in zip(new, text, strict=True):
                self._text[query] = features
                self._trackers[query] = OccurrenceTracker(
                    query,
                    on=on,
                    off=on - self.hysteresis,
                    clip_sec=self.clip_sec,
                    settle_sec=self.settle_sec,
                    min_score=self.min_score,
                )

    def remove_queries(self, queries: Sequence[str]) -> list[str]:
        """Stop watching these queries (an open occurrence ends); returns the ones that were standing."""
        removed = []
        with self._lock:
            for query in queries:
                tracker = self._trackers.pop(query, None)
                if tracker is not None:
                    self._text.pop(query)
                    removed.append(query)
                    for event in tracker.close(self._last_pass_end_sec):
                        self._send(event)
        return removed

    # -- frames -----------------------------------------------------------------------------------

    def push(self, frame: SampledFrame) -> None:
        """One sampled frame; encodes a batch and grounds when they are due."""
        self._pending.append(frame)
        self.ring_end_sec = frame.window_sec[1]
        due = frame.window_sec[1] >= self._next_pass_sec - 1e-9
        if len(self._pending) >= self.batch_frames or due:
            self._encode()
        if due:
            self._ground()
            while self._next_pass_sec <= frame.window_sec[1] + 1e-9:
                self._next_pass_sec += self.hop_sec

    def close(self) -> None:
        """The stream stopped: encode what is pending, one last pass if clips came since, end occurrences."""
        self._encode()
        if len(self.ring) and self.ring.window()[1][-1, 1] > self._last_pass_end_sec + 1e-9:
            self._ground()
        with self._lock:
            trackers = list(self._trackers.values())
        for tracker in trackers:
            for event in tracker.close(self._last_pass_end_sec):
                self._send(event)

    def _encode(self) -> None:
        if not self._pending:
            return
        features = self.grounder.encode_frames([f.rgb for f in self._pending])  # (N, Dv)
        self.ring.push(features, [f.window_sec for f in self._pending])
        self._pending.clear()

    def _ground(self) -> None:
        with self._lock:
            queries = list(self._trackers)
            text = [self._text[q] for q in queries]
        features, times_sec = self.ring.window()  # (n, Dv), (n, 2)
        view = (float(times_sec[0, 0]), float(times_sec[-1, 1]))
        self._last_pass_end_sec = view[1]
        self.passes += 1
        if not queries:
            return
        # The network saw videos starting at 0: the window is one, shifted back afterwards.
        results = self.grounder.ground_features(
            features, text_features=text, labels=queries, timestamps_sec=times_sec - view[0], top_k=1
        )
        for result in results:
            start, end, score = result.windows[0]
            with self._lock:
                tracker = self._trackers.get(result.query)
            if tracker is None:  # removed while this pass ran
                continue
            presence = 1.0 if result.presence is None else result.presence
            for event in tracker.update((start + view[0], end + view[0], score), presence, view):
                self._send(event)

    def _send(self, event: QueryEvent) -> None:
        self.emit({**event.to_dict(), "wall_time": round(time.time(), 3)})


# -- the command ------------------------------------------------------------------------------------


def source_event(event: SourceEvent) -> dict:
    return {
        "query": None,
        "state": event.state,
        "detail": event.detail,
        "stream_time": round(event.stream_time, 4),
        "wall_time": round(time.time(), 3),
    }


class EventWriter:
    """One JSON object per line, flushed at once: what is in the file is complete."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        with self.lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()


@contextmanager
def _stop_on_signals(stop: threading.Event):
    """SIGINT and SIGTERM set `stop` (the loop then flushes and exits 0) instead of killing."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_watch(
    source: StreamSource,
    watcher: Watcher,
    emit: Callable[[dict], None],
    stop: threading.Event,
    *,
    stall_sec: float = DEFAULT_STALL_SEC,
) -> dict[str, Any]:
    """Feed the source's frames to the watcher until the source ends or `stop` is set.

    A source silent for `stall_sec` gets one `stalled` event, and `resumed` when frames come
    again; the watcher keeps waiting. Returns the final `stopped` event (also emitted).
    """
    source.start()
    last_item = time.monotonic()
    stalled = False
    reason = "stopped by signal"
    try:
        while not stop.is_set():
            item = source.get(timeout_sec=0.2)
            if item is None:
                if not stalled and time.monotonic() - last_item >= stall_sec:
                    stalled = True
                    emit(
                        source_event(
                            SourceEvent(
                                "stalled", f"no frames for {stall_sec:g} s; waiting", watcher.ring_end_sec
                            )
                        )
                    )
                continue
            last_item = time.monotonic()
            if stalled:
                stalled = False
                emit(source_event(SourceEvent("resumed", "frames arrive again", watcher.ring_end_sec)))
            if isinstance(item, SampledFrame):
                watcher.push(item)
                continue
            emit(source_event(item))
            if item.state in ("ended", "failed"):
                reason = f"source {item.state}: {item.detail}"
                break
    finally:
        source.stop()
        watcher.close()
    counts = source.counts
    summary = {
        "query": None,
        "state": "stopped",
        "detail": reason,
        "stream_time": round(watcher.ring_end_sec, 4),
        "wall_time": round(time.time(), 3),
        "frames_decoded": counts.frames_decoded,
        "windows": counts.windows_sampled,
        "corrupt_packets": counts.corrupt_packets,
        "connections": counts.connections,
        "passes": watcher.passes,
    }
    emit(summary)
    return summary


def watch_main(argv: Sequence[str] | None = None) -> int:
    """`python -m ground watch --ckpt M.ckpt --source SRC --query "..." [--query ...] [--out E.jsonl]`."""
    parser = argparse.ArgumentParser(
        prog="python -m ground watch",
        description="Watch a live video for standing queries; print started/ongoing/ended events "
        "(JSON lines).",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `python -m ground fit`")
    parser.add_argument(
        "--source",
        required=True,
        help="video file, URL (rtsp/http/udp/tcp), V4L2 device, or - (MPEG-TS on stdin)",
    )
    parser.add_argument(
        "--query", action="append", required=True, help="a standing query (repeat for several)"
    )
    parser.add_argument("--out", default=None, help="append events here (JSON lines) instead of stdout")
    parser.add_argument("--window-sec", type=float, default=DEFAULT_WINDOW_SEC, help="seconds each pass sees")
    parser.add_argument(
        "--hop-sec", type=float, default=DEFAULT_HOP_SEC, help="stream seconds between passes"
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="files: play at this x real time; 0 = as fast as possible"
    )
    parser.add_argument(
        "--hysteresis", type=float, default=DEFAULT_HYSTERESIS, help="end below presence threshold minus this"
    )
    parser.add_argument(
        "--min-score", type=float, default=None, help="start an occurrence only at this score"
    )
    parser.add_argument(
        "--stall-sec", type=float, default=DEFAULT_STALL_SEC, help="report a stall after this"
    )
    parser.add_argument(
        "--reconnect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reopen the source after a disconnect (default: for URLs and devices)",
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    args = parser.parse_args(argv)
    grounder = Grounder.from_checkpoint(args.ckpt, device=args.device)
    for i, query in enumerate(args.query):
        if not query.strip():
            raise GroundingInputError(f"--query {i} is empty")
    source = StreamSource(args.source, 1.0 / grounder.stride_sec, speed=args.speed, reconnect=args.reconnect)
    out = sys.stdout if args.out is None else Path(args.out).open("a", encoding="utf-8")
    try:
        emit = EventWriter(out)
        watcher = Watcher(
            grounder,
            args.query,
            emit,
            window_sec=args.window_sec,
            hop_sec=args.hop_sec,
            hysteresis=args.hysteresis,
            min_score=args.min_score,
        )
        stop = threading.Event()
        with _stop_on_signals(stop):
            summary = run_watch(source, watcher, emit, stop, stall_sec=args.stall_sec)
    finally:
        if out is not sys.stdout:
            out.close()
    if summary["detail"].startswith("source failed"):
        raise SourceError(f"source {args.source!r}: {summary['detail']}")
    return 0
