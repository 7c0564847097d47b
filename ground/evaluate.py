"""`python -m ground eval`: score a submission file against ground-truth annotations.

Both files are JSON Lines in the QVHighlights formats (one query per line):

* submission: `qid`, `pred_relevant_windows` `[[start_sec, end_sec, score], ...]` (best first by
  convention, not required) and/or `pred_saliency_scores` (one score per 2-s clip of the video from
  clip 0, `int(duration / 2)` of them by convention, any non-empty length accepted). Other keys
  (`vid`, `query`) are not used; a `vid` other than the ground truth's is reported by the CLI.
* ground truth: `qid`, `vid`, `duration` (seconds), `relevant_windows` `[[start_sec, end_sec], ...]`,
  and for highlight detection `relevant_clip_ids` with one `saliency_scores` row (one score 0..4 per
  annotator) per clip id. The Charades-STA / ActivityNet / TACoS files in this format (as
  line/lighthouse ships them) have no saliency fields.

Query ids may be ints (QVHighlights) or strings (TACoS). They match as Python compares the decoded
JSON values, which is how the official evaluation matches them (a set of ids per file): 2579 and
2579.0 are the same query, 2579 and "2579" are not, `true` is query 1. Each ground-truth id must
appear once, and the two files must hold the same ids.

Which submissions are accepted mirrors the official evaluation rule by rule: what it scores is
scored to the same numbers, what it fails on is refused (see `docs/datasets.md`, "Scoring a
submission", for the table):

* lenient like the official: saliency lists of any non-empty length (HL-mAP zero-pads a short list
  and cuts a long one to the `int(duration / 2)` labelled clips; Hit1 takes the top clip of the list
  as given, a miss when it is past the labelled clips); windows in any order (mAP uses the first
  10 as written, ranked by score; R1 uses the first as written); window items after the score;
  extra keys; `vid` not checked.
* lenient like the official, with one `warning:` line per kind from the CLI (file, line, qid and
  count), since the numbers come from the official code's quirks:
  - a qid on several rows: mAP pools the first 10 windows of each of its rows, R1 takes the first
    window of its last row, the highlight metrics the saliency of its last row;
  - a prediction field that the first row lacks: ignored (and not checked) on every row;
  - `true` / `false` as numbers: 1 / 0;
  - NaN / Infinity (Python's JSON reads `NaN`, `Infinity`): the official numpy arithmetic, so a
    window with a NaN bound (or `[Infinity, Infinity]`) has IoU NaN, which counts as a match for
    mAP and a miss for R1; a NaN score ranks where Python's `list.sort` leaves it; a NaN clip score
    is Hit1's top clip (numpy's argmax);
  - a predicted window with start > end: IoU from its negative length, 0 (or -0.0), and NaN, a mAP
    match, when the union is exactly 0.
* strict like the official: missing or extra query ids, a row without `qid`, a NaN qid, an empty or
  non-numeric window list, a window of fewer than 3 numbers, a window whose start and end are both
  booleans (numpy cannot subtract them), an empty or non-numeric saliency list, NaN / Infinity
  among the labelled clips' scores of a query whose labels are mixed (sklearn refuses them), a row
  without a field that the first row has, a line that is not a JSON object.
* stricter than the official: a first row with neither prediction field (the official output is
  `{"brief": {}}`); windows past the 10th are checked although the official code never reads them.
  More lenient: an empty length bucket is NaN where the official code fails.

Protocols:

* `qvhighlights` (default): the official QVHighlights output, numerically identical to moment_detr
  `standalone_eval/eval.py` (see `ground.metrics`): `{"brief": {...}, "HL-min-Fair": ..., "full": ...}`.
  Moment metrics are computed when the submission has windows; highlight metrics when it has
  saliency scores *and* the ground truth has saliency labels (otherwise they are left out and the
  CLI says so on stderr).
* `recall`: `ground.metrics.retrieval_metrics` (R1/R5 at IoU 0.1/0.3/0.5/0.7, mIoU, mAP), the usual
  protocol for Charades-STA, ActivityNet Captions and TACoS. It ranks each query's windows by
  score (stable) before R@k and mAP, so its R1 is the top-scored window, not the first written.
  Not being the official protocol, it refuses repeated qids and windows with NaN, Infinity or
  start > end.

Malformed input stops with one `SubmissionError` naming the file, line and query id.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cache_schema.errors import GroundcacheError
from ground.metrics import (
    HIGHLIGHT_MIN_SCORES,
    QVHIGHLIGHTS_LENGTH_BUCKETS,
    QVHIGHLIGHTS_MAX_PRED_WINDOWS,
    LengthBucket,
    NonFiniteScoreError,
    parse_length_buckets,
    qvhighlights_highlight_metrics,
    qvhighlights_moment_metrics,
    retrieval_metrics,
)

CLIP_SEC = 2.0  # QVHighlights saliency is labelled per 2-s clip; clip i covers [2i, 2i + 2) s.
Protocol = Literal["qvhighlights", "recall"]
PROTOCOLS: tuple[Protocol, ...] = ("qvhighlights", "recall")


class SubmissionError(GroundcacheError, ValueError):
    """Malformed submission or ground truth; the message names the file, line and query id."""


@dataclass(frozen=True)
class GroundTruthQuery:
    """One annotated query.

    Attributes:
        qid: query id as written in the file.
        vid: video id.
        duration_sec: video duration in seconds.
        windows: (M, 2) relevant windows in seconds, M >= 1.
        saliency: (T, A) annotator scores for each 2-s clip of the video, T = int(duration / 2),
            0 outside the relevant clips; None when the file has no saliency labels.
        where: location for error messages, e.g. "gt.jsonl line 12 (qid 2579)".
    """

    qid: int | float | str
    vid: str
    duration_sec: float
    windows: np.ndarray
    saliency: np.ndarray | None
    where: str


@dataclass(frozen=True)
class SubmittedQuery:
    """One query of a submission.

    Attributes:
        qid: query id as written in the file.
        vid: `vid` as written (not used for scoring), None when the submission leaves it out.
        windows: (K, 2) predicted windows in seconds in submission order, K >= 1, or None without
            `pred_relevant_windows`.
        scores: (K,) window scores, any order, or None.
        saliency: (N,) predicted clip scores, N >= 1, or None without `pred_saliency_scores`.
            A field that the first row lacks is None on every row (the official rule); saliency
            is None as well on a row whose qid repeats later (only the last row is read).
        where: location for error messages.
        notes: what the row holds that the official evaluation scores although it is dubious, by
            kind ("bool", "nonfinite", "inverted", "ignored"), each with the first instance,
            e.g. {"inverted": "pred_relevant_windows[0] = [4, 2, 0.5]"}; see `submission_warnings`.
    """

    qid: int | float | str
    vid: object
    windows: np.ndarray | None
    scores: np.ndarray | None
    saliency: np.ndarray | None
    where: str
    notes: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file of objects; row i is line i + 1 (blank lines are errors, not skipped).

    Raises:
        SubmissionError: naming the file and line of a malformed or non-object line.
        OSError: when the file cannot be read.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                raise SubmissionError(
                    f"{path} line {line_no}: blank line (expected one JSON object per line)"
                )
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SubmissionError(f"{path} line {line_no}: not valid JSON: {err}") from err
            if not isinstance(row, dict):
                raise SubmissionError(
                    f"{path} line {line_no}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
    if not rows:
        raise SubmissionError(f"{path}: no queries (empty file)")
    return rows


def qid_key(qid: object) -> int | float | str:
    """Matching key of a query id: the id itself, compared as Python compares it.

    This is the official evaluation's rule (it compares the sets of ids of the two files): 2579 and
    2579.0 are one query, 2579 and "2579" are two, and `true` is query 1 (True == 1 in Python).

    Raises:
        TypeError: for anything but an int, a float, a bool or a string, and for NaN, which equals
            nothing, not even itself, so it matches no query (the official evaluation fails on it).
    """
    if not isinstance(qid, int | float | str):
        raise TypeError(f"qid must be an int or a string, got {qid!r} ({type(qid).__name__})")
    if isinstance(qid, float) and math.isnan(qid):
        raise TypeError("qid NaN matches no query (NaN is not equal to itself)")
    return qid


def _is_number(value: object) -> bool:
    """A finite number that is not a bool (the ground-truth rule)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_json_number(value: object) -> bool:
    """Anything the official arithmetic takes as a number: also booleans (1/0), NaN and Infinity."""
    return isinstance(value, Real)


