"""Tests of ground.metrics and ground.evaluate (`python -m ground eval`).

Hand-computed cases first, then the real QVHighlights validation annotations from the shared data
directory (`../shared/data` beside the repository, or $GROUNDCACHE_SHARED_DATA), skipped when absent.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ground.evaluate import SubmissionError, evaluate_submission, main, parse_ground_truth
from ground.metrics import (
    QVHIGHLIGHTS_LENGTH_BUCKETS,
    LengthBucket,
    MomentRetrievalMetric,
    detection_average_precision,
    highlight_average_precision,
    parse_length_buckets,
    qvhighlights_highlight_metrics,
    qvhighlights_moment_metrics,
    retrieval_metrics,
    temporal_iou,
    voc_average_precision,
)

SHARED_DATA = Path(
    os.environ.get("GROUNDCACHE_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")
)
QVH_VAL = SHARED_DATA / "qvhighlights" / "highlight_val_release.jsonl"
needs_qvh_val = pytest.mark.skipif(
    not QVH_VAL.is_file(),
    reason=f"real QVHighlights annotations not found at {QVH_VAL} (set GROUNDCACHE_SHARED_DATA)",
)

OFFICIAL_BRIEF_KEYS = [
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
    "MR-full-mAP",
    "MR-full-mAP@0.5",
    "MR-full-mAP@0.75",
    "MR-long-mAP",
    "MR-middle-mAP",
    "MR-short-mAP",
    "HL-min-Fair-mAP",
    "HL-min-Fair-Hit1",
    "HL-min-Good-mAP",
    "HL-min-Good-Hit1",
    "HL-min-VeryGood-mAP",
    "HL-min-VeryGood-Hit1",
]
OFFICIAL_SECTIONS = [
    "brief",
    "HL-min-Fair",
    "HL-min-Good",
    "HL-min-VeryGood",
    "full",
    "long",
    "middle",
    "short",
]
THRESHOLD_KEYS = ["0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]


def w(*pairs: float) -> np.ndarray:
    """Windows (N, 2) from a flat list of start, end."""
    return np.array(pairs, dtype=np.float64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def test_temporal_iou_values() -> None:
    iou = temporal_iou(w(0, 10, 5, 15, 20, 20), w(0, 10, 10, 20, 20, 20))
    expected = [
        [1.0, 0.0, 0.0],
        [5 / 15, 5 / 15, 0.0],
        [0.0, 0.0, 0.0],  # a zero-length window: IoU 0, also against itself (empty union)
    ]
    np.testing.assert_allclose(iou, expected)


def test_length_bucket_edges_are_min_exclusive_max_inclusive() -> None:
    bucket = LengthBucket("short", 0.0, 10.0)
    np.testing.assert_array_equal(bucket.select(w(0, 10, 0, 10.5, 3, 3, 2, 4)), w(0, 10, 2, 4))
    assert parse_length_buckets("short=0:10, middle=10:30,long=30:150") == QVHIGHLIGHTS_LENGTH_BUCKETS
    assert parse_length_buckets("short:0:10,middle:10:30,long:30:150") == QVHIGHLIGHTS_LENGTH_BUCKETS
    for bad in ("short=0-10", "short", "short=10:0", "full=0:10", "a=0:1,a=1:2", "x=0:inf"):
        with pytest.raises(ValueError, match="bucket"):
            parse_length_buckets(bad)


def test_voc_average_precision_hand_case() -> None:
    # Ranking: hit, miss, hit over 2 positives -> recall .5, .5, 1; precision 1, .5, 2/3.
    # Envelope at recall .5 is 1 and at recall 1 is 2/3: AP = .5 * 1 + .5 * 2/3.
    ap = voc_average_precision(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0]))
    assert ap == pytest.approx(0.5 + 1 / 3)


def test_detection_ap_multi_window_each_gt_matched_once() -> None:
    gt = w(0, 10, 20, 30)
    # Two copies of the first window: the second one is a false positive.
    preds, scores = w(0, 10, 0, 10, 20, 30), np.array([0.9, 0.8, 0.7])
    assert detection_average_precision(preds, scores, gt, [0.5]) == pytest.approx([0.5 + 1 / 3])
    # Covering both windows with one prediction overlaps each by 10 of 30 s: IoU 1/3.
    np.testing.assert_allclose(detection_average_precision(w(0, 30), [1.0], gt, [0.3, 0.5]), [0.5, 0.0])


def test_detection_ap_iou_threshold_is_inclusive() -> None:
    # [2, 8] vs [0, 6]: intersection 4, union 8 -> IoU exactly 0.5, a hit at 0.5.
    np.testing.assert_allclose(detection_average_precision(w(2, 8), [1.0], w(0, 6), [0.5, 0.55]), [1.0, 0.0])


def test_detection_ap_score_ties_keep_the_given_order() -> None:
    gt = w(0, 10)
    miss_then_hit = detection_average_precision(w(50, 60, 0, 10), [0.5, 0.5], gt, [0.5])
    hit_then_miss = detection_average_precision(w(0, 10, 50, 60), [0.5, 0.5], gt, [0.5])
    assert miss_then_hit == pytest.approx([0.5]) and hit_then_miss == pytest.approx([1.0])
    # Scores, not positions, rank otherwise.
    assert detection_average_precision(w(50, 60, 0, 10), [0.1, 0.9], gt, [0.5]) == pytest.approx([1.0])


def test_highlight_ap_hand_cases() -> None:
    # Distinct scores, positives ranked 1st and 3rd: envelope precision 1 at recall .5, 2/3 at recall 1.
    assert highlight_average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    # A tie at the top: one operating point (precision 1/2, recall 1/2), then 2/3 at recall 1; the
    # envelope gives 2/3 at both recall levels.
    assert highlight_average_precision([1, 0, 1], [0.5, 0.5, 0.1]) == pytest.approx(2 / 3)
    # A tie recalling both positives at once is one recall level, weighted once: precision 2/3.
    assert highlight_average_precision([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.1]) == pytest.approx(2 / 3)
    assert highlight_average_precision([0, 0, 0], [3.0, 2.0, 1.0]) == 0.0
    assert highlight_average_precision([1, 1], [0.0, 5.0]) == 1.0


# ---------------------------------------------------------------------------------------------
# Generic retrieval metrics
# ---------------------------------------------------------------------------------------------


def test_retrieval_metrics_hand_case_with_multi_window_ground_truth() -> None:
    pred_windows = [
        w(20, 28, 0, 10),  # query 0: top-1 matches the 2nd GT window (max-over-GT convention): IoU 0.8
        w(0, 4, 0, 10),  # query 1: top-1 IoU 0.4, top-2 IoU 1
        w(50, 60),  # query 2: a single window, IoU 0
    ]
    pred_scores = [np.array([0.9, 0.1]), np.array([0.8, 0.7]), np.array([0.5])]
    gt_windows = [w(0, 6, 20, 30), w(0, 10), w(0, 10)]
    out = retrieval_metrics(
        pred_windows, pred_scores, gt_windows, length_buckets=[LengthBucket("short", 0, 8)]
    )
    assert out["MR-full-num_queries"] == 3
    assert out["MR-full-R1@0.3"] == pytest.approx(200 / 3)
    assert out["MR-full-R1@0.5"] == pytest.approx(100 / 3)
    assert out["MR-full-R1@0.7"] == pytest.approx(100 / 3)
    assert out["MR-full-R5@0.7"] == pytest.approx(200 / 3)  # query 2 has fewer than 5 windows: a miss
    assert out["MR-full-mIoU"] == pytest.approx(100 * (0.8 + 0.4 + 0.0) / 3)
    # Query 0 at IoU 0.5: hit on [20, 30] then [0, 10] vs [0, 6] (IoU 0.6) -> AP 1 up to IoU 0.6.
    assert out["MR-full-mAP@0.5"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    # Only query 0 has a window of length <= 8 s, and there only [0, 6] is its ground truth, so
    # the top-1 [20, 28] is a miss and the 2nd window (IoU 0.6) the hit.
    assert out["MR-short-num_queries"] == 1
    assert out["MR-short-R1@0.1"] == 0.0
    assert out["MR-short-R5@0.5"] == 100.0
    assert out["MR-short-mIoU"] == 0.0
    assert out["MR-short-mAP@0.5"] == pytest.approx(50.0)
    assert out["MR-short-mAP@0.65"] == 0.0


def test_retrieval_metrics_ranks_by_score_and_reports_empty_buckets_as_nan() -> None:
    out = retrieval_metrics(
        [w(50, 60, 0, 10)], [np.array([0.1, 0.9])], [w(0, 10)], length_buckets=[LengthBucket("long", 30, 150)]
    )
    assert out["MR-full-R1@0.7"] == 100.0 and out["MR-full-mIoU"] == 100.0 and out["MR-full-mAP"] == 100.0
    assert (
        out["MR-long-num_queries"] == 0
        and math.isnan(out["MR-long-R1@0.5"])
        and math.isnan(out["MR-long-mAP"])
    )


@pytest.mark.parametrize(
    ("preds", "scores", "gts", "message"),
    [
        ([w(5, 1)], [np.array([1.0])], [w(0, 1)], "query 0: predicted window with start > end"),
        ([w(0, 1)], [np.array([1.0])], [w(3, 3)], "query 0: ground-truth window with start >= end"),
        ([np.zeros((0, 2))], [np.zeros(0)], [w(0, 1)], "query 0: no predicted window"),
        ([w(0, 1)], [np.array([1.0, 2.0])], [w(0, 1)], "1 predicted windows but 2 scores"),
        ([w(0, 1)], [np.array([math.nan])], [w(0, 1)], "non-finite score"),
        ([w(0, 1), w(0, 1)], [np.array([1.0])] * 2, [w(0, 1)], "one entry per query"),
    ],
)
def test_retrieval_metrics_rejects_bad_input(preds, scores, gts, message) -> None:
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(preds, scores, gts)


def test_torchmetrics_metric_accumulates_padded_batches() -> None:
    metric = MomentRetrievalMetric(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    # Batch 1: two queries, the second with a padded ground-truth slot.
    metric.update(
        torch.tensor([0, 1]),
        torch.tensor([[[0.0, 10.0], [20.0, 28.0]], [[0.0, 4.0], [0.0, 10.0]]]),
        torch.tensor([[0.9, 0.1], [0.8, 0.7]]),
        torch.tensor([[[0.0, 6.0], [20.0, 30.0]], [[0.0, 10.0], [0.0, 0.0]]]),
        torch.tensor([[True, True], [True, False]]),
    )
    # Batch 2: another K and W.
    metric.update(
        torch.tensor([2]),
        torch.tensor([[[50.0, 60.0], [0.0, 12.0], [1.0, 9.0]]]),
        torch.tensor([[0.5, 0.4, 0.3]]),
        torch.tensor([[[0.0, 10.0]]]),
        torch.tensor([[True]]),
    )
    got = metric.compute()
    expected = retrieval_metrics(
        [w(0, 10, 20, 28), w(0, 4, 0, 10), w(50, 60, 0, 12, 1, 9)],
        [np.array([0.9, 0.1]), np.array([0.8, 0.7]), np.array([0.5, 0.4, 0.3])],
        [w(0, 6, 20, 30), w(0, 10), w(0, 10)],
        length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS,
    )
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(
            got[key], torch.tensor(value, dtype=torch.float32), equal_nan=True, msg=key
        )
    assert got["MR-full-R1@0.5"].item() == pytest.approx(100 / 3)
    metric.reset()
    # torchmetrics warns first, then the metric refuses to make up numbers.
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(ValueError, match="before any"),
    ):
        metric.compute()


def _three_queries() -> list[tuple[torch.Tensor, ...]]:
    """Three one-query batches (index, windows, scores, ground truth, mask) with different results."""
    return [
        (
            torch.tensor([0]),
            torch.tensor([[[0.0, 10.0], [20.0, 28.0]]]),
            torch.tensor([[0.9, 0.1]]),
            torch.tensor([[[0.0, 6.0], [20.0, 30.0]]]),
            torch.tensor([[True, True]]),
        ),
        (
            torch.tensor([1]),
            torch.tensor([[[0.0, 8.0]]]),
            torch.tensor([[0.8]]),
            torch.tensor([[[0.0, 10.0]]]),
            torch.tensor([[True]]),
        ),
        (
            torch.tensor([2]),
            torch.tensor([[[50.0, 60.0], [1.0, 9.0]]]),
            torch.tensor([[0.5, 0.3]]),
            torch.tensor([[[0.0, 10.0]]]),
            torch.tensor([[True]]),
        ),
    ]


def test_metric_counts_a_repeated_query_once_in_index_order() -> None:
    """DDP padding repeats queries and shares arrive in any order: the numbers stay one process's."""
    once = MomentRetrievalMetric(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    for batch in _three_queries():
        once.update(*batch)
    shuffled = MomentRetrievalMetric(length_buckets=QVHIGHLIGHTS_LENGTH_BUCKETS)
    first, second, third = _three_queries()
    # Query 1 comes twice, the second time with another prediction: the first copy is kept.
    repeat = (second[0], torch.tensor([[[40.0, 50.0]]]), *second[2:])
    for batch in (third, second, first, repeat):
        shuffled.update(*batch)
    expected, got = once.compute(), shuffled.compute()
    assert expected["MR-full-num_queries"].item() == 3.0
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]) or (got[key].isnan() and expected[key].isnan()), key
    # Counted twice, query 1's second prediction (IoU 0) would give R1@0.5 2/4 instead of 2/3.
    assert got["MR-full-R1@0.5"].item() == pytest.approx(100 * 2 / 3)


