"""What adding an encoder to a cache costs, beside extracting everything again, as a markdown table.

On the synthetic dataset (``extract.synthetic``, generated into a temporary folder):

1. base: extract ``--base`` (video and text towers) into a cache;
2. add video: ``--add-encoder`` the video tower of ``--added`` (decoding + that encoder only);
3. full: extract ``--base`` and ``--added`` together into a new cache (what growing avoids);
4. add text: ``--add-encoder`` the text encoder ``--text`` (queries only, no decoding). The videos
   folder is moved away first, so this step could not decode a video if it tried.

Each step runs the real command (``python -m extract``'s config parser and run, in this process)
and is timed, model building included: wall seconds, and CPU seconds (user + system of this
process and its reaped children, the decode workers). Per step the table gives the videos decoded,
the frames (features) each video encoder computed, the queries text-encoded and the bytes written
(the cache's growth on disk).

``--query-texts`` swaps the synthetic queries for the texts of QVHighlights-format jsonl files
(``qid``, ``query``): one annotation row per given query, its video and windows taken from the
synthetic rows in turn. So a cache with QVHighlights' 10,310 real query texts needs only a few
decoded videos.

    python -m extract.bench_grow                             # 20 videos, clip_vit_b32 added
    python -m extract.bench_grow --n-videos 5 --suffix .zarr   # a quick check, Zarr
    python -m extract.bench_grow --n-videos 1000 --added tiny_siglip   # the issue's scale, tiny encoders
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cache_schema.backends import Store
from cache_schema.errors import GroundcacheError
from cache_schema.store import CacheReader


class BenchGrowError(GroundcacheError, RuntimeError):
    """A step of the benchmark failed (the message names the step, or the file and line)."""


@dataclass(frozen=True)
class Step:
    """One timed command and what it did, from its run summary."""

    name: str
    seconds: float
    cpu_seconds: float
    """User + system time of this process and its reaped children (the decode workers)."""
    videos_decoded: int
    frames: int
    """Features computed per video encoder run (one frame each at 1 fps)."""
    queries: int
    """Queries given text features."""
    bytes_written: int


def _config(path: Path, data: Path, output: Path, video: list[str], text: list[str], workers: int) -> Path:
    config = {
        "dataset": "synthetic",
        "adapter": "custom",
        "annotations": str(data / "annotations.jsonl"),
        "video_root": str(data),
        "output": str(output),
        "video_encoders": [{"name": n, "weights": "none"} for n in video],
        "text_encoders": [{"name": n, "weights": "none"} for n in text],
        "num_workers": workers,
    }
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def _size(path: Path) -> int:
    store = Store(path, "r")
    try:
        return store.size_on_disk()
    finally:
        store.close()


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(name: str, argv: list[str], cache: Path, *, new_cache: bool) -> Step:
    """Run ``python -m extract`` with ``argv`` (its parser and run, in this process) and time it.

    Raises:
        BenchGrowError: the run failed a video, naming the step.
    """
    from extract.config import parse_config
    from extract.grow import run_add
    from extract.pipeline import run

    before = 0 if new_cache else _size(cache)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    config = parse_config(argv)
    summary = run_add(config) if config.add_encoder else run(config)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    if summary.exit_code != 0:
        raise BenchGrowError(f"{name}: python -m extract {' '.join(argv)} exited {summary.exit_code}")
    written = _size(cache) - before
    return Step(name, seconds, cpu_seconds, summary.done, summary.frames, summary.queries_written, written)


def _use_query_texts(annotations: Path, files: Sequence[Path]) -> None:
    """Rewrite the synthetic ``annotations`` with one row per query of ``files`` (QVHighlights
    jsonl: ``qid``, ``query``), each row's video, windows, split and duration taken from the
    synthetic rows in turn.

    Raises:
        BenchGrowError: a line without ``qid`` or ``query``, naming the file and line.
    """
    rows = [json.loads(line) for line in annotations.read_text(encoding="utf-8").splitlines()]
    out = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchGrowError(f"{path}:{number}: not JSON ({err.msg})") from err
            if "qid" not in record or not isinstance(record.get("query"), str):
                raise BenchGrowError(f"{path}:{number}: needs a qid and a query text")
            row = dict(rows[len(out) % len(rows)])
            row.update(qid=f"{path.stem}_{record['qid']}", query=record["query"])
            out.append(json.dumps(row))
    annotations.write_text("\n".join(out) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extract.bench_grow", description=__doc__.splitlines()[0])
    parser.add_argument("--n-videos", type=int, default=20, help="synthetic videos (>= 3)")
    parser.add_argument(
        "--base", default="tiny_clip", help="encoder of the first extraction (video and text)"
    )
    parser.add_argument("--added", default="clip_vit_b32", help="video encoder added afterwards")
    parser.add_argument("--text", default="tiny_bert", help="text encoder added afterwards")
    parser.add_argument("--suffix", default=".h5", choices=(".h5", ".zarr"), help="cache backend")
    parser.add_argument("--num-workers", type=int, default=1, help="decode workers")
    parser.add_argument(
        "--query-texts", type=Path, nargs="+", default=None,
        help="QVHighlights-format jsonl files whose query texts replace the synthetic ones",
    )  # fmt: skip
    args = parser.parse_args(argv)

    from extract.synthetic import generate_synthetic

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_grow_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        annotations = generate_synthetic(root / "data", n_videos=args.n_videos)
        generate_sec = time.perf_counter() - start
        if args.query_texts:
            try:
                _use_query_texts(annotations, args.query_texts)
            except (BenchGrowError, OSError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        cache, full_cache = root / f"cache{args.suffix}", root / f"full{args.suffix}"
        w = args.num_workers
        base = _config(root / "base.yaml", root / "data", cache, [args.base], [args.base], w)
        grown = _config(root / "grown.yaml", root / "data", cache, [args.base, args.added], [args.base], w)
        full = _config(root / "full.yaml", root / "data", full_cache, [args.base, args.added], [args.base], w)
        text = _config(
            root / "text.yaml", root / "data", cache, [args.base, args.added], [args.base, args.text], w
        )
        try:
            steps = [
                _timed("base: extract " + args.base, ["--config", str(base)], cache, new_cache=True),
                _timed(
                    f"add video encoder {args.added}",
                    ["--config", str(grown), "--add-encoder", args.added],
                    cache,
                    new_cache=False,
                ),
                _timed(
                    f"full: extract {args.base} + {args.added}",
                    ["--config", str(full)],
                    full_cache,
                    new_cache=True,
                ),
            ]
            # Moved away, so that the text step fails if it opens any video.
            (root / "data" / "videos").rename(root / "data" / "videos.moved")
            steps.append(
                _timed(
                    f"add text encoder {args.text} (videos moved away)",
                    ["--config", str(text), "--add-encoder", args.text],
                    cache,
                    new_cache=False,
                )
            )
        except BenchGrowError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        with CacheReader(cache) as reader:
            n_features = sum(len(reader.video_timestamps(v, args.base)) for v in reader.video_ids)
            n_queries = reader.n_queries
    load_end = os.getloadavg()
    texts = "QVHighlights query texts" if args.query_texts else "queries"
    print(
        f"{args.n_videos} synthetic videos ({n_features} features at 1 fps, generated in "
        f"{generate_sec:.1f} s), {n_queries} {texts}, {args.suffix} cache, {args.num_workers} decode "
        f"worker(s), CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}); "
        f"load average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end\n"
    )
    print(
        "| step | seconds | CPU seconds | videos decoded | frames per video encoder | queries text-encoded "
        "| bytes written |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for step in steps:
        print(
            f"| {step.name} | {step.seconds:.1f} | {step.cpu_seconds:.1f} | {step.videos_decoded:,} | "
            f"{step.frames:,} | {step.queries:,} | {step.bytes_written:,} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
