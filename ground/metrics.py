"""Moment retrieval and highlight detection metrics.

Two families live here:

* **Generic retrieval metrics** (`retrieval_metrics`, `MomentRetrievalMetric`) for any dataset
  (Charades-STA, ActivityNet Captions, TACoS, QVHighlights, custom): R@k at IoU thresholds, mIoU of
  the top-1 prediction and detection mAP, per length bucket. Values are percentages, unrounded.
* **The official QVHighlights protocol** (`qvhighlights_moment_metrics`,
  `qvhighlights_highlight_metrics`), written to give the same numbers as the official standalone
  evaluation of Moment-DETR (jayleicn/moment_detr, `standalone_eval/eval.py` and `utils.py`),
  rounding included. `ground.evaluate` assembles them into the official output dict.

Conventions shared by both:

* Windows are `[start_sec, end_sec]` in seconds; IoU is intersection over union of the two
  intervals, and 0 when the union is empty (two zero-length windows).
* **Multi-window ground truth:** a predicted window's IoU with a query is its *maximum* IoU over
  the query's ground-truth windows. This is what the official QVHighlights R1 does (it pairs the
  top-1 prediction with the ground-truth window of highest IoU). Detection mAP instead matches
  each ground-truth window at most once (greedy, by descending prediction score), so a query with
  two ground-truth windows needs two good predictions for full AP.
* **Length buckets** select ground-truth windows with `min_sec < length <= max_sec`. A query enters
  a bucket when at least one of its windows does, and inside the bucket only those windows count
  as its ground truth (so a prediction hitting one of its out-of-bucket windows is a miss). This is
  the official QVHighlights rule (`get_data_by_range`). The "full" set is every query, unfiltered.
* Ties in prediction score keep the given order (stable sort).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import Metric


@dataclass(frozen=True)
class LengthBucket:
    """Ground-truth windows whose length in seconds lies in `(min_sec, max_sec]`.

    Attributes:
        name: key fragment in the metric names, e.g. "short" gives "MR-short-mAP".
        min_sec: exclusive lower bound of the window length.
        max_sec: inclusive upper bound of the window length.
    """

    name: str
    min_sec: float
    max_sec: float

    def __post_init__(self) -> None:
        if not self.name or self.name == "full":
            raise ValueError(f"length bucket name must be non-empty and not 'full' (reserved): {self.name!r}")
        if not (math.isfinite(self.min_sec) and math.isfinite(self.max_sec)) or self.min_sec >= self.max_sec:
            raise ValueError(
                f"length bucket {self.name!r}: need finite min_sec < max_sec, "
                f"got ({self.min_sec}, {self.max_sec}]"
            )

    def select(self, windows: np.ndarray) -> np.ndarray:
        """Return the rows of `windows` (M, 2) whose length is in this bucket, order kept."""
        lengths_sec = windows[:, 1] - windows[:, 0]  # (M,)
        return windows[(lengths_sec > self.min_sec) & (lengths_sec <= self.max_sec)]


def parse_length_buckets(spec: str) -> tuple[LengthBucket, ...]:
    """Parse `"short=0:10,middle=10:30,long=30:150"` into buckets (the CLI and config form).

    `NAME:MIN:MAX` is accepted as well as `NAME=MIN:MAX`.

    Raises:
        ValueError: naming the malformed item.
    """
    buckets = []
    for item in spec.split(","):
        name, sep, bounds = item.strip().partition("=" if "=" in item else ":")
        low, sep2, high = bounds.partition(":")
        try:
            if not (sep and sep2):
                raise ValueError("expected NAME=MIN:MAX")
            buckets.append(LengthBucket(name.strip(), float(low), float(high)))
        except ValueError as err:
            raise ValueError(f"bad length bucket {item!r} in {spec!r}: {err}") from err
    names = [b.name for b in buckets]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate length bucket names in {spec!r}")
    return tuple(buckets)


# Official QVHighlights settings (moment_detr standalone_eval/eval.py).
QVHIGHLIGHTS_LENGTH_BUCKETS = (
    LengthBucket("short", 0.0, 10.0),
    LengthBucket("middle", 10.0, 30.0),
    LengthBucket("long", 30.0, 150.0),
)
# 0.5, 0.55, ..., 0.95; written out rather than np.linspace so the keys and the >= comparisons use
# exactly these decimals (the official code rounds the linspace values to 2 decimals too).
QVHIGHLIGHTS_IOU_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
QVHIGHLIGHTS_MAX_PRED_WINDOWS = 10  # mAP uses only the first 10 predicted windows of each query
# Highlight levels: a clip is positive for an annotator when their score (0..4) is >= the minimum.
HIGHLIGHT_MIN_SCORES = {"Fair": 2, "Good": 3, "VeryGood": 4}

# Generic recall protocol (Charades-STA, ActivityNet Captions, TACoS).
RECALL_AT = (1, 5)
RECALL_IOU_THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def temporal_iou(windows_a: np.ndarray, windows_b: np.ndarray) -> np.ndarray:
    """IoU of every window in `windows_a` (N, 2) with every window in `windows_b` (M, 2).

    The union is `len_a + len_b - intersection` (the official `compute_temporal_iou_batch_cross`);
    an empty union gives IoU 0.

    Returns:
        (N, M) float64 array.
    """
    a = np.asarray(windows_a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(windows_b, dtype=np.float64).reshape(-1, 2)
    left = np.maximum(a[:, None, 0], b[None, :, 0])  # (N, M)
    right = np.minimum(a[:, None, 1], b[None, :, 1])  # (N, M)
    inter = np.clip(right - left, 0.0, None)  # (N, M)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter  # (N, M)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def official_cross_iou(windows_a: np.ndarray, windows_b: np.ndarray) -> np.ndarray:
    """`temporal_iou` in the arithmetic of the official `compute_temporal_iou_batch_cross`.

    The two agree on windows with start <= end and a non-empty union. Beyond that the official code
    divides as is, and so does this: a window with start > end has a negative length, so its IoU is
    0 or -0.0, and NaN when the union is exactly 0; NaN or infinite bounds give what numpy's
    arithmetic gives (NaN for `[inf, inf]`, whose length is inf - inf). The QVHighlights mAP counts a
    NaN IoU as a match (`NaN < threshold` is false), so these values matter.

    Args:
        windows_a: (N, 2) windows in seconds, any values.
        windows_b: (M, 2) windows in seconds.

    Returns:
        (N, M) float64 array, NaN where the official IoU is NaN.
    """
    a = np.asarray(windows_a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(windows_b, dtype=np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.maximum(a[:, None, 0], b[None, :, 0])  # (N, M)
        right = np.minimum(a[:, None, 1], b[None, :, 1])  # (N, M)
        inter = np.clip(right - left, 0, None)  # (N, M)
        union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter  # (N, M)
        return inter / union


def _hull_iou(windows_a: np.ndarray, windows_b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of (N, 2) pairs with the convex hull as the union.

    The official R1 uses this (`compute_temporal_iou_batch_paired`). It equals `temporal_iou` in
    exact arithmetic whenever the windows overlap (and both are 0 otherwise), but the float
    rounding can differ in the last bit, which matters at an IoU exactly on a threshold. A window
    with start > end has IoU 0 here; a NaN bound gives NaN, which no threshold counts.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        inter = np.maximum(
            0.0, np.minimum(windows_a[:, 1], windows_b[:, 1]) - np.maximum(windows_a[:, 0], windows_b[:, 0])
        )  # (N,)
        hull = np.maximum(windows_a[:, 1], windows_b[:, 1]) - np.minimum(
            windows_a[:, 0], windows_b[:, 0]
        )  # (N,)
        return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


def voc_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 'all points' AP: area under the precision envelope, summed at each recall change.

    Args:
        precision: (K,) precision after each ranked prediction.
        recall: (K,) recall after each ranked prediction, non-decreasing.
    """
    mprecision = np.concatenate([[0.0], precision, [0.0]])
    mrecall = np.concatenate([[0.0], recall, [1.0]])
    # Envelope: best precision at any recall >= this one.
    mprecision = np.maximum.accumulate(mprecision[::-1])[::-1]
    idx = np.flatnonzero(mrecall[1:] != mrecall[:-1]) + 1
    return float(np.sum((mrecall[idx] - mrecall[idx - 1]) * mprecision[idx]))


