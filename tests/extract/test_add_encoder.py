"""`python -m extract --add-encoder`: encoders added to an existing cache, on tiny generated videos.

A second video encoder is registered for these tests only (``tiny_clip_b``: tiny_clip's
architecture under another name); the added text encoder is ``tiny_bert``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cache_schema.backends import Store
from cache_schema.store import CacheReader
from cache_schema.validate import validate
from extract.__main__ import main
from extract.encoders import registry
from extract.encoders.open_clip_family import OpenClipConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import write_config, write_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SECOND_VIDEO = "tiny_clip_b"
ADDED_TEXT = "tiny_bert"


def _second_video_encoder() -> OpenClipConfig:
    return OpenClipConfig(model_name="groundcache-tiny-clip", pretrained_tag=None)


@pytest.fixture(autouse=True)
def second_video_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = registry._Entry(name=SECOND_VIDEO, make_config=_second_video_encoder, parametric=False)
    monkeypatch.setitem(registry._REGISTRY, SECOND_VIDEO, entry)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root)
    return root


def _configs(root: Path, dataset: Path, output: Path) -> tuple[Path, Path]:
    """(first extraction: tiny_clip only, grown: + tiny_clip_b video and tiny_bert text)."""
    first = write_config(root / "first.yaml", dataset, output)
    grown = write_config(
        root / "grown.yaml",
        dataset,
        output,
        video_encoders=[{"name": "tiny_clip", "weights": "none"}, {"name": SECOND_VIDEO, "weights": "none"}],
        text_encoders=[{"name": "tiny_clip", "weights": "none"}, {"name": ADDED_TEXT, "weights": "none"}],
    )
    return first, grown


def checksums(path: Path) -> dict[str, str]:
    store = Store(path, "r")
    try:
        return {n: hashlib.sha256(store.read(n).tobytes()).hexdigest() for n in store.array_names()}
    finally:
        store.close()


def assert_same_features(grown: Path, at_once: Path) -> None:
    """Every encoder's features of every item equal (video bit for bit, text within fp16 rounding)."""
    with CacheReader(grown) as a, CacheReader(at_once) as b:
        assert sorted(a.video_ids) == sorted(b.video_ids) and sorted(a.query_ids) == sorted(b.query_ids)
        assert a.video_encoders == b.video_encoders and a.text_encoders == b.text_encoders
        assert a.coverage() == b.coverage()
        for vid in a.video_ids:
            for name in a.video_encoders:
                np.testing.assert_array_equal(a.video_features(vid, name), b.video_features(vid, name))
                np.testing.assert_array_equal(a.video_timestamps(vid, name), b.video_timestamps(vid, name))
        for qid in a.query_ids:
            for name in a.text_encoders:
                # Texts are batched differently (per video vs all at once): same up to BLAS kernels.
                np.testing.assert_allclose(
                    a.query_tokens(qid, name).astype(np.float32), b.query_tokens(qid, name), atol=2e-3
                )
                np.testing.assert_allclose(
                    a.query_pooled(qid, name).astype(np.float32), b.query_pooled(qid, name), atol=2e-3
                )


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_add_a_video_and_a_text_encoder(dataset: Path, tmp_path: Path, suffix: str) -> None:
    output = tmp_path / f"cache{suffix}"
    first, grown = _configs(tmp_path, dataset, output)
    assert main(["--config", str(first)]) == 0
    before = checksums(output)
    code = main(["--config", str(grown), "--add-encoder", SECOND_VIDEO, f"--add-encoder={ADDED_TEXT}"])
    assert code == 0
    after = checksums(output)
    assert {n: after[n] for n in before} == before  # no existing array changed, byte for byte
    assert validate(output) == []
    with CacheReader(output) as r:
        assert r.added_encoders == {"video": [SECOND_VIDEO], "text": [ADDED_TEXT]}
        assert r.coverage() == {
            "video": {"tiny_clip": 5, SECOND_VIDEO: 5},
            "text": {"tiny_clip": 10, ADDED_TEXT: 10},
        }
    at_once = tmp_path / f"at_once{suffix}"
    assert main(["--config", str(grown), "--output", str(at_once)]) == 0
    assert_same_features(output, at_once)
    # Done: a second run adds nothing and changes nothing.
    done = checksums(output)
    assert main(["--config", str(grown), "--add-encoder", SECOND_VIDEO, "--add-encoder", ADDED_TEXT]) == 0
    assert checksums(output) == done


