"""`make bench-predict`: latency of answering queries with a trained checkpoint.

1. From the cache: a query whose video (and text) are cached, so only the network runs.
2. From the cache with a new sentence: the text encoder runs too.
3. From raw video files of the given lengths (generated here with PyAV at a small size), which
   decodes, samples at the model's rate and encodes every frame with the checkpoint's encoders.

Defaults use the `make demo` checkpoint and synthetic cache (tiny_clip on CPU).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from cache_schema import CacheReader
from ground.predict import Grounder

REPO = Path(__file__).resolve().parents[1]


def _write_video(path: Path, seconds: float, fps: int, size: tuple[int, int]) -> None:
    """A moving-gradient test video (content does not matter for timing; decoding does)."""
    height, width = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ground.bench_predict", description=__doc__)
    parser.add_argument("--ckpt", type=Path, default=REPO / "runs" / "demo" / "checkpoints" / "best.ckpt")
    parser.add_argument("--cache", type=Path, default=REPO / "data" / "synthetic" / "cache.h5")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--video-seconds", type=float, nargs="+", default=[150.0, 1800.0])
    parser.add_argument("--video-size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    parser.add_argument("--native-fps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.ckpt.exists():
        raise SystemExit(f"{args.ckpt}: no checkpoint; run `make demo` first")
    torch.set_num_threads(args.threads)

    grounder = Grounder.from_checkpoint(args.ckpt, cache=args.cache)
    with CacheReader(args.cache) as reader:
        queries = reader.queries("test")[: args.queries]
    rows = []
    for label, text_of in (
        ("cache: cached video + cached sentence", lambda q: q.text),
        ("cache: cached video + new sentence", lambda q: q.text + " again"),
    ):
        grounder.ground(queries[0].vid, [text_of(queries[0])])  # warm-up
        times = []
        for q in queries:
            t0 = time.perf_counter()
            grounder.ground(q.vid, [text_of(q)], coarse_to_fine=False)
            times.append(time.perf_counter() - t0)
        rows.append((label, f"{_median_ms(times):.1f} ms median over {len(times)} queries"))

    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.video_seconds:
            path = Path(tmp) / f"video_{int(seconds)}s.mp4"
            _write_video(path, seconds, args.native_fps, tuple(args.video_size))
            t0 = time.perf_counter()
            result = grounder.ground(path, ["a red circle moves to the left"], coarse_to_fine=False)[0]
            elapsed = time.perf_counter() - t0
            assert 0 <= result.windows[0][0] <= result.windows[0][1] <= result.duration_sec + 1e-6
            rows.append(
                (
                    f"raw video {seconds:.0f} s ({args.video_size[1]}x{args.video_size[0]}, "
                    f"{args.native_fps} fps)",
                    f"{elapsed:.2f} s ({seconds / elapsed:.0f}x real time)",
                )
            )

    print(
        f"\nmachine: {platform.node()} {platform.machine()}, CPU, {args.threads} torch thread(s), "
        f"torch {torch.__version__}; checkpoint {args.ckpt}\n"
    )
    print("| path | latency |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
