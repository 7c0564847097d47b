"""Annotation adapters on the real annotation files (shared/data) and on tiny custom files."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from extract.config import ConfigError, parse_config
from extract.datasets import (
    ALLOWED_ACTIONS,
    PROBLEM_KINDS,
    AnnotationError,
    AnnotationValidationError,
    ValidationPolicy,
    annotations_from_strings,
    check_duration,
    get_dataset,
    list_datasets,
    load_dataset,
    shared_data_dir,
)
from extract.datasets.cli import build_parser as report_parser
from extract.datasets.cli import main
from extract.datasets.custom import to_record, write_jsonl
from extract.datasets.registry import REPO_ROOT, SHARED_DATA_ENV

DATA = shared_data_dir()
requires_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real annotation files not found at {DATA} (set {SHARED_DATA_ENV})"
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def n_videos(rows) -> int:
    return len({r.vid for r in rows})


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_adapter_and_rejects_unknown_names():
    assert list_datasets() == ["activitynet_captions", "charades_sta", "custom", "qvhighlights", "tacos"]
    with pytest.raises(ValueError, match="available: activitynet_captions, charades_sta, custom"):
        get_dataset("didemo")


@pytest.mark.parametrize("name", list_datasets())
def test_every_adapter_has_source_info_and_a_default_dir(name, monkeypatch):
    adapter = get_dataset(name)
    assert adapter.SOURCE_INFO.strip()
    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    assert adapter.default_annotation_dir() == REPO_ROOT.parent / "shared" / "data" / name
    monkeypatch.setenv(SHARED_DATA_ENV, "/elsewhere")
    assert adapter.default_annotation_dir() == Path("/elsewhere") / name


def test_unknown_split_and_variant_are_rejected():
    with pytest.raises(ValueError, match=r"splits are \('train', 'val', 'test'\)"):
        get_dataset("qvhighlights").select_splits("val_1")
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        get_dataset("charades_sta", variant="nope")


# --------------------------------------------------------------------------- QVHighlights


@pytest.fixture(scope="module")
def qvh():
    return load_dataset("qvhighlights")


@requires_data
def test_qvhighlights_counts_and_no_problems(qvh):
    splits = qvh.by_split()
    assert {s: (len(r), n_videos(r)) for s, r in splits.items()} == {
        "train": (7218, 7100),
        "val": (1550, 1519),
        "test": (1542, 1529),
    }
    assert qvh.report.problems == []
    first = splits["train"][0]
    assert (first.qid, first.vid, first.split) == ("9769", "j7rJstUseKg_360.0_510.0", "train")
    assert first.query == "some military patriots takes us through their safety procedures and measures."


@requires_data
def test_qvhighlights_saliency_is_dense_over_the_whole_video(qvh):
    files = {
        "train": "highlight_train_release.jsonl",
        "val": "highlight_val_release.jsonl",
        "test": "highlight_test_with_gt.jsonl",
    }
    for split, rows in qvh.by_split().items():
        records = read_jsonl(DATA / "qvhighlights" / files[split])
        assert len(records) == len(rows)
        for rec, row in zip(records, rows, strict=True):
            assert row.qid == str(rec["qid"]) and row.duration_sec == rec["duration"]
            assert row.windows == tuple((float(s), float(e)) for s, e in rec["relevant_windows"])
            n_clips = math.ceil(rec["duration"] / 2)
            assert row.saliency.shape == (n_clips, 3) and row.saliency_clip_sec == 2.0
            ids = rec["relevant_clip_ids"]
            np.testing.assert_array_equal(row.saliency[ids], np.asarray(rec["saliency_scores"], np.float32))
            others = np.setdiff1d(np.arange(n_clips), ids)
            assert not row.saliency[others].any()
            assert not row.saliency.flags.writeable


@requires_data
def test_qvhighlights_unlabelled_test_release_has_the_same_queries(qvh):
    release = load_dataset("qvhighlights", split="test", variant="test_release")
    labelled = qvh.by_split()["test"]
    assert [r.qid for r in release.rows] == [r.qid for r in labelled]
    assert all(r.windows == () and r.saliency is None and not r.labelled for r in release.rows)


# --------------------------------------------------------------------------- Charades-STA


@pytest.fixture(scope="module")
def charades():
    return load_dataset("charades_sta")


@requires_data
def test_charades_counts_and_known_anomalies(charades):
    report = charades.report
    assert dict(report.read_per_split) == {"train": 12408, "test": 3720}
    assert dict(report.kept_per_split) == {"train": 12404, "test": 3720}
    # LEOL6 and AKKWU lose their only queries, so 2 of the 5,338 training videos have no row left.
    assert {s: n_videos(r) for s, r in charades.by_split().items()} == {"train": 5336, "test": 1334}
    assert len({r.vid for r in charades.rows} | {p.vid for p in report.problems}) == 5338 + 1334
    assert report.count("start_after_end", "drop", split="train") == 4
    assert report.count("start_after_end", split="test") == 0
    assert report.count("end_past_duration", split="train") == 1805
    assert report.count("end_past_duration", "clip", split="test") == 562
    bad = sorted(p.source for p in report.problems if p.kind == "start_after_end")
    assert bad == [f"charades_sta_train.txt:{n}" for n in (8252, 8440, 9623, 9624)]
    first = charades.rows[0]
    assert (first.qid, first.vid, first.duration_sec, first.windows) == (
        "AO8RW_0",
        "AO8RW",
        33.67,
        ((0.0, 6.9),),
    )


@requires_data
def test_charades_default_policy_reproduces_the_lighthouse_conversion(charades):
    # Lighthouse drops the 4 reversed lines and clips ends to the Charades `length`.
    for split in ("train", "test"):
        reference = read_jsonl(DATA / "charades_sta" / "lighthouse_jsonl" / f"charades_{split}_release.jsonl")
        rows = charades.by_split()[split]
        assert len(rows) == len(reference)
        for row, ref in zip(rows, reference, strict=True):
            assert (row.vid, row.query, row.duration_sec) == (ref["vid"], ref["query"], ref["duration"])
            assert [list(w) for w in row.windows] == ref["relevant_windows"]


@requires_data
def test_charades_swap_policy_and_vslnet_variant():
    swapped = load_dataset("charades_sta", split="train", policy=ValidationPolicy(start_after_end="swap"))
    rows = {r.qid: r for r in swapped.rows}
    # IOL8Q [20.9, 12.0] becomes [12.0, 20.9]; the other 3 start past the video and are dropped.
    assert rows["IOL8Q_0"].windows == ((12.0, 20.9),)
    assert swapped.report.count("start_past_duration", "drop") == 3
    assert len(swapped.rows) == 12405
    fixed = load_dataset("charades_sta", split="train", variant="vslnet")
    assert len(fixed.rows) == 12408 and fixed.report.count("start_after_end") == 0
    assert fixed.report.count("end_past_duration") == 1802


# --------------------------------------------------------------------------- ActivityNet Captions


@pytest.fixture(scope="module")
def anet():
    return load_dataset("activitynet_captions")


@requires_data
def test_activitynet_counts_and_known_anomalies(anet):
    report = anet.report
    assert dict(report.read_per_split) == {"train": 37421, "val_1": 17505, "val_2": 17031}
    assert {s: n_videos(r) for s, r in anet.by_split().items()} == {
        "train": 10009,
        "val_1": 4917,
        "val_2": 4885,
    }
    assert report.count("start_after_end", split="train") + report.count("empty_window", split="train") == 4
    assert len(anet.by_split()["train"]) == 37417
    ends = {s: report.count("end_past_duration", "clip", split=s) for s in ("train", "val_1", "val_2")}
    assert ends == {"train": 29, "val_1": 5, "val_2": 1}
    # Float noise in the stored durations (70.28999999999999 vs an end of 70.29) is not a problem.
    row = next(r for r in anet.rows if r.vid == "v_MKmrqcoCZ-M" and r.windows[0][0] == 57.64)
    assert row.windows == ((57.64, 70.29),)
    assert report.normalized["query_whitespace_stripped"] > 0
    assert all(r.query == r.query.strip() for r in anet.rows)


@requires_data
def test_activitynet_copies_agree_and_match_lighthouse_val(anet):
    vslnet = load_dataset("activitynet_captions", variant="vslnet")
    assert [(r.qid, r.duration_sec, r.windows) for r in vslnet.rows] == [
        (r.qid, r.duration_sec, r.windows) for r in anet.rows
    ]
    typos = Counter(a.split for a, b in zip(anet.rows, vslnet.rows, strict=True) if a.query != b.query)
    assert typos == {"train": 6, "val_1": 19, "val_2": 3}
    reference = read_jsonl(
        DATA / "activitynet_captions" / "lighthouse_jsonl" / "activitynet_val_release.jsonl"
    )
    val = anet.by_split()["val_1"]
    assert len(val) == len(reference)
    for row, ref in zip(val, reference, strict=True):
        assert (row.vid, row.query, row.windows[0][0]) == (
            ref["vid"],
            ref["query"].strip(),
            ref["relevant_windows"][0][0],
        )


@requires_data
def test_activitynet_video_lookup_tries_the_bare_youtube_id(tmp_path):
    (tmp_path / "uqiMw7tQ1Cc.mkv").write_bytes(b"")
    result = load_dataset("activitynet_captions", split="val_1", video_root=tmp_path)
    assert [(r.vid, r.video) for r in result.rows] == [("v_uqiMw7tQ1Cc", "uqiMw7tQ1Cc.mkv")] * 2
    assert result.report.count("missing_video", "drop") == 17505 - 2


# --------------------------------------------------------------------------- TACoS


@pytest.fixture(scope="module")
def tacos():
    return load_dataset("tacos")


@requires_data
def test_tacos_counts_and_frames_past_the_end(tacos):
    assert {s: (len(r), n_videos(r)) for s, r in tacos.by_split().items()} == {
        "train": (9790, 75),
        "val": (4436, 27),
        "test": (4001, 25),
    }
    ends = {s: tacos.report.count("end_past_duration", "clip", split=s) for s in ("train", "val", "test")}
    assert ends == {"train": 43, "val": 0, "test": 5}


@requires_data
def test_tacos_frames_are_converted_to_seconds(tacos):
    # Hand-checked: "s30-d52.avi": timestamps [[141, 354], ...], fps 29.4, num_frames 7346.
    row = next(r for r in tacos.rows if r.qid == "s30-d52_0")
    assert (row.vid, row.video, row.query) == ("s30-d52", "s30-d52.avi", "She took out kiwi")
    assert row.duration_sec == pytest.approx(249.8639455782313)
    assert row.windows[0] == pytest.approx((4.795918367346939, 12.040816326530614))
    for split in ("train", "val", "test"):
        reference = read_jsonl(DATA / "tacos" / "lighthouse_jsonl" / f"tacos_{split}_release.jsonl")
        rows = tacos.by_split()[split]
        assert [r.qid for r in rows] == [ref["qid"] for ref in reference]
        for row, ref in zip(rows, reference, strict=True):
            assert row.duration_sec == pytest.approx(ref["duration"], abs=1e-9)
            assert row.windows[0] == pytest.approx(tuple(ref["relevant_windows"][0]), abs=1e-9)


# --------------------------------------------------------------------------- custom jsonl

CUSTOM_ROWS = [
    {"qid": "q1", "video": "videos/cooking.mp4", "query": "a man slices an onion", "windows": [[12.0, 19.5]],
     "split": "train", "duration": 60.0},
    {"qid": 2, "video": "videos/cooking.mp4", "query": "the pan is washed", "split": "train",
     "duration": 60.0},
    {"qid": "q3", "video": "/abs/park.mkv", "query": "a dog runs", "windows": [[1, 2], [5, 9]]},
]  # fmt: skip


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_custom_round_trip(tmp_path):
    path = write_jsonl(CUSTOM_ROWS, tmp_path / "ann.jsonl")
    result = load_dataset("custom", path)
    q1, q2, q3 = result.rows
    assert (q1.qid, q1.vid, q1.video, q1.split, q1.duration_sec) == (
        "q1",
        "cooking",
        "videos/cooking.mp4",
        "train",
        60.0,
    )
    assert q1.windows == ((12.0, 19.5),) and q1.source == "ann.jsonl:1"
    assert q2.qid == "2" and q2.windows == () and not q2.labelled
    assert (q3.vid, q3.split, q3.duration_sec, q3.windows) == ("park", "test", None, ((1.0, 2.0), (5.0, 9.0)))
    assert result.report.count("unknown_duration", "keep") == 1
    again = load_dataset("custom", write_jsonl([to_record(r) for r in result.rows], tmp_path / "again.jsonl"))
    assert [(r.qid, r.vid, r.video, r.query, r.split, r.duration_sec, r.windows) for r in again.rows] == [
        (r.qid, r.vid, r.video, r.query, r.split, r.duration_sec, r.windows) for r in result.rows
    ]
    train = load_dataset("custom", path, split="train")
    assert [r.qid for r in train.rows] == ["q1", "2"]
    assert "1 row(s) of split 'test' not selected" in train.report.notes


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"qid": "b", "video": "v.mp4", "query": "x"', r"bad\.jsonl:2: invalid JSON"),
        ('{"qid": "b", "video": "v.mp4"}', r"bad\.jsonl:2 \(qid b\): missing required field 'query'"),
        ('{"qid": "b", "video": "v.mp4", "query": "x", "windows": [["1", 2]]}',
         r"bad\.jsonl:2 \(qid b\): windows\[0\] start must be a finite number, got '1'"),
        ('{"qid": "b", "video": "v.mp4", "query": "x", "windows": [[1, 2, 3]]}',
         r"windows\[0\] must be a \[start"),
        ('{"qid": "b", "video": "v.mp4", "query": "x", "window": [[1, 2]]}',
         r"unknown field\(s\) \['window'\]"),
        ('{"qid": "a", "video": "w.mp4", "query": "x"}',
         r"bad\.jsonl:2: query id 'a' already used at bad\.jsonl:1"),
        ('{"qid": "b", "video": "v.mp4", "query": "x", "duration": 0}', r"duration must be positive"),
        ('["qid", "b"]', r"bad\.jsonl:2: expected a JSON object"),
    ],
)  # fmt: skip
def test_custom_errors_name_the_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"qid": "a", "video": "v.mp4", "query": "ok"}', line])
    with pytest.raises(AnnotationError, match=message):
        load_dataset("custom", path)


def test_custom_needs_a_file():
    with pytest.raises(ValueError, match="--annotations FILE"):
        load_dataset("custom")


# --------------------------------------------------------------------------- policies

ANOMALIES = [
    '{"qid": "rev", "video": "a.mp4", "query": "reversed", "windows": [[8, 3]], "duration": 10}',
    '{"qid": "long", "video": "a.mp4", "query": "too long", "windows": [[4, 12]], "duration": 10}',
    '{"qid": "empty", "video": "a.mp4", "query": "  ", "windows": [[1, 2]], "duration": 10}',
    '{"qid": "dup1", "video": "a.mp4", "query": "twice", "windows": [[1, 2]], "duration": 10}',
    '{"qid": "dup2", "video": "a.mp4", "query": "twice ", "windows": [[1, 2]], "duration": 10}',
    '{"qid": "neg", "video": "a.mp4", "query": "negative", "windows": [[-1, 2], [3, 4]], "duration": 10}',
    '{"qid": "late", "video": "a.mp4", "query": "after the end", "windows": [[11, 12]], "duration": 10}',
]


@pytest.fixture()
def anomalies(tmp_path):
    return write_lines(tmp_path / "anomalies.jsonl", ANOMALIES)


def windows_by_qid(result):
    return {r.qid: r.windows for r in result.rows}


def test_default_policy_outcome(anomalies):
    result = load_dataset("custom", anomalies)
    assert windows_by_qid(result) == {
        "long": ((4.0, 10.0),),
        "dup1": ((1.0, 2.0),),
        "dup2": ((1.0, 2.0),),
        "neg": ((0.0, 2.0), (3.0, 4.0)),
    }
    report = result.report
    assert report.counts() == {
        "start_after_end": 1,
        "start_before_zero": 1,
        "start_past_duration": 1,
        "end_past_duration": 2,  # "late" [11, 12] both starts and ends past the 10-s video
        "no_windows_left": 2,
        "empty_text": 1,
        "duplicate": 1,
    }
    late = [(p.kind, p.action) for p in report.problems if p.qid == "late"]
    assert late == [
        ("start_past_duration", "drop"),
        ("end_past_duration", "superseded"),
        ("no_windows_left", "drop"),
    ]
    clipped = next(p for p in report.problems if p.kind == "end_past_duration")
    assert (clipped.qid, clipped.action, clipped.window, clipped.fixed) == (
        "long",
        "clip",
        (4.0, 12.0),
        (4.0, 10.0),
    )
    assert clipped.source == "anomalies.jsonl:2"
    assert report.count("duplicate", "keep") == 1 and report.count("empty_text", "drop") == 1
    assert dict(report.read_per_split) == {"test": 7} and dict(report.kept_per_split) == {"test": 4}


def test_policy_options_change_the_outcome(anomalies):
    policy = ValidationPolicy(
        start_after_end="swap",
        end_past_duration="drop",
        empty_text="keep",
        duplicate="drop",
        start_before_zero="keep",
        start_past_duration="keep",
    )
    result = load_dataset("custom", anomalies, policy=policy)
    assert windows_by_qid(result) == {
        "rev": ((3.0, 8.0),),
        "empty": ((1.0, 2.0),),
        "dup1": ((1.0, 2.0),),
        "neg": ((-1.0, 2.0), (3.0, 4.0)),
    }
    assert result.report.count("no_windows_left", "drop") == 2  # "long" and "late" lost their only window
    assert result.report.count("duplicate", "drop") == 1
    kept_text = next(r for r in result.rows if r.qid == "empty")
    assert kept_text.query == ""


def test_error_policy_fails_after_checking_every_row(anomalies):
    with pytest.raises(AnnotationValidationError, match="anomalies.jsonl:2 qid=long") as info:
        load_dataset("custom", anomalies, policy=ValidationPolicy(end_past_duration="error"))
    report = info.value.report
    assert [p.qid for p in report.errors] == ["long"]
    assert report.count("duplicate") == 1  # rows after the first error were still checked


def test_policy_rejects_actions_that_do_not_apply():
    with pytest.raises(
        ValueError, match=r"'duplicate': action 'swap' is not one of \('keep', 'drop', 'error'\)"
    ):
        ValidationPolicy(duplicate="swap")
    policy = ValidationPolicy.from_strings(["end_past_duration=drop", "duration_tolerance_sec=0.5"])
    assert (policy.end_past_duration, policy.duration_tolerance_sec) == ("drop", 0.5)
    with pytest.raises(ValueError, match="unknown problem kind 'ends'"):
        ValidationPolicy.from_strings(["ends=drop"])
    assert set(ALLOWED_ACTIONS) == set(PROBLEM_KINDS)
    defaults = ValidationPolicy()
    assert all(defaults.action(k) == ALLOWED_ACTIONS[k][0] for k in PROBLEM_KINDS)


def test_missing_videos_are_reported_and_dropped(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "cooking.mp4").write_bytes(b"")
    path = write_jsonl(CUSTOM_ROWS[:2] + [dict(CUSTOM_ROWS[2], video="park.mkv")], tmp_path / "ann.jsonl")
    result = load_dataset("custom", path, video_root=tmp_path)
    assert [r.qid for r in result.rows] == ["q1", "2"]
    (problem,) = result.report.problems[1:]
    assert (problem.kind, problem.action, problem.qid) == ("missing_video", "drop", "q3")
    kept = load_dataset("custom", path, video_root=tmp_path, policy=ValidationPolicy(missing_video="keep"))
    assert len(kept.rows) == 3


def test_report_summary_and_jsonl(anomalies, tmp_path):
    report = load_dataset("custom", anomalies).report
    text = report.summary()
    assert "7 queries read, 4 kept" in text
    assert "end_past_duration: 2 [clip 1, superseded 1]; policy clip" in text
    assert "anomalies.jsonl:2 qid=long" in text
    out = report.to_jsonl(tmp_path / "out" / "problems.jsonl")
    lines = read_jsonl(out)
    assert len(lines) == len(report.problems) and lines[0]["source"] == "anomalies.jsonl:1"
    assert lines[0]["kind"] == "start_after_end" and lines[0]["window"] == [8.0, 3.0]


def test_check_duration(tmp_path):
    (row,) = load_dataset("custom", write_jsonl(CUSTOM_ROWS[:1], tmp_path / "a.jsonl")).rows
    assert check_duration(row, 60.4, tolerance_sec=0.5) is None
    problem = check_duration(row, 58.0, tolerance_sec=0.5)
    assert (problem.kind, problem.action, problem.qid, problem.vid) == (
        "duration_mismatch",
        "error",
        "q1",
        "cooking",
    )
    assert "differ by -2.000 s" in problem.detail
    problem = check_duration("AO8RW", 40.0, 1.0, annotation_duration_sec=33.67,
                             policy=ValidationPolicy(duration_mismatch="error"))  # fmt: skip
    assert (problem.vid, problem.action) == ("AO8RW", "error")
    assert check_duration("unknown", 40.0, 1.0) is None
    with pytest.raises(ValueError, match="video cooking: decoded duration nan"):
        check_duration(row, float("nan"))


# --------------------------------------------------------------------------- CLI


def test_cli(tmp_path, anomalies, capsys):
    assert main(["info", "qvhighlights"]) == 0
    assert "qvhilights_videos.tar.gz" in capsys.readouterr().out
    out_jsonl = tmp_path / "problems.jsonl"
    assert main(["report", "custom", "--annotations", str(anomalies), "--jsonl", str(out_jsonl)]) == 0
    assert "7 queries read, 4 kept" in capsys.readouterr().out and out_jsonl.is_file()
    assert main(["report", "custom", "--annotations", str(anomalies), "--policy", "duplicate=error"]) == 1
    assert "duplicate" in capsys.readouterr().err
    bad = write_lines(tmp_path / "bad.jsonl", ["{"])
    assert main(["report", "custom", "--annotations", str(bad)]) == 2
    assert "bad.jsonl:1: invalid JSON" in capsys.readouterr().err
    assert main(["report", "didemo"]) == 2
    assert "available:" in capsys.readouterr().err


@requires_data
def test_cli_report_on_real_files(capsys):
    assert main(["report", "charades_sta", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "split test: 3720 read, 3720 kept" in out and "end_past_duration: 562 [clip 562]" in out


# --------------------------------------------------------------------------- annotation files by path


def tiny_files(name: str) -> dict[str, str]:
    """Role -> content of tiny annotation files for adapter ``name``: one query per split."""
    if name == "qvhighlights":
        return {
            split: json.dumps(
                {"qid": i, "vid": f"vid{i}_0.0_10.0", "query": f"query {split}", "duration": 10,
                 "relevant_windows": [[0, 4]], "relevant_clip_ids": [0, 1],
                 "saliency_scores": [[1, 2, 3], [4, 4, 4]]}
            ) + "\n"
            for i, split in enumerate(("train", "val", "test"))
        }  # fmt: skip
    if name == "charades_sta":
        return {
            "train": "AAAAA 0.0 6.9##a person opens a door.\n",
            "test": "BBBBB 1.0 4.0##a person sits down.\n",
            "durations_train": "id,length\nAAAAA,33.67\n",
            "durations_test": "id,length\nBBBBB,12.5\n",
        }
    if name == "activitynet_captions":
        return {
            split: json.dumps(
                {f"v_{split}": {"duration": 10.0, "timestamps": [[1, 4]], "sentences": [split]}}
            )
            for split in ("train", "val_1", "val_2")
        }
    if name == "tacos":
        return {
            split: json.dumps(
                {
                    f"s{i}-d1.avi": {
                        "timestamps": [[0, 147]],
                        "sentences": [split],
                        "fps": 29.4,
                        "num_frames": 294,
                    }
                }
            )
            for i, split in enumerate(("train", "val", "test"))
        }
    if name == "custom":
        return {
            "train": '{"qid": "a", "video": "a.mp4", "query": "x", "windows": [[1, 2]]}\n',
            "val": '{"qid": "b", "video": "b.mp4", "query": "y", "split": "val"}\n',
        }
    raise AssertionError(f"add tiny files for the new adapter {name!r}")


FIRST_WINDOW = {
    "qvhighlights": (0.0, 4.0),
    "charades_sta": (0.0, 6.9),
    "activitynet_captions": (1.0, 4.0),
    "tacos": (0.0, 5.0),  # frames 0..147 at 29.4 fps
    "custom": (1.0, 2.0),
}


def write_renamed(tmp_path: Path, files: dict[str, str | bytes]) -> dict[str, str]:
    """Write each role's file under a name no release uses; return role -> path."""
    paths = {}
    for role, content in files.items():
        path = tmp_path / "mine" / f"my_{role}.data"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        paths[role] = str(path)
    return paths


