"""Live streams watched by the server: `POST /streams`, Server-Sent Events, standing queries.

Sources come only from the allow-list given at server start (`serve --allow-source`): a client
names one of them, never an arbitrary path or URL. Each stream runs `ground watch`'s loop in a
thread; its events are kept in a bounded history that SSE clients read from.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from cache_schema.errors import GroundcacheError
from ground.predict import Grounder
from ground.watch.source import StreamSource
from ground.watch.watcher import Watcher, run_watch

HISTORY_EVENTS = 1000
"""Events kept per stream for SSE clients; a client further behind misses the oldest (it is told)."""
MAX_STREAMS = 8


class StreamNotAllowed(GroundcacheError, PermissionError):
    """A source that is not in the server's allow-list (403)."""


class StreamNotFound(GroundcacheError, LookupError):
    """No stream with this id (404)."""


class TooManyStreams(GroundcacheError, RuntimeError):
    """`MAX_STREAMS` already run (429)."""


@dataclass
class LiveStream:
    """One watched source: its thread, its watcher and its event history."""

    id: str
    source: str
    watcher: Watcher
    stop: threading.Event = field(default_factory=threading.Event)
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_EVENTS))
    sent: int = 0  # sequence number of the next event
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def record(self, event: dict) -> None:
        with self.lock:
            self.history.append((self.sent, event))
            self.sent += 1

    def since(self, seq: int) -> tuple[list[tuple[int, dict]], int]:
        """Events with sequence number >= seq, and how many of those were already dropped."""
        with self.lock:
            events = [(n, e) for n, e in self.history if n >= seq]
            first = self.history[0][0] if self.history else self.sent
        return events, max(0, first - seq)

    @property
    def finished(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()


class StreamRegistry:
    """The server's live streams.

    Args:
        grounder: shared with the request handlers (it serialises inference).
        allowed_sources: the only sources a client may open (exact strings).
    """

    def __init__(self, grounder: Grounder, allowed_sources: Sequence[str]) -> None:
        self.grounder = grounder
        self.allowed = list(dict.fromkeys(allowed_sources))
        self.streams: dict[str, LiveStream] = {}
        self._lock = threading.Lock()

    def open(
        self, source: str, queries: Sequence[str], *, window_sec: float, hop_sec: float, speed: float
    ) -> LiveStream:
        """Start watching an allowed source.

        Raises:
            StreamNotAllowed: not in the allow-list.
            TooManyStreams: `MAX_STREAMS` are running.
            GroundingInputError / SourceError: bad window, hop or queries, or a missing file.
        """
        if source not in self.allowed:
            raise StreamNotAllowed(f"source {source[:200]!r} is not in the server's allow-list")
        with self._lock:
            running = [s for s in self.streams.values() if not s.finished]
            if len(running) >= MAX_STREAMS:
                raise TooManyStreams(f"{MAX_STREAMS} streams are running; DELETE one first")
        stream_source = StreamSource(source, 1.0 / self.grounder.stride_sec, speed=speed)
        holder: list[LiveStream] = []
        watcher = Watcher(
            self.grounder,
            queries,
            lambda event: holder[0].record(event),
            window_sec=window_sec,
            hop_sec=hop_sec,
        )
        stream = LiveStream(id=uuid.uuid4().hex[:12], source=source, watcher=watcher)
        holder.append(stream)
        stream.thread = threading.Thread(
            target=run_watch,
            args=(stream_source, watcher, stream.record, stream.stop),
            name=f"stream {stream.id}",
            daemon=True,
        )
        with self._lock:
            self.streams[stream.id] = stream
        stream.thread.start()
        return stream

    def get(self, stream_id: str) -> LiveStream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise StreamNotFound(f"no stream {stream_id[:64]!r}")
        return stream

    def close(self, stream_id: str) -> LiveStream:
        """Stop a stream (its last events, `ended` and `stopped`, still reach its history) and forget it."""
        stream = self.get(stream_id)
        stream.stop.set()
        with self._lock:
            self.streams.pop(stream_id, None)
        return stream

    def close_all(self) -> None:
        for stream_id in list(self.streams):
            self.close(stream_id)
