"""`python -m ground bench-watch`: a file played as a stream against `ground-video` on the same file.

For every pass of the watcher (window W, hop S) the same window is grounded offline: the file's
features from `Grounder.video_features` (what `ground-video` computes), cut to the clips the
watcher's ring held at that pass. Each offline window whose presence reaches the threshold must be
reported by the stream: an event of that query, no later than one hop after the pass, whose
[start_sec, end_sec] covers the offline window to within one clip at each end. The match rate is
the fraction of such windows reported. Also measured: the real-time factor (wall seconds per
stream second, played as fast as possible), the delay from the first offline pass that finds an
occurrence to its `started` event (in stream seconds), and the process's peak RSS.

With `--stream-minutes M` it measures a long run instead: one file replayed back to back as one
continuous stream of M minutes (as fast as possible), the process's current RSS (VmRSS) sampled
every `--rss-every-minutes` of stream time, and the real-time factor. No offline comparison, and
events are counted, not kept, so the run's own bookkeeping does not grow with its length.

Both modes also give the process's CPU seconds while the streams play (all threads: decoding and
encoding; not the offline reference), which on a shared machine says more about the cost than
the wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ground.predict import Grounder
from ground.watch.source import SampledFrame, SourceError, StreamSource
from ground.watch.watcher import DEFAULT_HOP_SEC, DEFAULT_WINDOW_SEC, Watcher, run_watch

DEFAULT_RSS_EVERY_MINUTES = 10.0


def rss_mib() -> float:
    """The process's resident set size now (VmRSS of /proc/self/status), MiB; Linux only."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # the kernel writes kB
    raise RuntimeError("/proc/self/status has no VmRSS line")