def test_metric_refuses_one_index_with_two_ground_truths() -> None:
    metric = MomentRetrievalMetric()
    first, second, _ = _three_queries()
    metric.update(*first)
    metric.update(first[0], *second[1:])  # index 0 again, but query 1's ground truth
    with pytest.raises(ValueError, match="query index 0 was added twice with different ground-truth"):
        metric.compute()


# ---------------------------------------------------------------------------------------------
# Official QVHighlights protocol, hand-computed
# ---------------------------------------------------------------------------------------------


def test_qvh_moment_top10_truncation_and_r1_of_the_first_window() -> None:
    gt = [w(40, 60)]
    misses = [[100.0 + 2 * i, 101.0 + 2 * i] for i in range(9)]
    # The hit ranked 10th counts (AP 1/10); ranked 11th it is cut off (AP 0).
    tenth = qvhighlights_moment_metrics([w(*np.ravel(misses), 40, 60)], [np.linspace(1, 0.1, 10)], gt)
    assert tenth["full"]["MR-mAP"]["average"] == 10.0
    assert tenth["full"]["MR-R1"]["0.5"] == 0.0
    eleventh = qvhighlights_moment_metrics(
        [w(*np.ravel(misses), 102, 103, 40, 60)], [np.linspace(1, 0.1, 11)], gt
    )
    assert eleventh["full"]["MR-mAP"]["average"] == 0.0
    assert list(tenth) == ["short", "middle", "long", "full"]
    assert list(tenth["full"]["MR-mAP"]) == [*THRESHOLD_KEYS, "average"]
    assert list(tenth["full"]["MR-R1"]) == THRESHOLD_KEYS


