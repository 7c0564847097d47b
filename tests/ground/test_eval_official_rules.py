"""`python -m ground eval` accepts what the official QVHighlights evaluation accepts, and no more.

The official evaluation is jayleicn/moment_detr `standalone_eval/eval.py`. Its sample submission
(Moment-DETR's validation predictions, 13 of them with a saliency list one clip short) must score
to every value of the official output saved beside it. Then each lenient rule (the official code
scores it) and each strict rule (the official code fails, or its numbers would be artefacts) on a
small crafted submission; docs/datasets.md ("Scoring a submission") has the same table.

The inputs that the official evaluation scores although they are dubious (a repeated qid, a field
that the first row lacks, NaN / Infinity / booleans, start > end) are scored to the numbers of a
transcription of the official moment retrieval code kept in this file (`official_moment_metrics`),
or to hand-derived highlight values, and each gives one `warning:` line in the CLI.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
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
        (saliency([1.0, "high"]), "must be a non-empty list of numbers"),
        (saliency([1.0, None]), "must be a non-empty list of numbers"),
        (windows([]), r"'pred_relevant_windows' must be a non-empty list"),
        (windows([[0, 2]]), r"'pred_relevant_windows'\[0\] must start with 3 numbers, got \[0, 2\]"),
        (windows([[0, "2", 0.5]]), r"'pred_relevant_windows'\[0\] must start with 3 numbers"),
        # numpy cannot subtract two booleans: the official IoU raises TypeError.
        (windows([[False, True, 0.5]]), r"pred_relevant_windows\[0\] has booleans for both start and end"),
        # NaN equals nothing: the official id sets differ.
        (saliency([1.0], qid=float("nan")), "qid NaN matches no query"),
        # sklearn's precision_recall_curve refuses NaN / Infinity; clip 0 is positive, clip 1 is not.
        (
            saliency([1.0, float("inf"), 0, 0]),
            r"'pred_saliency_scores' holds NaN or Infinity among its first 4",
        ),
        # The official code scores nothing when the first row has neither field (and fails on a
        # later row without a field that the first row has).
        ([{"qid": 1}], "neither 'pred_relevant_windows' nor 'pred_saliency_scores'"),
    ],
)
def test_strict_rules(rows: list[dict], message: str) -> None:
    with pytest.raises(SubmissionError, match=message):
        evaluate_submission(rows, GT)


def test_a_field_missing_on_a_later_row_is_refused() -> None:
    gt = [GT[0], {**GT[0], "qid": 2, "vid": "v2"}]
    both = {"pred_relevant_windows": [[0, 2, 0.9]], "pred_saliency_scores": [5.0, 0, 0, 0]}
    rows = [{"qid": 1, **both}, {"qid": 2, "pred_saliency_scores": [5.0, 0, 0, 0]}]
    # The official code reads 'pred_relevant_windows' on every row because row 0 has it: KeyError.
    with pytest.raises(
        SubmissionError, match=r"row 1 \(qid 2\): no 'pred_relevant_windows' while submission row 0"
    ):
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
        err.startswith(f"error: {sub} line 2 (qid 2): 'pred_saliency_scores' holds NaN or Infinity")
        and err.count("\n") == 1
    )


# ---------------------------------------------------------------------------------------------
# Accepted like the official evaluation although dubious: the official numbers and a warning
# ---------------------------------------------------------------------------------------------

# A transcription of moment_detr standalone_eval (utils.py and eval.py, moment retrieval part) with
# its arithmetic unchanged, one worker instead of a process pool. It takes the rows as parsed JSON.


def official_iou_cross(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    areas1 = spans1[:, 1] - spans1[:, 0]
    areas2 = spans2[:, 1] - spans2[:, 0]
    left = np.maximum(spans1[:, None, 0], spans2[None, :, 0])
    right = np.minimum(spans1[:, None, 1], spans2[None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = areas1[:, None] + areas2[None, :] - inter
    return inter / union


def official_iou_paired(pred_windows: np.ndarray, gt_windows: np.ndarray) -> np.ndarray:
    intersection = np.maximum(
        0, np.minimum(pred_windows[:, 1], gt_windows[:, 1]) - np.maximum(pred_windows[:, 0], gt_windows[:, 0])
    )
    union = np.maximum(pred_windows[:, 1], gt_windows[:, 1]) - np.minimum(
        pred_windows[:, 0], gt_windows[:, 0]
    )
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union != 0)


def official_interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    mprecision = np.hstack([[0], precision, [0]])
    mrecall = np.hstack([[0], recall, [1]])
    for i in range(len(mprecision) - 1)[::-1]:
        mprecision[i] = max(mprecision[i], mprecision[i + 1])
    idx = np.where(mrecall[1::] != mrecall[0:-1])[0] + 1
    return np.sum((mrecall[idx] - mrecall[idx - 1]) * mprecision[idx])


def official_detection_ap(gts: list[list], preds: list[list], thresholds: list[float]) -> np.ndarray:
    """compute_average_precision_detection for one query: gts [[st, ed]], preds [[st, ed, score]]."""
    num_thresholds, num_gts, num_preds = len(thresholds), len(gts), len(preds)
    lock_gt = np.ones((num_thresholds, num_gts)) * -1
    preds = sorted(preds, key=lambda x: -x[2])  # the official prediction.sort(key=lambda x: -x['score'])
    tp = np.zeros((num_thresholds, num_preds))
    fp = np.zeros((num_thresholds, num_preds))
    _gt = np.array([[gt[0], gt[1]] for gt in gts])
    for idx, pred in enumerate(preds):
        tiou_arr = official_iou_cross(np.array([[pred[0], pred[1]]]), _gt)[0].reshape(-1)
        tiou_sorted_idx = tiou_arr.argsort()[::-1]
        for t_idx, tiou_threshold in enumerate(thresholds):
            for j_idx in tiou_sorted_idx:
                if tiou_arr[j_idx] < tiou_threshold:
                    fp[t_idx, idx] = 1
                    break
                if lock_gt[t_idx, j_idx] >= 0:
                    continue
                tp[t_idx, idx] = 1
                lock_gt[t_idx, j_idx] = idx
                break
            if fp[t_idx, idx] == 0 and tp[t_idx, idx] == 0:
                fp[t_idx, idx] = 1
    tp_cumsum = np.cumsum(tp, axis=1).astype(float)
    fp_cumsum = np.cumsum(fp, axis=1).astype(float)
    recall_cumsum = tp_cumsum / float(num_gts)
    precision_cumsum = tp_cumsum / (tp_cumsum + fp_cumsum)
    return np.array(
        [official_interpolated_ap(precision_cumsum[t], recall_cumsum[t]) for t in range(num_thresholds)]
    )


OFFICIAL_THRESHOLDS = [float(f"{e:.2f}") for e in np.linspace(0.5, 0.95, 10)]


def official_mr_ap(submission: list[dict], ground_truth: list[dict]) -> dict[str, float]:
    pred_qid2data, gt_qid2data = defaultdict(list), defaultdict(list)
    for d in submission:
        for w in d["pred_relevant_windows"][:10]:
            pred_qid2data[d["qid"]].append([w[0], w[1], w[2]])
    for d in ground_truth:
        for w in d["relevant_windows"]:
            gt_qid2data[d["qid"]].append([w[0], w[1]])
    qid2ap_list = {
        qid: official_detection_ap(gt_qid2data[qid], preds, OFFICIAL_THRESHOLDS)
        for qid, preds in pred_qid2data.items()
    }
    ap_thds = np.array(list(qid2ap_list.values())).mean(0)
    iou_thd2ap = dict(zip([str(e) for e in OFFICIAL_THRESHOLDS], ap_thds, strict=True))
    iou_thd2ap["average"] = np.mean(ap_thds)
    return {k: float(f"{100 * v:.2f}") for k, v in iou_thd2ap.items()}


def official_mr_r1(submission: list[dict], ground_truth: list[dict]) -> dict[str, float]:
    pred_qid2window = {d["qid"]: d["pred_relevant_windows"][0][:2] for d in submission}
    gt_qid2window = {}
    for d in ground_truth:
        cur_ious = official_iou_cross(np.array([pred_qid2window[d["qid"]]]), np.array(d["relevant_windows"]))[
            0
        ]
        gt_qid2window[d["qid"]] = d["relevant_windows"][np.argmax(cur_ious)]
    qids = list(pred_qid2window.keys())
    pred_windows = np.array([pred_qid2window[k] for k in qids]).astype(float)
    gt_windows = np.array([gt_qid2window[k] for k in qids]).astype(float)
    pred_gt_iou = official_iou_paired(pred_windows, gt_windows)
    return {str(thd): float(f"{np.mean(pred_gt_iou >= thd) * 100:.2f}") for thd in OFFICIAL_THRESHOLDS}


def official_moment_metrics(submission: list[dict], ground_truth: list[dict]) -> dict[str, dict]:
    """eval_moment_retrieval: {"short": {"MR-mAP": .., "MR-R1": ..}, "middle", "long", "full"}."""
    out = {}
    for (min_l, max_l), name in zip(
        [[0, 10], [10, 30], [30, 150], [0, 150]], ["short", "middle", "long", "full"], strict=True
    ):
        sub, gt = submission, ground_truth
        if not (min_l == 0 and max_l == 150):  # get_data_by_range
            gt = []
            for d in ground_truth:
                in_range = [w for w in d["relevant_windows"] if min_l < w[1] - w[0] <= max_l]
                if in_range:
                    gt.append({**copy.deepcopy(d), "relevant_windows": in_range})
            sub = [copy.deepcopy(d) for d in submission if d["qid"] in {g["qid"] for g in gt}]
        with np.errstate(all="ignore"):  # numpy warns on the NaN arithmetic (as in the official run)
            out[name] = {"MR-mAP": official_mr_ap(sub, gt), "MR-R1": official_mr_r1(sub, gt)}
    return out


def moment_sections(out: dict) -> str:
    """The moment sections as JSON text, so that NaN (an empty bucket) compares equal to NaN."""
    return json.dumps({name: out[name] for name in ("short", "middle", "long", "full")}, sort_keys=True)


# Three queries, one per length bucket (5 s, 20 s and 40 s windows), the second with two windows.
MOMENT_GT = [
    {"qid": 1, "vid": "v1", "duration": 150, "relevant_windows": [[0, 5]]},
    {"qid": 2, "vid": "v2", "duration": 150, "relevant_windows": [[10, 30], [50, 55]]},
    {"qid": 3, "vid": "v3", "duration": 150, "relevant_windows": [[60, 100]]},
]
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(
            [
                {"qid": 1, "pred_relevant_windows": [[20, 30, 0.9], [0, 6, 0.5]]},
                {"qid": 2, "pred_relevant_windows": [[10, 30, 0.8]]},
                {"qid": 3, "pred_relevant_windows": [[60, 90, 0.7]]},
                {"qid": 1, "pred_relevant_windows": [[0, 5, 0.2], [1, 4, 0.95]]},
                {"qid": 2, "pred_relevant_windows": [[50, 55, 0.1]]},
            ],
            id="repeated-qids",
        ),
        pytest.param(
            [
                {"qid": 1, "pred_relevant_windows": [[NAN, 5, 0.9]]},
                {
                    "qid": 2,
                    "pred_relevant_windows": [[10, 30, NAN], [50, 55, 0.5], [0, 1, 0.7], [9, 30, NAN]],
                },
                {"qid": 3, "pred_relevant_windows": [[INF, INF, 0.9], [0, INF, 0.8], [60, 100, -INF]]},
            ],
            id="nan-and-infinity",
        ),
        pytest.param(
            [
                {
                    "qid": 1,
                    # [7, 2] with [0, 5]: union -5 + 5 - 0 = 0, IoU NaN (a match)
                    "pred_relevant_windows": [[7, 2, 0.9], [0, 5, 0.1]],
                },
                {
                    "qid": 2,
                    # [30, 10]: IoU NaN with [10, 30] (union 0), -0.0 with [50, 55] (union -15)
                    "pred_relevant_windows": [[30, 10, 0.9], [12, 28, 0.8]],
                },
                {"qid": 3, "pred_relevant_windows": [[100, 60, 0.9], [90, 70, 0.5]]},
            ],
            id="start-after-end",
        ),
        pytest.param(
            [
                {"qid": True, "pred_relevant_windows": [[0, True, 0.9], [False, 5, True]]},
                {"qid": 2, "pred_relevant_windows": [[10, 30, False]]},
                {"qid": 3, "pred_relevant_windows": [[60, 100, 1]]},
            ],
            id="booleans",
        ),
    ],
)
def test_dubious_windows_score_like_the_official_transcription(rows: list[dict]) -> None:
    ours = evaluate_submission(rows, MOMENT_GT)
    assert moment_sections(ours) == json.dumps(official_moment_metrics(rows, MOMENT_GT), sort_keys=True)


def test_repeated_qid_pools_windows_for_map_and_takes_the_last_row_for_r1_and_highlights() -> None:
    rows = [
        {"qid": 1, "pred_relevant_windows": [[20, 30, 0.9]], "pred_saliency_scores": [0, 5.0, 0, 0]},
        {"qid": 1, "pred_relevant_windows": [[0, 2, 0.5]], "pred_saliency_scores": [5.0, 0, 0, 0]},
    ]
    out = evaluate_submission(rows, GT)
    # R1: the last row's first window [0, 2] is exact. mAP: the pooled ranking is [20, 30] (0.9, a
    # miss) then [0, 2] (0.5, a hit): precision 1/2 at recall 1, AP 0.5 at every threshold.
    assert out["full"]["MR-R1"]["0.95"] == 100.0 and out["full"]["MR-mAP"]["average"] == 50.0
    # Highlights from the last row: clip 0, the positive one, on top: AP 1, a hit.
    assert hl(out) == (100.0, 100.0)
    # GT has no middle or long window; the official code fails on an empty bucket, so compare "full".
    assert out["full"] == {"MR-mAP": official_mr_ap(rows, GT), "MR-R1": official_mr_r1(rows, GT)}
    # The official code never reads an earlier row's saliency: junk or nothing there is accepted.
    assert evaluate_submission([{**rows[0], "pred_saliency_scores": "x"}, rows[1]], GT) == out
    middle = {"qid": 1, "pred_relevant_windows": [[4, 6, 0.1]]}  # a miss, ranked last
    assert evaluate_submission([rows[0], middle, rows[1]], GT) == evaluate_submission(
        [rows[0], {**middle, "pred_saliency_scores": [0, 0, 5.0, 0]}, rows[1]], GT
    )


def test_hand_values_of_nan_and_start_after_end() -> None:
    gt = [{"qid": 1, "vid": "v1", "duration": 8, "relevant_windows": [[0, 2]]}]
    # [NaN, 5]: IoU NaN, which the official loop counts as a match (NaN < t is false): AP 1; R1's
    # IoU NaN >= t is false: a miss.
    out = evaluate_submission(windows([[NAN, 5, 0.9]]), gt)
    assert out["full"]["MR-mAP"]["average"] == 100.0 and out["full"]["MR-R1"]["0.5"] == 0.0
    # [4, 2] against [0, 2]: intersection 0, union (2 - 4) + 2 - 0 = 0, IoU 0 / 0 = NaN: a mAP match.
    out = evaluate_submission(windows([[4, 2, 0.9]]), gt)
    assert out["full"]["MR-mAP"]["average"] == 100.0 and out["full"]["MR-R1"]["0.5"] == 0.0
    # [5, 2]: union (2 - 5) + 2 = -1, IoU -0.0: a miss.
    assert evaluate_submission(windows([[5, 2, 0.9]]), gt)["full"]["MR-mAP"]["average"] == 0.0


def test_booleans_count_as_1_and_0() -> None:
    as_numbers = [{"qid": 1, "pred_relevant_windows": [[0, 2, 1]], "pred_saliency_scores": [1, 0, 0, 0]}]
    as_bools = [
        {
            "qid": True,
            "pred_relevant_windows": [[False, 2, True]],
            "pred_saliency_scores": [True, False, 0, 0],
        }
    ]
    assert evaluate_submission(as_bools, GT) == evaluate_submission(as_numbers, GT)


def test_nan_saliency_scored_where_the_official_scores_it() -> None:
    # The NaN is past the 4 labelled clips: HL-mAP sees [5, 0, 0, 0] (AP 1); Hit1's top clip is
    # numpy's argmax, the first NaN, clip 4: unlabelled, a miss.
    assert hl(evaluate_submission(saliency([5.0, 0, 0, 0, NAN]), GT)) == (100.0, 0.0)
    # Labels all 0 for every annotator: AP 0 whatever the scores (the official get_ap returns
    # before sklearn sees them), Hit1 on clip 0 (argmax takes the first NaN) a miss.
    unlabelled_clips = [{**GT[0], "relevant_clip_ids": [1], "saliency_scores": [[0, 0, 0]]}]
    assert hl(evaluate_submission(saliency([NAN, 1.0, 0, 0]), unlabelled_clips)) == (0.0, 0.0)


def test_first_row_decides_the_fields() -> None:
    gt = [GT[0], {**GT[0], "qid": 2, "vid": "v2"}]
    saliency_only = [
        {"qid": 1, "pred_saliency_scores": [5.0, 0, 0, 0]},
        {"qid": 2, "pred_saliency_scores": [0, 5.0, 0, 0]},
    ]
    # Row 0 has no windows: the official code ignores them on every row, unread (so even junk).
    later_windows = [saliency_only[0], {**saliency_only[1], "pred_relevant_windows": "junk"}]
    assert evaluate_submission(later_windows, gt) == evaluate_submission(saliency_only, gt)
    assert list(evaluate_submission(later_windows, gt)) == [
        "brief",
        "HL-min-Fair",
        "HL-min-Good",
        "HL-min-VeryGood",
    ]


def test_cli_warns_once_per_kind_naming_file_line_and_qid(tmp_path: Path, capsys) -> None:
    gt = write_jsonl(tmp_path / "gt.jsonl", MOMENT_GT)
    lines = [
        '{"qid": 1, "pred_relevant_windows": [[0, 5, NaN]]}',
        '{"qid": 2, "pred_relevant_windows": [[30, 10, 0.9]], "pred_saliency_scores": [1]}',
        '{"qid": 3, "pred_relevant_windows": [[60, 100, true]]}',
        '{"qid": 1, "pred_relevant_windows": [[0, Infinity, 0.5]]}',
        '{"qid": 1, "pred_relevant_windows": [[0, 5, 0.5]]}',
    ]
    sub = tmp_path / "pred.jsonl"
    sub.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["--submission", str(sub), "--gt", str(gt)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in lines]
    assert moment_sections(json.loads(captured.out)) == json.dumps(
        official_moment_metrics(rows, MOMENT_GT), sort_keys=True
    )
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 5 and len(captured.err.splitlines()) == 5
    expected = [
        f"warning: 2 rows repeat the qid of an earlier row, e.g. {sub} line 4 (qid 1) "
        f"(first at {sub} line 1 (qid 1));",
        f"warning: 1 rows hold a prediction field that the first row lacks, e.g. {sub} line 2 (qid 2): "
        f"'pred_saliency_scores' (not on {sub} line 1);",
        f"warning: 1 rows hold true / false as a number, e.g. {sub} line 3 (qid 3): "
        "pred_relevant_windows[0][2] is true;",
        f"warning: 2 rows hold NaN or Infinity as a number, e.g. {sub} line 1 (qid 1): "
        "pred_relevant_windows[0][2] is NaN;",
        f"warning: 1 rows hold a predicted window with start > end, e.g. {sub} line 2 (qid 2): "
        "pred_relevant_windows[0] is [30, 10, 0.9];",
    ]
    for line, start in zip(warnings, expected, strict=True):
        assert line.startswith(start), (line, start)
