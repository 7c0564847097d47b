"""Video decoding and fixed-rate sampling on the decoder's real frame timestamps.

Time line. Every time here is float64 seconds on the video stream's own clock, shifted so the
first frame (smallest presentation timestamp) is at 0.0. Frame times come from the container's
presentation timestamps (pts x time_base, read by demuxing, no decoding), never from
``index / fps``, so 29.97 fps (30000/1001) and variable-frame-rate videos come out right.

Duration. ``duration_sec`` is the *end of the last frame*: its timestamp plus its own display
duration (the packet duration stored in the container; failing that, the median frame interval;
for a single frame without either, one period of the stream's nominal rate). A container's
``duration`` field is not used: it often covers an audio track that is longer than the video.

Sampling at ``fps`` features per second. Feature window ``i`` covers ``[i / fps, (i + 1) / fps)``
with the last window's end clipped to the duration, ``T = max(1, ceil(duration * fps - 1e-6))``
(the epsilon keeps 10.000000001 s at 1 fps from growing an 11th, empty window). Each window
takes the frame whose timestamp is nearest the window's centre; ties go to the earlier frame.
Clip encoders (``frames_per_feature = F > 1``) get ``F`` frames ``clip_stride`` apart, the
centre frame at position ``F // 2``; indices past either end of the video are clamped to the
first/last frame (the edge frame repeats), so every clip has exactly ``F`` frames.

Backends. decord's ``VideoReader`` (random access with ``get_batch``) is used when installed;
PyAV (sequential decode that converts only the frames needed) is the fallback when decord is
missing or fails on a file, and can be chosen explicitly. Which one ran is recorded in
``SampledVideo.backend``. Both give bit-identical RGB frames on the same file (tested on
lossless fixtures); on YUV video their colour conversions can differ by a rounding step.

Orientation. A phone's video stores its pictures as the sensor read them and a display matrix
that tells players how to turn them (e.g. 90 degrees clockwise for a portrait recording).
Frames come out as players show them: the matrix is read from the decoded frame's side data
and mapped to the same quarter turn and mirrors as ``ffmpeg -i in.mp4 out.png`` (its autorotate:
``transpose``/``hflip``/``vflip``), applied before any resize. ``VideoInfo.width``/``height``
are the shown size, and ``VideoInfo.orientation`` records the transform. A matrix that turns by
an angle that is not a quarter turn is refused (ffmpeg would rotate with black corners).
decord is not used on such videos: version 0.6.0 returns garbled (W, H, 6) arrays for quarter
turns, turns a left-right mirror by 180 degrees and ignores a top-bottom one, so ``auto``
decodes them with PyAV (and says why in ``fallback_reason``) and an explicit ``decord``
request raises ``VideoDecodeError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from cache_schema.spec import Orientation

Backend = Literal["auto", "decord", "pyav"]
DecodedBy = Literal["decord", "pyav"]
BACKENDS: tuple[str, ...] = get_args(Backend)

_DECORD_CHUNK = 32
"""Frames fetched per decord ``get_batch`` call: bounds memory when frames are resized."""
_TIE_SEC = 1e-9
"""Two frames closer than this to a window centre count as a tie (the earlier frame wins)."""


class VideoDecodeError(RuntimeError):
    """A video cannot be opened, probed or decoded. The message starts with the file's path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, eq=False)
class VideoInfo:
    """What the container says about a video stream, with the real timestamp of every frame."""

    path: Path
    n_frames: int
    fps: float
    """Native average frame rate reported by the container (informational: never used for time)."""
    duration_sec: float
    """End of the last frame: its timestamp plus its display duration (see module docstring)."""
    width: int
    """Width of the frames as shown, in pixels (after ``orientation``'s quarter turn, if any)."""
    height: int
    """Height of the frames as shown, in pixels."""
    frame_timestamps_sec: np.ndarray
    """(N,) float64 presentation time of each frame in display order, first frame at 0.0."""
    pts: np.ndarray
    """(N,) int64 raw presentation timestamps in ``time_base`` units, display order."""
    time_base: Fraction
    start_sec: float
    """Container time of the first frame (subtracted from ``frame_timestamps_sec``)."""
    codec: str
    stream_index: int
    orientation: Orientation = Orientation()
    """How the decoded pictures are turned/mirrored to come out as shown (display matrix)."""