@pytest.mark.parametrize("name", list_datasets())
def test_every_adapter_reads_files_given_per_split(name, tmp_path):
    paths = write_renamed(tmp_path, tiny_files(name))
    adapter = get_dataset(name)
    splits = [role for role in paths if role not in adapter.extra_files]
    result = load_dataset(name, paths)
    assert [r.split for r in result.rows] == splits
    assert [r.query for r in result.rows][: len(splits)] and result.rows[0].windows == (FIRST_WINDOW[name],)
    for row in result.rows:  # sources show the path as given
        assert row.source.startswith(paths[row.split]), row.source
    assert sorted(result.report.files) == sorted(paths.values())
    # Only the splits asked for are read (their files must exist; the others are not opened).
    first = load_dataset(name, {**paths, splits[-1]: str(tmp_path / "absent")}, split=splits[0])
    assert [r.split for r in first.rows] == [splits[0]]


@pytest.mark.parametrize("name", list_datasets())
def test_every_adapter_takes_per_split_files_from_the_command_line(name, tmp_path, capsys):
    paths = write_renamed(tmp_path, tiny_files(name))
    items = [f"{role}={path}" for role, path in paths.items()]
    assert main(["report", name, "--annotations", *items]) == 0
    out = capsys.readouterr().out
    assert f"{len(paths) - len(get_dataset(name).extra_files)} queries read" in out
    assert all(f"file {path}" in out for path in paths.values())


