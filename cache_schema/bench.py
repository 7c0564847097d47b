"""`make bench-cache`: write a QVHighlights-shaped cache with each backend and time it.

Defaults match QVHighlights with two video streams concatenated (CLIP 512 + SlowFast 2304 =
2816 dims): 10,000 videos x 75 clips, 10,000 queries x 32 tokens x 512, float16. Reports write
MB/s, size on disk vs raw, `load_split` of everything, and the median random single-query read
(video features + tokens). Prints a markdown table to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cache_schema.spec import EncoderSpec, QueryItem, VideoItem
from cache_schema.store import CacheReader, CacheWriter


def _specs(video_dim: int, text_dim: int) -> list[EncoderSpec]:
    return [
        EncoderSpec(
            name="bench_video",
            modality="video",
            dim=video_dim,
            stride_sec=2.0,
            frames_per_feature=1,
            weights_id="none",
            library="bench",
        ),
        EncoderSpec(
            name="bench_text",
            modality="text",
            dim=text_dim,
            tokenizer="none",
            max_tokens=32,
            weights_id="none",
            library="bench",
        ),
    ]


def run(
    path: Path,
    *,
    n_videos: int,
    clips: int,
    video_dim: int,
    n_tokens: int,
    text_dim: int,
    compression: str | None,
    reads: int,
) -> dict:
    rng = np.random.default_rng(0)
    # A pool of distinct random blocks cycled over the items: the benchmark measures storage, not
    # RNG, and no chunk holds the same rows twice (which would flatter compression).
    pool = [rng.standard_normal((clips, video_dim)).astype(np.float16) for _ in range(16)]
    token_pool = [rng.standard_normal((n_tokens, text_dim)).astype(np.float16) for _ in range(16)]
    feats, tokens = pool[0], token_pool[0]
    ts = np.stack([np.arange(clips) * 2.0, np.arange(clips) * 2.0 + 2.0], axis=1)
    raw_bytes = n_videos * (feats.nbytes + ts.nbytes + tokens.nbytes + text_dim * 2)
    t0 = time.perf_counter()
    with CacheWriter(
        path, dataset="bench", encoders=_specs(video_dim, text_dim), mode="overwrite", compression=compression
    ) as w:
        for i in range(n_videos):
            vid = f"v{i:06d}"
            feats, tokens = pool[i % len(pool)], token_pool[i % len(token_pool)]
            w.add_video(
                VideoItem(
                    vid=vid,
                    duration_sec=clips * 2.0,
                    features={"bench_video": feats},
                    timestamps_sec={"bench_video": ts},
                )
            )
            w.add_queries(
                [
                    QueryItem(
                        qid=str(i),
                        vid=vid,
                        text="q",
                        split="train",
                        windows=[(0.0, 10.0)],
                        tokens={"bench_text": tokens},
                        pooled={"bench_text": tokens[0]},
                    )
                ]
            )
    write_sec = time.perf_counter() - t0
    # Let the kernel finish writing back before timing reads: otherwise the first read competes
    # with gigabytes of dirty-page writeback and measures the disk's write speed instead.
    os.sync()

    t0 = time.perf_counter()
    reader = CacheReader(path)
    open_sec = time.perf_counter() - t0
    load_secs = []
    for _ in range(2):  # first read after writing (page cache as the writer left it), then warm
        t0 = time.perf_counter()
        split = reader.load_split("train", ["bench_video"], "bench_text")
        load_secs.append(time.perf_counter() - t0)
        assert split.video.shape == (n_videos, clips, video_dim)
        del split
    ids = reader.query_ids
    order = rng.integers(0, len(ids), size=reads)
    times = []
    for i in order:
        t0 = time.perf_counter()
        q = ids[i]
        reader.video_features(reader._query_meta[i]["vid"], "bench_video")
        reader.query_tokens(q, "bench_text")
        times.append(time.perf_counter() - t0)
    size = reader.size_on_disk()
    reader.close()
    return {
        "backend": reader._store.backend,
        "compression": compression or "none",
        "write_MBps": raw_bytes / 2**20 / write_sec,
        "write_sec": write_sec,
        "size_vs_raw": size / raw_bytes,
        "size_GiB": size / 2**30,
        "open_sec": open_sec,
        "load_split_sec": load_secs[0],
        "load_split_warm_sec": load_secs[1],
        "median_read_ms": float(np.median(times)) * 1e3,
        "p99_read_ms": float(np.percentile(times, 99)) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cache_schema.bench", description=__doc__)
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--clips", type=int, default=75)
    parser.add_argument("--video-dim", type=int, default=2816)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--text-dim", type=int, default=512)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--backends", nargs="+", default=["hdf5", "zarr"], choices=["hdf5", "zarr"])
    parser.add_argument(
        "--compression",
        nargs="+",
        default=["none"],
        help="codecs to try: none, gzip/lzf (hdf5), zstd/lz4 (zarr)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="groundcache-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for backend in args.backends:
            for codec in args.compression:
                if codec != "none" and (codec in ("gzip", "lzf")) != (backend == "hdf5"):
                    continue
                path = workdir / f"bench.{'h5' if backend == 'hdf5' else 'zarr'}"
                result = run(
                    path,
                    n_videos=args.videos,
                    clips=args.clips,
                    video_dim=args.video_dim,
                    n_tokens=args.tokens,
                    text_dim=args.text_dim,
                    compression=None if codec == "none" else codec,
                    reads=args.reads,
                )
                rows.append(result)
                print(result, flush=True)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nmachine: {platform.node()} {platform.machine()} python {platform.python_version()}; "
        f"{args.videos} videos x {args.clips} x {args.video_dim} fp16, {args.videos} queries x "
        f"{args.tokens} x {args.text_dim}\n"
    )
    print(
        "| backend | compression | write MB/s | size vs raw | open s | load_split s (first / warm) "
        "| median read ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['compression']} | {r['write_MBps']:.0f} | {r['size_vs_raw']:.2f} | "
            f"{r['open_sec']:.2f} | {r['load_split_sec']:.1f} / {r['load_split_warm_sec']:.1f} | "
            f"{r['median_read_ms']:.3f} | {r['p99_read_ms']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
