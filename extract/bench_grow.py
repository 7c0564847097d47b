"""What adding an encoder to a cache costs, beside extracting everything again, as a markdown table.

On the synthetic dataset (``extract.synthetic``, generated into a temporary folder):

1. base: extract ``--base`` (video and text towers) into a cache;
2. add video: ``--add-encoder`` the video tower of ``--added`` (decoding + that encoder only);
3. full: extract ``--base`` and ``--added`` together into a new cache (what growing avoids);
4. add text: ``--add-encoder`` the text encoder ``--text`` (queries only, no decoding).

Each step runs the real command (``python -m extract``, in this process) and is timed wall clock,
model building included. Bytes written are the cache's growth on disk.

    python -m extract.bench_grow                             # 20 videos, clip_vit_b32 added
    python -m extract.bench_grow --n-videos 5 --suffix .zarr   # a quick check, Zarr
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cache_schema.backends import Store
from cache_schema.store import CacheReader


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


def _timed(argv: list[str]) -> float:
    from extract.__main__ import main

    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"python -m extract {' '.join(argv)} exited {code}")
    return time.perf_counter() - start


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
    args = parser.parse_args(argv)

    from extract.synthetic import generate_synthetic

    with tempfile.TemporaryDirectory(prefix="bench_grow_") as tmp:
        root = Path(tmp)
        generate_synthetic(root / "data", n_videos=args.n_videos)
        cache, full_cache = root / f"cache{args.suffix}", root / f"full{args.suffix}"
        w = args.num_workers
        base = _config(root / "base.yaml", root / "data", cache, [args.base], [args.base], w)
        grown = _config(root / "grown.yaml", root / "data", cache, [args.base, args.added], [args.base], w)
        full = _config(root / "full.yaml", root / "data", full_cache, [args.base, args.added], [args.base], w)
        text = _config(
            root / "text.yaml", root / "data", cache, [args.base, args.added], [args.base, args.text], w
        )
        rows = []
        seconds = _timed(["--config", str(base)])
        rows.append(("base: extract " + args.base, seconds, _size(cache)))
        before = _size(cache)
        seconds = _timed(["--config", str(grown), "--add-encoder", args.added])
        rows.append((f"add video encoder {args.added}", seconds, _size(cache) - before))
        seconds = _timed(["--config", str(full)])
        rows.append((f"full: extract {args.base} + {args.added}", seconds, _size(full_cache)))
        before = _size(cache)
        seconds = _timed(["--config", str(text), "--add-encoder", args.text])
        rows.append((f"add text encoder {args.text} (no decoding)", seconds, _size(cache) - before))
        with CacheReader(cache) as reader:
            n_features = sum(len(reader.video_timestamps(v, args.base)) for v in reader.video_ids)
            n_queries = reader.n_queries
    print(
        f"{args.n_videos} synthetic videos ({n_features} features at 1 fps), {n_queries} queries, "
        f"{args.suffix} cache, {args.num_workers} decode worker(s), CPU\n"
    )
    print("| step | seconds | bytes written |")
    print("|---|---:|---:|")
    for name, seconds, size in rows:
        print(f"| {name} | {seconds:.1f} | {size:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