def test_per_split_files_errors_name_the_key(tmp_path):
    paths = write_renamed(tmp_path, tiny_files("charades_sta"))
    with pytest.raises(ValueError, match=r"unknown file role\(s\) \['val'\]; roles are \('train', 'test', "):
        load_dataset("charades_sta", {**paths, "val": paths["train"]})
    with pytest.raises(ValueError, match=r"no file for \['durations_test'\] .*add durations_test=PATH"):
        load_dataset("charades_sta", {k: v for k, v in paths.items() if k != "durations_test"})
    with pytest.raises(ValueError, match=r"no file for \['test'\]"):
        load_dataset("charades_sta", {k: v for k, v in paths.items() if k != "test"}, split="test")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("charades_sta", paths, split="val")
    with pytest.raises(FileNotFoundError, match=r"absent.txt \(given as train=\) not found"):
        load_dataset("charades_sta", {**paths, "train": str(tmp_path / "absent.txt")})
    with pytest.raises(ValueError, match="maps no split"):
        load_dataset("tacos", {})
    durations_only = {k: v for k, v in paths.items() if k.startswith("durations_")}
    with pytest.raises(ValueError, match="give no split file"):
        load_dataset("charades_sta", durations_only)
    # custom: a file given for a split holds that split.
    wrong = write_lines(
        tmp_path / "val.jsonl", ['{"qid": "a", "video": "a.mp4", "query": "x", "split": "train"}']
    )
    with pytest.raises(
        AnnotationError, match=r"val\.jsonl:1 \(qid a\): split 'train', but the file is given as"
    ):
        load_dataset("custom", {"val": wrong})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["data/qvh"], "data/qvh"),
        (["train=a.jsonl"], {"train": "a.jsonl"}),
        (["train=a.jsonl", "val_1=sub/b=c.json"], {"train": "a.jsonl", "val_1": "sub/b=c.json"}),
        (["dir/x=y"], "dir/x=y"),  # "=" after a path separator: a path
    ],
)
def test_annotations_from_strings(values, expected):
    assert annotations_from_strings(values) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["a", "b"], "several paths"),
        (["dir", "train=a"], "mix of a folder and ROLE=PATH"),
        (["train=a", "train=b"], "role 'train' given twice"),
        (["train="], "empty path"),
    ],
)
def test_annotations_from_strings_rejects(values, message):
    with pytest.raises(ValueError, match=message):
        annotations_from_strings(values)


