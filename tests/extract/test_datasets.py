"""Annotation adapters on the real annotation files (shared/data) and on tiny custom files."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from extract.datasets import (
    ALLOWED_ACTIONS,
    PROBLEM_KINDS,
    AnnotationError,
    AnnotationValidationError,
    ValidationPolicy,
    check_duration,
    get_dataset,
    list_datasets,
    load_dataset,
    shared_data_dir,
)
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
        "keep",
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