class RssSampledWatcher(Watcher):
    """A `Watcher` that records the process's RSS each time the stream passes a multiple of `every_sec`.

    `samples` starts with one taken before the first frame (checkpoint and encoders loaded); each
    later one is `{stream_sec, wall_sec, rss_mib}`, wall seconds since construction.
    """

    def __init__(self, *args, every_sec: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.every_sec = every_sec
        self._began = time.perf_counter()
        self._next_sample_sec = every_sec
        self.samples: list[dict] = []
        self.sample(0.0)

    def push(self, frame: SampledFrame) -> None:
        super().push(frame)
        if self.ring_end_sec >= self._next_sample_sec - 1e-9:
            self.sample(self.ring_end_sec)
            while self._next_sample_sec <= self.ring_end_sec + 1e-9:
                self._next_sample_sec += self.every_sec

    def sample(self, stream_sec: float) -> None:
        sample = {
            "stream_sec": round(stream_sec, 3),
            "wall_sec": round(time.perf_counter() - self._began, 1),
            "rss_mib": round(rss_mib(), 1),
        }
        self.samples.append(sample)
        print(json.dumps(sample), file=sys.stderr, flush=True)  # progress of a long run


def long_run(
    grounder: Grounder,
    video: str,
    queries: Sequence[str],
    *,
    stream_sec: float,
    every_sec: float,
    window_sec: float,
    hop_sec: float,
) -> dict:
    """Play `video` looped as one stream of `stream_sec` seconds as fast as possible; RSS every `every_sec`.

    Returns the summary `bench-watch --stream-minutes` prints: stream and wall seconds, the
    real-time factor, the process's CPU seconds over the run, the file's plays, passes, query and
    source event counts by state, and the RSS samples (MiB).

    Raises:
        SourceError: the file cannot be opened or read to its end (it cannot be looped).
    """
    query_events: dict[str, int] = {}  # by state
    source_events: dict[str, int] = {}

    def count(event: dict) -> None:
        counts = source_events if event["query"] is None else query_events
        counts[event["state"]] = counts.get(event["state"], 0) + 1

    watcher = RssSampledWatcher(
        grounder, queries, count, window_sec=window_sec, hop_sec=hop_sec, every_sec=every_sec
    )
    source = StreamSource(video, 1.0 / grounder.stride_sec, speed=0, loop_until_sec=stream_sec)
    began, began_cpu = time.perf_counter(), time.process_time()
    summary = run_watch(source, watcher, count, threading.Event())
    wall_sec, cpu_sec = time.perf_counter() - began, time.process_time() - began_cpu
    if summary["detail"].startswith("source failed"):
        raise SourceError(f"source {video!r}: {summary['detail']}")
    if summary["stream_time"] > watcher.samples[-1]["stream_sec"] + 1e-9:
        watcher.sample(summary["stream_time"])  # the end, when it is not a multiple of every_sec
    samples = watcher.samples
    after_warmup = samples[1:] or samples
    return {
        "video": str(video),
        "queries": len(queries),
        "window_sec": window_sec,
        "hop_sec": hop_sec,
        "detail": summary["detail"],
        "stream_sec": summary["stream_time"],
        "wall_sec": round(wall_sec, 1),
        "real_time_factor": round(wall_sec / summary["stream_time"], 4) if summary["stream_time"] else None,
        "cpu_sec": round(cpu_sec, 1),
        "file_plays": summary["connections"],
        "windows": summary["windows"],
        "passes": summary["passes"],
        "query_events": query_events,
        "source_events": source_events,
        "rss_samples": samples,
        "rss_mib_first_sample": after_warmup[0]["rss_mib"],
        "rss_mib_end": samples[-1]["rss_mib"],
        "rss_growth_mib_after_first_sample": round(samples[-1]["rss_mib"] - after_warmup[0]["rss_mib"], 1),
        "rss_range_mib_after_first_sample": round(
            max(x["rss_mib"] for x in after_warmup) - min(x["rss_mib"] for x in after_warmup), 1
        ),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def offline_passes(
    grounder: Grounder, path: str | Path, queries: Sequence[str], window_sec: float, hop_sec: float
) -> list[dict]:
    """`{query, pass_end_sec, start_sec, end_sec, presence}` of every pass the watcher makes on `path`."""
    features, times_sec, _ = grounder.video_features(path)  # (T, Dv), (T, 2)
    # Encoded once, as the watcher encodes its standing queries (the same features every pass).
    text = grounder.encode_queries(queries)
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
            features[lo : i + 1],
            text_features=text,
            labels=list(queries),
            timestamps_sec=view - view[0, 0],
            top_k=1,
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
    parser.add_argument(
        "--stream-minutes",
        type=float,
        default=None,
        help="long run: loop the one --video as a stream this long; RSS and real-time factor only",
    )
    parser.add_argument(
        "--rss-every-minutes",
        type=float,
        default=DEFAULT_RSS_EVERY_MINUTES,
        help="long run: sample the RSS every this many stream minutes",
    )
    args = parser.parse_args(argv)
    if args.stream_minutes is not None:
        if len(args.video) != 1:
            parser.error(f"--stream-minutes loops one --video, got {len(args.video)}")
        if not args.rss_every_minutes > 0:
            parser.error(f"--rss-every-minutes must be positive, got {args.rss_every_minutes}")
    grounder = Grounder.from_checkpoint(args.ckpt, device=args.device)
    if args.stream_minutes is not None:
        result = long_run(
            grounder,
            args.video[0],
            args.query,
            stream_sec=args.stream_minutes * 60,
            every_sec=args.rss_every_minutes * 60,
            window_sec=args.window_sec,
            hop_sec=args.hop_sec,
        )
        print(json.dumps(result, indent=2))
        return 0
    reported = total = 0
    stream_sec = wall_sec = cpu_sec = 0.0
    delays: list[float] = []
    for video in args.video:
        events: list[dict] = []
        watcher = Watcher(
            grounder, args.query, events.append, window_sec=args.window_sec, hop_sec=args.hop_sec
        )
        source = StreamSource(video, 1.0 / grounder.stride_sec, speed=0)
        began, began_cpu = time.perf_counter(), time.process_time()
        summary = run_watch(source, watcher, events.append, threading.Event())
        wall_sec += time.perf_counter() - began
        cpu_sec += time.process_time() - began_cpu
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
                "cpu_sec": round(cpu_sec, 3),
                "mean_start_delay_sec": round(float(np.mean(delays)), 3) if delays else None,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
            indent=2,
        )
    )
    return 0