@requires_data
@pytest.mark.parametrize(
    ("name", "fixture"),
    [
        ("qvhighlights", "qvh"),
        ("charades_sta", "charades"),
        ("activitynet_captions", "anet"),
        ("tacos", "tacos"),
    ],
)
def test_renamed_release_files_give_the_same_rows(name, fixture, request, tmp_path):
    """A user whose files are train/val/test.<ext> passes them by split, without renaming them."""
    adapter = get_dataset(name)
    release = adapter.release_files(DATA / name, adapter.splits)
    paths = {}
    for role, path in release.items():
        paths[role] = tmp_path / f"{role}{path.suffix}"
        shutil.copyfile(path, paths[role])
    renamed = load_dataset(name, paths)
    reference = request.getfixturevalue(fixture)
    assert len(renamed.rows) == len(reference.rows) > 0

    def key(r):
        return (r.qid, r.vid, r.split, r.query, r.duration_sec, r.windows)

    assert [key(r) for r in renamed.rows] == [key(r) for r in reference.rows]
    assert renamed.report.counts() == reference.report.counts()
    assert dict(renamed.report.kept_per_split) == dict(reference.report.kept_per_split)
    assert all(r.source.startswith(str(tmp_path)) for r in renamed.rows)


# --------------------------------------------------------------------------- files that are not UTF-8


