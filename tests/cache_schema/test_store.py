"""cache_schema v1: round trip, invariants, validate/inspect, crash + resume, version guard.

Every test runs on both backends through the `backend` / `cache_path` fixtures (conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from cache_schema import (
    SCHEMA_VERSION,
    CacheReader,
    CacheWriter,
    QueryItem,
    SchemaError,
    SchemaVersionError,
    VideoItem,
    inspect,
    validate,
)
from cache_schema.__main__ import main as cache_main
from cache_schema.backends import Store
from cache_schema.fake import fake_encoders, write_fake_cache

REPO_ROOT = Path(__file__).resolve().parents[2]


def _video(vid: str, n: int = 5, dims: tuple[int, ...] = (32,), duration: float | None = None) -> VideoItem:
    duration = float(n) if duration is None else duration
    ts = np.stack([np.arange(n, dtype=float), np.minimum(np.arange(n) + 1.0, duration)], axis=1)
    rng = np.random.default_rng(zlib.crc32(vid.encode()))  # same in every process
    return VideoItem(
        vid=vid,
        duration_sec=duration,
        features={f"fake_video{i}": rng.standard_normal((n, d)) for i, d in enumerate(dims)},
        timestamps_sec={f"fake_video{i}": ts for i in range(len(dims))},
        fps=30.0,
        n_frames=n * 30,
        source=f"/videos/{vid}.mp4",
    )


def _query(qid: str, vid: str, windows=((1.0, 3.0),), n_tok: int = 4, split: str = "train") -> QueryItem:
    tokens = np.arange(n_tok * 16, dtype=np.float32).reshape(n_tok, 16) / 100
    return QueryItem(
        qid=qid,
        vid=vid,
        text=f"text of {qid}",
        split=split,
        windows=list(windows),
        saliency=np.array([[1, 2, 3], [0, 4, 2]], dtype=np.float32),
        saliency_clip_sec=2.0,
        tokens={"fake_text": tokens},
        pooled={"fake_text": tokens.mean(0)},
    )


def test_round_trip(cache_path: Path) -> None:
    specs = fake_encoders(video_dims=(32, 8))
    with CacheWriter(cache_path, dataset="unit", encoders=specs) as w:
        a, b = _video("a", 5, (32, 8)), _video("b", 3, (32, 8), duration=2.5)
        w.add_video(a)
        w.add_video(b)
        w.add_queries([_query("q1", "a"), _query("q2", "b", windows=[(0.0, 1.0), (1.5, 2.5)], n_tok=2)])
    r = CacheReader(cache_path)
    assert r.schema_version == SCHEMA_VERSION and r.dataset == "unit"
    assert r.video_ids == ["a", "b"] and r.query_ids == ["q1", "q2"]
    assert r.video_encoders["fake_video0"] == specs[0] and r.text_encoders["fake_text"] == specs[2]
    np.testing.assert_allclose(
        r.video_features("a", "fake_video0"), a.features["fake_video0"], rtol=1e-3, atol=1e-3
    )
    assert r.video_features("b", "fake_video1").dtype == np.float16
    np.testing.assert_array_equal(r.video_timestamps("b", "fake_video0"), b.timestamps_sec["fake_video0"])
    assert r.video_meta("a").fps == 30.0 and r.video_meta("a").source == "/videos/a.mp4"
    q2 = r.query("q2")
    assert q2.windows == [(0.0, 1.0), (1.5, 2.5)] and q2.tokens["fake_text"].shape == (2, 16)
    np.testing.assert_array_equal(q2.saliency, [[1, 2, 3], [0, 4, 2]])
    assert r.splits() == {"train": 2}
    with pytest.raises(KeyError, match="video 'zz' is not in the cache"):
        r.video_features("zz", "fake_video0")
    with pytest.raises(KeyError, match=r"no video encoder 'clip'.*fake_video0"):
        r.video_features("a", "clip")
    assert validate(cache_path) == []


def test_load_split_dense_padded(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=9, video_dims=(32, 8), splits=("train", "val", "test"))
    r = CacheReader(cache_path)
    sa = r.load_split("train", ["fake_video0", "fake_video1"], "fake_text")
    assert len(sa.qids) == 6 and len(sa.vids) == 3
    assert sa.video.shape == (3, int(sa.video_lengths.max()), 40)
    for i, vid in enumerate(sa.vids):
        t = sa.video_lengths[i]
        np.testing.assert_array_equal(sa.video[i, :t, :32], r.video_features(vid, "fake_video0"))
        np.testing.assert_array_equal(sa.video[i, :t, 32:], r.video_features(vid, "fake_video1"))
        assert not sa.video[i, t:].any()
    for j, qid in enumerate(sa.qids):
        q = r.query(qid)
        assert sa.vids[sa.video_index[j]] == q.vid
        np.testing.assert_array_equal(sa.tokens[j, : sa.token_lengths[j]], q.tokens["fake_text"])
        np.testing.assert_array_equal(sa.windows[j, : sa.window_counts[j]], q.windows)
    assert sa.saliency is not None and sa.saliency.shape[2] == 3
    with pytest.raises(SchemaError, match="split 'dev' has no queries"):
        r.load_split("dev", ["fake_video0"], "fake_text")
    with pytest.raises(KeyError, match="no text encoder 'bert'"):
        r.load_split("train", ["fake_video0"], "bert")


def test_load_split_refuses_disagreeing_timestamps(cache_path: Path) -> None:
    specs = fake_encoders(video_dims=(4, 4))
    with CacheWriter(cache_path, dataset="unit", encoders=specs) as w:
        v = _video("a", 4, (4, 4))
        v.timestamps_sec["fake_video1"] = v.timestamps_sec["fake_video1"] * 0.5
        w.add_video(v)
        w.add_queries([_query("q", "a")])
    with pytest.raises(SchemaError, match="video a: timestamps of encoders"):
        CacheReader(cache_path).load_split("train", ["fake_video0", "fake_video1"], "fake_text")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda v, q: v.features.update(fake_video0=np.zeros((5, 31))),
            "video bad: encoder 'fake_video0' features have shape",
        ),
        (
            lambda v, q: v.timestamps_sec.update(fake_video0=v.timestamps_sec["fake_video0"][::-1].copy()),
            "video bad: timestamps not increasing",
        ),
        (
            lambda v, q: v.timestamps_sec.update(fake_video0=v.timestamps_sec["fake_video0"] + 3),
            "outside the duration",
        ),
        (lambda v, q: setattr(q, "windows", [(2.0, 9.0)]), r"query qbad: window \[2.0, 9.0\] is outside"),
        (lambda v, q: setattr(q, "windows", [(3.0, 2.0)]), "query qbad: window .* has start >= end"),
        (lambda v, q: q.tokens.update(fake_text=np.zeros((3, 15))), "query qbad: encoder 'fake_text' tokens"),
        (lambda v, q: q.tokens.update(fake_text=np.full((3, 16), np.nan)), "query qbad: .* NaN/Inf"),
    ],
)
def test_writer_refuses_bad_items(cache_path: Path, mutate, message: str) -> None:
    with CacheWriter(cache_path, dataset="unit", encoders=fake_encoders()) as w:
        v, q = _video("bad"), _query("qbad", "bad")
        mutate(v, q)
        with pytest.raises(SchemaError, match=message):
            w.add_video(v)
            w.add_queries([q])
    # Nothing half-written became visible.
    assert "qbad" not in CacheReader(cache_path).query_ids
    assert validate(cache_path) == []


def test_writer_refuses_query_of_missing_video_and_duplicates(cache_path: Path) -> None:
    with CacheWriter(cache_path, dataset="unit", encoders=fake_encoders()) as w:
        with pytest.raises(SchemaError, match="query q: video 'nope' is not in the cache"):
            w.add_queries([_query("q", "nope")])
        w.add_video(_video("a"))
        with pytest.raises(SchemaError, match="video a: already in the cache"):
            w.add_video(_video("a"))


def _tamper(path: Path, backend: str) -> None:
    """Plant one violation of each kind directly in the arrays, bypassing the writer."""
    store = Store(path, "r+")
    ts = store.read("video/fake_video0/timestamps")
    ts[1] = ts[0]  # vid00000: not increasing
    store.write("video/fake_video0/timestamps", 0, ts)
    feats = store.read("video/fake_video0/features")
    offs = store.read("videos/offsets/fake_video0")
    feats[offs[1, 0]] = np.nan  # vid00001: NaN feature
    store.write("video/fake_video0/features", 0, feats)
    # A query whose window is past its video's end and one whose video is missing.
    meta_offs = store.read("queries/meta_offsets")
    blob = store.read("queries/meta").tobytes()
    records = [json.loads(blob[a:b]) for a, b in meta_offs]
    records[0]["windows"] = [[0.0, 999.0]]
    records[1]["vid"] = "ghost"
    new = [json.dumps(r, sort_keys=True).encode() for r in records]
    ends = np.cumsum([len(b) for b in new])
    store.write("queries/meta", 0, np.frombuffer(b"".join(new), dtype=np.uint8))
    store.write("queries/meta_offsets", 0, np.stack([ends - [len(b) for b in new], ends], axis=1))
    store.flush()
    store.close()


def test_validate_reports_every_planted_violation(cache_path: Path, backend: str, capsys) -> None:
    write_fake_cache(cache_path, n_videos=4)
    assert validate(cache_path) == []
    _tamper(cache_path, backend)
    problems = validate(cache_path)
    text = "\n".join(problems)
    assert "video vid00000: timestamps not increasing" in text
    assert "video vid00001: encoder 'fake_video0' features contain NaN/Inf" in text
    assert "query vid00000_q0: window [0.0, 999.0] is outside" in text
    assert "query vid00000_q1: video 'ghost' is not in the cache" in text
    assert len(problems) == 4
    assert cache_main(["validate", str(cache_path)]) == 1
    out = capsys.readouterr().out
    assert "INVALID, 4 problem(s)" in out and "vid00001" in out


def test_inspect(cache_path: Path, backend: str, capsys) -> None:
    write_fake_cache(cache_path, n_videos=6, video_dims=(32, 8))
    info = inspect(cache_path)
    assert info["backend"] == backend and info["videos"] == 6 and info["queries"] == 12
    assert info["splits"] == {"train": 4, "val": 4, "test": 4}
    assert info["video_encoders"]["fake_video1"]["dim"] == 8 and info["size_on_disk_bytes"] > 0
    assert cache_main(["inspect", str(cache_path)]) == 0
    assert "fake_video0" in capsys.readouterr().out
    assert cache_main(["validate", str(cache_path)]) == 0


def test_version_guard_names_both_versions(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=1)
    store = Store(cache_path, "r+")
    store.set_attr("schema_version", "3.0.0")
    store.close()
    with pytest.raises(SchemaVersionError, match=rf"3\.0\.0 .*reads schema {SCHEMA_VERSION} and 2\.0\.0"):
        CacheReader(cache_path)
    assert "3.0.0" in validate(cache_path)[0]


def test_resume_refuses_other_encoders(cache_path: Path) -> None:
    write_fake_cache(cache_path, n_videos=1)
    with pytest.raises(SchemaError, match="existing cache has encoders"):
        CacheWriter(cache_path, dataset="unit", encoders=fake_encoders(video_dims=(64,)))


_CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from cache_schema import CacheWriter
    from cache_schema.fake import fake_encoders
    sys.path.insert(0, {test_dir!r})
    from test_store import _video, _query
    import cache_schema.backends as backends

    path, crash_after = sys.argv[1], int(sys.argv[2])
    original = backends.Store.write
    calls = [0]
    def write(self, name, start, data):
        # Die (like kill -9: no cleanup, no flush) between two arrays of the third video.
        if name.startswith("video/") and self.get_attr("manifest")["videos"] == 2:
            calls[0] += 1
            if calls[0] > crash_after:
                os._exit(9)
        return original(self, name, start, data)
    backends.Store.write = write
    with CacheWriter(path, dataset="unit", encoders=fake_encoders(video_dims=(32, 8))) as w:
        for i in range(4):
            if f"v{{i}}" in w.completed_videos:
                continue
            w.add_video(_video(f"v{{i}}", 5, (32, 8)))
            w.add_queries([_query(f"q{{i}}", f"v{{i}}")])
""")


