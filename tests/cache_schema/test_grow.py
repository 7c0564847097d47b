"""Caches that grow (schema 1.2.0): encoders added to an existing cache, committed per item.

Every test runs on both backends through the `cache_path` fixture (conftest.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cache_schema import (
    GROWN_SCHEMA_VERSION,
    SCHEMA_VERSION,
    CacheReader,
    CacheWriter,
    EncoderSpec,
    SchemaError,
    SchemaVersionError,
    inspect,
    validate,
)
from cache_schema.__main__ import main as cache_main
from cache_schema.backends import Store
from cache_schema.fake import write_fake_cache
from cache_schema.spec import EncoderNotCommittedError, UncoveredItemsError

ADDED_VIDEO = EncoderSpec(
    name="added_video", modality="video", dim=12, weights_id="none", stride_sec=1.0, frames_per_feature=1
)
ADDED_TEXT = EncoderSpec(name="added_text", modality="text", dim=6, weights_id="none", tokenizer="none")


def checksums(path: Path) -> dict[str, str]:
    """sha256 of every array's committed bytes (the whole array: nothing may be rewritten)."""
    store = Store(path, "r")
    try:
        return {n: hashlib.sha256(store.read(n).tobytes()).hexdigest() for n in store.array_names()}
    finally:
        store.close()


def _added_features(reader: CacheReader, vid: str) -> tuple[np.ndarray, np.ndarray]:
    ts = reader.video_timestamps(vid, "fake_video0")
    rng = np.random.default_rng(len(vid) + int(vid[-2:]))
    return rng.standard_normal((len(ts), ADDED_VIDEO.dim)).astype(np.float32), ts


def _grow(path: Path, n_video: int | None = None, n_text: int | None = None) -> dict:
    """Add both encoders and commit them for the first ``n_video`` videos / ``n_text`` queries."""
    with CacheReader(path) as reader:
        vids = reader.video_ids[:n_video]
        video = {v: _added_features(reader, v) for v in vids}
        qids = reader.query_ids[:n_text]
    text = {
        q: (np.full((3, ADDED_TEXT.dim), i + 1.0), np.full(ADDED_TEXT.dim, -i - 1.0))
        for i, q in enumerate(qids)
    }
    with CacheWriter(path, dataset="fake", encoders=None) as writer:
        assert writer.add_encoder(ADDED_VIDEO) and writer.add_encoder(ADDED_TEXT)
        for vid, (feats, ts) in video.items():
            writer.add_video_features(vid, "added_video", feats, ts)
        writer.add_text_features("added_text", text)
    return {"video": video, "text": text}


def test_add_encoders_partially_reads_only_committed_items(cache_path: Path, capsys) -> None:
    write_fake_cache(cache_path, n_videos=6, queries_per_video=2)
    before = checksums(cache_path)
    written = _grow(cache_path, n_video=4, n_text=5)
    after = checksums(cache_path)
    assert {n: after[n] for n in before} == before  # existing arrays untouched, byte for byte
    assert validate(cache_path) == []
    with CacheReader(cache_path) as r:
        assert r.schema_version == r.min_reader_version == GROWN_SCHEMA_VERSION
        assert r.coverage() == {
            "video": {"fake_video0": 6, "added_video": 4},
            "text": {"fake_text": 12, "added_text": 5},
        }
        assert r.added_encoders == {"video": ["added_video"], "text": ["added_text"]}
        vids = r.video_ids
        assert r.videos_with(["fake_video0", "added_video"]) == vids[:4]
        np.testing.assert_allclose(
            r.video_features(vids[1], "added_video"), written["video"][vids[1]][0], atol=1e-2
        )
        assert sorted(r.video(vids[5]).features) == ["fake_video0"]
        assert sorted(r.video(vids[0]).features) == ["added_video", "fake_video0"]
        with pytest.raises(
            EncoderNotCommittedError, match=rf"video {vids[5]}: encoder 'added_video'.*4 of 6"
        ):
            r.video_features(vids[5], "added_video")
        qids = r.query_ids
        np.testing.assert_array_equal(r.query_pooled(qids[4], "added_text"), np.full(6, -5.0))
        np.testing.assert_array_equal(r.query_tokens(qids[2], "added_text"), np.full((3, 6), 3.0))
        assert sorted(r.query(qids[6]).tokens) == ["fake_text"]
    info = inspect(cache_path)
    assert info["coverage"]["video"]["added_video"] == 4
    assert info["min_reader_version"] == GROWN_SCHEMA_VERSION
    assert cache_main(["inspect", str(cache_path)]) == 0
    assert "4/6" in capsys.readouterr().out