def latin1_case(name: str, role: str, text: str) -> tuple[str, str, dict[str, bytes], int, int]:
    """``name``'s tiny files with ``role`` replaced by ``text`` saved as Latin-1 (its "é" is byte 0xe9)."""
    (line_no,) = [i for i, line in enumerate(text.splitlines(), start=1) if "é" in line]
    column = text.splitlines()[line_no - 1].index("é") + 1  # ASCII before it: characters = bytes
    files: dict[str, bytes] = {k: v.encode() for k, v in tiny_files(name).items()}
    files[role] = text.encode("latin-1")
    return name, role, files, line_no, column


def pretty_json(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False)


LATIN1_CASES = [
    latin1_case("custom", "train", '{"qid": "a", "video": "a.mp4", "query": "x"}\n'
                '{"qid": "b", "video": "b.mp4", "query": "café"}\n'),
    latin1_case("custom", "train", '{"qid": "a", "video": "a.mp4", "query": "x"}\r\n\r\n'
                '{"qid": "b", "video": "b.mp4", "query": "café"}\r\n'),
    latin1_case("qvhighlights", "val", tiny_files("qvhighlights")["val"] + tiny_files("qvhighlights")["val"]
                .replace('"qid": 1', '"qid": 7').replace("query val", "query café")),
    latin1_case("tacos", "train", pretty_json(
        {"s1-d1.avi": {"timestamps": [[0, 147]], "sentences": ["café"], "fps": 29.4, "num_frames": 294}})),
    latin1_case("activitynet_captions", "val_1", pretty_json(
        {"v_a": {"duration": 10.0, "timestamps": [[1, 4]], "sentences": ["a café"]}})),
    latin1_case("charades_sta", "train", "AAAAA 0.0 6.9##a person opens a door.\nAAAAA 1.0 2.0##a café\n"),
    latin1_case("charades_sta", "durations_test", "id,length,descriptions\nBBBBB,12.5,ok\nCCCCC,3.0,café\n"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "role", "files", "line_no", "column"),
    LATIN1_CASES,
    ids=[f"{c[0]}-{c[1]}-line{c[3]}" for c in LATIN1_CASES],
)
def test_a_file_that_is_not_utf8_names_file_and_line(name, role, files, line_no, column, tmp_path):
    paths = write_renamed(tmp_path, files)
    with pytest.raises(AnnotationError) as info:
        load_dataset(name, paths)
    message = str(info.value)
    assert message == (
        f"{paths[role]}:{line_no}: not UTF-8 text (byte 0xe9 at column {column}); "
        "annotation files must be UTF-8"
    )
    assert "\n" not in message


