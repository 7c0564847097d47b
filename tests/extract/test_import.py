"""`python -m extract import`: Moment-DETR npz and C3D HDF5 releases into a cache, failures reported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache_schema import CacheReader, validate
from extract import importers
from extract.datasets import load_dataset

CLIP_DIM, SLOWFAST_DIM, TEXT_DIM = 8, 12, 6

# Six QVHighlights-style queries over five videos; "short" lasts 21 s, so its last 2-s clip is [20, 21].
ROWS = [
    ("train", 101, "aaa_0.0_150.0", 150, [[0, 10]], "a man opens a door"),
    ("train", 102, "aaa_0.0_150.0", 150, [[20, 40], [60, 62]], "a dog runs outside"),
    ("train", 103, "bbb_30.0_180.0", 150, [[148, 150]], "the end of the day"),
    ("train", 104, "short_0.0_21.0", 21, [[4, 8]], "someone waves"),
    ("val", 201, "ccc_60.0_210.0", 150, [[2, 6]], "cars in traffic"),
    ("test", 301, "ddd_0.0_150.0", 150, [[100, 120]], "a woman cooks"),
]
FILES = {
    "train": "highlight_train_release.jsonl",
    "val": "highlight_val_release.jsonl",
    "test": "highlight_test_with_gt.jsonl",
}


def n_clips(duration: float) -> int:
    return math.ceil(duration / 2.0)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """Annotations in the QVHighlights format and features in the Moment-DETR layout."""
    rng = np.random.default_rng(0)
    ann = tmp_path / "annotations"
    ann.mkdir()
    lines: dict[str, list[str]] = {split: [] for split in FILES}
    for split, qid, vid, duration, windows, query in ROWS:
        clip_ids = sorted({c for s, e in windows for c in range(s // 2, e // 2)})
        record = {
            "qid": qid,
            "query": query,
            "duration": duration,
            "vid": vid,
            "relevant_windows": windows,
            "relevant_clip_ids": clip_ids,
            "saliency_scores": [[1, 2, 3]] * len(clip_ids),
        }
        lines[split].append(json.dumps(record))
    for split, name in FILES.items():
        (ann / name).write_text("\n".join(lines[split]) + "\n")
    feats = tmp_path / "features"
    for name, dim in (("clip_features", CLIP_DIM), ("slowfast_features", SLOWFAST_DIM)):
        (feats / name).mkdir(parents=True)
        for vid, duration in {r[2]: r[3] for r in ROWS}.items():
            np.savez(
                feats / name / f"{vid}.npz",
                features=rng.standard_normal((n_clips(duration), dim)).astype(np.float32),
            )
    (feats / "clip_text_features").mkdir()
    for _, qid, *_ in ROWS:
        tokens = rng.standard_normal((int(rng.integers(3, 9)), TEXT_DIM)).astype(np.float32)
        np.savez(
            feats / "clip_text_features" / f"qid{qid}.npz",
            last_hidden_state=tokens,
            pooler_output=rng.standard_normal(TEXT_DIM).astype(np.float32),
        )
    return tmp_path


def import_args(root: Path, out: Path, *extra: str) -> list[str]:
    feats = root / "features"
    return [
        "--format",
        "moment_detr",
        "--annotations",
        f"qvhighlights:{root / 'annotations'}",
        "--video-feats",
        str(feats / "clip_features"),
        str(feats / "slowfast_features"),
        "--text-feats",
        str(feats / "clip_text_features"),
        "--out",
        str(out),
        "--workers",
        "3",
        *extra,
    ]


def npz(path: Path, key: str = "features") -> np.ndarray:
    with np.load(path) as f:
        return f[key]


def failures(out: Path) -> list[dict]:
    text = importers.sibling_path(out, "failures.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def report(out: Path) -> dict:
    return json.loads(importers.sibling_path(out, "import_report.json").read_text())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(release: Path, cache_path: Path, dtype: str) -> None:
    assert importers.main(import_args(release, cache_path, "--dtype", dtype)) == 0
    assert validate(cache_path) == []
    assert failures(cache_path) == []
    feats = release / "features"
    with CacheReader(cache_path) as reader:
        assert reader.dataset == "qvhighlights"
        assert set(reader.video_ids) == {r[2] for r in ROWS}
        assert reader.splits() == {"train": 4, "val": 1, "test": 1}
        clip, slowfast = reader.video_encoders["clip"], reader.video_encoders["slowfast"]
        assert (clip.dim, slowfast.dim, clip.stride_sec, clip.dtype) == (CLIP_DIM, SLOWFAST_DIM, 2.0, dtype)
        assert clip.weights_id == "moment_detr:clip_features" and clip.frames_per_feature is None
        text = reader.text_encoders["clip_text"]
        assert text.dim == TEXT_DIM and "pooled = pooler_output" in text.library
        for vid, duration in {r[2]: r[3] for r in ROWS}.items():
            for name in ("clip", "slowfast"):
                expected = npz(feats / f"{name}_features" / f"{vid}.npz").astype(dtype)
                np.testing.assert_array_equal(reader.video_features(vid, name), expected)
            starts = np.arange(n_clips(duration)) * 2.0
            np.testing.assert_array_equal(
                reader.video_timestamps(vid, "slowfast"),
                np.stack([starts, np.minimum(starts + 2.0, duration)], axis=1),
            )
            meta = reader.video_meta(vid)
            assert meta.duration_sec == duration and meta.fps is None and meta.n_frames == -1
        np.testing.assert_array_equal(reader.video_timestamps("short_0.0_21.0", "clip")[-1], [20.0, 21.0])
        for split, qid, vid, _, windows, query in ROWS:
            item = reader.query(str(qid))
            assert (item.vid, item.text, item.split) == (vid, query, split)
            assert item.windows == [tuple(map(float, w)) for w in windows]
            assert item.saliency is not None and item.saliency_clip_sec == 2.0
            path = feats / "clip_text_features" / f"qid{qid}.npz"
            np.testing.assert_array_equal(
                item.tokens["clip_text"], npz(path, "last_hidden_state").astype(dtype)
            )
            np.testing.assert_array_equal(item.pooled["clip_text"], npz(path, "pooler_output").astype(dtype))


def test_pooled_is_token_mean_without_pooler_output(release: Path, tmp_path: Path) -> None:
    text_dir = release / "features" / "clip_text_features"
    for path in text_dir.glob("*.npz"):
        np.savez(path, last_hidden_state=npz(path, "last_hidden_state"))
    out = tmp_path / "cache.h5"
    assert importers.main(import_args(release, out, "--dtype", "float32")) == 0
    with CacheReader(out) as reader:
        assert "pooled = mean of last_hidden_state tokens" in reader.text_encoders["clip_text"].library
        tokens = npz(text_dir / "qid101.npz", "last_hidden_state")
        np.testing.assert_allclose(reader.query_pooled("101", "clip_text"), tokens.mean(axis=0), rtol=1e-6)


def test_stream_length_mismatch_skips_the_video_unless_truncation_is_asked(
    release: Path, tmp_path: Path
) -> None:
    vid = "aaa_0.0_150.0"
    slowfast = release / "features" / "slowfast_features" / f"{vid}.npz"
    np.savez(slowfast, features=npz(slowfast)[:-1])  # 74 SlowFast clips against 75 CLIP clips
    out = tmp_path / "cache.h5"

    assert importers.main(import_args(release, out)) == 1
    [failure] = failures(out)
    assert (failure["item"], failure["id"], failure["kind"]) == ("video", vid, "stream_length_mismatch")
    assert "'clip': 75" in failure["detail"] and "'slowfast': 74" in failure["detail"]
    assert failure["queries_skipped"] == 2
    assert validate(out) == []
    with CacheReader(out) as reader:
        assert vid not in reader.video_ids and len(reader.video_ids) == 4
        assert {"101", "102"}.isdisjoint(reader.query_ids) and len(reader.query_ids) == 4

    assert importers.main(import_args(release, out, "--align-streams", "truncate", "--overwrite")) == 0
    assert failures(out) == []
    assert report(out)["truncations"] == [
        {
            "vid": vid,
            "reason": "align_streams",
            "lengths_before": {"clip": 75, "slowfast": 74},
            "length_after": 74,
        }
    ]
    assert validate(out) == []
    with CacheReader(out) as reader:
        clip = npz(release / "features" / "clip_features" / f"{vid}.npz")
        np.testing.assert_array_equal(reader.video_features(vid, "clip"), clip[:74].astype(np.float16))
        assert reader.video_timestamps(vid, "slowfast")[-1].tolist() == [146.0, 148.0]
        assert {"101", "102"} <= set(reader.query_ids)


def test_missing_files_are_reported_and_a_rerun_resumes(release: Path, tmp_path: Path) -> None:
    feats = release / "features"
    video_file = feats / "clip_features" / "bbb_30.0_180.0.npz"
    text_file = feats / "clip_text_features" / "qid201.npz"
    moved = tmp_path / "moved"
    moved.mkdir()
    video_file.rename(moved / video_file.name)
    text_file.rename(moved / text_file.name)
    out = tmp_path / "cache.h5"

    assert importers.main(import_args(release, out)) == 1
    found = {(f["item"], f["id"]): f for f in failures(out)}
    assert set(found) == {("video", "bbb_30.0_180.0"), ("query", "201")}
    assert found["video", "bbb_30.0_180.0"]["kind"] == "missing_file"
    assert found["video", "bbb_30.0_180.0"]["path"] == str(video_file)
    assert found["query", "201"]["kind"] == "missing_file" and found["query", "201"]["path"] == str(text_file)
    with CacheReader(out) as reader:
        assert "bbb_30.0_180.0" not in reader.video_ids and "ccc_60.0_210.0" in reader.video_ids
        assert set(reader.query_ids) == {"101", "102", "104", "301"}

    (moved / video_file.name).rename(video_file)
    (moved / text_file.name).rename(text_file)
    assert importers.main(import_args(release, out)) == 0
    assert failures(out) == []
    summary = report(out)
    assert (summary["videos_imported"], summary["videos_already_committed"]) == (1, 4)
    assert (summary["queries_imported"], summary["queries_already_committed"]) == (2, 4)
    assert validate(out) == []
    with CacheReader(out) as reader:
        assert len(reader.video_ids) == 5 and len(reader.query_ids) == 6


def test_features_past_the_duration(release: Path, tmp_path: Path) -> None:
    vid = "short_0.0_21.0"  # 21 s holds 11 clips of 2 s
    for name in ("clip_features", "slowfast_features"):
        path = release / "features" / name / f"{vid}.npz"
        np.savez(path, features=np.concatenate([npz(path), npz(path)[:1]]))
    out = tmp_path / "cache.h5"
    assert importers.main(import_args(release, out)) == 1
    [failure] = failures(out)
    assert (failure["id"], failure["kind"]) == (vid, "past_duration") and "holds 11" in failure["detail"]

    assert importers.main(import_args(release, out, "--past-duration", "truncate")) == 0  # resumes
    assert [t["vid"] for t in report(out)["truncations"]] == [vid]
    with CacheReader(out) as reader:
        assert reader.video_timestamps(vid, "clip")[-1].tolist() == [20.0, 21.0]


def test_fewer_features_than_clips_are_imported_and_noted(release: Path, tmp_path: Path) -> None:
    vid = "ddd_0.0_150.0"
    for name in ("clip_features", "slowfast_features"):
        path = release / "features" / name / f"{vid}.npz"
        np.savez(path, features=npz(path)[:70])
    out = tmp_path / "cache.h5"
    assert importers.main(import_args(release, out)) == 0
    assert report(out)["short_videos"] == [{"vid": vid, "features": 70, "clips": 75, "duration_sec": 150.0}]
    assert validate(out) == []


def test_malformed_files_are_failures(release: Path, tmp_path: Path) -> None:
    feats = release / "features"
    np.savez(feats / "slowfast_features" / "ccc_60.0_210.0.npz", wrong_key=np.zeros((75, SLOWFAST_DIM)))
    np.savez(feats / "clip_features" / "ddd_0.0_150.0.npz", features=np.zeros((75, CLIP_DIM + 1)))
    (feats / "clip_text_features" / "qid104.npz").write_bytes(b"not a zip file")
    out = tmp_path / "cache.h5"
    assert importers.main(import_args(release, out)) == 1
    kinds = {f["id"]: f["kind"] for f in failures(out)}
    assert kinds == {"ccc_60.0_210.0": "bad_file", "ddd_0.0_150.0": "dim_mismatch", "104": "bad_file"}
    assert validate(out) == []


def test_setup_errors_exit_2(release: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cache.h5"
    args = import_args(release, out)
    args[args.index("--annotations") + 1] = "no_such_dataset"
    assert importers.main(args) == 2
    assert "no_such_dataset" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    args = import_args(release, out)
    args[args.index("--text-feats") + 1] = str(empty)
    assert importers.main(args) == 2
    assert "none of the 6 queries" in capsys.readouterr().err
    assert not out.exists()


def test_qid_map_names_text_files_by_lighthouse_ids(release: Path, tmp_path: Path) -> None:
    rows = load_dataset("qvhighlights", release / "annotations").rows
    lighthouse = tmp_path / "lighthouse.jsonl"
    text_dir = tmp_path / "clip_text"
    text_dir.mkdir()
    # Lighthouse numbers queries 0, 1, ... in its own order; the map goes through (vid, query).
    with lighthouse.open("w") as f:
        for number, row in enumerate(reversed(rows)):
            f.write(
                json.dumps({"qid": number, "vid": row.vid, "query": " " + row.query, "duration": 1}) + "\n"
            )
            source = release / "features" / "clip_text_features" / f"qid{row.qid}.npz"
            (text_dir / f"{number}.npz").write_bytes(source.read_bytes())
    assert importers.read_qid_map([lighthouse], rows)["101"] == str(len(rows) - 1)
    args = import_args(
        release,
        tmp_path / "cache.h5",
        "--dtype",
        "float32",
        "--text-pattern",
        "{qid}.npz",
        "--qid-map",
        str(lighthouse),
    )
    args[args.index("--text-feats") + 1] = str(text_dir)
    assert importers.main(args) == 0
    with CacheReader(tmp_path / "cache.h5") as reader:
        tokens = npz(release / "features" / "clip_text_features" / "qid104.npz", "last_hidden_state")
        np.testing.assert_array_equal(reader.query_tokens("104", "clip_text"), tokens)


def test_hdf5_c3d_with_an_encoder_for_the_text(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # Custom-format annotations; durations of 5 s hold 10 features at 16 frames / 32 fps = 0.5 s.
    records = [
        {
            "qid": "q1",
            "video": "plain.mp4",
            "query": "a red circle",
            "windows": [[1.0, 2.0]],
            "split": "train",
            "duration": 5.0,
        },
        {
            "qid": "q2",
            "video": "grouped.mp4",
            "query": "a blue square",
            "windows": [[0.0, 4.5]],
            "split": "train",
            "duration": 5.0,
        },
        {"qid": "q3", "video": "s30-d52.avi", "query": "she took out kiwi", "split": "test", "duration": 4.8},
        {"qid": "q4", "video": "absent.mp4", "query": "nothing here", "split": "test", "duration": 5.0},
    ]
    ann = tmp_path / "queries.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    c3d = tmp_path / "c3d.hdf5"
    expected = {
        vid: rng.standard_normal((10, 20)).astype(np.float32) for vid in ("plain", "grouped", "s30-d52")
    }
    with h5py.File(c3d, "w") as f:
        f["plain"] = expected["plain"]  # TACoS-style: a dataset per video
        f.create_group("grouped")["c3d_features"] = expected["grouped"]  # ActivityNet-style group
        f["s30-d52.avi"] = expected["s30-d52"]  # keyed by the annotated file name
    out = tmp_path / "cache.h5"
    code = importers.main(
        [
            "--format",
            "hdf5_c3d",
            "--annotations",
            f"custom:{ann}",
            "--video-feats",
            str(c3d),
            "--stride-frames",
            "16",
            "--fps",
            "32",
            "--frames-per-feature",
            "16",
            "--dtype",
            "float32",
            "--text-encoder",
            "tiny_bert",
            "--text-weights",
            "none",
            "--out",
            str(out),
        ]
    )
    assert code == 1
    [failure] = failures(out)
    assert (failure["id"], failure["kind"]) == ("absent", "missing_file") and "'absent'" in failure["detail"]
    assert validate(out) == []
    from extract.encoders import build_encoder

    encoder = build_encoder("tiny_bert", weights="none")
    with CacheReader(out) as reader:
        spec = reader.video_encoders["c3d"]
        assert (spec.stride_sec, spec.frames_per_feature, spec.dim) == (0.5, 16, 20)
        assert spec.weights_id == "hdf5_c3d:c3d.hdf5"
        assert list(reader.text_encoders) == [encoder.text_spec.name]
        for vid, feats in expected.items():
            np.testing.assert_array_equal(reader.video_features(vid, "c3d"), feats)
        ts = reader.video_timestamps("s30-d52", "c3d")
        assert ts[0].tolist() == [0.0, 0.5] and ts[-1].tolist() == [4.5, 4.8]
        tokens, pooled = encoder.encode_text(["she took out kiwi"])[0]
        name = encoder.text_spec.name
        np.testing.assert_allclose(
            reader.query_tokens("q3", name), tokens.numpy().astype(np.float16), atol=1e-3
        )
        np.testing.assert_allclose(
            reader.query_pooled("q3", name), pooled.numpy().astype(np.float16), atol=1e-3
        )


def test_hdf5_c3d_needs_a_stride(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann = tmp_path / "queries.jsonl"
    ann.write_text(json.dumps({"qid": "q1", "video": "a.mp4", "query": "x", "duration": 3.0}) + "\n")
    c3d = tmp_path / "c3d.hdf5"
    with h5py.File(c3d, "w") as f:
        f["a"] = np.zeros((3, 4), np.float32)
    code = importers.main(
        [
            "--format",
            "hdf5_c3d",
            "--annotations",
            f"custom:{ann}",
            "--video-feats",
            str(c3d),
            "--text-encoder",
            "tiny_bert",
            "--out",
            str(tmp_path / "c.h5"),
        ]
    )
    assert code == 2
    assert "--clip-sec S, or --stride-frames N with --fps F" in capsys.readouterr().err