@pytest.mark.parametrize("crash_after", [1, 2, 3])
def test_crash_between_arrays_then_resume(cache_path: Path, tmp_path: Path, crash_after: int) -> None:
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_SCRIPT.format(test_dir=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    first = subprocess.run([sys.executable, str(script), str(cache_path), str(crash_after)], env=env)
    assert first.returncode == 9
    # The interrupted third video is invisible; what is visible validates.
    with CacheReader(cache_path) as reader:  # HDF5 locks the file: close before writing again
        assert reader.video_ids == ["v0", "v1"] and reader.query_ids == ["q0", "q1"]
    assert validate(cache_path) == []
    # Re-running (no crash this time) completes the cache with the same features as a clean run.
    done = subprocess.run([sys.executable, str(script), str(cache_path), "1000000"], env=env)
    assert done.returncode == 0
    assert validate(cache_path) == []
    resumed = CacheReader(cache_path)
    assert resumed.video_ids == ["v0", "v1", "v2", "v3"] and resumed.query_ids == ["q0", "q1", "q2", "q3"]
    for i in range(4):
        expected = _video(f"v{i}", 5, (32, 8))
        for name in ("fake_video0", "fake_video1"):
            np.testing.assert_allclose(
                resumed.video_features(f"v{i}", name), expected.features[name], rtol=1e-3, atol=1e-3
            )
    total = resumed._store.nrows("video/fake_video0/features")
    assert total == 20  # the partial rows of the crashed write were truncated, not appended after


# -- creating a store: atomic, and an incomplete one is refused -----------------------------------


def _plant_incomplete(path: Path, kind: str) -> None:
    """What an older groundcache killed while creating `path` (or another program) could leave."""
    import h5py
    import zarr

    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "truncated_hdf5":
        write_fake_cache(path, n_videos=1)
        path.write_bytes(path.read_bytes()[:96])  # the superblock, nothing after
    elif kind == "hdf5_without_attrs":
        h5py.File(path, "w").close()
    elif kind == "hdf5_without_manifest":
        with h5py.File(path, "w") as f:
            f.attrs["schema_version"] = json.dumps(SCHEMA_VERSION)
    elif kind == "empty_folder":
        path.mkdir()
    elif kind == "zarr_without_manifest":
        zarr.open_group(store=str(path), mode="w-", zarr_format=3).attrs["schema_version"] = json.dumps(
            SCHEMA_VERSION
        )
    else:
        raise AssertionError(kind)


INCOMPLETE = {
    "hdf5": ["empty_file", "truncated_hdf5", "hdf5_without_attrs", "hdf5_without_manifest"],
    "zarr": ["empty_folder", "zarr_without_manifest"],
}


@pytest.mark.parametrize(("backend", "kind"), [(b, k) for b, kinds in INCOMPLETE.items() for k in kinds])
def test_an_incomplete_store_is_refused_in_one_line_naming_it(
    tmp_path: Path, backend: str, kind: str, capsys
) -> None:
    path = tmp_path / ("cache.h5" if backend == "hdf5" else "cache.zarr")
    _plant_incomplete(path, kind)
    before = sorted(
        (p.relative_to(tmp_path), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*")
    )
    for attempt in (
        lambda: CacheReader(path),
        lambda: CacheWriter(path, dataset="unit", encoders=fake_encoders()),
    ):
        with pytest.raises(SchemaError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        assert "--overwrite" in message and "Traceback" not in message
    # Refusing touched nothing: the file or folder is exactly as planted.
    after = sorted(
        (p.relative_to(tmp_path), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*")
    )
    assert after == before
    (problem,) = validate(path)
    assert problem.startswith(f"{path}: ")
    assert cache_main(["inspect", str(path)]) == 2  # bad input: one line, exit 2 (the CLI error boundary)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ") and "\n" not in err
    # Overwriting recovers it.
    with CacheWriter(path, dataset="unit", encoders=fake_encoders(), mode="overwrite") as w:
        w.add_video(_video("a"))
    assert validate(path) == []
    assert CacheReader(path).video_ids == ["a"]


_KILLED_CREATION = textwrap.dedent("""
    # Create a store and die (like kill -9: no cleanup) at one step of its creation.
    import os, sys
    import cache_schema.backends as backends
    from cache_schema import CacheWriter
    from cache_schema.fake import fake_encoders

    path, step = sys.argv[1], sys.argv[2]
    created = [0]
    original_create, original_replace = backends.Store.create, os.replace

    def create(self, *args, **kwargs):
        created[0] += 1
        if step == "arrays" and created[0] == 3:
            os._exit(9)
        return original_create(self, *args, **kwargs)

    def replace(src, dst):
        if step == "rename":
            os._exit(9)
        return original_replace(src, dst)

    original_init = backends.Store.__init__
    def init(self, path, mode, compression=None):
        original_init(self, path, mode, compression)
        if step == "open" and mode == "w-":
            os._exit(9)

    backends.Store.create, backends.Store.__init__, os.replace = create, init, replace
    CacheWriter(path, dataset="unit", encoders=fake_encoders()).close()
""")


@pytest.mark.parametrize("step", ["open", "arrays", "rename"])
def test_a_creation_killed_at_any_step_leaves_no_store_and_resume_creates_it(
    cache_path: Path, tmp_path: Path, step: str
) -> None:
    script = tmp_path / "killed_creation.py"
    script.write_text(_KILLED_CREATION)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    killed = subprocess.run([sys.executable, str(script), str(cache_path), step], env=env)
    assert killed.returncode == 9
    assert not cache_path.exists()
    (leftover,) = [
        p for p in cache_path.parent.iterdir() if p.name.startswith(f".{cache_path.name}.creating.")
    ]
    assert leftover.name.endswith(cache_path.suffix)

    with CacheWriter(cache_path, dataset="unit", encoders=fake_encoders()) as w:
        w.add_video(_video("a"))
        w.add_queries([_query("q", "a")])
    assert not leftover.exists()  # the dead process's temporary was cleaned up
    assert validate(cache_path) == []
    with CacheReader(cache_path) as reader:
        assert reader.video_ids == ["a"] and reader.query_ids == ["q"]


def test_only_temporaries_of_dead_processes_on_this_host_are_cleaned(cache_path: Path) -> None:
    import socket

    from cache_schema.backends import remove_store

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid, host, name, suffix = int(dead.stdout), socket.gethostname(), cache_path.name, cache_path.suffix
    leftovers = {
        "dead": cache_path.with_name(f".{name}.creating.{dead_pid}@{host}{suffix}"),
        "dead_removal": cache_path.with_name(f".{name}.removing.{dead_pid}@{host}{suffix}"),
        "alive": cache_path.with_name(f".{name}.creating.{os.getppid()}@{host}{suffix}"),
        "other_host": cache_path.with_name(f".{name}.creating.{dead_pid}@not-{host}{suffix}"),
        "other_store": cache_path.with_name(f".other{suffix}.creating.{dead_pid}@{host}{suffix}"),
    }
    for leftover in leftovers.values():
        _plant_incomplete(leftover, "empty_folder" if suffix == ".zarr" else "empty_file")
    write_fake_cache(cache_path, n_videos=1)
    remaining = {k for k, p in leftovers.items() if p.exists()}
    assert remaining == {"alive", "other_host", "other_store"}
    # Readers ignore what is left, and removing the store leaves no temporary of its own.
    assert validate(cache_path) == []
    remove_store(cache_path)
    assert not cache_path.exists()
    assert sorted(p.name for p in cache_path.parent.iterdir()) == sorted(leftovers[k].name for k in remaining)


def test_a_store_locked_by_a_writer_is_not_called_incomplete(tmp_path: Path) -> None:
    """Only what is not a store gets the 'delete it' advice, never a store another process writes."""
    path = tmp_path / "cache.h5"
    write_fake_cache(path, n_videos=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); print(1, flush=True); input()",
            str(path),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "1"  # the file is open (and locked) now
        with pytest.raises(SchemaError, match=f"{path}: in use by another process") as info:
            CacheReader(path)
        assert "--overwrite" not in str(info.value)
    finally:
        holder.communicate("\n")
    assert CacheReader(path).video_ids == ["vid00000"]
