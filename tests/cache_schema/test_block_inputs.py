"""Block inputs in the store (schema 1.3.0): written with the features, merged, validated, refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache_schema import (
    GROWN_SCHEMA_VERSION,
    SCHEMA_VERSION,
    BlockInputsSpec,
    CacheReader,
    CacheWriter,
    EncoderSpec,
    SchemaError,
    VideoItem,
)
from cache_schema.backends import Store
from cache_schema.edit import merge_caches
from cache_schema.fake import fake_encoders, write_fake_cache
from cache_schema.spec import MissingBlockInputsError
from cache_schema.validate import validate

SPEC = BlockInputsSpec(
    encoder="fake_video0", blocks=2, depth=4, tokens=5, width=8, prefix_tokens=1, grid=2, pool=1
)


def video(vid: str, n: int, seed: int, *, blocks: bool = True) -> VideoItem:
    rng = np.random.default_rng(seed)
    starts = np.arange(n, dtype=np.float64)
    return VideoItem(
        vid=vid,
        duration_sec=float(n),
        features={"fake_video0": rng.standard_normal((n, 32)).astype(np.float16)},
        timestamps_sec={"fake_video0": np.stack([starts, starts + 1], axis=1)},
        block_inputs={"fake_video0": rng.standard_normal((n, 5, 8)).astype(np.float16)} if blocks else {},
    )


def write(path: Path, videos: list[VideoItem]) -> Path:
    with CacheWriter(path, dataset="d", encoders=fake_encoders(), mode="overwrite", block_inputs=[SPEC]) as w:
        for item in videos:
            w.add_video(item)
    return path


def test_block_inputs_are_written_read_and_validated(cache_path: Path) -> None:
    items = [video("a", 3, 0), video("b", 5, 1)]
    write(cache_path, items)
    assert validate(cache_path) == []
    with CacheReader(cache_path) as r:
        assert r.schema_version == SCHEMA_VERSION == "1.3.0" and r.min_reader_version == "1.3.0"
        assert r.block_inputs == {"fake_video0": SPEC}
        for item in items:
            np.testing.assert_array_equal(
                r.video_block_inputs(item.vid, "fake_video0"), item.block_inputs["fake_video0"]
            )
        np.testing.assert_array_equal(
            r.video(items[1].vid).block_inputs["fake_video0"], items[1].block_inputs["fake_video0"]
        )


def test_a_video_without_or_with_misshaped_block_inputs_is_named(cache_path: Path) -> None:
    with CacheWriter(
        cache_path, dataset="d", encoders=fake_encoders(), mode="overwrite", block_inputs=[SPEC]
    ) as w:
        with pytest.raises(SchemaError, match=r"video a: no block inputs for encoder 'fake_video0'"):
            w.add_video(video("a", 3, 0, blocks=False))
        bad = video("b", 3, 0)
        bad.block_inputs["fake_video0"] = bad.block_inputs["fake_video0"][:2]
        with pytest.raises(
            SchemaError,
            match=r"video b: encoder 'fake_video0' block inputs have shape \(2, 5, 8\), expected \(3, 5, 8\)",
        ):
            w.add_video(bad)
        assert w.completed_videos == set()


def test_resuming_with_other_block_inputs_is_refused_naming_both(cache_path: Path) -> None:
    write(cache_path, [video("a", 3, 0)])
    with pytest.raises(
        SchemaError, match=r"existing cache has block inputs .*'blocks': 2.*this run writes none"
    ):
        CacheWriter(cache_path, dataset="d", encoders=fake_encoders(), mode="resume", block_inputs=[])
    with CacheWriter(cache_path, dataset="d", encoders=None, mode="resume") as w:  # None keeps them
        w.add_video(video("b", 4, 1))
    assert validate(cache_path) == []


def test_merging_shards_keeps_block_inputs(tmp_path: Path) -> None:
    a = write(tmp_path / "a.h5", [video("a", 3, 0)])
    b = write(tmp_path / "b.h5", [video("b", 4, 1), video("c", 2, 2)])
    out = tmp_path / "merged.h5"
    assert merge_caches(out, [a, b]) == 3
    assert validate(out) == []
    with CacheReader(out) as merged, CacheReader(b) as rb:
        assert merged.block_inputs == {"fake_video0": SPEC}
        np.testing.assert_array_equal(
            merged.video_block_inputs("c", "fake_video0"), rb.video_block_inputs("c", "fake_video0")
        )


def test_a_truncated_block_inputs_array_fails_validation(cache_path: Path) -> None:
    write(cache_path, [video("a", 3, 0), video("b", 5, 1)])
    store = Store(cache_path, "r+")
    store.resize("video/fake_video0/block_inputs", 4)
    store.close()
    assert validate(cache_path) == [
        f"{cache_path}: video/fake_video0/block_inputs has 4 rows, the features 8"
    ]


def test_a_schema_1_0_cache_reads_without_block_inputs(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=2)
    store = Store(cache_path, "r+")
    store.set_attr("schema_version", "1.0.0")
    store.close()
    with CacheReader(cache_path) as r:
        assert r.schema_version == "1.0.0" and r.block_inputs == {}
        assert r.video(r.video_ids[0]).block_inputs == {}
        with pytest.raises(
            MissingBlockInputsError, match=r"no block inputs of video encoder 'fake_video0'.*block_inputs: K"
        ):
            r.load_split("train", ["fake_video0"], "fake_text", block_inputs="fake_video0")


def test_growing_a_cache_with_block_inputs_keeps_its_min_reader_version(cache_path: Path) -> None:
    write(cache_path, [video("a", 3, 0)])
    with CacheWriter(cache_path, dataset="d", encoders=None, mode="resume") as w:
        w.add_encoder(EncoderSpec(**{**fake_encoders()[0].to_dict(), "name": "added"}))
    with CacheReader(cache_path) as r:
        assert r.min_reader_version == GROWN_SCHEMA_VERSION and "added" in r.added_encoders["video"]