def _number_notes(values: Sequence[object], label: str) -> dict[str, str]:
    """The "bool" and "nonfinite" notes for numbers read from the submission, first instance each."""
    notes = {}
    for i, value in enumerate(values):
        if isinstance(value, bool) and "bool" not in notes:
            notes["bool"] = f"{label}[{i}] is {json.dumps(value)}"
        elif not isinstance(value, bool) and not math.isfinite(value) and "nonfinite" not in notes:
            notes["nonfinite"] = f"{label}[{i}] is {json.dumps(value)}"
    return notes


def _location(source: str, index: int, from_file: bool) -> str:
    return f"{source} line {index + 1}" if from_file else f"{source} row {index}"


def _qid_of(row: Mapping[str, Any], where: str) -> int | float | str:
    if "qid" not in row:
        raise SubmissionError(f"{where}: missing 'qid'")
    try:
        qid_key(row["qid"])
    except TypeError as err:
        raise SubmissionError(f"{where}: {err}") from err
    return row["qid"]


def _windows(
    value: object, width: int, name: str, where: str, more_ok: bool = False, any_number: bool = False
) -> np.ndarray:
    """Check a non-empty list of `width`-number lists and return it as a (N, width) float array.

    With `more_ok`, a window may hold more items; they are ignored, as the official evaluation
    ignores everything after `[start, end, score]`. With `any_number` (submissions), booleans, NaN
    and Infinity count as numbers, as in the official arithmetic; otherwise only finite non-bool
    numbers do (ground truth).
    """
    is_number = _is_json_number if any_number else _is_number
    kind = "numbers" if any_number else "finite numbers"
    if not isinstance(value, list) or not value:
        raise SubmissionError(f"{where}: '{name}' must be a non-empty list, got {value!r:.80}")
    for i, window in enumerate(value):
        is_list = isinstance(window, list | tuple)
        size_ok = is_list and (len(window) >= width if more_ok else len(window) == width)
        if not (size_ok and all(map(is_number, window[:width]))):
            raise SubmissionError(
                f"{where}: '{name}'[{i}] must {'start with' if more_ok else 'be'} {width} {kind}, "
                f"got {window!r:.80}"
            )
    return np.asarray([window[:width] for window in value], dtype=np.float64)  # (N, width)


