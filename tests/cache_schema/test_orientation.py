"""The per-video ``orientation`` record (schema 1.1.0), and caches written before it existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cache_schema import CacheReader, CacheWriter, Orientation, SchemaError, VideoItem, validate
from cache_schema.backends import Store
from cache_schema.fake import fake_encoders, write_fake_cache


def _item(vid: str, orientation: Orientation | None) -> VideoItem:
    ts = np.array([[0.0, 1.0], [1.0, 2.0]])
    return VideoItem(
        vid=vid,
        duration_sec=2.0,
        features={"fake_video0": np.ones((2, 32))},
        timestamps_sec={"fake_video0": ts},
        orientation=orientation,
    )


def _rewrite_video_records(path: Path, edit) -> None:
    """Apply ``edit`` to every committed video record in place, bypassing the writer."""
    store = Store(path, "r+")
    offsets = store.read("videos/meta_offsets", 0, store.get_attr("manifest")["videos"])
    blob = store.read("videos/meta").tobytes()
    records = [edit(json.loads(blob[a:b])) for a, b in offsets]
    new = [json.dumps(r, sort_keys=True).encode() for r in records]
    ends = np.cumsum([len(b) for b in new])
    store.write("videos/meta", 0, np.frombuffer(b"".join(new), dtype=np.uint8))
    store.write("videos/meta_offsets", 0, np.stack([ends - [len(b) for b in new], ends], axis=1))
    store.flush()
    store.close()


def test_orientation_round_trips(cache_path: Path) -> None:
    with CacheWriter(cache_path, dataset="unit", encoders=fake_encoders(video_dims=(32,))) as w:
        w.add_video(_item("phone", Orientation(rotation_deg=90)))
        w.add_video(_item("mirror", Orientation(rotation_deg=180, hflip=True)))
        w.add_video(_item("imported", None))
    assert validate(cache_path) == []
    with CacheReader(cache_path) as r:
        assert r.video_meta("phone").orientation == Orientation(90, False)
        assert r.video("mirror").orientation == Orientation(180, True)
        assert r.video_meta("imported").orientation is None


def test_a_cache_written_before_orientation_still_reads_and_validates(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=3)

    def drop(record: dict) -> dict:
        del record["orientation"]
        return record

    _rewrite_video_records(cache_path, drop)
    store = Store(cache_path, "r+")
    store.set_attr("schema_version", "1.0.0")
    store.close()
    assert validate(cache_path) == []
    with CacheReader(cache_path) as r:
        assert r.schema_version == "1.0.0"
        assert [r.video_meta(vid).orientation for vid in r.video_ids] == [None, None, None]
        assert r.video(r.video_ids[0]).orientation is None


def test_a_bad_orientation_record_is_named(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=2)

    def tilt(record: dict) -> dict:
        if record["vid"] == "vid00001":
            record["orientation"] = {"rotation_deg": 45, "hflip": False}
        return record

    _rewrite_video_records(cache_path, tilt)
    assert validate(cache_path) == [
        "video vid00001: orientation rotation_deg must be one of (0, 90, 180, 270), got 45"
    ]
    with CacheReader(cache_path) as r, pytest.raises(SchemaError, match="video vid00001: orientation"):
        r.video_meta("vid00001")


@pytest.mark.parametrize(
    "args, message",
    [
        ({"rotation_deg": -90}, "rotation_deg must be one of"),
        ({"rotation_deg": True}, "rotation_deg must be one of"),
        ({"hflip": 1}, "hflip must be true or false"),
    ],
)
def test_orientation_checks_its_fields(args: dict, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        Orientation(**args)


def test_writer_refuses_an_orientation_that_is_not_one(cache_path: Path) -> None:
    with CacheWriter(cache_path, dataset="unit", encoders=fake_encoders(video_dims=(32,))) as w:
        with pytest.raises(SchemaError, match="video a: orientation must be an Orientation or None"):
            w.add_video(_item("a", {"rotation_deg": 90, "hflip": False}))  # type: ignore[arg-type]
        assert w.completed_videos == set()