def test_a_text_encoder_is_added_without_decoding(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    output = tmp_path / "cache.h5"
    first, _ = _configs(tmp_path, dataset, output)
    assert main(["--config", str(first)]) == 0
    text_only = write_config(
        tmp_path / "text.yaml",
        dataset,
        output,
        text_encoders=[{"name": "tiny_clip", "weights": "none"}, {"name": ADDED_TEXT, "weights": "none"}],
    )

    def no_decoding(*args, **kwargs):
        raise AssertionError("a text encoder must not decode videos")

    monkeypatch.setattr("extract.grow.DecodeDataset", no_decoding)
    monkeypatch.setattr("extract.grow.decoded_videos", no_decoding)
    assert main(["--config", str(text_only), "--add-encoder", ADDED_TEXT]) == 0
    assert validate(output) == []
    with CacheReader(output) as r:
        assert r.coverage()["text"][ADDED_TEXT] == 10 and r.added_encoders["video"] == []
        assert r.query_tokens("alpha_q0", ADDED_TEXT).shape[1] == 32


def test_config_and_cache_must_agree(dataset: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "cache.h5"
    first, grown = _configs(tmp_path, dataset, output)
    assert main(["--config", str(grown), "--add-encoder", SECOND_VIDEO]) == 2
    assert "no cache to add encoders to" in capsys.readouterr().err
    assert main(["--config", str(first)]) == 0
    # tiny_bert is in the config but neither in the cache nor added.
    assert main(["--config", str(grown), "--add-encoder", SECOND_VIDEO]) == 2
    err = capsys.readouterr().err
    assert "not in the cache ['text:tiny_bert']" in err and "Traceback" not in err
    assert main(["--config", str(first), "--add-encoder", "siglip_so400m_384"]) == 2
    assert "add_encoder: ['siglip_so400m_384'] not among the config's" in capsys.readouterr().err


_KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {test_dir!r})
    import test_add_encoder as test_grow
    from extract.encoders import registry
    registry._REGISTRY[test_grow.SECOND_VIDEO] = registry._Entry(
        test_grow.SECOND_VIDEO, test_grow._second_video_encoder, False
    )
    import cache_schema.backends as backends
    from extract.__main__ import main

    config, kill_at = sys.argv[1], int(sys.argv[2])
    original = backends.Store.write
    calls = [0]
    def write(self, name, start, data):
        # Die like kill -9 (no cleanup, no flush) at the kill_at-th write of an added encoder's
        # arrays: between a video's features and its timestamps, or before its entry.
        if "{second}" in name or "{text}" in name:
            calls[0] += 1
            if calls[0] == kill_at:
                os._exit(9)
        return original(self, name, start, data)
    backends.Store.write = write
    sys.exit(main(["--config", config, "--add-encoder", "{second}", "--add-encoder", "{text}",
                   "--num_workers", "0"]))
""")


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_kill_while_adding_then_resume(dataset: Path, tmp_path: Path, suffix: str) -> None:
    output = tmp_path / f"cache{suffix}"
    first, grown = _configs(tmp_path, dataset, output)
    assert main(["--config", str(first)]) == 0
    before = checksums(output)
    script = tmp_path / "kill.py"
    script.write_text(
        _KILL_SCRIPT.format(test_dir=str(Path(__file__).parent), second=SECOND_VIDEO, text=ADDED_TEXT)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Writes of added arrays, in order: 3 per query (tokens, entry, pooled) in one text batch of
    # 10, then 3 per video (features, entry, timestamps). Kill inside the text batch; then, with
    # the batch redone, inside the third video.
    coverage = []
    for kill_at in (2, 10 * 3 + 2 * 3 + 2):
        run = subprocess.run([sys.executable, str(script), str(grown), str(kill_at)], env=env)
        assert run.returncode == 9
        after = checksums(output)
        assert {n: after[n] for n in before} == before
        assert validate(output) == []
        with CacheReader(output) as r:
            coverage.append(r.coverage())
    assert coverage[0]["text"].get(ADDED_TEXT, 0) == 0  # the killed batch is invisible
    assert coverage[1]["text"][ADDED_TEXT] == 10 and coverage[1]["video"][SECOND_VIDEO] == 2
    done = subprocess.run([sys.executable, str(script), str(grown), "1000000"], env=env)
    assert done.returncode == 0
    assert validate(output) == []
    after = checksums(output)
    assert {n: after[n] for n in before} == before
    at_once = tmp_path / f"at_once{suffix}"
    assert main(["--config", str(grown), "--output", str(at_once)]) == 0
    assert_same_features(output, at_once)
    with CacheReader(output) as r:  # the killed writes were truncated, not left before later rows
        assert r._store.nrows(f"video/{SECOND_VIDEO}/features") == sum(
            len(r.video_timestamps(v, "tiny_clip")) for v in r.video_ids
        )


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_add_a_split_to_a_grown_cache(dataset: Path, tmp_path: Path, suffix: str) -> None:
    """New videos and queries (a val split) go into a cache that has an added encoder; each new
    item gets every encoder, the added one included, and the existing items stay as they were."""
    rows = [json.loads(line) for line in (dataset / "annotations.jsonl").read_text().splitlines()]
    old = [r for r in rows if r["video"] in ("videos/alpha.mp4", "videos/bravo.mp4", "videos/charlie.mp4")]
    new = [{**r, "split": "val"} for r in rows if r not in old]
    first_rows, all_rows = tmp_path / "first.jsonl", tmp_path / "all.jsonl"
    first_rows.write_text("".join(json.dumps(r) + "\n" for r in old))
    all_rows.write_text("".join(json.dumps(r) + "\n" for r in old + new))
    output = tmp_path / f"cache{suffix}"
    first, grown = _configs(tmp_path, dataset, output)
    text_added = write_config(
        tmp_path / "text.yaml",
        dataset,
        output,
        text_encoders=[{"name": "tiny_clip", "weights": "none"}, {"name": ADDED_TEXT, "weights": "none"}],
    )
    assert main(["--config", str(first), "--annotations", str(first_rows)]) == 0
    assert (
        main(["--config", str(text_added), "--annotations", str(first_rows), "--add-encoder", ADDED_TEXT])
        == 0
    )
    with CacheReader(output) as r:
        before = {v: r.video(v) for v in r.video_ids}
        before_q = {q: r.query(q) for q in r.query_ids}
    assert main(["--config", str(text_added), "--annotations", str(all_rows), "--splits", '["val"]']) == 0
    assert validate(output) == []
    with CacheReader(output) as r:
        assert r.splits() == {"train": 6, "val": 4}
        assert r.coverage() == {"video": {"tiny_clip": 5}, "text": {"tiny_clip": 10, ADDED_TEXT: 10}}
        for vid, item in before.items():
            np.testing.assert_array_equal(r.video_features(vid, "tiny_clip"), item.features["tiny_clip"])
        for qid, item in before_q.items():
            for name in ("tiny_clip", ADDED_TEXT):
                np.testing.assert_array_equal(r.query_tokens(qid, name), item.tokens[name])
        at_once = tmp_path / f"at_once{suffix}"
    assert main(["--config", str(text_added), "--annotations", str(all_rows), "--output", str(at_once)]) == 0
    with CacheReader(output) as a, CacheReader(at_once) as b:
        for qid in ("delta_q0", "echo_q1"):
            np.testing.assert_allclose(
                a.query_pooled(qid, ADDED_TEXT).astype(np.float32), b.query_pooled(qid, ADDED_TEXT), atol=2e-3
            )
        np.testing.assert_array_equal(
            a.video_features("echo", "tiny_clip"), b.video_features("echo", "tiny_clip")
        )