@dataclass(frozen=True, eq=False)
class SampledVideo:
    """Frames taken at a fixed feature rate, with the time window each feature stands for."""

    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB, or (T, F, H, W, 3) clips when ``frames_per_feature`` F > 1."""
    timestamps_sec: np.ndarray
    """(T, 2) float64 [start, end) of each feature's window in seconds."""
    frame_indices: np.ndarray
    """(T,) or (T, F) int64 indices of the decoded frames, in display order."""
    info: VideoInfo
    fps: float
    """Feature rate the video was sampled at (features per second)."""
    backend: DecodedBy
    """Which decoder produced the frames."""
    fallback_reason: str | None = None
    """Why decord was not used when ``backend="auto"`` ended up on PyAV (None when it did not)."""

    @property
    def frame_times_sec(self) -> np.ndarray:
        """Timestamps of the selected frames, same shape as ``frame_indices``."""
        return self.info.frame_timestamps_sec[self.frame_indices]


# ----------------------------------------------------------------------------------------------
# Probing


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "no such file")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot open container ({err})") from err


def _video_stream(path: Path, container: av.container.InputContainer) -> av.VideoStream:
    # Cover art in mp4/mkv is stored as a one-frame "video" stream flagged attached_pic.
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not container.streams:
        raise VideoDecodeError(path, "container holds no streams (truncated header, or not a media file)")
    if not streams:
        kinds = ", ".join(s.type for s in container.streams)
        raise VideoDecodeError(path, f"no video stream (streams: {kinds})")
    return streams[0]


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's frame count, shown size, rate, orientation and every frame's timestamp.

    Timestamps come from packets (no decoding): one pass over the file's bytes. Only the first
    frame is decoded, for the display matrix that its side data carries.

    Args:
        path: Video file.

    Returns:
        The stream's ``VideoInfo``.

    Raises:
        VideoDecodeError: The file is missing, empty, not a readable container, has no video
            stream, has packets without timestamps, ends before the frames its index lists,
            its first frame cannot be decoded, or its display matrix is not a quarter turn or
            mirror.
    """
    path = Path(path)
    _check_file(path)
    with _open(path) as container:
        stream = _video_stream(path, container)
        if stream.time_base is None:
            raise VideoDecodeError(path, f"video stream {stream.index} has no time base")
        pts_list: list[int] = []
        durations: list[int] = []
        n_packets = 0
        # The display matrix reaches us on decoded frames only: decode until the first frame
        # comes out, in this same pass. One thread, as frame threads would hold it back.
        stream.codec_context.thread_count = 1
        first_frames: list[av.VideoFrame] = []
        try:
            for packet in container.demux(stream):
                if not first_frames:  # the end-of-stream packet below also flushes the decoder
                    first_frames = _decode_packet(path, stream, packet)
                if packet.size == 0:  # PyAV's end-of-stream flush packet
                    continue
                n_packets += 1
                if packet.is_discard:  # dropped by the decoder too (e.g. mp4 edit lists)
                    continue
                if packet.pts is None:
                    raise VideoDecodeError(
                        path,
                        f"packet {n_packets - 1} of video stream {stream.index} has no presentation "
                        "timestamp; remux the file (ffmpeg -i IN -c copy OUT.mp4)",
                    )
                pts_list.append(packet.pts)
                durations.append(packet.duration or 0)
        except av.FFmpegError as err:
            raise VideoDecodeError(path, f"container unreadable after {n_packets} packets ({err})") from err
        declared = stream.frames
        codec = stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        time_base = Fraction(stream.time_base)
        index = stream.index

    if not pts_list:
        raise VideoDecodeError(path, f"video stream {index} holds no frames")
    if declared and n_packets < declared:
        raise VideoDecodeError(
            path, f"container index lists {declared} frames but only {n_packets} could be read "
            "(file truncated or corrupt)"
        )
    if width <= 0 or height <= 0:
        raise VideoDecodeError(path, f"video stream {index} has no frame size ({width}x{height})")
    if not first_frames:
        raise VideoDecodeError(path, f"the decoder returned no frame of video stream {index}")
    orientation = _frame_orientation(path, first_frames[0])
    if orientation.swaps_sides:
        width, height = height, width

    order = np.argsort(np.asarray(pts_list, dtype=np.int64), kind="stable")
    pts = np.asarray(pts_list, dtype=np.int64)[order]
    packet_durations = np.asarray(durations, dtype=np.int64)[order]
    if len(pts) > 1 and np.any(np.diff(pts) == 0):
        dup = int(np.argmax(np.diff(pts) == 0))
        raise VideoDecodeError(path, f"frames {dup} and {dup + 1} share timestamp {pts[dup]} x {time_base} s")

    # pts * num / den in float64 is one correctly rounded division per frame (no drift).
    rel = pts - pts[0]
    timestamps = rel * time_base.numerator / time_base.denominator
    if packet_durations[-1] > 0:
        last_sec = packet_durations[-1] * time_base.numerator / time_base.denominator
    elif len(pts) > 1:
        last_sec = float(np.median(np.diff(timestamps)))
    elif rate:
        last_sec = float(1 / Fraction(rate))
    else:
        raise VideoDecodeError(path, "single frame with neither a duration nor a frame rate")
    duration_sec = float(timestamps[-1] + last_sec)
    fps = float(rate) if rate else len(pts) / duration_sec

    timestamps.flags.writeable = False
    pts.flags.writeable = False
    return VideoInfo(
        path=path,
        n_frames=len(pts),
        fps=fps,
        duration_sec=duration_sec,
        width=width,
        height=height,
        frame_timestamps_sec=timestamps,
        pts=pts,
        time_base=time_base,
        start_sec=float(pts[0] * time_base),
        codec=codec,
        stream_index=index,
        orientation=orientation,
    )


# ----------------------------------------------------------------------------------------------
# Orientation: the display matrix, mapped to pixels exactly as ffmpeg's autorotate does

_FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # ffmpeg's filters on an (H, W, ...) picture; transpose's *_flip variants add a top-bottom flip.
    "transpose=clock": lambda a: np.rot90(a, -1),
    "transpose=cclock": lambda a: np.rot90(a, 1),
    "transpose=cclock_flip": lambda a: a.swapaxes(0, 1),  # mirror on the main diagonal
    "transpose=clock_flip": lambda a: np.rot90(a, 2).swapaxes(0, 1),  # on the anti-diagonal
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
}


def autorotate_filters(matrix: Sequence[int]) -> tuple[str, ...]:
    """The filters ``ffmpeg`` (fftools' autorotate) inserts for a display matrix, in order.

    A line-for-line port of ``get_rotation`` and the filter choice in ffmpeg's
    ``ffmpeg_filter.c``, so a file comes out as ffmpeg (and players) show it.

    Args:
        matrix: The 9 int32 numbers of ``AV_FRAME_DATA_DISPLAYMATRIX`` (16.16 fixed point).

    Returns:
        Filter names from ``_FILTERS``, or ``("rotate=<deg>",)`` for an angle that is not a
        quarter turn; empty when the matrix shows the picture as decoded.
    """
    m = [int(x) for x in matrix]
    a, b, c, d = (x / 65536 for x in (m[0], m[1], m[3], m[4]))
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if scale_x == 0.0 or scale_y == 0.0:
        return ()  # singular: av_display_rotation_get gives NaN, and ffmpeg inserts no filter
    theta = -round(-math.degrees(math.atan2(b / scale_y, a / scale_x)))  # clockwise degrees
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1.0:
        return ("transpose=cclock_flip",) if m[3] > 0 else ("transpose=clock",)
    if abs(theta - 180) < 1.0:
        return (("hflip",) if m[0] < 0 else ()) + (("vflip",) if m[4] < 0 else ())
    if abs(theta - 270) < 1.0:
        return ("transpose=clock_flip",) if m[3] < 0 else ("transpose=cclock",)
    if abs(theta) > 1.0:
        return (f"rotate={theta:g}",)
    return ("vflip",) if m[4] < 0 else ()


def apply_orientation(picture: np.ndarray, orientation: Orientation) -> np.ndarray:
    """Turn one (H, W, ...) picture as ``orientation`` says: mirror left-right, then turn clockwise.

    Returns:
        A view, (W, H, ...) for a quarter turn, else (H, W, ...).
    """
    if orientation.hflip:
        picture = picture[:, ::-1]
    return np.rot90(picture, -(orientation.rotation_deg // 90))


@lru_cache(maxsize=64)
def orientation_of_matrix(matrix: tuple[int, ...]) -> Orientation:
    """The ``Orientation`` that moves pixels as ffmpeg's autorotate filters for ``matrix`` do.

    Raises:
        ValueError: The matrix turns by an angle that is not a quarter turn.
    """
    filters = autorotate_filters(matrix)
    probe = np.arange(6).reshape(2, 3)  # distinct values, non-square: pins down all 8 transforms
    shown = probe
    for name in filters:
        if name not in _FILTERS:
            raise ValueError(f"its display matrix turns the picture by {name.split('=')[1]} degrees, "
                             "not a quarter turn (only quarter turns and mirrors are supported)")
        shown = _FILTERS[name](shown)
    for rotation_deg in (0, 90, 180, 270):
        for hflip in (False, True):
            candidate = Orientation(rotation_deg=rotation_deg, hflip=hflip)
            moved = apply_orientation(probe, candidate)
            if moved.shape == shown.shape and np.array_equal(moved, shown):
                return candidate
    raise AssertionError(f"filters {filters} are not one of the 8 quarter-turn/mirror transforms")


def describe_orientation(orientation: Orientation) -> str:
    """``mirrored left-right, then turned 90 deg clockwise`` and the like, for messages."""
    turn = f"turned {orientation.rotation_deg} deg clockwise" if orientation.rotation_deg else ""
    mirror = "mirrored left-right" if orientation.hflip else ""
    return ", then ".join(part for part in (mirror, turn) if part) or "shown as decoded"


def _frame_orientation(path: Path, frame: av.VideoFrame) -> Orientation:
    """The orientation a decoded frame's display matrix asks for (as decoded when it has none)."""
    # PyAV 16's side-data mapping cannot be iterated by key (its keys are the entries); scan it.
    side = next((sd for sd in frame.side_data if sd.type == SideDataType.DISPLAYMATRIX), None)
    if side is None:
        return Orientation()
    matrix = np.frombuffer(bytes(side), dtype=np.int32)  # native-endian, as FFmpeg stores it
    if matrix.shape != (9,):
        raise VideoDecodeError(path, f"display matrix has {matrix.size} numbers, not 9")
    try:
        return orientation_of_matrix(tuple(matrix.tolist()))
    except ValueError as err:
        raise VideoDecodeError(path, str(err)) from err


def _decode_packet(path: Path, stream: av.VideoStream, packet: av.Packet) -> list[av.VideoFrame]:
    """The frames the decoder returns for one packet (none while it still buffers)."""
    try:
        return list(stream.codec_context.decode(packet))
    except av.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot decode the first frame ({err})") from err


# ----------------------------------------------------------------------------------------------
# Sampling arithmetic (pure functions of the time line)


def feature_windows(duration_sec: float, fps: float) -> np.ndarray:
    """Window ``[i / fps, (i + 1) / fps)`` of every feature, the last one clipped to the duration.

    Args:
        duration_sec: Video duration in seconds (> 0).
        fps: Features per second (> 0).

    Returns:
        (T, 2) float64 windows, ``T = max(1, ceil(duration_sec * fps - 1e-6))``.
    """
    if not (math.isfinite(duration_sec) and duration_sec > 0):
        raise ValueError(f"duration_sec must be a positive number, got {duration_sec}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    n = max(1, math.ceil(duration_sec * fps - 1e-6))
    i = np.arange(n, dtype=np.float64)
    return np.stack([i / fps, np.minimum((i + 1) / fps, duration_sec)], axis=1)  # (T, 2)


def nearest_frame_indices(frame_timestamps_sec: np.ndarray, times_sec: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp is nearest each time; ties go to the earlier frame.

    Args:
        frame_timestamps_sec: (N,) increasing frame timestamps.
        times_sec: Any-shaped array of query times.

    Returns:
        int64 array shaped like ``times_sec``.
    """
    ts = np.asarray(frame_timestamps_sec, dtype=np.float64)
    times = np.asarray(times_sec, dtype=np.float64)
    if len(ts) == 1:
        return np.zeros(times.shape, dtype=np.int64)
    right = np.clip(np.searchsorted(ts, times, side="left"), 1, len(ts) - 1)
    left = right - 1
    take_left = (times - ts[left]) <= (ts[right] - times) + _TIE_SEC
    return np.where(take_left, left, right).astype(np.int64)


def clip_indices(
    centre: np.ndarray, n_frames: int, frames_per_feature: int, clip_stride: int = 1
) -> np.ndarray:
    """Indices of ``frames_per_feature`` frames ``clip_stride`` apart around each centre frame.

    The centre frame sits at position ``frames_per_feature // 2``; indices outside the video are
    clamped to its first/last frame.

    Returns:
        (T, F) int64.
    """
    offsets = (np.arange(frames_per_feature) - frames_per_feature // 2) * clip_stride  # (F,)
    return np.clip(np.asarray(centre)[:, None] + offsets[None, :], 0, n_frames - 1).astype(np.int64)


def _output_size(width: int, height: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of returned frames: native, exact (H, W), or shorter side = ``size``."""
    if size is None:
        return height, width
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / min(width, height)
        return max(1, round(height * scale)), max(1, round(width * scale))
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return int(out_h), int(out_w)


def _resize(rgb: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize one (H, W, 3) uint8 frame with FFmpeg's area filter (anti-aliased downscaling)."""
    if rgb.shape[:2] == out_hw:
        return rgb
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    area = av.video.reformatter.Interpolation.AREA
    out = frame.reformat(width=out_hw[1], height=out_hw[0], format="rgb24", interpolation=area)
    return out.to_ndarray()


# ----------------------------------------------------------------------------------------------
# Backends: each decodes a sorted array of unique frame indices into (K, H, W, 3) uint8.


def _decord_module():
    """decord, or None when it is not installed (its wheels do not exist for every platform)."""
    try:
        import decord
    except ImportError:
        return None
    return decord


def _decode_decord(info: VideoInfo, indices: np.ndarray, out_hw: tuple[int, int], threads: int) -> np.ndarray:
    decord = _decord_module()
    path = info.path
    if decord is None:
        raise VideoDecodeError(path, "decord is not installed")
    if not info.orientation.is_identity:
        # Measured on decord 0.6.0 (module docstring): quarter turns come back garbled and
        # mirrors wrong, so there is no correct picture to undo its handling from.
        raise VideoDecodeError(
            path, f"its display matrix asks for frames {describe_orientation(info.orientation)}, "
            "which decord gets wrong; decode it with backend 'pyav' (or 'auto')"
        )
    # decord raises DECORDError, or a bare RuntimeError for files it cannot open.
    decord_errors = (decord.DECORDError, RuntimeError)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        n_frames = len(reader)
        decord_ts = reader.get_frame_timestamp(np.arange(n_frames))[:, 0].astype(np.float64)
    except decord_errors as err:
        raise VideoDecodeError(path, f"decord cannot open it ({_last_line(err)})") from err
    if n_frames != info.n_frames:
        raise VideoDecodeError(path, f"decord counts {n_frames} frames, the container {info.n_frames}")
    # decord keeps float32 timestamps relative to the stream start: compare up to that precision
    # that its frame i is our frame i.
    diff = np.abs((decord_ts - decord_ts[0]) - info.frame_timestamps_sec)
    if diff.max() > 1e-3 + 1e-6 * info.duration_sec:
        bad = int(np.argmax(diff))
        raise VideoDecodeError(
            path, f"decord's timestamp of frame {bad} is {decord_ts[bad] - decord_ts[0]:.6f} s, "
            f"the container's {info.frame_timestamps_sec[bad]:.6f} s"
        )
    out = np.empty((len(indices), *out_hw, 3), dtype=np.uint8)
    for lo in range(0, len(indices), _DECORD_CHUNK):
        chunk = indices[lo:lo + _DECORD_CHUNK]
        try:
            batch = reader.get_batch(chunk.tolist()).asnumpy()  # (k, H, W, 3)
        except decord_errors as err:
            raise VideoDecodeError(
                path, f"decord failed on frames {chunk[0]}..{chunk[-1]} of {n_frames} ({_last_line(err)})"
            ) from err
        for j, frame in enumerate(batch):
            out[lo + j] = _resize(frame, out_hw)
    return out


def _last_line(err: Exception) -> str:
    """decord's messages carry a C++ stack trace; its last non-empty line is the reason."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _decode_pyav(info: VideoInfo, indices: np.ndarray, out_hw: tuple[int, int], threads: int) -> np.ndarray:
    # One sequential pass converting only the wanted frames: on long videos this beats seeking to
    # each sample, because every seek re-decodes from the previous keyframe.
    path = info.path
    out = np.empty((len(indices), *out_hw, 3), dtype=np.uint8)
    if len(indices) == 0:
        return out
    wanted = 0
    k = -1
    with _open(path) as container:
        stream = container.streams[info.stream_index]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        try:
            for k, frame in enumerate(container.decode(stream)):
                if k >= info.n_frames:
                    raise VideoDecodeError(path, f"decoder returned more than {info.n_frames} indexed frames")
                if frame.pts is not None and frame.pts != info.pts[k]:
                    raise VideoDecodeError(
                        path, f"decoded frame {k} has pts {frame.pts}, the container index says "
                        f"{info.pts[k]} (frames dropped or reordered by the decoder)"
                    )
                if k == indices[wanted]:
                    # The output size was fixed from the first frame's matrix; one that changes
                    # mid-stream (possible with H.264 orientation SEI) would not fit it.
                    orientation = _frame_orientation(path, frame)
                    if orientation != info.orientation:
                        raise VideoDecodeError(
                            path, f"frame {k} asks to be {describe_orientation(orientation)}, "
                            f"the first frame to be {describe_orientation(info.orientation)}"
                        )
                    rgb = apply_orientation(frame.to_ndarray(format="rgb24"), info.orientation)  # (H, W, 3)
                    out[wanted] = _resize(rgb, out_hw)
                    wanted += 1
                    if wanted == len(indices):
                        break
        except av.FFmpegError as err:
            raise VideoDecodeError(
                path, f"decoding failed at frame {k + 1} of {info.n_frames} ({err})"
            ) from err
    if wanted < len(indices):
        raise VideoDecodeError(
            path, f"decoder stopped after {k + 1} of {info.n_frames} frames; "
            f"frame {indices[wanted]} is unreadable"
        )
    return out


def _decode(info: VideoInfo, indices: np.ndarray, out_hw: tuple[int, int],
            backend: Backend, threads: int = 0) -> tuple[np.ndarray, DecodedBy, str | None]:
    """Decode sorted unique ``indices`` with the chosen backend; ``auto`` falls back to PyAV."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not in {BACKENDS}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: FFmpeg picks), got {threads}")
    if backend == "pyav":
        return _decode_pyav(info, indices, out_hw, threads), "pyav", None
    if backend == "decord":
        return _decode_decord(info, indices, out_hw, threads), "decord", None
    if _decord_module() is None:
        return _decode_pyav(info, indices, out_hw, threads), "pyav", "decord is not installed"
    try:
        return _decode_decord(info, indices, out_hw, threads), "decord", None
    except VideoDecodeError as decord_err:
        try:
            frames = _decode_pyav(info, indices, out_hw, threads)
        except VideoDecodeError as pyav_err:
            raise VideoDecodeError(
                info.path, f"decord: {decord_err.reason}; PyAV: {pyav_err.reason}"
            ) from pyav_err
        return frames, "pyav", decord_err.reason


# ----------------------------------------------------------------------------------------------
# Public entry points


def sample_video(
    path: str | Path,
    fps: float = 1.0,
    *,
    frames_per_feature: int = 1,
    clip_stride: int = 1,
    size: int | tuple[int, int] | None = None,
    backend: Backend = "auto",
    threads: int = 0,
) -> SampledVideo:
    """Decode the frames a feature extractor needs at ``fps`` features per second.

    Args:
        path: Video file.
        fps: Features per second; window ``i`` covers ``[i / fps, (i + 1) / fps)``.
        frames_per_feature: Frames per feature: 1 for image encoders, e.g. 16 for C3D clips.
        clip_stride: Frame step inside a clip (2 takes every other frame).
        size: None keeps the native size; an int scales the shorter side to it (aspect kept);
            ``(height, width)`` resizes exactly.
        backend: ``auto`` (decord, falling back to PyAV), ``decord`` or ``pyav``.
        threads: Decoder threads; 0 lets FFmpeg use every core. Decode workers that already run
            one per core pass 1: several processes each threading over all cores cost more CPU
            per frame (measured in docs/benchmarks.md).

    Returns:
        The sampled frames, their windows and indices, the probe info and the backend used.

    Raises:
        VideoDecodeError: The video cannot be probed or the frames needed cannot be decoded.
    """
    if frames_per_feature < 1:
        raise ValueError(f"frames_per_feature must be >= 1, got {frames_per_feature}")
    if clip_stride < 1:
        raise ValueError(f"clip_stride must be >= 1, got {clip_stride}")
    info = probe_video(path)
    windows = feature_windows(info.duration_sec, fps)  # (T, 2)
    centre = nearest_frame_indices(info.frame_timestamps_sec, windows.mean(axis=1))  # (T,)
    if frames_per_feature == 1:
        frame_indices = centre
    else:
        frame_indices = clip_indices(centre, info.n_frames, frames_per_feature, clip_stride)  # (T, F)
    unique, inverse = np.unique(frame_indices, return_inverse=True)
    out_hw = _output_size(info.width, info.height, size)
    decoded, used, reason = _decode(info, unique, out_hw, backend, threads)  # (K, H, W, 3)
    frames = decoded[inverse.reshape(frame_indices.shape)]  # (T, H, W, 3) or (T, F, H, W, 3)
    return SampledVideo(
        frames=frames,
        timestamps_sec=windows,
        frame_indices=frame_indices,
        info=info,
        fps=float(fps),
        backend=used,
        fallback_reason=reason,
    )


def decode_frames_at(
    path: str | Path,
    times_sec: Sequence[float] | np.ndarray,
    *,
    size: int | tuple[int, int] | None = None,
    backend: Backend = "auto",
) -> np.ndarray:
    """Decode the frame nearest each requested time (e.g. to re-sample a window more finely).

    Args:
        path: Video file.
        times_sec: Times in seconds on the video's time line, each inside ``[0, duration]``.
        size: As in ``sample_video``.
        backend: As in ``sample_video``.

    Returns:
        (N, H, W, 3) uint8 frames, in the order of ``times_sec``.

    Raises:
        ValueError: A time is not finite or lies outside the video.
        VideoDecodeError: The video cannot be probed or decoded.
    """
    info = probe_video(path)
    times = np.asarray(times_sec, dtype=np.float64).reshape(-1)
    outside = ~np.isfinite(times) | (times < 0) | (times > info.duration_sec + 1e-6)
    if outside.any():
        bad = times[outside][0]
        raise ValueError(f"{info.path}: time {bad} s is outside the video [0, {info.duration_sec:.6f}] s")
    indices = nearest_frame_indices(info.frame_timestamps_sec, times)
    unique, inverse = np.unique(indices, return_inverse=True)
    decoded, _, _ = _decode(info, unique, _output_size(info.width, info.height, size), backend)
    return decoded[inverse]


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float | Fraction,
    *,
    lossless: bool = False,
    frame_times_sec: Sequence[float] | None = None,
    crf: int = 20,
) -> Path:
    """Encode RGB frames into an H.264 mp4 with PyAV.

    ``lossless=True`` uses libx264rgb at qp 0 on rgb24, which both PyAV and decord decode back
    bit-exact (H.264 in YUV 4:2:0, even at qp 0, loses the RGB->YUV rounding). Lossy output is
    libx264 yuv420p at ``crf``. x264 runs single-threaded so that the bytes do not depend on the
    machine's core count.

    Args:
        path: Output ``.mp4`` path (parents are created).
        frames: (N, H, W, 3) uint8 RGB frames, N >= 1.
        fps: Frame rate; a ``Fraction`` such as ``Fraction(30000, 1001)`` is kept exact.
        lossless: Encode losslessly (RGB).
        frame_times_sec: Optional (N,) increasing presentation times for a variable frame rate
            video, stored on a 1/90000 s clock; ``fps`` is then only the nominal rate.
        crf: Constant rate factor for lossy output (lower is better quality).

    Returns:
        The path written.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"{path}: frames must be (N>=1, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    n, height, width, _ = frames.shape
    if not lossless and (height % 2 or width % 2):
        raise ValueError(f"{path}: yuv420p needs even frame sides, got {width}x{height} (use lossless=True)")
    rate = Fraction(fps).limit_denominator(1_000_000)
    if rate <= 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    if frame_times_sec is None:
        time_base = 1 / rate
        pts = list(range(n))
    else:
        times = np.asarray(frame_times_sec, dtype=np.float64)
        if times.shape != (n,) or np.any(np.diff(times) <= 0) or times[0] < 0:
            raise ValueError(f"{path}: frame_times_sec must be {n} increasing non-negative times")
        time_base = Fraction(1, 90_000)
        pts = [round(t * 90_000) for t in times]

    path.parent.mkdir(parents=True, exist_ok=True)
    # faststart puts the index (moov) before the frames: browsers can stream the file, and a
    # truncated file still opens and reports how many frames it lost.
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.codec_context.time_base = time_base
        options = {"qp": "0"} if lossless else {"crf": str(crf), "preset": "veryfast"}
        stream.options = {**options, "threads": "1"}
        for frame_pts, rgb in zip(pts, frames, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = frame_pts
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