def test_a_release_folder_file_that_is_not_utf8_is_named_relative_to_it(tmp_path):
    (tmp_path / "train.json").write_bytes(b'{\n "s1-d1.avi": {\n  "sentences": ["caf\xe9"]}}\n')
    with pytest.raises(AnnotationError, match=r"^train\.json:3: not UTF-8 text \(byte 0xe9 at column 21\)"):
        load_dataset("tacos", tmp_path, split="train")


# --------------------------------------------------------------------------- extract config and docs

DOCS = REPO_ROOT / "docs" / "datasets.md"


def documented_commands(prefix: str) -> list[list[str]]:
    """The arguments after ``python -m MODULE`` of each line of docs/datasets.md starting with ``prefix``."""
    lines = [line for line in DOCS.read_text(encoding="utf-8").splitlines() if line.startswith(prefix)]
    assert lines, f"docs/datasets.md shows no `{prefix}` command"
    return [shlex.split(line)[3:] for line in lines]


def documented_default_actions() -> dict[str, str]:
    """Problem kind -> the first action listed in the policy table of docs/datasets.md."""
    defaults = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        kind = cells[0].strip("`")
        if line.startswith("|") and kind in PROBLEM_KINDS:
            defaults[kind] = re.findall(r"`(\w+)`", cells[-1])[0]
    return defaults