def detection_average_precision(
    pred_windows: np.ndarray,
    pred_scores: np.ndarray,
    gt_windows: np.ndarray,
    iou_thresholds: Sequence[float] = QVHIGHLIGHTS_IOU_THRESHOLDS,
) -> np.ndarray:
    """Average precision of one query's ranked windows, at each IoU threshold.

    Predictions are visited by descending score (stable), ranked by Python's `list.sort` on the
    negated scores as the official code does, so a NaN score lands where that sort leaves it. Each
    one is a true positive when a not-yet-matched ground-truth window has IoU >= threshold with it;
    it takes the unmatched window of highest IoU. AP is `voc_average_precision` over the ranking,
    with one positive per ground-truth window. IoU is `official_cross_iou`: a NaN IoU (a window with
    start > end whose union is 0, or NaN bounds) sorts first and is a match, as in the official
    code, whose loop stops only at an IoU below the threshold.

    Equal IoUs with several ground-truth windows are visited in the order of the official
    `tiou_arr.argsort()[::-1]`, numpy's default (unstable) argsort reversed. That order is not
    portable: plain numpy sorts a few elements stably (the last of equal windows comes first), but on
    CPUs with AVX-512 numpy >= 1.25 uses a SIMD sort that may order them otherwise. Calling the same
    argsort keeps this function identical to the official code on whatever machine both run. It
    only matters when a prediction ties two windows above the threshold and a later prediction
    overlaps just one of them.

    Args:
        pred_windows: (K, 2) predicted windows in seconds, K >= 1.
        pred_scores: (K,) their scores.
        gt_windows: (M, 2) ground-truth windows in seconds, M >= 1.
        iou_thresholds: thresholds to report.

    Returns:
        (len(iou_thresholds),) AP values in [0, 1].
    """
    if len(pred_windows) == 0 or len(gt_windows) == 0:
        raise ValueError(
            f"detection AP needs at least one predicted and one ground-truth window, "
            f"got {len(pred_windows)} and {len(gt_windows)}"
        )
    negated = [-score for score in np.asarray(pred_scores, dtype=np.float64).tolist()]
    order = sorted(range(len(negated)), key=negated.__getitem__)  # the official `prediction.sort`
    ranked_windows = np.asarray(pred_windows, dtype=np.float64)[order]  # (K, 2)
    # One row at a time, as the official code, so the default argsort sees the same 1-D arrays.
    iou = np.stack([official_cross_iou(w[None], gt_windows)[0] for w in ranked_windows])  # (K, M)
    num_preds, num_gts = iou.shape
    gt_order = [np.argsort(row)[::-1] for row in iou]  # per prediction: highest IoU first
    ranks = np.arange(1, num_preds + 1, dtype=np.float64)
    ap = np.zeros(len(iou_thresholds))
    for t_idx, threshold in enumerate(iou_thresholds):
        matched = np.zeros(num_gts, dtype=bool)
        tp = np.zeros(num_preds)
        for k in range(num_preds):
            for j in gt_order[k]:
                if iou[k, j] < threshold:  # False for NaN: a NaN IoU matches, as in the official code
                    break
                if not matched[j]:
                    matched[j] = True
                    tp[k] = 1.0
                    break
        tp_cumsum = np.cumsum(tp)
        # tp + fp after k predictions is exactly k, the official tp_cumsum + fp_cumsum.
        ap[t_idx] = voc_average_precision(tp_cumsum / ranks, tp_cumsum / float(num_gts))
    return ap