def test_qvh_moment_multi_window_buckets_and_rounding() -> None:
    # Query 0 has a short (4 s) and a middle (20 s) window; its top-1 hits the middle one.
    # Queries 1, 2: single long windows, top-1 IoU 1 and 0.
    pred_windows = [w(20, 40, 0, 4), w(0, 40), w(100, 140)]
    pred_scores = [np.array([0.9, 0.8]), np.array([1.0]), np.array([1.0])]
    gt_windows = [w(0, 4, 20, 40), w(0, 40), w(0, 40)]
    out = qvhighlights_moment_metrics(pred_windows, pred_scores, gt_windows)
    # Full: query 0 max-IoU R1 = 1 (the 2nd GT window), AP 1; query 1 AP 1; query 2 AP 0.
    assert out["full"]["MR-R1"]["0.95"] == 66.67  # 2/3 rounded to 2 decimals
    assert out["full"]["MR-mAP"]["average"] == 66.67
    # Short bucket: only query 0, with ground truth [0, 4] alone: its top-1 [20, 40] is a miss
    # (R1 0) and the hit comes 2nd (precision 1/2 -> AP 0.5).
    assert out["short"]["MR-R1"]["0.5"] == 0.0
    assert out["short"]["MR-mAP"]["average"] == 50.0
    # Middle bucket: only query 0, ground truth [20, 40]: top-1 hit.
    assert out["middle"]["MR-R1"]["0.7"] == 100.0 and out["middle"]["MR-mAP"]["0.5"] == 100.0
    # Long bucket: queries 1 and 2.
    assert out["long"]["MR-R1"]["0.5"] == 50.0 and out["long"]["MR-mAP"]["average"] == 50.0


