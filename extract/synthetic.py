"""The embedded synthetic grounding dataset: coloured shapes moving over a textured background.

Each video shows a slowly drifting, low-saturation texture. Events are large, saturated shapes
(circle, square, triangle, diamond, in red, green, blue, yellow, magenta, cyan) that are visible
during a known time window and travel left, right, up or down across the frame meanwhile. Every
event gives one or two templated queries ("a red circle moves to the left"). Within a video each
(colour, shape) pair names one motion only, so a query is never ambiguous; sometimes an event is
repeated later in the video, and its query then has two windows.

Windows are on a 0.1 s grid in seconds. A frame at time ``t`` shows an event when
``start_sec <= t < end_sec``. Annotations follow the custom jsonl format of
docs/architecture.md, one query per line, with the decoded ``duration`` of the video.

Everything is drawn from ``numpy.random.default_rng([seed, video_index])``, so the same seed gives
byte-identical annotations and identical rendered frames, and video ``i`` does not depend on
``n_videos``. The encoded mp4 bytes are usually identical too, but not always: about one encode
in ten or twenty here differs in a few macroblocks (by a few grey levels), a nondeterminism in
the FFmpeg/x264 path that the pinned ``threads=1`` does not remove. Splits are by video
(55/15/30, each non-empty): the test split is large so that a trained model's margin over the
baselines is well beyond run-to-run noise (docs/benchmarks.md, "Demo").
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from extract.video import probe_video, write_video

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 200, 40),
    "blue": (30, 60, 235),
    "yellow": (245, 225, 20),
    "magenta": (225, 30, 220),
    "cyan": (20, 220, 230),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Direction -> (dx, dy) in image coordinates (y grows downwards)."""
FRAME_RATES: tuple[Fraction, ...] = (Fraction(24), Fraction(25), Fraction(30), Fraction(30000, 1001))
FRAME_SIDES: tuple[int, ...] = (64, 80, 96)
"""Frame sides in pixels. 48 is avoided: decord 0.6 fails on some widths (16, 24, 48)."""

_DIRECTION_WORDS = {
    "left": ("to the left", "left"),
    "right": ("to the right", "right"),
    "up": ("upward", "up"),
    "down": ("downward", "down"),
}
_TEMPLATES = (
    "a {colour} {shape} moves {dir0}",
    "the {colour} {shape} slides {dir1}",
    "a {colour} {shape} appears and travels {dir0}",
    "{colour} {shape} moving {dir1} across the screen",
)
_SPLITS = (("train", 0.55), ("val", 0.15), ("test", 0.30))
_LONG_VIDEO_SEC = 90.0
_GRID_SEC = 0.1