class NonFiniteScoreError(ValueError):
    """Clip scores with NaN or Infinity where the official highlight AP has no number.

    The official `get_ap` hands the scores to sklearn's `precision_recall_curve`, which refuses
    non-finite values; it only gets there when the labels are not all equal.

    Attributes:
        query_index: index of the query in the caller's list, None from `highlight_average_precision`.
    """

    def __init__(self, message: str, query_index: int | None = None) -> None:
        super().__init__(message)
        self.query_index = query_index


def highlight_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP of clip scores against binary clip labels, as the official QVHighlights `get_ap`.

    This is not the usual ranking AP: the points are the distinct score thresholds; the precision
    is interpolated (best precision at any recall >= this one) and averaged with equal weight over
    the distinct non-zero recall levels (a tie that recalls two positives at once counts once).
    All-negative labels give 0 and all-positive labels give 1, without looking at the scores.

    Args:
        labels: (T,) 0/1 clip labels.
        scores: (T,) predicted clip scores, same length.

    Raises:
        NonFiniteScoreError: a NaN or infinite score with labels not all equal (the official code
            fails there too).
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1 or len(labels) == 0:
        raise ValueError(
            f"labels and scores must be equal-length non-empty vectors, got {labels.shape}, {scores.shape}"
        )
    if np.all(labels == labels[0]):
        return float(labels[0])
    if not np.all(np.isfinite(scores)):
        raise NonFiniteScoreError("NaN or Infinity among the clip scores of a query with mixed labels")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(labels[order])  # (T,)
    # One operating point per distinct score: the last position of each run of equal scores.
    ends = np.concatenate([np.flatnonzero(np.diff(sorted_scores)), [len(scores) - 1]])
    tp = tp[ends]
    precision = tp / (ends + 1.0)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at recall >= this one
    new_recall_level = np.diff(np.concatenate([[0.0], tp])) > 0
    # Averaged from the highest recall level down, the official summation order (last-bit equal).
    return float(np.mean(envelope[new_recall_level][::-1]))