def parse_ground_truth(
    rows: Sequence[Mapping[str, Any]], source: str = "ground truth", from_file: bool = False
) -> list[GroundTruthQuery]:
    """Check ground-truth rows and convert them.

    Args:
        rows: the parsed JSON objects, one per query.
        source: name used in error messages (the file path for files).
        from_file: rows are the lines of `source` (messages say "line N", else "row i").

    Raises:
        SubmissionError: naming the row and qid of the first problem.
    """
    queries = []
    labelled = None  # whether the file carries saliency labels; must be all rows or none
    for index, row in enumerate(rows):
        where = _location(source, index, from_file)
        if not isinstance(row, Mapping):
            raise SubmissionError(f"{where}: expected an object, got {type(row).__name__}")
        qid = _qid_of(row, where)
        where = f"{where} (qid {qid!r})"
        vid, duration_sec = row.get("vid"), row.get("duration")
        if not isinstance(vid, str) or not vid:
            raise SubmissionError(f"{where}: 'vid' must be a non-empty string, got {vid!r}")
        if not _is_number(duration_sec) or duration_sec <= 0:
            raise SubmissionError(
                f"{where}: 'duration' must be a positive number of seconds, got {duration_sec!r}"
            )
        if "relevant_windows" not in row:
            raise SubmissionError(f"{where}: no 'relevant_windows' (an unlabelled split cannot be scored)")
        windows = _windows(row["relevant_windows"], 2, "relevant_windows", where)
        if np.any(windows[:, 0] >= windows[:, 1]):
            bad = windows[windows[:, 0] >= windows[:, 1]][0].tolist()
            raise SubmissionError(f"{where}: relevant window {bad} has start >= end")
        has_saliency = "relevant_clip_ids" in row or "saliency_scores" in row
        if labelled is None:
            labelled = has_saliency
        elif has_saliency != labelled:
            raise SubmissionError(
                f"{where}: saliency labels ('relevant_clip_ids', 'saliency_scores') must be on every row or "
                f"on none; the first row {'has' if labelled else 'has not'} them"
            )
        saliency = _saliency_matrix(row, float(duration_sec), where) if has_saliency else None
        if saliency is not None and queries and queries[0].saliency.shape[1] != saliency.shape[1]:
            raise SubmissionError(
                f"{where}: {saliency.shape[1]} annotator scores per clip, the first row has "
                f"{queries[0].saliency.shape[1]}"
            )
        queries.append(GroundTruthQuery(qid, vid, float(duration_sec), windows, saliency, where))
    return queries


