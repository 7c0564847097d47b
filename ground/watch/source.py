"""A live video source: PyAV in a reader thread, one frame per feature window, reconnects, counts.

Frames are picked by stream timestamps exactly as `extract` samples a file offline: feature
window i covers [i / fps, (i + 1) / fps) seconds after the first frame, and its frame is the one
whose timestamp is nearest the window's centre (ties to the earlier frame). A window is complete
as soon as a frame at or past its centre has arrived, so no frame is held longer than that.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import av
import numpy as np

from cache_schema.errors import GroundcacheError

log = logging.getLogger(__name__)

SourceKind = Literal["file", "stdin", "url", "device"]
SourceState = Literal["stalled", "resumed", "disconnected", "reconnected", "failed", "ended"]

_TIE_SEC = 1e-9
"""The tolerance `extract.video.nearest_frame_indices` breaks ties with (to the earlier frame)."""
MAX_GAP_SEC = 60.0
"""After a reconnect, timestamps at most this far past the last frame continue its time line."""
QUEUE_FRAMES = 64
"""Sampled frames the reader may run ahead of the encoder; then it waits (memory stays bounded)."""


class SourceError(GroundcacheError, ValueError):
    """A source that cannot be watched at all (a missing file); names it."""


@dataclass(frozen=True)
class SampledFrame:
    """The frame of one feature window."""

    index: int
    window_sec: tuple[float, float]  # [start, end) stream seconds
    rgb: np.ndarray = field(repr=False)  # (H, W, 3) uint8, native size


@dataclass(frozen=True)
class SourceEvent:
    """Something that happened to the source (not to a query)."""

    state: SourceState
    detail: str
    stream_time: float


@dataclass
class SourceCounts:
    frames_decoded: int = 0
    windows_sampled: int = 0
    corrupt_packets: int = 0
    connections: int = 0


def source_kind(source: str) -> SourceKind:
    """What a `--source` names: `-` (stdin), a URL (`scheme://`), a device (`/dev/...`) or a file."""
    if source == "-":
        return "stdin"
    if "://" in source:
        return "url"
    if source.startswith("/dev/"):
        return "device"
    return "file"


class StreamSource:
    """Reads a source in a thread and hands out `SampledFrame`s and `SourceEvent`s in stream order.

    Args:
        source: a file, a URL (rtsp://, http://, udp://, tcp://), a V4L2 device or `-` (stdin,
            MPEG-TS).
        fps: feature windows per second (the encoders' rate).
        speed: files only: play at `speed` x real time; 0 reads as fast as decoding allows. Live
            sources arrive at their own rate.
        reconnect: reopen after a disconnect or error, with backoff; None: for URLs and devices.
        backoff_sec: first and longest wait between reconnection attempts (doubling).
        read_timeout_sec: a network read that waits longer fails (and reconnects).
        loop_until_sec: files only: replay the file back to back as one continuous stream (each
            replay's time line continues the last) until the feature windows reach this many
            stream seconds, then end; None: play the file once. For long-run measurements.
    """

    def __init__(
        self,
        source: str,
        fps: float,
        *,
        speed: float = 1.0,
        reconnect: bool | None = None,
        backoff_sec: tuple[float, float] = (0.5, 30.0),
        read_timeout_sec: float = 10.0,
        loop_until_sec: float | None = None,
    ) -> None:
        self.source = source
        self.kind = source_kind(source)
        if self.kind == "file" and not os.path.isfile(source):
            raise SourceError(f"source {source!r}: no such file")
        if not (math.isfinite(fps) and fps > 0):
            raise SourceError(f"source {source!r}: fps must be positive, got {fps}")
        if not (math.isfinite(speed) and speed >= 0):
            raise SourceError(f"--speed must be >= 0 (0: as fast as possible), got {speed}")
        if loop_until_sec is not None:
            if self.kind != "file":
                raise SourceError(f"source {source!r}: only a file can be looped, not a {self.kind}")
            if not (math.isfinite(loop_until_sec) and loop_until_sec > 0):
                raise SourceError(
                    f"source {source!r}: the looped stream's length must be positive, got {loop_until_sec} s"
                )
        self.loop_until_sec = loop_until_sec
        self.fps = fps
        self.speed = speed if self.kind == "file" else 0.0
        self.reconnect = self.kind in ("url", "device") if reconnect is None else reconnect
        self.backoff_sec = backoff_sec
        self.read_timeout_sec = read_timeout_sec
        self.counts = SourceCounts()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source {source}", daemon=True)
        # Sampling state (reader thread only).
        self._next_index = 0
        self._prev: tuple[float, av.VideoFrame] | None = None
        self._last_sec = 0.0  # stream time of the last frame
        self._frame_sec = 1.0 / fps  # duration of the last frame, for continuity after a reconnect
        self._last_raw_sec = 0.0  # the last frame's own timestamp (the source's clock)

    # -- the consumer's side ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def get(self, timeout_sec: float) -> SampledFrame | SourceEvent | None:
        """The next item, or None when nothing came within `timeout_sec` (a stall, or just early).

        After a `SourceEvent` with state `ended` or `failed` nothing more comes.
        """
        try:
            return self._queue.get(timeout=timeout_sec)
        except queue.Empty:
            return None

    def stop(self) -> None:
        """Ask the reader to stop; it exits after its current read (a daemon thread)."""
        self._stop.set()

    # -- the reader thread ------------------------------------------------------------------------

    def _put(self, item: SampledFrame | SourceEvent) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _open(self) -> av.container.InputContainer:
        if self.kind == "stdin":
            return av.open("pipe:0", format="mpegts", timeout=None)
        if self.kind == "device":
            return av.open(self.source, format="v4l2", timeout=self.read_timeout_sec)
        if self.kind == "url":
            return av.open(self.source, timeout=(self.read_timeout_sec, self.read_timeout_sec))
        return av.open(self.source)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                container = self._open()
            except (av.FFmpegError, OSError) as err:
                if not self.reconnect:
                    self._finish("failed", f"cannot open {self.source}: {err}")
                    return
                attempt += 1
                self._wait_to_retry(attempt, f"cannot open: {err}")
                continue
            self.counts.connections += 1
            if attempt:
                self._put(SourceEvent("reconnected", f"after {attempt} attempt(s)", self._last_sec))
            attempt = 0
            decoded_before = self.counts.frames_decoded
            with container:
                why = self._read(container)
            if self._stop.is_set():
                return
            if self.loop_until_sec is not None:
                if self._looped_enough():
                    self._finish("ended", f"looped stream reached {self.loop_until_sec:g} s")
                    return
                if why == "end of stream" and self.counts.frames_decoded > decoded_before:
                    continue  # replay at once; `_segment_offset` continues the time line
                # A file that fails to read, or gives no frame at all, would loop forever.
                self._finish("failed", f"cannot loop {self.source}: {why}")
                return
            if not self.reconnect:
                self._flush_tail()
                self._finish("ended", why)
                return
            attempt += 1
            self._wait_to_retry(attempt, why)

    def _wait_to_retry(self, attempt: int, why: str) -> None:
        first, longest = self.backoff_sec
        wait = min(longest, first * 2 ** (attempt - 1))
        self._put(
            SourceEvent(
                "disconnected", f"{why}; reconnecting in {wait:g} s (attempt {attempt})", self._last_sec
            )
        )
        self._stop.wait(wait)

    def _finish(self, state: SourceState, detail: str) -> None:
        self._put(SourceEvent(state, detail, self._last_sec))

    def _read(self, container: av.container.InputContainer) -> str:
        """Demux and decode until the source ends or fails; returns why it stopped."""
        if not container.streams.video:
            return f"{self.source}: no video stream"
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first_raw_sec: float | None = None
        offset_sec = 0.0
        wall_start = time.monotonic()
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return "stopped"
                if packet.is_corrupt:  # flagged by the demuxer (e.g. a broken continuity counter)
                    self.counts.corrupt_packets += 1
                    continue
                try:
                    frames = packet.decode()
                except (av.InvalidDataError, av.error.PatchWelcomeError) as err:
                    self.counts.corrupt_packets += 1
                    log.debug("corrupt packet skipped: %s", err)
                    continue
                for frame in frames:
                    if frame.time is None or frame.is_corrupt:
                        self.counts.corrupt_packets += 1
                        continue
                    if first_raw_sec is None:
                        first_raw_sec = frame.time
                        offset_sec = self._segment_offset(frame.time)
                    t = offset_sec + frame.time - first_raw_sec
                    self._last_raw_sec = frame.time
                    if self._prev is not None and t <= self._prev[0]:
                        self.counts.corrupt_packets += 1  # out of order or repeated: unusable
                        continue
                    if self.speed > 0:
                        delay = wall_start + (t - offset_sec) / self.speed - time.monotonic()
                        if delay > 0 and self._stop.wait(delay):
                            return "stopped"
                    self.counts.frames_decoded += 1
                    if frame.duration and stream.time_base:
                        self._frame_sec = float(frame.duration * stream.time_base)
                    self._take(t, frame)
                    if self._looped_enough():
                        return "looped stream length reached"
        except av.FFmpegError as err:
            return f"read failed after {self.counts.frames_decoded} frames ({err})"
        return "end of stream"

    def _looped_enough(self) -> bool:
        """A looped file has given every feature window below `loop_until_sec`."""
        return self.loop_until_sec is not None and self._next_index / self.fps >= self.loop_until_sec - 1e-9

    def _segment_offset(self, raw_sec: float) -> float:
        """Stream time of a connection's first frame: the old time line continued when the source
        kept its timestamps across the reconnect (a gap of under `MAX_GAP_SEC`), else right after
        the last frame (a source that restarted its clock)."""
        if self._prev is None:
            return 0.0
        gap_sec = raw_sec - self._last_raw_sec
        if 0 < gap_sec < MAX_GAP_SEC:
            return self._last_sec + gap_sec
        return self._last_sec + self._frame_sec

    def _take(self, t: float, frame: av.VideoFrame) -> None:
        """Complete every window whose centre this frame reaches; then it becomes the previous frame."""
        while (centre := (self._next_index + 0.5) / self.fps) <= t:
            if self._prev is None:
                chosen = frame
            else:
                prev_t, prev_frame = self._prev
                chosen = prev_frame if centre - prev_t <= t - centre + _TIE_SEC else frame
            self._emit(chosen, self._next_index / self.fps, (self._next_index + 1) / self.fps)
        self._prev = (t, frame)
        self._last_sec = t

    def _flush_tail(self) -> None:
        """At the end of the stream: the windows up to its duration take the last frame (as offline)."""
        if self._prev is None:
            return
        duration_sec = self._last_sec + self._frame_sec
        while self._next_index / self.fps < duration_sec - 1e-6:
            start = self._next_index / self.fps
            self._emit(self._prev[1], start, min((self._next_index + 1) / self.fps, duration_sec))

    def _emit(self, frame: av.VideoFrame, start_sec: float, end_sec: float) -> None:
        rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
        self._put(SampledFrame(self._next_index, (start_sec, end_sec), rgb))
        self._next_index += 1
        self.counts.windows_sampled += 1