def test_documented_policy_defaults_are_the_codes():
    documented = documented_default_actions()
    assert sorted(documented) == sorted(PROBLEM_KINDS)
    assert documented == {k: ValidationPolicy().action(k) for k in PROBLEM_KINDS}
    assert documented["duration_mismatch"] == "error"


def test_documented_extract_commands_parse(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the docs' config paths are relative to the repository root
    text = DOCS.read_text(encoding="utf-8")
    assert "except `missing_video=keep`" in text
    by_option = {argv[2]: parse_config(argv) for argv in documented_commands("python -m extract --config ")}
    plain = parse_config(["--config", "extract/configs/qvhighlights.yaml"])
    # The extraction's defaults are the table's except missing_video.
    assert plain.policy == ValidationPolicy(missing_video="keep")
    assert plain.policy.duration_mismatch == documented_default_actions()["duration_mismatch"]
    policy = by_option["--policy"].policy
    assert (policy.duration_mismatch, policy.end_past_duration) == ("keep", "drop")
    assert policy == dataclasses.replace(plain.policy, duration_mismatch="keep", end_past_duration="drop")
    assert by_option["--annotations"].annotations == {
        "train": "my/train.jsonl",
        "val": "my/val.jsonl",
        "test": "my/test.jsonl",
    }
    (report_argv,) = documented_commands("python -m extract.datasets report qvhighlights ")
    args = report_parser().parse_args(report_argv)
    assert annotations_from_strings(args.annotations) == by_option["--annotations"].annotations
    from extract.importers import build_parser as import_parser

    (import_argv,) = documented_commands(
        "python -m extract import --format moment_detr --annotations qvhighlights train="
    )
    args = import_parser().parse_args(import_argv[1:])
    assert args.annotations == ["qvhighlights", "train=my/train.jsonl", "val=my/val.jsonl"]


def write_extract_config(path: Path, **fields) -> Path:
    config = {
        "dataset": "tiny",
        "adapter": "custom",
        "annotations": "ann.jsonl",
        "output": "out.h5",
        "video_encoders": [{"name": "tiny_clip", "weights": "none"}],
        "text_encoders": [{"name": "tiny_clip", "weights": "none"}],
        **fields,
    }
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def test_extract_config_rejects_an_unknown_dataset_listing_the_known_ones(tmp_path):
    config = write_extract_config(tmp_path / "c.yaml", adapter="qvhighlight")
    with pytest.raises(ConfigError) as info:
        parse_config(["--config", str(config)])
    assert str(info.value) == (
        "adapter: unknown dataset 'qvhighlight'; available: "
        "activitynet_captions, charades_sta, custom, qvhighlights, tacos"
    )
    with pytest.raises(ConfigError, match="variant: dataset 'tacos': unknown variant 'x'"):
        parse_config(["--config", str(config), "--adapter", "tacos", "--variant", "x"])
    with pytest.raises(ConfigError, match=r"splits: dataset 'tacos': unknown split\(s\) \['val_1'\]"):
        parse_config(["--config", str(config), "--adapter", "tacos", "--splits", "[val_1]"])
    with pytest.raises(ConfigError, match=r"annotations: dataset 'tacos': annotations name unknown file"):
        parse_config(["--config", str(config), "--adapter", "tacos", "--annotations", "val_1=a.json"])
    with pytest.raises(ConfigError, match="annotations: adapter 'custom' has no default"):
        parse_config(["--config", str(config), "--adapter", "custom", "--annotations", "null"])
    with pytest.raises(ConfigError, match=r"--policy: .*unknown problem kind 'ends'"):
        parse_config(["--config", str(config), "--adapter", "custom", "--policy", "ends=drop"])
    with pytest.raises(ConfigError, match=r"action 'clip' is not one of \('error', 'keep', 'drop'\)"):
        parse_config(["--config", str(config), "--adapter", "custom", "--policy=duration_mismatch=clip"])


def test_extract_annotations_on_the_command_line_replace_or_extend_the_configs(tmp_path):
    given = {"train": "a.jsonl", "test": "t.jsonl"}
    config = str(write_extract_config(tmp_path / "c.yaml", annotations=given))
    assert parse_config(["--config", config]).annotations == given
    replaced = parse_config(["--config", config, "--annotations", "train=b.jsonl"])
    assert replaced.annotations == {"train": "b.jsonl"}
    assert parse_config(["--config", config, "--annotations.val", "v.jsonl"]).annotations == {
        "train": "a.jsonl",
        "test": "t.jsonl",
        "val": "v.jsonl",
    }
    assert parse_config(["--config", config, "--annotations", "some/dir"]).annotations == "some/dir"
    policy = parse_config(["--config", config, "--policy", "duplicate=drop", "--limit", "2"])
    assert (policy.policy.duplicate, policy.limit, policy.policy.missing_video) == ("drop", 2, "keep")


# --------------------------------------------------------------------------- windows vs decoded duration


def test_reconcile_clips_against_the_decoded_duration_not_the_annotated_one(tmp_path):
    from extract.pipeline import reconcile_queries

    rows = [
        {"qid": "a", "video": "v.mp4", "query": "past annotated end", "windows": [[1, 3.5]], "duration": 2},
        {"qid": "b", "video": "v.mp4", "query": "starts past it", "windows": [[2.5, 3]], "duration": 2},
        {"qid": "c", "video": "v.mp4", "query": "past the real end", "windows": [[1, 5]], "duration": 2},
    ]  # fmt: skip
    path = write_jsonl(rows, tmp_path / "ann.jsonl")
    # Checked against the annotated 2 s, "a" and "c" would be clipped and "b" dropped:
    assert [r.windows for r in load_dataset("custom", path).rows] == [((1.0, 2.0),), ((1.0, 2.0),)]
    loaded = load_dataset("custom", path, window_duration_checks=False)
    assert [r.windows for r in loaded.rows] == [((1.0, 3.5),), ((2.5, 3.0),), ((1.0, 5.0),)]
    assert loaded.report.problems == []
    keep = ValidationPolicy(duration_mismatch="keep")
    kept, problems = reconcile_queries(list(loaded.rows), 4.0, keep, 1.0, "x")
    assert [(r.qid, r.windows, r.duration_sec) for r in kept] == [
        ("a", ((1.0, 3.5),), 4.0),
        ("b", ((2.5, 3.0),), 4.0),
        ("c", ((1.0, 4.0),), 4.0),
    ]
    assert [(p.kind, p.action, p.qid) for p in problems] == [
        ("duration_mismatch", "keep", ""),
        ("end_past_duration", "clip", "c"),
    ]
    assert "ends after the duration 4.0" in problems[1].detail


def test_extract_under_keep_stores_windows_checked_against_the_real_duration(tmp_path):
    """Annotated 2 s and 9 s, decoded 4 s: windows end at 3.5 s (kept) and 8 s (clipped to 4 s)."""
    from cache_schema.store import CacheReader
    from extract.__main__ import main as extract_main
    from extract.pipeline import failures_path, problems_path
    from extract.video import probe_video, write_video

    frames = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "longer.mp4", frames, Fraction(5))
    write_video(tmp_path / "shorter.mp4", frames, Fraction(5))
    decoded = probe_video(tmp_path / "longer.mp4").duration_sec
    assert decoded == pytest.approx(4.0, abs=0.25)
    rows = [
        {"qid": "l0", "video": "longer.mp4", "query": "past the annotated end", "windows": [[1.0, 3.5]]},
        {"qid": "l1", "video": "longer.mp4", "query": "starts past it", "windows": [[2.5, 3.0]]},
        {"qid": "s0", "video": "shorter.mp4", "query": "past the real end", "windows": [[1.0, 8.0]]},
    ]
    for row in rows:
        row["duration"] = 2.0 if row["video"] == "longer.mp4" else 9.0
    write_jsonl(rows, tmp_path / "ann.jsonl")
    out = tmp_path / "cache.h5"
    config = write_extract_config(
        tmp_path / "config.yaml",
        annotations=str(tmp_path / "ann.jsonl"),
        video_root=str(tmp_path),
        output=str(out),
        num_workers=0,
        batch_size=8,
    )
    assert extract_main(["--config", str(config), "--policy", "duration_mismatch=keep"]) == 0
    assert not failures_path(out).exists() or failures_path(out).read_text() == ""
    with CacheReader(out) as reader:
        assert reader.video_meta("longer").duration_sec == pytest.approx(decoded)
        assert reader.query("l0", features=False).windows == [(1.0, 3.5)]
        assert reader.query("l1", features=False).windows == [(2.5, 3.0)]
        end = reader.query("s0", features=False).windows[0][1]
        assert end == pytest.approx(reader.video_meta("shorter").duration_sec) and end < 8.0
    problems = [json.loads(line) for line in problems_path(out).read_text().splitlines()]
    assert sorted((p["kind"], p["action"], p["vid"]) for p in problems) == [
        ("duration_mismatch", "keep", "longer"),
        ("duration_mismatch", "keep", "shorter"),
        ("end_past_duration", "clip", "shorter"),
    ]


@pytest.mark.parametrize("name", ["activitynet_captions", "charades_sta", "qvhighlights", "tacos"])
def test_the_per_split_example_in_each_extract_config_parses(name, tmp_path, monkeypatch):
    """Uncommenting a config's ``# annotations:`` block gives a valid one-file-per-split config."""
    monkeypatch.chdir(REPO_ROOT)
    text = (REPO_ROOT / "extract" / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    block = re.search(r"^# annotations:\n((?:#   .*\n)+)", text, re.M)
    assert block, f"{name}.yaml shows no per-split annotations example"
    uncommented = "annotations:\n" + "".join(line[2:] + "\n" for line in block.group(1).splitlines())
    example = tmp_path / f"{name}.yaml"
    example.write_text(re.sub(r"^annotations: null.*\n", uncommented, text, flags=re.M), encoding="utf-8")
    config = parse_config(["--config", str(example)])
    adapter = get_dataset(name)
    assert sorted(config.annotations) == sorted(adapter.splits + adapter.extra_files)
    assert all(path.startswith("my/") for path in config.annotations.values())