def num_clips(duration_sec: float) -> int:
    """Number of labelled 2-s clips of a video, `int(duration / 2)` as the official evaluation.

    A trailing partial clip (odd duration) has no label and no predicted score.
    """
    return int(duration_sec / CLIP_SEC)


def _saliency_matrix(row: Mapping[str, Any], duration_sec: float, where: str) -> np.ndarray:
    """(T, A) annotator scores per clip from `relevant_clip_ids` + `saliency_scores` (0 elsewhere)."""
    clip_ids, scores = row.get("relevant_clip_ids"), row.get("saliency_scores")
    total = num_clips(duration_sec)
    if not isinstance(clip_ids, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in clip_ids
    ):
        raise SubmissionError(f"{where}: 'relevant_clip_ids' must be a list of ints, got {clip_ids!r:.80}")
    if not clip_ids:
        raise SubmissionError(f"{where}: 'relevant_clip_ids' is empty")
    if len(set(clip_ids)) != len(clip_ids):
        raise SubmissionError(f"{where}: repeated clip id in 'relevant_clip_ids'")
    out_of_range = [c for c in clip_ids if not 0 <= c < total]
    if out_of_range:
        raise SubmissionError(
            f"{where}: clip id {out_of_range[0]} outside the {total} clips of a {duration_sec:g}-s video"
        )
    if not isinstance(scores, list) or len(scores) != len(clip_ids):
        raise SubmissionError(
            f"{where}: 'saliency_scores' must hold one row per clip id ({len(clip_ids)}), got {scores!r:.80}"
        )
    num_annotators = len(scores[0]) if isinstance(scores[0], list) else 0
    for i, clip_scores in enumerate(scores):
        if not (
            isinstance(clip_scores, list)
            and len(clip_scores) == num_annotators > 0
            and all(map(_is_number, clip_scores))
        ):
            raise SubmissionError(
                f"{where}: 'saliency_scores'[{i}] must be {num_annotators or 'one or more'} finite numbers "
                f"(one per annotator, as in row 0), got {clip_scores!r:.80}"
            )
    matrix = np.asarray(scores, dtype=np.float64)  # (len(clip_ids), A)
    saliency = np.zeros((total, matrix.shape[1]))  # (T, A)
    saliency[clip_ids] = matrix
    return saliency


PREDICTION_FIELDS = ("pred_relevant_windows", "pred_saliency_scores")


