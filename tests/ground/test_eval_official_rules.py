"""`python -m ground eval` accepts what the official QVHighlights evaluation accepts, and no more.

The official evaluation is jayleicn/moment_detr `standalone_eval/eval.py`. Its sample submission
(Moment-DETR's validation predictions, 13 of them with a saliency list one clip short) must score
to every value of the official output saved beside it. Then each lenient rule (the official code
scores it) and each strict rule (the official code fails, or its numbers would be artefacts) on a
small crafted submission; docs/datasets.md ("Scoring a submission") has the same table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data_dir

from ground.evaluate import SubmissionError, evaluate_files, evaluate_submission, main

QVH_DIR = shared_data_dir() / "qvhighlights"
SAMPLE = QVH_DIR / "moment_detr_sample_val_preds.jsonl"
SAMPLE_METRICS = QVH_DIR / "moment_detr_sample_val_preds_metrics_raw.json"
VAL = QVH_DIR / "highlight_val_release.jsonl"
needs_sample = pytest.mark.skipif(
    not (SAMPLE.is_file() and SAMPLE_METRICS.is_file() and VAL.is_file()),
    reason=f"Moment-DETR sample submission, its official metrics or the val annotations not found in "
    f"{QVH_DIR} (set GROUNDCACHE_SHARED_DATA)",
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@needs_sample
def test_moment_detr_sample_submission_scores_like_the_official_eval(tmp_path: Path, capsys) -> None:
    sample_rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    gt_duration = {
        row["qid"]: row["duration"] for row in map(json.loads, VAL.read_text(encoding="utf-8").splitlines())
    }
    short = [r for r in sample_rows if len(r["pred_saliency_scores"]) < int(gt_duration[r["qid"]] / 2)]
    assert len(short) == 13  # the case this file exercises: short saliency lists, zero-padded

    official = json.loads(SAMPLE_METRICS.read_text(encoding="utf-8"))
    out = evaluate_files(SAMPLE, VAL)
    assert out == official  # every value, at the official 2-decimal rounding
    assert list(out) == list(official) and list(out["brief"]) == list(official["brief"])
    assert out["brief"]["MR-full-R1@0.5"] == 53.94 and out["brief"]["HL-min-VeryGood-Hit1"] == 55.55

    # The CLI prints the same JSON as the official --save_path file.
    assert main(["--submission", str(SAMPLE), "--gt", str(VAL)]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == json.dumps(official, indent=4)


# ---------------------------------------------------------------------------------------------
# Crafted submissions, rule by rule
# ---------------------------------------------------------------------------------------------

# An 8-s video: 4 labelled clips; clip 0 scored 4 by all three annotators (positive at every level),
# clip 1 scored 0, clips 2 and 3 unlabelled (0).
GT = [
    {
        "qid": 1,
        "vid": "v1",
        "duration": 8,
        "relevant_windows": [[0, 2]],
        "relevant_clip_ids": [0, 1],
        "saliency_scores": [[4, 4, 4], [0, 0, 0]],
    }
]


def saliency(scores: list[float], qid: object = 1) -> list[dict]:
    return [{"qid": qid, "pred_saliency_scores": scores}]


def windows(wins: list[list], qid: object = 1) -> list[dict]:
    return [{"qid": qid, "pred_relevant_windows": wins}]


def hl(out: dict) -> tuple[float, float]:
    return out["HL-min-Fair"]["HL-mAP"], out["HL-min-Fair"]["HL-Hit1"]


def test_short_saliency_list_is_zero_padded() -> None:
    # [-1] padded to [-1, 0, 0, 0]: the positive clip 0 ranks last of 4, AP = 1/4. Hit1 looks at the
    # given list only, whose top clip is clip 0: a hit.
    assert hl(evaluate_submission(saliency([-1.0]), GT)) == (25.0, 100.0)
    # Written out, the padded list has the same AP, but its top clip is clip 1 (first of the tied 0s).
    assert hl(evaluate_submission(saliency([-1.0, 0, 0, 0]), GT)) == (25.0, 0.0)


def test_long_saliency_list_is_cut_for_map_and_its_extra_top_clip_is_a_hit1_miss() -> None:
    # mAP sees [0, 0, 0, 0]: one tie of 4 clips holding the positive, AP = 1/4. Hit1's top clip is
    # clip 4, past the 4 labelled clips: a miss.
    assert hl(evaluate_submission(saliency([0, 0, 0, 0, 5.0]), GT)) == (25.0, 0.0)
    assert hl(evaluate_submission(saliency([5.0, 0, 0, 0, 0, 0, 0]), GT)) == (100.0, 100.0)


def test_unsorted_windows_rank_by_score_for_map_and_first_as_written_for_r1() -> None:
    gt = [{k: v for k, v in GT[0].items() if k not in ("relevant_clip_ids", "saliency_scores")}]
    gt[0]["relevant_windows"] = [[0, 10]]
    out = evaluate_submission(windows([[20, 30, 0.1], [0, 10, 0.9]]), gt)
    assert out["full"]["MR-R1"]["0.5"] == 0.0  # the first window as written misses
    assert out["full"]["MR-mAP"]["average"] == 100.0  # the top-scored window is exact


def test_only_the_first_10_windows_as_written_count_for_map() -> None:
    gt = [{k: v for k, v in GT[0].items() if k not in ("relevant_clip_ids", "saliency_scores")}]
    gt[0]["relevant_windows"] = [[0, 10]]
    misses = [[20, 30, 0.5]] * 10
    assert evaluate_submission(windows([*misses, [0, 10, 0.9]]), gt)["full"]["MR-mAP"]["average"] == 0.0
    assert evaluate_submission(windows([[0, 10, 0.9], *misses]), gt)["full"]["MR-mAP"]["average"] == 100.0


def test_extra_window_items_extra_keys_and_float_qids_are_ignored() -> None:
    plain = evaluate_submission(windows([[0, 2, 0.9], [2, 6, 0.5]]), GT)
    assert plain["full"]["MR-R1"]["0.95"] == 100.0
    decorated = windows([[0, 2, 0.9, "label"], [2, 6, 0.5, None, 7]], qid=1.0)
    decorated[0].update(query="a person waves", vid="another video", extra={"any": 1})
    assert evaluate_submission(decorated, GT) == plain


def test_cli_scores_another_vid_and_says_so(tmp_path: Path, capsys) -> None:
    sub = write_jsonl(tmp_path / "pred.jsonl", [{**saliency([5.0, 0, 0, 0])[0], "vid": "other"}])
    gt = write_jsonl(tmp_path / "gt.jsonl", GT)
    assert main(["--submission", str(sub), "--gt", str(gt)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["HL-min-Fair"]["HL-mAP"] == 100.0
    assert "note: 1 queries name another vid" in captured.err
    assert "pred.jsonl line 1 (qid 1): vid 'other', the ground truth says 'v1'" in captured.err


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        # Strict in the official evaluation too (an assertion or an exception there).
        (
            saliency([5.0, 0, 0, 0], qid="1"),
            r"1 queries not in the ground truth, e.g. qid '1' \(first at submission row 0 \(qid '1'\)\); "
            r"the ground truth has qid 1: ids match by value and type",
        ),
        ([{"pred_saliency_scores": [1.0]}], r"row 0: missing 'qid'"),
        (saliency([]), r"row 0 \(qid 1\): 'pred_saliency_scores' must be a non-empty list"),
        (saliency([1.0, "high"]), "must be a non-empty list of finite numbers"),
        (windows([]), r"'pred_relevant_windows' must be a non-empty list"),
        (windows([[0, 2]]), r"'pred_relevant_windows'\[0\] must start with 3 finite numbers, got \[0, 2\]"),
        (windows([[0, "2", 0.5]]), r"'pred_relevant_windows'\[0\] must start with 3 finite numbers"),
        ([{"qid": 1}], "neither 'pred_relevant_windows' nor 'pred_saliency_scores'"),
        # Stricter than the official evaluation, whose numbers would be artefacts.
        ([*saliency([1.0]), *saliency([2.0])], r"row 1 \(qid 1\): qid repeated \(first at submission row 0"),
        (windows([[0, 2, float("nan")]]), r"'pred_relevant_windows'\[0\] must start with 3 finite numbers"),
        (saliency([1.0, float("inf")]), "finite numbers"),
        (windows([[0, 2, True]]), r"'pred_relevant_windows'\[0\] must start with 3 finite numbers"),
        (saliency([1.0], qid=True), r"qid must be an int or a string, got True"),
        (windows([[4, 2, 0.5]]), r"row 0 \(qid 1\): pred_relevant_windows\[0\] has start > end"),
    ],
)
def test_strict_rules(rows: list[dict], message: str) -> None:
    with pytest.raises(SubmissionError, match=message):
        evaluate_submission(rows, GT)


def test_a_field_on_some_rows_only_is_refused_whichever_row_lacks_it() -> None:
    gt = [GT[0], {**GT[0], "qid": 2, "vid": "v2"}]
    both = {"pred_relevant_windows": [[0, 2, 0.9]], "pred_saliency_scores": [5.0, 0, 0, 0]}
    # The official code ignores the windows of every row when the first row has none, and fails
    # when a later row has none: order-dependent, so both orders are refused.
    for rows in (
        [{"qid": 1, "pred_saliency_scores": [5.0, 0, 0, 0]}, {"qid": 2, **both}],
        [{"qid": 1, **both}, {"qid": 2, "pred_saliency_scores": [5.0, 0, 0, 0]}],
    ):
        with pytest.raises(SubmissionError, match="no 'pred_relevant_windows' while other queries have it"):
            evaluate_submission(rows, gt)


def test_file_errors_name_file_line_and_qid(tmp_path: Path, capsys) -> None:
    sub = tmp_path / "pred.jsonl"
    sub.write_text(
        json.dumps(saliency([5.0, 0, 0, 0])[0]) + "\n" + '{"qid": 2, "pred_saliency_scores": [NaN]}\n',
        encoding="utf-8",
    )
    gt = write_jsonl(tmp_path / "gt.jsonl", [GT[0], {**GT[0], "qid": 2, "vid": "v2"}])
    assert main(["--submission", str(sub), "--gt", str(gt)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {sub} line 2 (qid 2): 'pred_saliency_scores' must be")
        and err.count("\n") == 1
    )