def _validate_queries(
    pred_windows: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_windows: Sequence[np.ndarray],
    any_prediction_values: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Check and convert the inputs of a moment metric.

    With `any_prediction_values` (the official protocol), predicted windows and scores may hold
    NaN, Infinity and start > end, which the official arithmetic scores; otherwise they are refused.
    """
    if not (len(pred_windows) == len(pred_scores) == len(gt_windows)):
        raise ValueError(
            f"need one entry per query in each input, got {len(pred_windows)} predicted window sets, "
            f"{len(pred_scores)} score sets and {len(gt_windows)} ground-truth window sets"
        )
    preds, scores, gts = [], [], []
    for i, (p, s, g) in enumerate(zip(pred_windows, pred_scores, gt_windows, strict=True)):
        p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        g = np.asarray(g, dtype=np.float64).reshape(-1, 2)
        if len(p) == 0:
            raise ValueError(f"query {i}: no predicted window")
        if len(s) != len(p):
            raise ValueError(f"query {i}: {len(p)} predicted windows but {len(s)} scores")
        if len(g) == 0:
            raise ValueError(f"query {i}: no ground-truth window")
        checked = (
            (("ground-truth window", g),)
            if any_prediction_values
            else (("predicted window", p), ("score", s), ("ground-truth window", g))
        )
        for name, arr in checked:
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"query {i}: non-finite {name} value")
        if not any_prediction_values and np.any(p[:, 0] > p[:, 1]):
            bad = p[p[:, 0] > p[:, 1]][0].tolist()
            raise ValueError(f"query {i}: predicted window with start > end: {bad}")
        if np.any(g[:, 0] >= g[:, 1]):
            bad = g[g[:, 0] >= g[:, 1]][0].tolist()
            raise ValueError(f"query {i}: ground-truth window with start >= end: {bad}")
        preds.append(p)
        scores.append(s)
        gts.append(g)
    return preds, scores, gts


def _bucket_members(gts: list[np.ndarray], bucket: LengthBucket | None) -> tuple[list[int], list[np.ndarray]]:
    """Indices of the queries in `bucket` and their in-bucket ground truth (all of it for None)."""
    if bucket is None:
        return list(range(len(gts))), gts
    members, windows = [], []
    for i, g in enumerate(gts):
        selected = bucket.select(g)
        if len(selected):
            members.append(i)
            windows.append(selected)
    return members, windows


# ---------------------------------------------------------------------------------------------
# Generic retrieval metrics
# ---------------------------------------------------------------------------------------------


def retrieval_metrics(
    pred_windows: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_windows: Sequence[np.ndarray],
    *,
    recall_at: Sequence[int] = RECALL_AT,
    iou_thresholds: Sequence[float] = RECALL_IOU_THRESHOLDS,
    map_iou_thresholds: Sequence[float] = QVHIGHLIGHTS_IOU_THRESHOLDS,
    map_max_windows: int | None = QVHIGHLIGHTS_MAX_PRED_WINDOWS,
    length_buckets: Sequence[LengthBucket] = (),
) -> dict[str, float]:
    """Recall@k, mIoU and mAP over queries, for the full set and each length bucket.

    For each query the predictions are ranked by score (stable) and each predicted window's IoU is
    its maximum IoU over the query's ground-truth windows. R{k}@{t} counts a query when any of its
    top-k windows reaches IoU >= t (a query with fewer than k windows uses those it has). mIoU is
    the mean IoU of the top-1 window. mAP is `detection_average_precision` over the top
    `map_max_windows` windows, averaged over queries and then over `map_iou_thresholds`.

    Args:
        pred_windows: per query, (K, 2) predicted windows in seconds, K >= 1.
        pred_scores: per query, (K,) scores.
        gt_windows: per query, (M, 2) ground-truth windows in seconds, M >= 1.
        recall_at: the k of R@k.
        iou_thresholds: IoU thresholds of R@k.
        map_iou_thresholds: IoU thresholds averaged into mAP; mAP@t is also reported for each.
        map_max_windows: windows per query used by mAP (None: all).
        length_buckets: buckets reported beside "full".

    Returns:
        Percentages keyed `MR-{set}-R{k}@{t}`, `MR-{set}-mIoU`, `MR-{set}-mAP`, `MR-{set}-mAP@{t}`,
        plus `MR-{set}-num_queries`, with set "full" or a bucket name. A bucket with no query
        gets NaN metrics and `num_queries` 0.

    Raises:
        ValueError: naming the query index for malformed input.
    """
    preds, scores, gts = _validate_queries(pred_windows, pred_scores, gt_windows)
    if any(k < 1 for k in recall_at):
        raise ValueError(f"recall_at values must be >= 1, got {tuple(recall_at)}")
    ranked = [np.argsort(-s, kind="stable") for s in scores]
    preds = [p[order] for p, order in zip(preds, ranked, strict=True)]
    scores = [s[order] for s, order in zip(scores, ranked, strict=True)]
    out: dict[str, float] = {}
    for bucket in (None, *length_buckets):
        name = "full" if bucket is None else bucket.name
        members, bucket_gts = _bucket_members(gts, bucket)
        out[f"MR-{name}-num_queries"] = float(len(members))
        if not members:
            keys = [f"R{k}@{t:g}" for k in recall_at for t in iou_thresholds]
            keys += ["mIoU", "mAP", *(f"mAP@{t:g}" for t in map_iou_thresholds)]
            out.update({f"MR-{name}-{key}": math.nan for key in keys})
            continue
        # best_iou[q][k]: max IoU of the q-th member's k-th ranked window over its ground truth.
        best_iou = [temporal_iou(preds[i], g).max(axis=1) for i, g in zip(members, bucket_gts, strict=True)]
        for k in recall_at:
            top_k_iou = np.array([b[:k].max() for b in best_iou])  # (Q,)
            for t in iou_thresholds:
                out[f"MR-{name}-R{k}@{t:g}"] = 100.0 * float(np.mean(top_k_iou >= t))
        out[f"MR-{name}-mIoU"] = 100.0 * float(np.mean([b[0] for b in best_iou]))
        ap = np.array(
            [
                detection_average_precision(
                    preds[i][:map_max_windows], scores[i][:map_max_windows], g, map_iou_thresholds
                )
                for i, g in zip(members, bucket_gts, strict=True)
            ]
        )  # (Q, len(map_iou_thresholds))
        ap_per_threshold = ap.mean(axis=0)
        out[f"MR-{name}-mAP"] = 100.0 * float(np.mean(ap_per_threshold))
        for t, value in zip(map_iou_thresholds, ap_per_threshold, strict=True):
            out[f"MR-{name}-mAP@{t:g}"] = 100.0 * float(value)
    return out


class MomentRetrievalMetric(Metric):
    """`retrieval_metrics` as a torchmetrics `Metric`, accumulating batches (e.g. Lightning validation).

    `update` takes each query's index in its split, the decoded predictions and the batch's ground
    truth (the `ground.data` layout); `compute` returns the `retrieval_metrics` dict as float tensors.

    Under DDP every process sees a share of the split, and the sampler pads the shares to equal
    length by repeating queries. States are flat float64 vectors gathered with `dist_reduce_fx="cat"`
    (1-D and of the metric's dtype, so a process that saw no labelled query gathers as an empty
    vector); `compute` then keeps the first copy of each query index and scores the queries in
    index order. From the same predictions the numbers are therefore those of one process on the
    same split, bit for bit, whatever the world size.

    Args:
        recall_at: the k of R@k.
        iou_thresholds: IoU thresholds of R@k.
        map_iou_thresholds: IoU thresholds averaged into mAP.
        map_max_windows: windows per query used by mAP (None: all).
        length_buckets: buckets reported beside "full".
        **kwargs: passed to `torchmetrics.Metric` (e.g. `dist_sync_on_step`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        recall_at: Sequence[int] = RECALL_AT,
        iou_thresholds: Sequence[float] = RECALL_IOU_THRESHOLDS,
        map_iou_thresholds: Sequence[float] = QVHIGHLIGHTS_IOU_THRESHOLDS,
        map_max_windows: int | None = QVHIGHLIGHTS_MAX_PRED_WINDOWS,
        length_buckets: Sequence[LengthBucket] = (),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.recall_at = tuple(recall_at)
        self.iou_thresholds = tuple(iou_thresholds)
        self.map_iou_thresholds = tuple(map_iou_thresholds)
        self.map_max_windows = map_max_windows
        self.length_buckets = tuple(length_buckets)
        # Per query: its index, its number of real predicted / ground-truth windows; and the windows
        # themselves, flattened, in query order.
        for state in ("query_index", "pred_counts", "pred_windows", "pred_scores", "gt_counts", "gt_windows"):
            self.add_state(state, default=[], dist_reduce_fx="cat")
        # torchmetrics stands in an empty vector of the metric's dtype for a process with no update;
        # float64 matches the states (exact for query indices below 2**53).
        self.set_dtype(torch.float64)

    def update(
        self,
        query_index: torch.Tensor,
        pred_windows: torch.Tensor,
        pred_scores: torch.Tensor,
        gt_windows: torch.Tensor,
        window_mask: torch.Tensor,
    ) -> None:
        """Add a batch.

        Args:
            query_index: (B,) integer index of each query in its split (the batch's `query_index`);
                a query seen twice (DDP padding) is scored once.
            pred_windows: (B, K, 2) predicted windows in seconds.
            pred_scores: (B, K) their scores; -inf marks a filler slot, which is left out.
            gt_windows: (B, W, 2) ground-truth windows in seconds, padded.
            window_mask: (B, W) True where a ground-truth window is real.

        Raises:
            ValueError: on mismatched shapes, or a query without a finite-scored window.
        """
        shapes_ok = pred_windows.ndim == 3 and pred_windows.shape[2] == 2
        if not shapes_ok or pred_scores.shape != pred_windows.shape[:2]:
            raise ValueError(
                f"expected pred_windows (B, K, 2) and pred_scores (B, K), got {tuple(pred_windows.shape)} "
                f"and {tuple(pred_scores.shape)}"
            )
        batch = len(pred_windows)
        if gt_windows.ndim != 3 or window_mask.shape != gt_windows.shape[:2] or len(gt_windows) != batch:
            raise ValueError(
                f"expected gt_windows (B, W, 2) and window_mask (B, W) with B={batch}, got "
                f"{tuple(gt_windows.shape)} and {tuple(window_mask.shape)}"
            )
        if query_index.shape != (batch,) or query_index.is_floating_point():
            raise ValueError(f"expected an integer query_index of shape ({batch},), got {query_index!r}")
        # Slots scored -inf are fillers (`Predictions`: fewer real candidates than K); drop them
        # rather than score copies of a window twice.
        real = torch.isfinite(pred_scores)  # (B, K)
        if not real.any(dim=1).all():
            raise ValueError("every query needs at least one window with a finite score")
        mask = window_mask.bool()
        self.query_index.append(query_index.detach().double())  # (B,)
        self.pred_counts.append(real.sum(dim=1).double())  # (B,)
        self.pred_windows.append(pred_windows.detach()[real].double().flatten())  # (2 sum K_b,), per query
        self.pred_scores.append(pred_scores.detach()[real].double())  # (sum K_b,)
        self.gt_counts.append(mask.sum(dim=1).double())  # (B,)
        self.gt_windows.append(gt_windows.detach()[mask].double().flatten())  # (2 sum W_b,), per query

    def compute(self) -> dict[str, torch.Tensor]:
        """Return `retrieval_metrics` over every distinct query seen (by all processes), as float tensors.

        Raises:
            ValueError: no query was added, or one query index came with two different ground truths
                (the indices are not positions in one split).
        """

        def cat(state: list[torch.Tensor] | torch.Tensor) -> np.ndarray:
            # Before a distributed sync a state is a list of per-batch vectors, after it one vector.
            if isinstance(state, list):
                state = torch.cat(state) if state else torch.zeros(0, dtype=torch.float64)
            return state.cpu().numpy()

        query_index = cat(self.query_index).astype(np.int64)  # (Q,) with repeats
        if len(query_index) == 0:
            raise ValueError("MomentRetrievalMetric.compute() called before any update() on any process")
        pred_counts, gt_counts = cat(self.pred_counts).astype(np.int64), cat(self.gt_counts).astype(np.int64)
        pred_split, gt_split = np.cumsum(pred_counts)[:-1], np.cumsum(gt_counts)[:-1]
        pred_windows = np.split(cat(self.pred_windows).reshape(-1, 2), pred_split)
        pred_scores = np.split(cat(self.pred_scores), pred_split)
        gt_windows = np.split(cat(self.gt_windows).reshape(-1, 2), gt_split)
        # One row per query index, in index order: the first copy (lowest rank) of a repeated query.
        distinct, first = np.unique(query_index, return_index=True)
        for i, index in enumerate(query_index):
            kept = first[np.searchsorted(distinct, index)]
            if not np.array_equal(gt_windows[i], gt_windows[kept]):
                raise ValueError(
                    f"query index {index} was added twice with different ground-truth windows; "
                    "query_index must be the position of the query in its split"
                )
        metrics = retrieval_metrics(
            [pred_windows[i] for i in first],
            [pred_scores[i] for i in first],
            [gt_windows[i] for i in first],
            recall_at=self.recall_at,
            iou_thresholds=self.iou_thresholds,
            map_iou_thresholds=self.map_iou_thresholds,
            map_max_windows=self.map_max_windows,
            length_buckets=self.length_buckets,
        )
        return {key: torch.tensor(value, dtype=torch.float32) for key, value in metrics.items()}


# ---------------------------------------------------------------------------------------------
# Official QVHighlights protocol
# ---------------------------------------------------------------------------------------------


def _official_round(fraction: float) -> float:
    """Percent rounded to 2 decimals, as the official `float(f"{100 * v:.2f}")` (NaN stays NaN).

    Python's `round` on a Python float is correctly rounded like that format; numpy's `round`
    (scale, rint, unscale) is not, hence the `float()` first.
    """
    return round(float(100 * fraction), 2)


def qvhighlights_moment_metrics(
    pred_windows: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_windows: Sequence[np.ndarray],
    length_buckets: Sequence[LengthBucket] = QVHIGHLIGHTS_LENGTH_BUCKETS,
    *,
    max_windows: int | None = QVHIGHLIGHTS_MAX_PRED_WINDOWS,
    top1_windows: Sequence[np.ndarray] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Official QVHighlights moment retrieval metrics (MR-mAP and MR-R1 per length bucket).

    Matches moment_detr `standalone_eval/eval.py` (`eval_moment_retrieval`): per set, mAP over the
    first 10 predicted windows of each query (in the given order, then ranked by score) at IoU
    0.5:0.05:0.95 with the VOC 'all points' interpolation, averaged over queries; R1 from the first
    predicted window (in the given order; the submission format sorts by score) against its
    best-IoU ground-truth window. Percentages rounded to 2 decimals; an empty bucket gives NaN.
    Predicted values are scored in the official arithmetic whatever they are: NaN, Infinity and
    start > end included (see `official_cross_iou` and `detection_average_precision`).

    Args:
        pred_windows: per query, (K, 2) predicted windows in seconds, in submission order.
        pred_scores: per query, (K,) their scores.
        gt_windows: per query, (M, 2) ground-truth windows in seconds.
        length_buckets: the length buckets (official: short (0, 10], middle (10, 30], long (30, 150]).
        max_windows: windows of each query that mAP takes, first as given; None for all, when the
            caller has cut them (the official code cuts each submission row to 10 and pools the
            rows of a repeated qid).
        top1_windows: per query, the (2,) window that R1 scores; None for each query's first
            predicted window (the official code takes the last row of a repeated qid).

    Returns:
        `{set: {"MR-mAP": {"0.5": .., ..., "0.95": .., "average": ..}, "MR-R1": {"0.5": .., ...}}}`
        for each bucket and "full", in bucket order then "full" (the official order).
    """
    preds, scores, gts = _validate_queries(pred_windows, pred_scores, gt_windows, any_prediction_values=True)
    if top1_windows is None:
        top1_all = np.stack([p[0] for p in preds])  # (Q, 2)
    else:
        top1_all = np.asarray(top1_windows, dtype=np.float64).reshape(-1, 2)  # (Q, 2)
        if len(top1_all) != len(preds):
            raise ValueError(f"need one top-1 window per query, got {len(top1_all)} for {len(preds)} queries")
    keys = [str(t) for t in QVHIGHLIGHTS_IOU_THRESHOLDS]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for bucket in (*length_buckets, None):
        name = "full" if bucket is None else bucket.name
        members, bucket_gts = _bucket_members(gts, bucket)
        if not members:
            out[name] = {
                "MR-mAP": {**dict.fromkeys(keys, math.nan), "average": math.nan},
                "MR-R1": dict.fromkeys(keys, math.nan),
            }
            continue
        ap = np.array(
            [
                detection_average_precision(preds[i][:max_windows], scores[i][:max_windows], g)
                for i, g in zip(members, bucket_gts, strict=True)
            ]
        )  # (Q, 10); the official averages this very array over axis 0, hence no per-threshold loop
        ap_per_threshold = ap.mean(0)
        mr_map = {key: _official_round(v) for key, v in zip(keys, ap_per_threshold, strict=True)}
        mr_map["average"] = _official_round(np.mean(ap_per_threshold))
        top1 = top1_all[members]  # (Q, 2)
        best_gt = np.stack(
            [g[np.argmax(official_cross_iou(top1[q : q + 1], g)[0])] for q, g in enumerate(bucket_gts)]
        )  # (Q, 2), first of equal-IoU windows (the first NaN, as numpy's argmax)
        top1_iou = _hull_iou(top1, best_gt)  # (Q,)
        mr_r1 = {
            key: round(float(np.mean(top1_iou >= t)) * 100, 2)
            for key, t in zip(keys, QVHIGHLIGHTS_IOU_THRESHOLDS, strict=True)
        }
        out[name] = {"MR-mAP": mr_map, "MR-R1": mr_r1}
    return out


def qvhighlights_highlight_metrics(
    pred_saliency: Sequence[np.ndarray], gt_saliency: Sequence[np.ndarray]
) -> dict[str, dict[str, float]]:
    """Official QVHighlights highlight detection metrics (HL-mAP and HL-Hit1 per level).

    Matches moment_detr `eval_highlight`. For each level (Fair >= 2, Good >= 3, VeryGood >= 4) a
    clip is positive for an annotator when that annotator scored it >= the level. HL-mAP is
    `highlight_average_precision` per (query, annotator), averaged over both. HL-Hit1 takes the
    clip with the highest predicted score (the first of equal scores) and counts a hit when *any*
    annotator marks it positive (the max over annotators), averaged over queries. Percentages
    rounded to 2 decimals.

    Args:
        pred_saliency: per query, (N,) predicted clip scores, N >= 1, one per 2-s clip from clip 0.
            N need not be T, as in the official code (`compute_ap_from_tuple`, `compute_hl_hit1`):
            HL-mAP compares the first T scores with the T labelled clips, a shorter list padded
            with score 0; Hit1 takes the top clip of the N scores as given, and a top clip at
            index >= T (no label, e.g. the trailing partial clip of an odd duration) is a miss.
            NaN or Infinity is scored where the official code scores it: Hit1's top clip is
            numpy's argmax (the first NaN, else the first maximum), and HL-mAP ignores the
            scores of an annotator whose labels are all equal.
        gt_saliency: per query, (T, A) annotator scores 0..4 for every clip of the video (0 for the
            clips outside the relevant ones), A annotators (3 in QVHighlights).

    Returns:
        `{"HL-min-Fair": {"HL-mAP": .., "HL-Hit1": ..}, "HL-min-Good": ..., "HL-min-VeryGood": ...}`.

    Raises:
        NonFiniteScoreError: carrying the query index, for NaN or Infinity among the first T scores
            of a query where some annotator's labels at some level are mixed (the official code
            fails there).
    """
    if len(pred_saliency) != len(gt_saliency) or not gt_saliency:
        raise ValueError(
            f"need one entry per query, got {len(pred_saliency)} predictions and {len(gt_saliency)} labels"
        )
    preds = [np.asarray(p, dtype=np.float64) for p in pred_saliency]
    gts = [np.asarray(g, dtype=np.float64) for g in gt_saliency]
    num_annotators = gts[0].shape[1] if gts[0].ndim == 2 else 0
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        if g.ndim != 2 or g.shape[1] != num_annotators or num_annotators == 0 or len(g) == 0:
            raise ValueError(f"query {i}: saliency labels must be (T, A) with the same A, got {g.shape}")
        if p.ndim != 1 or len(p) == 0:
            raise ValueError(f"query {i}: predicted clip scores must be a non-empty vector, got {p.shape}")
    out = {}
    for level, min_score in HIGHLIGHT_MIN_SCORES.items():
        ap = np.zeros((len(preds), num_annotators))  # (Q, A)
        hit = np.zeros(len(preds))  # (Q,)
        for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
            positive = (g >= min_score).astype(np.float64)  # (T, A)
            top_clip = np.argmax(p)  # over all N scores, the first of equal ones
            hit[i] = positive[top_clip].max() if top_clip < len(g) else 0.0
            labelled = np.zeros(len(g))  # (T,): the first T scores, 0 past the end of a short list
            labelled[: min(len(p), len(g))] = p[: len(g)]
            for a in range(num_annotators):
                try:
                    ap[i, a] = highlight_average_precision(positive[:, a], labelled)
                except NonFiniteScoreError as err:
                    raise NonFiniteScoreError(f"query {i}: {err}", query_index=i) from err
        out[f"HL-min-{level}"] = {
            "HL-mAP": _official_round(np.mean(ap)),
            "HL-Hit1": _official_round(np.mean(hit)),
        }
    return out
