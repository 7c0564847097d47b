"""`python -m ground bench-watch`: a file played as a stream against `ground-video` on the same file.

For every pass of the watcher (window W, hop S) the same window is grounded offline: the file's
features from `Grounder.video_features` (what `ground-video` computes), cut to the clips the
watcher's ring held at that pass. Each offline window whose presence reaches the threshold must be
reported by the stream: an event of that query, no later than one hop after the pass, whose
[start_sec, end_sec] covers the offline window to within one clip at each end. The match rate is
the fraction of such windows reported. Also measured: the real-time factor (wall seconds per
stream second, played as fast as possible), the delay from the first offline pass that finds an
occurrence to its `started` event (in stream seconds), and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ground.predict import Grounder
from ground.watch.source import StreamSource
from ground.watch.watcher import DEFAULT_HOP_SEC, DEFAULT_WINDOW_SEC, Watcher, run_watch


def offline_passes(
    grounder: Grounder, path: str | Path, queries: Sequence[str], window_sec: float, hop_sec: float
) -> list[dict]:
    """`{query, pass_end_sec, start_sec, end_sec, presence}` of every pass the watcher makes on `path`."""
    features, times_sec, _ = grounder.video_features(path)  # (T, Dv), (T, 2)
    capacity = int(np.ceil(window_sec / grounder.stride_sec - 1e-9))
    out = []
    next_pass = hop_sec
    for i in range(len(times_sec)):
        end = float(times_sec[i, 1])
        last = i == len(times_sec) - 1
        if end < next_pass - 1e-9 and not last:
            continue
        while next_pass <= end + 1e-9:
            next_pass += hop_sec
        lo = max(0, i + 1 - capacity)
        view = times_sec[lo : i + 1]
        results = grounder.ground_features(
            features[lo : i + 1], list(queries), timestamps_sec=view - view[0, 0], top_k=1
        )
        for r in results:
            start, stop, _ = r.windows[0]
            out.append(
                {
                    "query": r.query,
                    "pass_end_sec": end,
                    "start_sec": start + float(view[0, 0]),
                    "end_sec": stop + float(view[0, 0]),
                    "presence": 1.0 if r.presence is None else r.presence,
                }
            )
    return out


def match_rate(
    offline: list[dict], events: list[dict], threshold: float, clip_sec: float, hop_sec: float
) -> tuple[int, int]:
    """(offline windows at or above the threshold that the stream reported, all such windows)."""
    found = [o for o in offline if o["presence"] >= threshold]
    reported = 0
    for o in found:
        if any(
            e["query"] == o["query"]
            and e["stream_time"] <= o["pass_end_sec"] + hop_sec + 1e-6
            and e["start_sec"] <= o["start_sec"] + clip_sec + 1e-6
            and e["end_sec"] >= o["end_sec"] - clip_sec - 1e-6
            for e in events
        ):
            reported += 1
    return reported, len(found)


def bench_watch_main(argv: Sequence[str] | None = None) -> int:
    """`python -m ground bench-watch --ckpt M.ckpt --video V.mp4 --query "..." [--query ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m ground bench-watch",
        description="Play video files as streams: match rate against ground-video, real-time factor, RSS.",
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--video", action="append", required=True, help="a video file (repeat for several)")
    parser.add_argument("--query", action="append", required=True)
    parser.add_argument("--window-sec", type=float, default=DEFAULT_WINDOW_SEC)
    parser.add_argument("--hop-sec", type=float, default=DEFAULT_HOP_SEC)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    grounder = Grounder.from_checkpoint(args.ckpt, device=args.device)
    reported = total = 0
    stream_sec = wall_sec = 0.0
    delays: list[float] = []
    for video in args.video:
        events: list[dict] = []
        watcher = Watcher(
            grounder, args.query, events.append, window_sec=args.window_sec, hop_sec=args.hop_sec
        )
        source = StreamSource(video, 1.0 / grounder.stride_sec, speed=0)
        began = time.perf_counter()
        summary = run_watch(source, watcher, events.append, threading.Event())
        wall_sec += time.perf_counter() - began
        stream_sec += summary["stream_time"]
        offline = offline_passes(grounder, video, args.query, args.window_sec, args.hop_sec)
        hit, n = match_rate(offline, events, grounder.presence_threshold, grounder.stride_sec, args.hop_sec)
        reported, total = reported + hit, total + n
        for query in args.query:
            first = next(
                (o for o in offline if o["query"] == query and o["presence"] >= grounder.presence_threshold),
                None,
            )
            started = next((e for e in events if e["query"] == query and e["state"] == "started"), None)
            if first is not None and started is not None:
                delays.append(started["stream_time"] - first["start_sec"])
    print(
        json.dumps(
            {
                "videos": len(args.video),
                "queries": len(args.query),
                "window_sec": args.window_sec,
                "hop_sec": args.hop_sec,
                "offline_windows_found": total,
                "reported_by_stream": reported,
                "match_rate": reported / total if total else None,
                "stream_sec": round(stream_sec, 3),
                "wall_sec": round(wall_sec, 3),
                "real_time_factor": round(wall_sec / stream_sec, 4) if stream_sec else None,
                "mean_start_delay_sec": round(float(np.mean(delays)), 3) if delays else None,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
            indent=2,
        )
    )
    return 0