def test_qvh_moment_empty_bucket_is_nan() -> None:
    out = qvhighlights_moment_metrics([w(0, 40)], [np.array([1.0])], [w(0, 40)])
    assert math.isnan(out["short"]["MR-mAP"]["average"]) and math.isnan(out["short"]["MR-R1"]["0.5"])
    assert out["long"]["MR-mAP"]["average"] == 100.0


def test_qvh_highlight_hit1_is_max_over_annotators_and_map_mean_over_them() -> None:
    # 4 clips x 3 annotators. The top predicted clip (index 1) is >= 2 for annotator 2 only.
    gt = np.array([[4, 4, 4], [0, 0, 2], [3, 0, 0], [0, 0, 0]], dtype=float)
    pred = np.array([0.2, 0.9, 0.5, 0.1])  # ranking: clip 1, 2, 0, 3
    out = qvhighlights_highlight_metrics([pred], [gt])
    assert out["HL-min-Fair"]["HL-Hit1"] == 100.0
    assert out["HL-min-Good"]["HL-Hit1"] == 0.0
    # Fair (>= 2), per annotator, positives at ranks: a0 {2, 3}: precisions 1/2, 2/3, the envelope
    # makes both 2/3 -> AP 2/3; a1 {3} -> 1/3; a2 {1, 3} -> (1 + 2/3) / 2.
    fair = (2 / 3 + 1 / 3 + (1 + 2 / 3) / 2) / 3
    assert out["HL-min-Fair"]["HL-mAP"] == round(100 * fair, 2)
    # VeryGood (>= 4): clip 0 only, for each annotator, ranked 3rd -> AP 1/3 each.
    assert out["HL-min-VeryGood"]["HL-mAP"] == 33.33
    # A short list is zero-padded for HL-mAP (the official `compute_ap_from_tuple`); Hit1 reads it as given.
    short = qvhighlights_highlight_metrics([pred[:1]], [gt])  # AP sees [0.1, 0, 0, 0]
    assert short["HL-min-VeryGood"]["HL-mAP"] == 100.0 and short["HL-min-VeryGood"]["HL-Hit1"] == 100.0
    with pytest.raises(ValueError, match="non-empty vector"):
        qvhighlights_highlight_metrics([pred[:0]], [gt])


def test_qvh_highlight_trailing_partial_clip() -> None:
    """Scores past the labelled clips (a partial clip) are left out of HL-mAP and miss Hit1 when on top."""
    gt = np.array([[4, 4, 4], [0, 0, 2], [3, 0, 0], [0, 0, 0]], dtype=float)
    pred = np.array([0.2, 0.9, 0.5, 0.1])
    with_partial_low = qvhighlights_highlight_metrics([np.append(pred, -1.0)], [gt])
    assert with_partial_low == qvhighlights_highlight_metrics([pred], [gt])
    with_partial_top = qvhighlights_highlight_metrics([np.append(pred, 5.0)], [gt])
    assert with_partial_top["HL-min-Fair"]["HL-Hit1"] == 0.0
    assert with_partial_top["HL-min-Fair"]["HL-mAP"] == with_partial_low["HL-min-Fair"]["HL-mAP"]
    two_more = qvhighlights_highlight_metrics([np.append(pred, [1.0, 2.0])], [gt])
    assert two_more["HL-min-Fair"] == with_partial_top["HL-min-Fair"]


# ---------------------------------------------------------------------------------------------
# evaluate.py: structure, qids, errors, CLI
# ---------------------------------------------------------------------------------------------