def parse_submission(
    rows: Sequence[Mapping[str, Any]], source: str = "submission", from_file: bool = False
) -> list[SubmittedQuery]:
    """Check submission rows and convert them (see the module docstring for the format).

    As in the official evaluation, the first row decides which prediction fields are scored: a
    field it lacks is ignored on every row (and not checked there), a field it has is required on
    every row, except `pred_saliency_scores` on a row whose qid repeats later: only the last row of
    a qid is read for highlights, so the others get saliency None. Values that the official
    arithmetic scores although they are dubious (booleans, NaN, Infinity, start > end) are accepted
    and recorded in `SubmittedQuery.notes`.

    Args:
        rows: the parsed JSON objects, one per query; a qid may repeat (see `score_queries`).
        source: name used in error messages (the file path for files).
        from_file: rows are the lines of `source` (messages say "line N", else "row i").

    Raises:
        SubmissionError: naming the row and qid of the first problem.
    """
    first = _location(source, 0, from_file)
    if rows and not isinstance(rows[0], Mapping):
        raise SubmissionError(f"{first}: expected an object, got {type(rows[0]).__name__}")
    scored = [name for name in PREDICTION_FIELDS if rows and name in rows[0]]
    # The official highlight metrics read only the last row of a qid (a dict keyed by qid).
    last_row = {}
    for index, row in enumerate(rows):
        try:
            last_row[qid_key(row["qid"])] = index
        except (TypeError, KeyError):
            pass  # reported in the loop below
    queries = []
    for index, row in enumerate(rows):
        where = _location(source, index, from_file)
        if not isinstance(row, Mapping):
            raise SubmissionError(f"{where}: expected an object, got {type(row).__name__}")
        qid = _qid_of(row, where)
        where = f"{where} (qid {qid!r})"
        if not scored:
            raise SubmissionError(
                f"{where}: neither 'pred_relevant_windows' nor 'pred_saliency_scores' (the first row "
                f"decides which are scored, as in the official evaluation)"
            )
        notes = {}
        if isinstance(qid, bool):
            notes["bool"] = f"qid {json.dumps(qid)} (query {int(qid)})"
        elif isinstance(qid, float) and math.isinf(qid):
            notes["nonfinite"] = f"qid {json.dumps(qid)}"
        read = [name for name in scored if name != "pred_saliency_scores" or last_row[qid_key(qid)] == index]
        for name in read:
            if name not in row:
                raise SubmissionError(
                    f"{where}: no '{name}' while {first} has it (the first row decides which fields are "
                    f"scored; the official evaluation fails here)"
                )
        ignored = [name for name in PREDICTION_FIELDS if name in row and name not in scored]
        if ignored:
            notes["ignored"] = f"'{ignored[0]}' (not on {first})"
        windows = scores = saliency = None
        if "pred_relevant_windows" in read:
            triples = _windows(
                row["pred_relevant_windows"], 3, "pred_relevant_windows", where, more_ok=True, any_number=True
            )
            for i, window in enumerate(row["pred_relevant_windows"]):
                label = f"pred_relevant_windows[{i}]"
                if isinstance(window[0], bool) and isinstance(window[1], bool):
                    raise SubmissionError(
                        f"{where}: {label} has booleans for both start and end: {json.dumps(window[:3])}; "
                        f"the official evaluation fails on it (numpy cannot subtract booleans)"
                    )
                for kind, text in _number_notes(window[:3], label).items():
                    notes.setdefault(kind, text)
                if window[0] > window[1] and "inverted" not in notes:
                    notes["inverted"] = f"{label} is {json.dumps(window[:3])}"
            windows, scores = triples[:, :2], triples[:, 2]  # (K, 2), (K,)
        if "pred_saliency_scores" in read:
            values = row["pred_saliency_scores"]
            if not isinstance(values, list) or not values or not all(map(_is_json_number, values)):
                raise SubmissionError(
                    f"{where}: 'pred_saliency_scores' must be a non-empty list of numbers, got {values!r:.80}"
                )
            for kind, text in _number_notes(values, "pred_saliency_scores").items():
                notes.setdefault(kind, text)
            saliency = np.asarray(values, dtype=np.float64)  # (N,), true/false as 1/0
        queries.append(SubmittedQuery(qid, row.get("vid"), windows, scores, saliency, where, notes))
    return queries


QueryKey = int | float | str


def _align(
    submission: list[SubmittedQuery], ground_truth: list[GroundTruthQuery]
) -> tuple[list[list[SubmittedQuery]], list[GroundTruthQuery]]:
    """Submission rows grouped by qid and the ground truth of each group, after checking the ids.

    Groups are in the order of their first row. A qid on several rows is one query, as in the
    official evaluation (which builds its per-query data in dicts keyed by qid); `score_queries`
    says how its rows are scored. Both files must hold the same set of ids.

    Raises:
        SubmissionError: for a qid repeated in the ground truth, a submitted qid not in the ground
            truth, or a ground-truth qid not submitted.
    """
    by_key: dict[QueryKey, GroundTruthQuery] = {}
    for gt in ground_truth:
        if qid_key(gt.qid) in by_key:
            raise SubmissionError(f"{gt.where}: qid repeated (first at {by_key[qid_key(gt.qid)].where})")
        by_key[qid_key(gt.qid)] = gt
    groups: dict[QueryKey, list[SubmittedQuery]] = {}
    for pred in submission:
        groups.setdefault(qid_key(pred.qid), []).append(pred)
    extra = [rows[0] for key, rows in groups.items() if key not in by_key]
    if extra:
        listed = ", ".join(repr(pred.qid) for pred in extra[:5])
        raise SubmissionError(
            f"submission has {len(extra)} queries not in the ground truth, e.g. qid {listed} "
            f"(first at {extra[0].where}){_type_hint(extra[0].qid, by_key)}"
        )
    missing = [gt for key, gt in by_key.items() if key not in groups]
    if missing:
        listed = ", ".join(repr(gt.qid) for gt in missing[:5])
        raise SubmissionError(
            f"submission misses {len(missing)} of the {len(by_key)} ground-truth queries, e.g. qid {listed} "
            f"(first at {missing[0].where})"
        )
    return list(groups.values()), [by_key[key] for key in groups]


