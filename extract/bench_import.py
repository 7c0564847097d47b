"""`make bench-import`: time `python -m extract import` on a QVHighlights-sized fake release.

Writes (once; reused while the parameters are unchanged) a Moment-DETR-layout release under the
work dir: QVHighlights-format annotation files, `features/clip_features/<vid>.npz` (75 x 512),
`features/slowfast_features/<vid>.npz` (75 x 2304) and `features/clip_text_features/qid<qid>.npz`
(32 x 512), one query per video. Then imports it into a fresh cache and prints the seconds taken.
The files were just written, so they are usually in the page cache: the number measures the
importer (npz parsing, checks, cache writes), not a cold disk.

    python -m extract.bench_import                      # 10,000 videos (about 9 GB of npz)
    python -m extract.bench_import --videos 200 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from extract import importers

CLIP_SEC = 2.0
SPLITS = (
    ("train", "highlight_train_release.jsonl"),
    ("val", "highlight_val_release.jsonl"),
    ("test", "highlight_test_with_gt.jsonl"),
)


def write_fake_release(
    root: Path,
    *,
    n_videos: int,
    clips: int,
    clip_dim: int,
    slowfast_dim: int,
    n_tokens: int,
    text_dim: int,
    seed: int = 0,
) -> Path:
    """Write the fake release under ``root`` unless the same one is there; return ``root``.

    Features are a few random blocks cycled over the videos: the benchmark times reading and
    writing, not the random number generator.
    """
    params = {
        "n_videos": n_videos,
        "clips": clips,
        "clip_dim": clip_dim,
        "slowfast_dim": slowfast_dim,
        "n_tokens": n_tokens,
        "text_dim": text_dim,
        "seed": seed,
        "format": 1,
    }
    marker = root / "params.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    n_blocks = 8
    clip_blocks = rng.standard_normal((n_blocks, clips, clip_dim), dtype=np.float32)
    slowfast_blocks = rng.standard_normal((n_blocks, clips, slowfast_dim), dtype=np.float32)
    text_blocks = rng.standard_normal((n_blocks, n_tokens, text_dim), dtype=np.float32)
    dirs = {
        name: root / "features" / name
        for name in ("clip_features", "slowfast_features", "clip_text_features")
    }
    for directory in dirs.values():
        directory.mkdir(parents=True)
    annotations = root / "annotations"
    annotations.mkdir()
    files = {split: (annotations / name).open("w") for split, name in SPLITS}
    duration = int(clips * CLIP_SEC)
    try:
        for i in range(n_videos):
            vid = f"fake{i:05d}_0.0_{duration}.0"
            block = i % n_blocks
            np.savez(dirs["clip_features"] / f"{vid}.npz", features=clip_blocks[block])
            np.savez(dirs["slowfast_features"] / f"{vid}.npz", features=slowfast_blocks[block])
            np.savez(
                dirs["clip_text_features"] / f"qid{i}.npz",
                last_hidden_state=text_blocks[block],
                pooler_output=text_blocks[block][-1],
            )
            first = int(rng.integers(0, clips - 4))
            clip_ids = list(range(first, first + 4))
            record = {
                "qid": i,
                "query": f"fake query {i}",
                "duration": duration,
                "vid": vid,
                "relevant_windows": [[first * CLIP_SEC, (first + 4) * CLIP_SEC]],
                "relevant_clip_ids": clip_ids,
                "saliency_scores": [[2, 3, 4]] * len(clip_ids),
            }
            split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
            files[split].write(json.dumps(record) + "\n")
    finally:
        for f in files.values():
            f.close()
    marker.write_text(json.dumps(params))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extract.bench_import", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("data/bench_import"),
        help="where the fake release (kept) and the cache (rewritten) go",
    )
    parser.add_argument("--videos", type=int, default=10_000, help="videos (one query each)")
    parser.add_argument("--clips", type=int, default=75, help="features per video (2-s clips)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per query")
    parser.add_argument("--workers", type=int, default=8, help="importer reader threads")
    parser.add_argument("--backend", choices=("h5", "zarr"), default="h5", help="cache backend")
    args = parser.parse_args(argv)

    release = args.work_dir / f"release_{args.videos}x{args.clips}"
    t0 = time.perf_counter()
    write_fake_release(
        release,
        n_videos=args.videos,
        clips=args.clips,
        clip_dim=512,
        slowfast_dim=2304,
        n_tokens=args.tokens,
        text_dim=512,
    )
    prepared = time.perf_counter() - t0
    features = release / "features"
    out = args.work_dir / f"cache_{args.videos}.{args.backend}"
    argv_import = [
        "--format",
        "moment_detr",
        "--annotations",
        f"qvhighlights:{release / 'annotations'}",
        "--video-feats",
        str(features / "clip_features"),
        str(features / "slowfast_features"),
        "--text-feats",
        str(features / "clip_text_features"),
        "--out",
        str(out),
        "--overwrite",
        "--workers",
        str(args.workers),
    ]
    t0 = time.perf_counter()
    code = importers.main(argv_import)
    seconds = time.perf_counter() - t0
    result = {
        "videos": args.videos,
        "clips": args.clips,
        "streams": "clip 512 + slowfast 2304",
        "tokens": args.tokens,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "host": platform.node(),
        "backend": args.backend,
        "prepare_s": round(prepared, 1),
        "import_s": round(seconds, 1),
        "videos_per_s": round(args.videos / seconds, 1),
        "exit_code": code,
    }
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
