"""`torchrun --nproc_per_node=2 -m extract`: disjoint shards, merged by rank 0, equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from cache_schema.store import CacheReader
from cache_schema.validate import validate
from extract.__main__ import main
from extract.pipeline import failures_path, select_videos, shard_path
from extract.video import probe_video, write_video

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
ENCODER = "tiny_clip"
# (vid, seconds, height, width) at 10 fps; two frame shapes so batches span and split videos
VIDEOS = [
    ("v0", 5.0, 64, 80),
    ("v1", 6.0, 80, 64),
    ("v2", 7.0, 64, 64),
    ("v3", 5.5, 64, 80),
    ("v4", 8, 64, 64),
]


def _dataset(root: Path) -> None:
    rows = []
    for i, (vid, seconds, height, width) in enumerate(VIDEOS):
        shape = (round(seconds * 10), height, width, 3)
        frames = np.random.default_rng(i).integers(0, 256, size=shape, dtype=np.uint8)
        path = write_video(root / "videos" / f"{vid}.mp4", frames, Fraction(10))
        duration = probe_video(path).duration_sec
        for k in range(2):
            rows.append(
                {
                    "qid": f"{vid}_q{k}",
                    "video": f"videos/{vid}.mp4",
                    "query": f"event {k} of {vid}",
                    "windows": [[0.5, 2.5 + k]],
                    "split": "val",
                    "duration": duration,
                }
            )
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _config(path: Path, root: Path, output: Path) -> Path:
    config = {
        "dataset": "tiny",
        "annotations": str(root / "annotations.jsonl"),
        "video_root": str(root),
        "output": str(output),
        "video_encoders": [{"name": ENCODER, "weights": "none"}],
        "text_encoders": [{"name": ENCODER, "weights": "none"}],
        "batch_size": 16,
        "num_workers": 1,
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_shards_are_disjoint_and_cover_every_video() -> None:
    tasks = list(range(11))
    shards = [select_videos(tasks, limit=None, rank=r, world_size=3) for r in range(3)]
    assert sorted(v for s in shards for v in s) == tasks
    assert select_videos(tasks, limit=4, rank=1, world_size=2) == [1, 3]


def test_shard_path_keeps_the_backend_suffix() -> None:
    assert shard_path(Path("d/cache.h5"), 1, 4) == Path("d/cache.rank1-of-4.h5")
    assert shard_path(Path("d/cache.zarr"), 0, 2) == Path("d/cache.rank0-of-2.zarr")


needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not next to the interpreter")


def _torchrun(config: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "extract",
        "--config",
        str(config),
        *extra,
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def _assert_same(single: Path, merged: Path) -> None:
    assert validate(merged) == []
    assert not shard_path(merged, 0, 2).exists() and not shard_path(merged, 1, 2).exists()
    assert failures_path(merged).read_text() == ""
    with CacheReader(single) as a, CacheReader(merged) as b:
        assert a.video_ids == b.video_ids == [v[0] for v in VIDEOS]
        assert a.query_ids == b.query_ids
        for vid in a.video_ids:
            np.testing.assert_array_equal(a.video_features(vid, ENCODER), b.video_features(vid, ENCODER))
        for qid in a.query_ids:
            np.testing.assert_array_equal(a.query_tokens(qid, ENCODER), b.query_tokens(qid, ENCODER))
            np.testing.assert_array_equal(a.query_pooled(qid, ENCODER), b.query_pooled(qid, ENCODER))


@needs_torchrun
def test_torchrun_two_processes_equal_one_process(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _dataset(root)
    single = tmp_path / "single.h5"
    assert main(["--config", str(_config(tmp_path / "single.yaml", root, single))]) == 0

    merged = tmp_path / "merged.h5"
    _torchrun(_config(tmp_path / "merged.yaml", root, merged))
    _assert_same(single, merged)


@needs_torchrun
@pytest.mark.slow
def test_torchrun_resumes_from_the_merged_store(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _dataset(root)
    single = tmp_path / "single.h5"
    assert main(["--config", str(_config(tmp_path / "single.yaml", root, single))]) == 0
    merged = tmp_path / "merged.h5"
    config = _config(tmp_path / "merged.yaml", root, merged)
    _torchrun(config, "--limit", "3")
    with CacheReader(merged) as b:
        assert b.video_ids == ["v0", "v1", "v2"]
    _torchrun(config)  # the ranks skip what the merged store holds and add the other two
    _assert_same(single, merged)