def _type_hint(qid: int | float | str, known: Mapping[int | float | str, object]) -> str:
    """A note when `qid` is unknown only because the other file writes it as a string, or as a number."""
    twin: int | str | None = None
    if isinstance(qid, str) and qid.strip().lstrip("-").isdigit():
        twin = int(qid)
    elif isinstance(qid, int | float) and float(qid).is_integer():
        twin = str(int(qid))
    if twin is None or twin not in known:
        return ""
    return (
        f'; the ground truth has qid {twin!r}: ids match by value and type, 2579 and "2579" are two '
        "queries, as in the official evaluation"
    )


def vid_mismatches(submission: list[SubmittedQuery], ground_truth: list[GroundTruthQuery]) -> list[str]:
    """Submitted rows whose `vid` differs from the ground truth's, one line each.

    The official evaluation ignores `vid` and so does the scoring; the CLI lists these on stderr.

    Raises:
        SubmissionError: as `score_queries` when the two files do not hold the same query ids.
    """
    groups, aligned = _align(submission, ground_truth)
    return [
        f"{pred.where}: vid {pred.vid!r}, the ground truth says {gt.vid!r}"
        for rows, gt in zip(groups, aligned, strict=True)
        for pred in rows
        if pred.vid is not None and pred.vid != gt.vid
    ]


# What the official evaluation makes of each accepted-but-dubious input, for the warning lines.
_NOTE_EFFECTS = {
    "ignored": "ignored on every row: the official evaluation scores only the fields of the first row",
    "bool": "scored as 1 / 0, as the official evaluation does (a qid true is query 1)",
    "nonfinite": (
        "scored in the official arithmetic: a NaN IoU counts as a match for mAP and a miss for R1, a NaN "
        "score ranks where Python's sort leaves it, a NaN clip score is Hit1's top clip"
    ),
    "inverted": (
        "scored in the official arithmetic: IoU from a negative length, 0, or NaN (a match for mAP) when "
        "the union is 0"
    ),
}
_NOTE_SUBJECTS = {
    "ignored": "a prediction field that the first row lacks",
    "bool": "true / false as a number",
    "nonfinite": "NaN or Infinity as a number",
    "inverted": "a predicted window with start > end",
}


def submission_warnings(submission: list[SubmittedQuery]) -> list[str]:
    """One line per kind of input that is scored as the official evaluation does but is dubious.

    Each line gives the number of rows, the first row (file, line and qid) with an instance, and
    what the official evaluation makes of it. The kinds: a qid on several rows, a field that the
    first row lacks, true / false, NaN or Infinity as numbers, a predicted window with start > end.
    """
    lines = []
    first_row: dict[QueryKey, SubmittedQuery] = {}
    repeats = []
    for pred in submission:
        key = qid_key(pred.qid)
        if key in first_row:
            repeats.append((pred, first_row[key]))
        else:
            first_row[key] = pred
    if repeats:
        pred, first = repeats[0]
        lines.append(
            f"{len(repeats)} rows repeat the qid of an earlier row, e.g. {pred.where} "
            f"(first at {first.where}); scored as the official evaluation does: mAP pools the first 10 "
            "windows of each of its rows, R1 and the highlight metrics take its last row"
        )
    for kind, subject in _NOTE_SUBJECTS.items():
        rows = [pred for pred in submission if kind in pred.notes]
        if rows:
            lines.append(
                f"{len(rows)} rows hold {subject}, e.g. {rows[0].where}: {rows[0].notes[kind]}; "
                f"{_NOTE_EFFECTS[kind]}"
            )
    return lines


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def with_saliency(submission: Sequence[SubmittedQuery]) -> bool:
    """Whether the submission's saliency scores are scored: the first row has them (then the last row
    of every qid has them too, checked on parsing)."""
    return any(q.saliency is not None for q in submission)


def has_highlight_labels(ground_truth: Sequence[GroundTruthQuery]) -> bool:
    """Whether the ground truth carries saliency labels (all rows do, or none; checked on parsing)."""
    return bool(ground_truth) and ground_truth[0].saliency is not None


