"""extract.bench_grow: the query-text swap that builds a cache of real QVHighlights queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extract.bench_grow import BenchGrowError, _use_query_texts


def _synthetic_rows(path: Path) -> list[dict]:
    rows = [
        {"qid": "syn0000_q0", "video": "videos/syn0000.mp4", "vid": "syn0000", "query": "a red circle",
         "windows": [[1.0, 2.0]], "split": "train", "duration": 10.0},
        {"qid": "syn0001_q0", "video": "videos/syn0001.mp4", "vid": "syn0001", "query": "a blue square",
         "windows": [[3.0, 4.5]], "split": "test", "duration": 8.0},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_query_texts_replace_the_synthetic_queries_one_row_each(tmp_path: Path) -> None:
    annotations = tmp_path / "annotations.jsonl"
    synthetic = _synthetic_rows(annotations)
    texts = tmp_path / "highlight_val_release.jsonl"
    # QVHighlights files end without a newline; their other fields are ignored.
    texts.write_text(
        "\n".join(json.dumps({"qid": q, "query": f"text {q}", "vid": "yt_0_150"}) for q in (7, 8, 9)),
        encoding="utf-8",
    )
    _use_query_texts(annotations, [texts])
    rows = [json.loads(line) for line in annotations.read_text(encoding="utf-8").splitlines()]
    assert [r["qid"] for r in rows] == [f"highlight_val_release_{q}" for q in (7, 8, 9)]
    assert [r["query"] for r in rows] == ["text 7", "text 8", "text 9"]
    # videos, windows, splits and durations cycle through the synthetic rows
    for row, source in zip(rows, [synthetic[0], synthetic[1], synthetic[0]], strict=True):
        assert {k: row[k] for k in ("video", "vid", "windows", "split", "duration")} == {
            k: source[k] for k in ("video", "vid", "windows", "split", "duration")
        }


@pytest.mark.parametrize(
    ("line", "message"),
    [('{"qid": 2}', "needs a qid and a query text"), ("{not json", "not JSON")],
)
def test_a_bad_query_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    annotations = tmp_path / "annotations.jsonl"
    _synthetic_rows(annotations)
    texts = tmp_path / "q.jsonl"
    texts.write_text('{"qid": 1, "query": "a"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(BenchGrowError, match=rf"q\.jsonl:2: {message}"):
        _use_query_texts(annotations, [texts])