def gt_row(qid, windows, duration=20, clip_ids=(0, 1), scores=((2, 3, 4), (1, 1, 1))) -> dict:
    return {
        "qid": qid,
        "vid": f"v{qid}",
        "duration": duration,
        "relevant_windows": windows,
        "relevant_clip_ids": list(clip_ids),
        "saliency_scores": [list(s) for s in scores],
    }


def sub_row(qid, windows, saliency=None, duration=20) -> dict:
    saliency = saliency if saliency is not None else [1.0] + [0.0] * (duration // 2 - 1)
    return {"qid": qid, "vid": f"v{qid}", "pred_relevant_windows": windows, "pred_saliency_scores": saliency}


GT_ROWS = [gt_row(1, [[0, 4]]), gt_row(2, [[4, 16]])]
SUB_ROWS = [sub_row(2, [[4, 16, 0.9], [0, 2, 0.1]]), sub_row(1, [[0, 6, 0.5]])]


def test_evaluate_submission_official_structure() -> None:
    out = evaluate_submission(SUB_ROWS, GT_ROWS)
    assert list(out) == OFFICIAL_SECTIONS
    assert list(out["brief"]) == OFFICIAL_BRIEF_KEYS
    assert list(out["HL-min-Fair"]) == ["HL-mAP", "HL-Hit1"]
    # Query 1: [0, 6] vs [0, 4] IoU 2/3; query 2 exact.
    assert out["brief"]["MR-full-R1@0.5"] == 100.0 and out["brief"]["MR-full-R1@0.7"] == 50.0
    assert out["brief"]["MR-short-mAP"] == out["short"]["MR-mAP"]["average"]
    assert math.isnan(out["brief"]["MR-long-mAP"])  # no window longer than 30 s
    assert out["brief"]["HL-min-Fair-Hit1"] == 100.0  # clip 0 is scored 2, 3, 4
    # Round trip through JSON (what the CLI prints).
    assert json.loads(json.dumps(out))["brief"]["MR-full-mAP"] == out["brief"]["MR-full-mAP"]


def test_moment_only_and_highlight_only_submissions() -> None:
    windows_only = [{k: v for k, v in row.items() if k != "pred_saliency_scores"} for row in SUB_ROWS]
    assert list(evaluate_submission(windows_only, GT_ROWS)) == ["brief", "full", "long", "middle", "short"]
    saliency_only = [{k: v for k, v in row.items() if k != "pred_relevant_windows"} for row in SUB_ROWS]
    out = evaluate_submission(saliency_only, GT_ROWS)
    assert list(out) == ["brief", "HL-min-Fair", "HL-min-Good", "HL-min-VeryGood"]
    # Ground truth without saliency labels (Charades-STA style): highlight metrics are left out.
    unlabelled = [
        {k: v for k, v in row.items() if k not in ("relevant_clip_ids", "saliency_scores")} for row in GT_ROWS
    ]
    assert "HL-min-Fair" not in evaluate_submission(SUB_ROWS, unlabelled)
    with pytest.raises(SubmissionError, match="nothing to score"):
        evaluate_submission(saliency_only, unlabelled)


def test_qids_match_by_value_and_type() -> None:
    """As the official evaluation's set comparison: 2 == 2.0, but 2 != "2"."""
    as_floats = [{**row, "qid": float(row["qid"])} for row in SUB_ROWS]
    assert evaluate_submission(as_floats, GT_ROWS) == evaluate_submission(SUB_ROWS, GT_ROWS)
    as_strings = [{**row, "qid": str(row["qid"])} for row in SUB_ROWS]
    with pytest.raises(
        SubmissionError, match=r"qid '2', '1' .*; the ground truth has qid 2: ids match by value and type"
    ):
        evaluate_submission(as_strings, GT_ROWS)
    string_gt = [{**row, "qid": str(row["qid"])} for row in GT_ROWS]
    assert evaluate_submission(as_strings, string_gt) == evaluate_submission(SUB_ROWS, GT_ROWS)
    with pytest.raises(SubmissionError, match=r"not in the ground truth, e.g. qid '02' \(first at [^;]*\)$"):
        evaluate_submission([{**as_strings[0], "qid": "02"}, as_strings[1]], string_gt)


def test_saliency_lists_of_any_length() -> None:
    """A 21-s video has 10 labelled clips; lists of any length score as the official evaluation does."""
    gt = [gt_row(1, [[0, 4]], duration=21)]
    for length in (1, 9, 10, 11, 12):
        out = evaluate_submission([sub_row(1, [[0, 4, 1.0]], saliency=[1.0] + [0.0] * (length - 1))], gt)
        assert out["brief"]["HL-min-Fair-Hit1"] == 100.0  # clip 0 on top, scored 2, 3, 4
        assert out["brief"]["HL-min-Fair-mAP"] == 100.0
    # The top score on the partial 11th clip: unlabelled, a Hit1 miss.
    out = evaluate_submission([sub_row(1, [[0, 4, 1.0]], saliency=[1.0] + [0.0] * 9 + [2.0])], gt)
    assert out["brief"]["HL-min-Fair-Hit1"] == 0.0 and out["brief"]["HL-min-Fair-mAP"] == 100.0


def test_recall_protocol() -> None:
    out = evaluate_submission(SUB_ROWS, GT_ROWS, protocol="recall", length_buckets=())
    assert out["MR-full-R1@0.5"] == 100.0 and out["MR-full-R1@0.7"] == 50.0
    assert out["MR-full-mIoU"] == pytest.approx(100 * (1 + 2 / 3) / 2)


@pytest.mark.parametrize(
    ("submission", "ground_truth", "message"),
    [
        (
            SUB_ROWS[:1],
            GT_ROWS,
            r"misses 1 of the 2 ground-truth queries, e.g. qid 1 \(first at ground truth row 0",
        ),
        ([*SUB_ROWS, sub_row(3, [[0, 2, 1.0]])], GT_ROWS, r"1 queries not in the ground truth, e.g. qid 3"),
        (SUB_ROWS, [*GT_ROWS, {**GT_ROWS[0], "qid": 1.0}], r"row 2 \(qid 1.0\): qid repeated"),
        (
            [sub_row(2, [[4, 16]]), SUB_ROWS[1]],
            GT_ROWS,
            r"'pred_relevant_windows'\[0\] must start with 3 numbers",
        ),
        ([sub_row(2, []), SUB_ROWS[1]], GT_ROWS, r"'pred_relevant_windows' must be a non-empty list"),
        ([sub_row(2, [[4, 16, 0.9]], saliency=[0.0, None]), SUB_ROWS[1]], GT_ROWS, "list of numbers"),
        (
            [SUB_ROWS[0], {k: v for k, v in SUB_ROWS[1].items() if k != "pred_saliency_scores"}],
            GT_ROWS,
            r"row 1 \(qid 1\): no 'pred_saliency_scores' while submission row 0 has it",
        ),
        ([{**SUB_ROWS[0], "qid": [2]}, SUB_ROWS[1]], GT_ROWS, "qid must be an int or a string"),
        (
            SUB_ROWS,
            [gt_row(1, [[4, 4]]), GT_ROWS[1]],
            r"ground truth row 0 \(qid 1\): relevant window \[4.0, 4.0\]",
        ),
        (SUB_ROWS, [gt_row(1, [[0, 4]], clip_ids=(0, 10)), GT_ROWS[1]], "clip id 10 outside the 10 clips"),
        (
            SUB_ROWS,
            [gt_row(1, [[0, 4]], scores=((1, 2, 3), (1, 2))), GT_ROWS[1]],
            r"'saliency_scores'\[1\] must be 3",
        ),
        (SUB_ROWS, [{**GT_ROWS[0], "duration": -1}, GT_ROWS[1]], "'duration' must be a positive number"),
        (
            SUB_ROWS,
            [{k: v for k, v in GT_ROWS[0].items() if k != "relevant_windows"}, GT_ROWS[1]],
            "unlabelled",
        ),
    ],
)
def test_bad_input_names_the_query(submission, ground_truth, message) -> None:
    with pytest.raises(SubmissionError, match=message):
        evaluate_submission(submission, ground_truth)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_cli_prints_and_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub, gt = write_jsonl(tmp_path / "pred.jsonl", SUB_ROWS), write_jsonl(tmp_path / "gt.jsonl", GT_ROWS)
    out_path = tmp_path / "metrics" / "m.json"
    assert main(["--submission", str(sub), "--gt", str(gt), "--out", str(out_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_path.read_text()) and list(printed) == OFFICIAL_SECTIONS
    assert printed["brief"]["MR-full-R1@0.7"] == 50.0
    assert (
        main(["--submission", str(sub), "--gt", str(gt), "--protocol", "recall", "--length-buckets", "s=0:5"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["MR-s-num_queries"] == 1
    with pytest.raises(SystemExit):
        main(["--submission", str(sub), "--gt", str(gt), "--length-buckets", "s=5:0"])
    assert "bad length bucket 's=5:0'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"qid": 2}\n{"qid": 1, oops}\n', "pred.jsonl line 2: not valid JSON"),
        ('{"qid": 2}\n\n', "pred.jsonl line 2: blank line"),
        ("[1, 2]\n", "pred.jsonl line 1: expected a JSON object, got list"),
        ("", "pred.jsonl: no queries"),
    ],
)
def test_cli_reports_malformed_lines(tmp_path: Path, capsys, text: str, message: str) -> None:
    sub = tmp_path / "pred.jsonl"
    sub.write_text(text, encoding="utf-8")
    gt = write_jsonl(tmp_path / "gt.jsonl", GT_ROWS)
    assert main(["--submission", str(sub), "--gt", str(gt)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_file_errors_name_the_line_and_qid(tmp_path: Path, capsys) -> None:
    sub = write_jsonl(tmp_path / "pred.jsonl", [SUB_ROWS[0], sub_row(1, [[0, 6, 0.5], [0, "8", 0.6]])])
    gt = write_jsonl(tmp_path / "gt.jsonl", GT_ROWS)
    assert main(["--submission", str(sub), "--gt", str(gt)]) == 1
    assert (
        "pred.jsonl line 2 (qid 1): 'pred_relevant_windows'[1] must start with 3 numbers"
        in capsys.readouterr().err
    )
    assert main(["--submission", str(tmp_path / "missing.jsonl"), "--gt", str(gt)]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Real QVHighlights validation annotations
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qvh_val() -> list[dict]:
    return [json.loads(line) for line in QVH_VAL.read_text(encoding="utf-8").splitlines()]


def _interval_iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def _ranked_ap(hits: list[bool], num_positives: int) -> float:
    """Interpolated AP written the textbook way: mean over positives of the best precision at or after it."""
    precision = [sum(hits[: k + 1]) / (k + 1) for k in range(len(hits))]
    return sum(max(precision[k:]) for k, hit in enumerate(hits) if hit) / num_positives


@needs_qvh_val
def test_real_val_perfect_submission(qvh_val: list[dict]) -> None:
    """Every GT window predicted exactly, in GT order; saliency = the best annotator score per clip."""
    submission = []
    for gt in qvh_val:
        windows = [[s, e, 1.0 - 0.01 * i] for i, (s, e) in enumerate(gt["relevant_windows"])]
        saliency = np.zeros(gt["duration"] // 2)
        saliency[gt["relevant_clip_ids"]] = np.max(gt["saliency_scores"], axis=1)
        submission.append(
            {
                "qid": gt["qid"],
                "vid": gt["vid"],
                "pred_relevant_windows": windows,
                "pred_saliency_scores": saliency.tolist(),
            }
        )
    out = evaluate_submission(submission, qvh_val)
    assert all(v == 100.0 for v in out["full"]["MR-R1"].values())
    # Only the first 10 windows count for mAP: a query with M > 10 windows has AP 10 / M.
    num_windows = np.array([len(gt["relevant_windows"]) for gt in qvh_val])
    assert num_windows.max() > 10  # the truncation is exercised
    expected_full_map = round(100 * float(np.mean(np.minimum(num_windows, 10) / num_windows)), 2)
    assert out["brief"]["MR-full-mAP"] == expected_full_map < 100
    for bucket in QVHIGHLIGHTS_LENGTH_BUCKETS:
        aps, r1 = [], []
        for gt in qvh_val:
            in_bucket = [bucket.min_sec < e - s <= bucket.max_sec for s, e in gt["relevant_windows"]]
            if any(in_bucket):
                # GT windows are disjoint, so an out-of-bucket prediction overlaps no in-bucket window.
                aps.append(_ranked_ap(in_bucket[:10], sum(in_bucket)))
                r1.append(in_bucket[0])
        assert out[bucket.name]["MR-mAP"]["average"] == pytest.approx(100 * np.mean(aps), abs=0.005)
        assert out[bucket.name]["MR-R1"]["0.5"] == pytest.approx(100 * np.mean(r1), abs=0.005)
    # The top predicted clip has the highest single score: a hit when any annotator reached the level.
    best = np.array([np.max(gt["saliency_scores"]) for gt in qvh_val])
    assert out["brief"]["HL-min-Fair-Hit1"] == 100.0
    for level, min_score in (("Good", 3), ("VeryGood", 4)):
        assert out["brief"][f"HL-min-{level}-Hit1"] == round(100 * float(np.mean(best >= min_score)), 2)


@needs_qvh_val
def test_real_val_shifted_windows(qvh_val: list[dict]) -> None:
    """Each GT window shifted later by 4 s; R1 from intervals computed here, independently."""
    shift_sec = 4
    submission, top1_iou = [], []
    for gt in qvh_val:
        windows = [[s + shift_sec, e + shift_sec, 1.0] for s, e in gt["relevant_windows"]]
        submission.append({"qid": gt["qid"], "pred_relevant_windows": windows})
        top1_iou.append(max(_interval_iou(windows[0], g) for g in gt["relevant_windows"]))
    out = evaluate_submission(submission, qvh_val)
    for key, threshold in (("0.5", 0.5), ("0.7", 0.7), ("0.9", 0.9)):
        assert out["full"]["MR-R1"][key] == round(100 * float(np.mean(np.array(top1_iou) >= threshold)), 2)
    assert 0 < out["brief"]["MR-full-R1@0.7"] < out["brief"]["MR-full-R1@0.5"] < 100
    assert "HL-min-Fair" not in out


# Output of the official evaluation (jayleicn/moment_detr standalone_eval/eval.py at 2fa9e32, MIT
# licence, run unmodified with numpy 2.4.6 and scikit-learn 1.9.1) on
# `deterministic_submission(highlight_val_release.jsonl)`, saved byte for byte as its --save_path file.
# The submission has float windows, tied scores, more than 10 windows for some queries, a
# whole-video window per query and tied saliency scores. Its result does not depend on numpy's
# unstable argsort tie order (checked with a stable sort too), so it holds on any CPU.
OFFICIAL_VAL_REFERENCE = Path(__file__).with_name("data") / "qvh_val_official_reference.json"


def deterministic_submission(gt_rows: list[dict]) -> list[dict]:
    """A fixed, RNG-free submission derived from the ground truth (see OFFICIAL_VAL_REFERENCE)."""
    rows = []
    for i, gt in enumerate(gt_rows):
        windows = []
        for j, (start, end) in enumerate(gt["relevant_windows"]):
            shift_sec = ((i + 3 * j) % 9 - 4) * 0.75
            stretch_sec = ((7 * i + j) % 5) * 0.5
            score = round(1.0 - 0.05 * ((i + j) % 4), 2)  # repeats: ties between windows
            windows.append([max(0.0, start + shift_sec), end + shift_sec + stretch_sec, score])
        windows.append([0.0, float(gt["duration"]), 0.1])  # the whole video, ranked last
        windows.sort(key=lambda w: -w[2])  # stable: tied windows keep their order
        labels = dict(zip(gt["relevant_clip_ids"], gt["saliency_scores"], strict=True))
        saliency = [sum(labels.get(c, [0])) // 3 + ((i + c) % 3) / 2 for c in range(int(gt["duration"] / 2))]
        rows.append(
            {
                "qid": gt["qid"],
                "vid": gt["vid"],
                "pred_relevant_windows": windows,
                "pred_saliency_scores": saliency,
            }
        )
    return rows


@needs_qvh_val
def test_real_val_matches_the_official_evaluation(qvh_val: list[dict], tmp_path: Path, capsys) -> None:
    sub = write_jsonl(tmp_path / "sub.jsonl", deterministic_submission(qvh_val))
    assert main(["--submission", str(sub), "--gt", str(QVH_VAL)]) == 0
    printed = capsys.readouterr().out
    # Same numbers and the same key order: the printed JSON is the official file, byte for byte.
    assert printed.rstrip("\n") == OFFICIAL_VAL_REFERENCE.read_text(encoding="utf-8")


@needs_qvh_val
def test_real_val_ground_truth_parses(qvh_val: list[dict]) -> None:
    queries = parse_ground_truth(qvh_val)
    assert len(queries) == 1550
    assert all(q.saliency is not None and q.saliency.shape == (q.duration_sec // 2, 3) for q in queries)
    assert sum(len(q.windows) > 1 for q in queries) > 100  # multi-window queries are common


def test_metric_drops_filler_slots() -> None:
    """-inf slots (fewer real candidates than K) are left out, not scored as duplicate windows."""
    gt = torch.tensor([[[0.0, 4.0]]])
    mask = torch.tensor([[True]])
    with_filler = MomentRetrievalMetric()
    windows, scores = torch.tensor([[[0.0, 4.0], [0.0, 4.0]]]), torch.tensor([[1.0, float("-inf")]])
    with_filler.update(torch.tensor([0]), windows, scores, gt, mask)
    alone = MomentRetrievalMetric()
    alone.update(torch.tensor([0]), torch.tensor([[[0.0, 4.0]]]), torch.tensor([[1.0]]), gt, mask)
    assert with_filler.compute() == alone.compute()
    assert with_filler.compute()["MR-full-mAP"] == 100.0
    with pytest.raises(ValueError, match="at least one window"):
        MomentRetrievalMetric().update(
            torch.tensor([0]), torch.zeros(1, 1, 2), torch.tensor([[float("-inf")]]), gt, mask
        )


def test_metrics_score_the_stored_windows_not_their_float32_copy() -> None:
    """`ground test` scores the windows as stored, as `ground eval` reads them from the annotation file.

    Found on the journey test's demo checkpoint: ground truth (0.3, 3.3) s held in float32 is
    (0.30000001, 3.29999995), so a predicted (0, 6) s window's IoU of exactly 0.5 became
    0.49999999 and `ground test` reported a lower mAP than `ground eval` on the same predictions.
    """
    from cache_schema.store import SplitArrays
    from ground.data import SplitTensors

    gt = np.array([[[0.3, 3.3], [19.1, 22.7]]])  # (Q=1, W=2, 2), the demo's values
    arrays = SplitArrays(
        qids=["q"],
        vids=["v"],
        texts=["a query"],
        video_index=np.array([0]),
        video=np.zeros((1, 13, 4), np.float16),
        video_lengths=np.array([13]),
        timestamps_sec=np.stack([np.arange(13) * 2.0, np.arange(13) * 2.0 + 2.0], axis=1)[None],
        duration_sec=np.array([26.0]),
        tokens=np.zeros((1, 3, 4), np.float16),
        token_lengths=np.array([3]),
        pooled=np.zeros((1, 4), np.float16),
        windows=gt,
        window_counts=np.array([2]),
        saliency=None,
        saliency_clip_sec=np.array([np.nan]),
    )
    batch = SplitTensors.from_arrays(arrays, split="test").gather(torch.tensor([0]))
    assert batch["gt_windows"].dtype == torch.float64
    np.testing.assert_array_equal(batch["gt_windows"].numpy(), gt)

    pred = torch.tensor([[[0.0, 6.0]]])  # (B, K, 2) as a network decodes it, float32
    metric = MomentRetrievalMetric()
    metric.update(
        batch["query_index"], pred, torch.tensor([[1.0]]), batch["gt_windows"], batch["window_mask"]
    )
    tested = {k: float(v) for k, v in metric.compute().items()}
    official = qvhighlights_moment_metrics([pred[0].double().numpy()], [np.array([1.0])], [gt[0]])["full"]
    assert tested["MR-full-R1@0.5"] == official["MR-R1"]["0.5"] == 100.0
    # One of two ground-truth windows found at IoU 0.5: AP@0.5 is 50, as the official code says.
    assert tested["MR-full-mAP@0.5"] == official["MR-mAP"]["0.5"] == 50.0
    assert tested["MR-full-mAP"] == pytest.approx(official["MR-mAP"]["average"], abs=0.005)