def test_new_videos_get_every_encoder_including_added_ones(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=2, queries_per_video=1)
    _grow(cache_path, n_video=1, n_text=1)
    with CacheReader(cache_path) as r:
        item = r.video(r.video_ids[0])
        query = r.query(r.query_ids[0])
    item.vid, query.qid, query.vid = "new", "new_q", "new"
    with CacheWriter(cache_path, dataset="fake", encoders=None) as w:
        assert not w.add_encoder(ADDED_VIDEO)  # already there: kept
        w.add_video(item)
        w.add_queries([query])
        assert (
            "new" in w.covered_videos("added_video") and w.covered_videos("added_video") != w.completed_videos
        )
    assert validate(cache_path) == []
    with CacheReader(cache_path) as r:
        assert r.coverage()["video"]["added_video"] == 2 and r.coverage()["text"]["added_text"] == 2
        np.testing.assert_allclose(r.video_features("new", "added_video"), item.features["added_video"])
        np.testing.assert_allclose(r.query_pooled("new_q", "added_text"), query.pooled["added_text"])


def test_writer_refuses_bad_added_features(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=2)
    _grow(cache_path, n_video=1, n_text=0)
    with CacheReader(cache_path) as r:
        done, todo = r.video_ids
        feats, ts = _added_features(r, todo)
    with CacheWriter(cache_path, dataset="fake", encoders=None) as w:
        with pytest.raises(SchemaError, match=rf"video {done}: encoder 'added_video' is already committed"):
            w.add_video_features(done, "added_video", feats, ts)
        with pytest.raises(SchemaError, match="video ghost: not in the cache"):
            w.add_video_features("ghost", "added_video", feats, ts)
        with pytest.raises(SchemaError, match=rf"video {todo}: encoder 'added_video' features have shape"):
            w.add_video_features(todo, "added_video", feats[:, :3], ts)
        with pytest.raises(SchemaError, match="'fake_video0' is not added"):
            w.add_video_features(todo, "fake_video0", feats, ts)
        other = EncoderSpec(**{**ADDED_VIDEO.to_dict(), "dim": 7})
        with pytest.raises(SchemaError, match="already in the cache with another spec"):
            w.add_encoder(other)
    assert validate(cache_path) == []


def test_kill_between_arrays_of_an_added_encoder_leaves_it_invisible(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=3)
    _grow(cache_path, n_video=1, n_text=0)
    with CacheReader(cache_path) as r:
        vid = r.video_ids[1]
        feats, ts = _added_features(r, vid)
    writer = CacheWriter(cache_path, dataset="fake", encoders=None)
    writer._commit = lambda: None  # a kill before the manifest: rows written, never committed
    writer.add_video_features(vid, "added_video", feats, ts)
    writer._store.flush()
    writer._store.close()  # no close(): like kill -9, nothing is truncated
    with CacheReader(cache_path) as r:
        assert r.coverage()["video"]["added_video"] == 1
    assert validate(cache_path) == []
    with CacheWriter(cache_path, dataset="fake", encoders=None) as w:  # resume: the tail is dropped
        assert w.covered_videos("added_video") == {r.video_ids[0]}
        w.add_video_features(vid, "added_video", feats, ts)
    with CacheReader(cache_path) as r:
        np.testing.assert_allclose(r.video_features(vid, "added_video"), feats, atol=1e-2)
        assert r._store.nrows("video/added_video/features") == sum(
            len(r.video_timestamps(v, "fake_video0")) for v in r.video_ids[:2]
        )


def test_load_split_over_partially_covered_encoders(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=6, queries_per_video=2, splits=("train",))
    _grow(cache_path, n_video=4, n_text=None)
    with CacheReader(cache_path) as r:
        with pytest.raises(UncoveredItemsError, match=r"split 'train': 4 of 12 queries \(2 videos\) lack"):
            r.load_split("train", ["fake_video0", "added_video"], "fake_text")
        arrays = r.load_split("train", ["fake_video0", "added_video"], "added_text", uncovered="skip")
        assert (arrays.skipped_queries, arrays.skipped_videos) == (4, 2)
        assert arrays.vids == r.video_ids[:4] and len(arrays.qids) == 8
        assert arrays.video.shape[2] == 32 + 12
        vid = arrays.vids[2]
        np.testing.assert_allclose(
            arrays.video[2, : arrays.video_lengths[2], 32:], r.video_features(vid, "added_video"), atol=1e-2
        )
        np.testing.assert_allclose(arrays.pooled[3], r.query_pooled(arrays.qids[3], "added_text"))
        full = r.load_split("train", ["fake_video0"], "fake_text")
        assert full.skipped_queries == 0 and len(full.qids) == 12