def score_queries(
    submission: list[SubmittedQuery],
    ground_truth: list[GroundTruthQuery],
    *,
    protocol: Protocol = "qvhighlights",
    length_buckets: Sequence[LengthBucket] = QVHIGHLIGHTS_LENGTH_BUCKETS,
) -> dict[str, Any]:
    """Score parsed queries (see `evaluate_submission`).

    A qid on several rows is scored as the official evaluation scores it: mAP pools the first 10
    windows of each of its rows (then ranks them by score), R1 takes the first window of its last
    row, the highlight metrics take the saliency scores of its last row. The `recall` protocol,
    which is not the official one, refuses repeated qids and windows with NaN, Infinity or
    start > end.

    Raises:
        SubmissionError: as `evaluate_submission`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; available: {', '.join(PROTOCOLS)}")
    groups, aligned = _align(submission, ground_truth)
    with_windows = submission[0].windows is not None
    if protocol == "recall":
        if not with_windows:
            raise SubmissionError(f"{submission[0].where}: the recall protocol needs 'pred_relevant_windows'")
        _check_for_recall(groups)
        return retrieval_metrics(
            [rows[0].windows for rows in groups],
            [rows[0].scores for rows in groups],
            [gt.windows for gt in aligned],
            length_buckets=length_buckets,
        )
    sections: dict[str, Any] = {}
    brief: dict[str, float] = {}
    if with_windows:
        moments = qvhighlights_moment_metrics(
            [np.concatenate([q.windows[:QVHIGHLIGHTS_MAX_PRED_WINDOWS] for q in rows]) for rows in groups],
            [np.concatenate([q.scores[:QVHIGHLIGHTS_MAX_PRED_WINDOWS] for q in rows]) for rows in groups],
            [gt.windows for gt in aligned],
            length_buckets=length_buckets,
            max_windows=None,  # cut per row above, as the official code does before pooling
            top1_windows=[rows[-1].windows[0] for rows in groups],
        )
        sections.update(moments)
        moment_brief = {
            "MR-full-mAP": moments["full"]["MR-mAP"]["average"],
            "MR-full-mAP@0.5": moments["full"]["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": moments["full"]["MR-mAP"]["0.75"],
            "MR-full-R1@0.5": moments["full"]["MR-R1"]["0.5"],
            "MR-full-R1@0.7": moments["full"]["MR-R1"]["0.7"],
        }
        moment_brief.update(
            {f"MR-{b.name}-mAP": moments[b.name]["MR-mAP"]["average"] for b in length_buckets}
        )
        brief.update(sorted(moment_brief.items()))
    if with_saliency(submission) and has_highlight_labels(aligned):
        try:
            highlights = qvhighlights_highlight_metrics(
                [rows[-1].saliency for rows in groups], [gt.saliency for gt in aligned]
            )
        except NonFiniteScoreError as err:
            pred, gt = groups[err.query_index][-1], aligned[err.query_index]
            raise SubmissionError(
                f"{pred.where}: 'pred_saliency_scores' holds NaN or Infinity among its first "
                f"{len(gt.saliency)} scores (the labelled clips); the official evaluation fails on it "
                f"(sklearn's precision_recall_curve refuses non-finite scores)"
            ) from err
        sections.update(highlights)
        for level in HIGHLIGHT_MIN_SCORES:
            section = highlights[f"HL-min-{level}"]
            brief[f"HL-min-{level}-mAP"] = section["HL-mAP"]
            brief[f"HL-min-{level}-Hit1"] = section["HL-Hit1"]
    if not sections:
        raise SubmissionError(
            "nothing to score: the submission has no 'pred_relevant_windows' and the ground truth has no "
            "saliency labels for its 'pred_saliency_scores'"
        )
    return {"brief": brief, **{key: sections[key] for key in sorted(sections)}}


def _check_for_recall(groups: list[list[SubmittedQuery]]) -> None:
    """Refuse, for the `recall` protocol, what only the official protocol scores (see `score_queries`)."""
    for rows in groups:
        if len(rows) > 1:
            raise SubmissionError(
                f"{rows[1].where}: qid repeated (first at {rows[0].where}); only --protocol qvhighlights "
                f"scores repeated rows, as the official evaluation does"
            )
        pred = rows[0]
        if not (np.all(np.isfinite(pred.windows)) and np.all(np.isfinite(pred.scores))):
            raise SubmissionError(
                f"{pred.where}: NaN or Infinity in 'pred_relevant_windows'; the recall protocol needs finite "
                f"numbers (--protocol qvhighlights scores them as the official evaluation does)"
            )
        if np.any(pred.windows[:, 0] > pred.windows[:, 1]):
            i = int(np.flatnonzero(pred.windows[:, 0] > pred.windows[:, 1])[0])
            raise SubmissionError(
                f"{pred.where}: pred_relevant_windows[{i}] has start > end: {pred.windows[i].tolist()}; "
                "the recall protocol refuses it (--protocol qvhighlights scores it as the official "
                "evaluation does)"
            )


def evaluate_submission(
    submission_rows: Sequence[Mapping[str, Any]],
    gt_rows: Sequence[Mapping[str, Any]],
    *,
    protocol: Protocol = "qvhighlights",
    length_buckets: Sequence[LengthBucket] = QVHIGHLIGHTS_LENGTH_BUCKETS,
) -> dict[str, Any]:
    """Score submission rows against ground-truth rows (both as parsed JSON objects).

    Args:
        submission_rows: one dict per query in the submission format (module docstring).
        gt_rows: one dict per query in the ground-truth format.
        protocol: "qvhighlights" for the official output dict, "recall" for the flat
            `retrieval_metrics` dict.
        length_buckets: ground-truth length buckets (official QVHighlights ones by default).

    Returns:
        For "qvhighlights", the official structure: `{"brief": {"MR-full-R1@0.5": ..,
        "HL-min-VeryGood-Hit1": .., ...}, "HL-min-Fair": {"HL-mAP": .., "HL-Hit1": ..}, ...,
        "full": {"MR-mAP": {...}, "MR-R1": {...}}, "long": ..., "middle": ..., "short": ...}`,
        percentages rounded to 2 decimals. Highlight sections appear only when the submission has
        saliency scores and the ground truth has saliency labels.

    Raises:
        SubmissionError: naming the row and qid of the first problem.
    """
    return score_queries(
        parse_submission(submission_rows),
        parse_ground_truth(gt_rows),
        protocol=protocol,
        length_buckets=length_buckets,
    )


def evaluate_files(
    submission_path: str | Path,
    gt_path: str | Path,
    *,
    protocol: Protocol = "qvhighlights",
    length_buckets: Sequence[LengthBucket] = QVHIGHLIGHTS_LENGTH_BUCKETS,
) -> dict[str, Any]:
    """`evaluate_submission` on two JSON Lines files; errors name the file and line."""
    submission = parse_submission(read_jsonl(submission_path), str(submission_path), from_file=True)
    ground_truth = parse_ground_truth(read_jsonl(gt_path), str(gt_path), from_file=True)
    return score_queries(submission, ground_truth, protocol=protocol, length_buckets=length_buckets)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _length_buckets_arg(spec: str) -> tuple[LengthBucket, ...]:
    try:
        return parse_length_buckets(spec)
    except ValueError as err:  # argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ground eval",
        description="Score a QVHighlights-format submission (jsonl) against ground truth (jsonl); "
        "prints the metrics as JSON.",
    )
    parser.add_argument("--submission", required=True, type=Path, help="predictions, one query per line")
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth annotations, one query per line")
    parser.add_argument("--out", type=Path, help="also write the metrics JSON here")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="qvhighlights",
        help="qvhighlights: the official QVHighlights metrics (default); "
        "recall: R1/R5 at IoU 0.1/0.3/0.5/0.7, mIoU and mAP (Charades-STA, ActivityNet, TACoS)",
    )
    parser.add_argument(
        "--length-buckets",
        type=_length_buckets_arg,
        help="ground-truth length buckets in seconds, NAME=MIN:MAX,... with MIN exclusive "
        "(default for qvhighlights: short=0:10,middle=10:30,long=30:150; none for recall)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m ground eval`; returns the exit status (1 on bad input)."""
    args = build_parser().parse_args(argv)
    buckets = args.length_buckets
    if buckets is None:
        buckets = QVHIGHLIGHTS_LENGTH_BUCKETS if args.protocol == "qvhighlights" else ()
    try:
        submission = parse_submission(read_jsonl(args.submission), str(args.submission), from_file=True)
        ground_truth = parse_ground_truth(read_jsonl(args.gt), str(args.gt), from_file=True)
        metrics = score_queries(submission, ground_truth, protocol=args.protocol, length_buckets=buckets)
        other_vids = vid_mismatches(submission, ground_truth)
    except (SubmissionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for line in submission_warnings(submission):
        print(f"warning: {line}", file=sys.stderr)
    if other_vids:
        print(
            f"note: {len(other_vids)} queries name another vid than the ground truth (scored by qid, as "
            f"the official evaluation does), e.g. {other_vids[0]}",
            file=sys.stderr,
        )
    if (
        args.protocol == "qvhighlights"
        and with_saliency(submission)
        and not has_highlight_labels(ground_truth)
    ):
        print(f"note: {args.gt} has no saliency labels; highlight metrics skipped", file=sys.stderr)
    text = json.dumps(metrics, indent=4)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