@dataclass(frozen=True)
class Event:
    """One shape crossing the frame during ``[start_sec, end_sec)``."""

    colour: str
    shape: str
    direction: str
    start_sec: float
    end_sec: float


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one synthetic video."""

    index: int
    vid: str
    fps: Fraction
    n_frames: int
    height: int
    width: int
    events: tuple[Event, ...]
    queries: tuple[tuple[str, tuple[int, ...]], ...]
    """(sentence, indices into ``events`` whose windows answer it)."""


def _on_grid(x: float) -> float:
    return round(round(x / _GRID_SEC) * _GRID_SEC, 1)


def plan_video(seed: int, index: int) -> VideoPlan:
    """Draw one video's size, rate, length, events and queries from ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    # Video 0 is the one long video; video 1 is always at NTSC 29.97 fps.
    fps = FRAME_RATES[3] if index == 1 else FRAME_RATES[int(rng.integers(len(FRAME_RATES)))]
    if index == 0:
        target_sec = _LONG_VIDEO_SEC
    elif rng.random() < 0.1:
        target_sec = float(rng.uniform(5.0, 8.0))
    else:
        target_sec = float(np.exp(rng.uniform(math.log(8.0), math.log(40.0))))
    n_frames = max(1, round(target_sec * fps))
    duration_sec = float(n_frames / fps)
    height = int(rng.choice(FRAME_SIDES))
    width = int(rng.choice(FRAME_SIDES))

    # Distinct (colour, shape) per event, so each sentence points at one motion.
    n_events = int(np.clip(round(duration_sec / 9.0 + rng.uniform(0.0, 1.5)), 1, 8))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(pairs), size=n_events, replace=False)
    directions = list(DIRECTIONS)
    # Each event lives in its own slice of the time line and may spill 0.5 s into the next one.
    slot_sec = duration_sec / n_events
    events: list[Event] = []
    for k, pair_index in enumerate(chosen):
        colour, shape = pairs[int(pair_index)]
        length = min(float(rng.uniform(0.4, 0.85)) * slot_sec, 12.0)
        length = max(length, min(1.5, slot_sec))
        lo = max(0.0, k * slot_sec - 0.5)
        hi = min(duration_sec, (k + 1) * slot_sec + 0.5) - length
        start = _on_grid(float(rng.uniform(lo, max(lo, hi))))
        end = min(_on_grid(start + length), math.floor(duration_sec / _GRID_SEC) * _GRID_SEC)
        end = round(end, 1)
        if end - start < _GRID_SEC:  # a video shorter than 0.2 s still gets a visible event
            start, end = 0.0, round(max(_GRID_SEC, _on_grid(duration_sec)), 1)
        events.append(Event(colour, shape, directions[int(rng.integers(4))], start, end))

    groups: list[list[int]] = [[k] for k in range(n_events)]
    # A repeat: the first event's shape comes back in the last slot, one query with two windows.
    if n_events >= 3 and rng.random() < 0.3:
        first, last = events[0], events[-1]
        events[-1] = Event(first.colour, first.shape, first.direction, last.start_sec, last.end_sec)
        groups = groups[1:-1] + [[0, n_events - 1]]

    queries: list[tuple[str, tuple[int, ...]]] = []
    for group in groups:
        event = events[group[0]]
        dir0, dir1 = _DIRECTION_WORDS[event.direction]
        n_queries = 1 + int(rng.random() < 0.5)
        for t in rng.choice(len(_TEMPLATES), size=n_queries, replace=False):
            text = _TEMPLATES[int(t)].format(colour=event.colour, shape=event.shape, dir0=dir0, dir1=dir1)
            queries.append((text, tuple(group)))
    return VideoPlan(index, f"syn{index:04d}", fps, n_frames, height, width, tuple(events), tuple(queries))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(2H, 2W, 3) uint8 texture: smooth colour blobs plus fine grain, muted so shapes pop out."""
    coarse = rng.uniform(70.0, 150.0, size=(6, 6, 3))
    coarse = coarse.mean(axis=2, keepdims=True) * 0.7 + coarse * 0.3  # low saturation
    ys = np.linspace(0, 5, 2 * height)
    xs = np.linspace(0, 5, 2 * width)
    y0, x0 = np.floor(ys).astype(int).clip(0, 4), np.floor(xs).astype(int).clip(0, 4)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    smooth = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
              + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    grain = rng.normal(0.0, 12.0, size=(2 * height, 2 * width, 1))
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool mask of a shape centred in its box."""
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    if shape == "circle":
        return x * x + y * y <= radius * radius
    if shape == "square":
        return (np.abs(x) <= 0.8 * radius) & (np.abs(y) <= 0.8 * radius)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= radius
    if shape == "triangle":  # apex up, base at the bottom of the box
        return (y <= radius) & (2 * np.abs(x) <= (y + radius))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render_video(plan: VideoPlan, seed: int) -> np.ndarray:
    """Render a plan's frames: (N, H, W, 3) uint8."""
    rng = np.random.default_rng([seed, plan.index, 1])
    h, w = plan.height, plan.width
    texture = _background(rng, h, w)
    drift = rng.uniform(-6.0, 6.0, size=2)  # background pixels per second (dy, dx)
    radius = int(0.2 * min(h, w))
    masks = {shape: _shape_mask(shape, radius) for shape in SHAPES}
    # Frame i (at i / fps) shows an event when start_sec <= i / fps < end_sec, decided in exact
    # rational arithmetic on the 0.1 s grid so that no frame at a window edge flips on rounding.
    spans = [
        (math.ceil(Fraction(round(e.start_sec * 10), 10) * plan.fps),
         math.ceil(Fraction(round(e.end_sec * 10), 10) * plan.fps))
        for e in plan.events
    ]
    times = np.arange(plan.n_frames) / float(plan.fps)
    frames = np.empty((plan.n_frames, h, w, 3), dtype=np.uint8)
    for i, t in enumerate(times):
        oy, ox = (np.floor(drift * t).astype(int)) % np.array([h, w])
        frame = texture[oy:oy + h, ox:ox + w].copy()
        for event, (first, stop) in zip(plan.events, spans, strict=True):
            if not first <= i < stop:
                continue
            # Travel from one quarter of the frame to the opposite quarter over the window.
            progress = (t - event.start_sec) / (event.end_sec - event.start_sec)
            dx, dy = DIRECTIONS[event.direction]
            cx = w / 2 + dx * (progress - 0.5) * w / 2
            cy = h / 2 + dy * (progress - 0.5) * h / 2
            top, left = round(cy) - radius, round(cx) - radius
            mask = masks[event.shape]
            frame[top:top + mask.shape[0], left:left + mask.shape[1]][mask] = COLOURS[event.colour]
        frames[i] = frame
    return frames