def test_validate_finds_a_broken_entries_table(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=3)
    _grow(cache_path, n_video=2, n_text=0)
    store = Store(cache_path, "r+")
    entries = store.read("videos/entries/added_video")
    entries[1, 0] = entries[0, 0]  # the same video committed twice
    store.write("videos/entries/added_video", 0, entries)
    store.close()
    assert validate(cache_path) == [f"{cache_path}: videos/entries/added_video commits some video twice"]


def _as_version(path: Path, version: str, strip_orientation: bool) -> None:
    store = Store(path, "r+")
    store.set_attr("schema_version", version)
    if strip_orientation:
        offsets = store.read("videos/meta_offsets", 0, store.get_attr("manifest")["videos"])
        blob = store.read("videos/meta").tobytes()
        records = [json.loads(blob[a:b]) for a, b in offsets]
        new = [json.dumps({k: v for k, v in r.items() if k != "orientation"}).encode() for r in records]
        ends = np.cumsum([len(b) for b in new])
        store.write("videos/meta", 0, np.frombuffer(b"".join(new), dtype=np.uint8))
        store.write("videos/meta_offsets", 0, np.stack([ends - [len(b) for b in new], ends], axis=1))
    store.close()


@pytest.mark.parametrize(("version", "strip"), [("1.0.0", True), ("1.1.0", False)])
def test_older_caches_read_unchanged_and_grow(cache_path: Path, version: str, strip: bool) -> None:
    write_fake_cache(cache_path, n_videos=3)
    _as_version(cache_path, version, strip)
    assert validate(cache_path) == []
    with CacheReader(cache_path) as r:
        assert r.schema_version == version and r.min_reader_version is None
        assert r.coverage()["video"] == {"fake_video0": 3} and r.added_encoders == {"video": [], "text": []}
        assert r.load_split("train", ["fake_video0"], "fake_text").skipped_queries == 0
    _grow(cache_path, n_video=3, n_text=None)
    assert validate(cache_path) == []
    with CacheReader(cache_path) as r:
        assert r.schema_version == GROWN_SCHEMA_VERSION and r.min_reader_version == GROWN_SCHEMA_VERSION
        assert r.coverage()["video"]["added_video"] == 3


def _check_version_of_a_1_1_reader(found: str) -> None:
    """`check_version` as readers of schema 1.0.0 and 1.1.0 shipped it: the major, nothing else.

    From `git show 5357600:cache_schema/store.py`, message and all.
    """
    ours, theirs = "1.1.0".split(".")[0], str(found).split(".")[0]
    if ours != theirs:
        raise SchemaVersionError(
            f"cache schema version {found} is not readable by this groundcache "
            f"(schema 1.1.0); major versions {theirs} and {ours} differ"
        )


def test_readers_before_grown_caches_refuse_one_naming_both_versions(cache_path: Path) -> None:
    """A 1.1.0 reader failed on an added encoder with a KeyError; now its version check refuses."""
    write_fake_cache(cache_path, n_videos=3)
    with CacheReader(cache_path) as r:
        _check_version_of_a_1_1_reader(r.schema_version)  # a plain cache: still read by old readers
    _grow(cache_path, n_video=1, n_text=1)
    with CacheReader(cache_path) as r:
        found = r.schema_version
    with pytest.raises(SchemaVersionError, match=r"version 2\.0\.0 is not readable .*\(schema 1\.1\.0\)"):
        _check_version_of_a_1_1_reader(found)


def test_a_newer_min_reader_version_is_refused_naming_both(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=1)
    store = Store(cache_path, "r+")
    store.set_attr("schema_version", "1.9.0")
    store.set_attr("min_reader_version", "1.9.0")
    store.close()
    message = (
        rf"schema version 1\.9\.0 needs a reader of schema 1\.9\.0 or newer.*reads schema {SCHEMA_VERSION}"
    )
    with pytest.raises(SchemaVersionError, match=message):
        CacheReader(cache_path)
    with pytest.raises(SchemaVersionError, match=message):
        CacheWriter(cache_path, dataset="fake", encoders=None)
    assert "needs a reader of schema 1.9.0" in validate(cache_path)[0]
    assert cache_main(["inspect", str(cache_path)]) == 2


# -- drop-encoder and merge -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["added", "original"])
def test_drop_encoder_reclaims_space_and_keeps_the_rest(cache_path: Path, which: str, capsys) -> None:
    write_fake_cache(cache_path, n_videos=20, video_dims=(32, 64))
    _grow(cache_path, n_video=20, n_text=None)
    name = "added_video" if which == "added" else "fake_video1"
    before = checksums(cache_path)
    with CacheReader(cache_path) as r:
        size_before = r.size_on_disk()
        features = {v: r.video_features(v, "fake_video0") for v in r.video_ids}
    assert cache_main(["drop-encoder", str(cache_path), name]) == 0
    assert f"dropped encoder {name!r}" in capsys.readouterr().out
    assert validate(cache_path) == []
    after = checksums(cache_path)
    owned = [n for n in before if f"/{name}" in n]
    assert owned and not any(n in after for n in owned)
    assert {n: after[n] for n in before if n not in owned} == {n: before[n] for n in before if n not in owned}
    with CacheReader(cache_path) as r:
        assert name not in r.video_encoders and "added_text" in r.text_encoders
        assert r.size_on_disk() < size_before - 20 * 12 * 2  # at least the features' bytes are gone
        for vid, feats in features.items():
            np.testing.assert_array_equal(r.video_features(vid, "fake_video0"), feats)
    # Dropped, it can be added again.
    _grow_video_only = CacheWriter(cache_path, dataset="fake", encoders=None)
    if which == "added":
        assert _grow_video_only.add_encoder(ADDED_VIDEO)
    _grow_video_only.close()
    assert validate(cache_path) == []


def test_drop_encoder_errors_name_the_encoder(cache_path: Path, capsys) -> None:
    write_fake_cache(cache_path, n_videos=2)
    assert cache_main(["drop-encoder", str(cache_path), "nope"]) == 2
    assert "no encoder 'nope'; the cache has" in capsys.readouterr().err
    assert cache_main(["drop-encoder", str(cache_path), "fake_text"]) == 2
    assert "'fake_text' is the cache's only text encoder" in capsys.readouterr().err
    assert validate(cache_path) == []


def test_merge_two_caches(cache_path: Path, tmp_path: Path, capsys) -> None:
    suffix = cache_path.suffix
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    write_fake_cache(a, n_videos=4, seed=1)
    write_fake_cache(b, n_videos=8, seed=2)
    # b's videos are renamed so that the two caches hold different videos of one dataset.
    with CacheReader(b) as r:
        videos = [r.video(v) for v in r.video_ids[4:]]
        queries = [
            r.query(q) for q in r.query_ids if r.query(q, features=False).vid in {v.vid for v in videos}
        ]
    b2 = tmp_path / f"b2{suffix}"
    with CacheWriter(
        b2, dataset="fake", encoders=[*r.video_encoders.values(), *r.text_encoders.values()]
    ) as w:
        for v in videos:
            w.add_video(v)
        w.add_queries(queries)
    _grow(a, n_video=2, n_text=3)
    _grow(b2, n_video=4, n_text=None)
    merged = tmp_path / f"merged{suffix}"
    assert cache_main(["merge", str(merged), str(a), str(b2)]) == 0
    assert "merged 8 videos from 2 caches; valid" in capsys.readouterr().out
    with CacheReader(merged) as m, CacheReader(a) as ra, CacheReader(b2) as rb:
        assert m.video_ids == sorted(ra.video_ids + rb.video_ids)
        assert sorted(m.query_ids) == sorted(ra.query_ids + rb.query_ids)
        assert m.coverage() == {
            "video": {"fake_video0": 8, "added_video": 6},
            "text": {"fake_text": 16, "added_text": 3 + 8},
        }
        for source in (ra, rb):
            for vid in source.video_ids:
                for name in source.video_encoders_of(vid):
                    np.testing.assert_array_equal(
                        m.video_features(vid, name), source.video_features(vid, name)
                    )
            for qid in source.query_ids:
                assert m.text_encoders_of(qid) == source.text_encoders_of(qid)
                for name in source.text_encoders_of(qid):
                    np.testing.assert_array_equal(m.query_pooled(qid, name), source.query_pooled(qid, name))
    # A video in two inputs is refused, naming it and both caches.
    assert cache_main(["merge", str(tmp_path / f"again{suffix}"), str(a), str(a)]) == 2
    assert f"video vid00000: in two caches, {a} and {a}" in capsys.readouterr().err