def _splits(n_videos: int, seed: int) -> list[str]:
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(n_videos)
    n_val = max(1, round(n_videos * _SPLITS[1][1]))
    n_test = max(1, round(n_videos * _SPLITS[2][1]))
    n_train = n_videos - n_val - n_test
    split = [""] * n_videos
    for rank, video in enumerate(order):
        split[video] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return split


def generate_synthetic(
    out_dir: str | Path, *, n_videos: int = 100, seed: int = 0, extra_test_videos: int = 0
) -> Path:
    """Write the synthetic videos and their annotations.

    Args:
        out_dir: Output folder; videos go to ``out_dir/videos/`` and queries to
            ``out_dir/annotations.jsonl`` (files of the same names are overwritten).
        n_videos: Number of videos split 55/15/30 into train/val/test (>= 3, so that each split
            is non-empty).
        seed: Random seed; the same seed gives the same annotations and frames.
        extra_test_videos: Videos ``n_videos .. n_videos + extra_test_videos - 1`` added to the
            test split only. The first ``n_videos`` (their files and splits) are those of the set
            without them, so a model trained on the smaller set's train split is scored on a test
            split that many times larger (`make zoo` does this; docs/models.md, "Model zoo").

    Returns:
        Path of ``annotations.jsonl``.
    """
    if n_videos < 3:
        raise ValueError(f"n_videos must be >= 3 so that train/val/test are non-empty, got {n_videos}")
    if extra_test_videos < 0:
        raise ValueError(f"extra_test_videos must be >= 0, got {extra_test_videos}")
    out_dir = Path(out_dir)
    splits = _splits(n_videos, seed) + ["test"] * extra_test_videos
    lines: list[str] = []
    for index in range(n_videos + extra_test_videos):
        plan = plan_video(seed, index)
        rel = Path("videos") / f"{plan.vid}.mp4"
        write_video(out_dir / rel, render_video(plan, seed), plan.fps)
        info = probe_video(out_dir / rel)
        if info.n_frames != plan.n_frames:
            raise RuntimeError(f"{out_dir / rel}: wrote {plan.n_frames} frames, decoder sees {info.n_frames}")
        for q, (text, group) in enumerate(plan.queries):
            windows = [[plan.events[k].start_sec, plan.events[k].end_sec] for k in group]
            row = {
                "qid": f"{plan.vid}_q{q}",
                "video": rel.as_posix(),
                "vid": plan.vid,
                "query": text,
                "windows": windows,
                "split": splits[index],
                "duration": info.duration_sec,
            }
            lines.append(json.dumps(row))
    annotations = out_dir / "annotations.jsonl"
    annotations.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return annotations


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m extract synthetic --out DIR``: write the synthetic dataset."""
    parser = argparse.ArgumentParser(prog="python -m extract synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n-videos", type=int, default=100, help="number of videos (>= 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--extra-test-videos", type=int, default=0, help="videos added after the N to the test split only"
    )
    args = parser.parse_args(argv)
    if args.n_videos < 3:
        parser.error(f"--n-videos must be >= 3 so that train/val/test are non-empty, got {args.n_videos}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.extra_test_videos < 0:
        parser.error(f"--extra-test-videos must be >= 0, got {args.extra_test_videos}")
    annotations = generate_synthetic(
        args.out, n_videos=args.n_videos, seed=args.seed, extra_test_videos=args.extra_test_videos
    )
    n_queries = sum(1 for _ in annotations.open(encoding="utf-8"))
    print(f"wrote {args.n_videos + args.extra_test_videos} videos and {n_queries} queries to {annotations}")
    return 0
