"""Validation policy, problem records and the report every adapter returns.

Adapters parse; this module decides. Each problem found in an annotation is recorded with the
action the policy applied to it and the row's source, so that nothing is swapped, clipped or
dropped without a line in the report. Problems are detected on the annotation as written (not on
an already-fixed window), so the counts do not depend on the policy and match the dataset's known
anomalies.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from extract.datasets.annotation import Annotation, AnnotationError, RawRecord

ProblemKind = Literal[
    "start_after_end",
    "empty_window",
    "start_before_zero",
    "start_past_duration",
    "end_past_duration",
    "no_windows_left",
    "empty_text",
    "duplicate",
    "unknown_duration",
    "missing_video",
    "duration_mismatch",
]
PROBLEM_KINDS: tuple[str, ...] = get_args(ProblemKind)

Action = Literal["keep", "swap", "clip", "drop", "error"]
"""What the policy does with a problem. ``drop`` removes the window for window problems and the
row for row problems; ``error`` records the problem and makes the load fail once every row has
been checked."""
ACTIONS: tuple[str, ...] = get_args(Action)

SUPERSEDED = "superseded"
"""Recorded action of a problem on a window or row that an earlier problem already dropped."""

ALLOWED_ACTIONS: dict[str, tuple[str, ...]] = {
    # Window problems (checked per window, in this order).
    "start_after_end": ("drop", "swap", "error"),
    "empty_window": ("drop", "keep", "error"),
    "start_before_zero": ("clip", "drop", "keep", "error"),
    "start_past_duration": ("drop", "keep", "error"),
    "end_past_duration": ("clip", "drop", "keep", "error"),
    # Row problems.
    "no_windows_left": ("drop", "error"),
    "empty_text": ("drop", "keep", "error"),
    "duplicate": ("keep", "drop", "error"),
    "unknown_duration": ("keep", "drop", "error"),
    "missing_video": ("drop", "keep", "error"),
    # A decoded duration that disagrees with the annotation means another copy of the video: its
    # windows may be shifted, so the video fails unless the user accepts it.
    "duration_mismatch": ("error", "keep", "drop"),
}
assert tuple(ALLOWED_ACTIONS) == PROBLEM_KINDS

PROBLEM_DESCRIPTIONS: dict[str, str] = {
    "start_after_end": "window start > end",
    "empty_window": "window start == end",
    "start_before_zero": "window start < 0",
    "start_past_duration": "window starts at or after the end of the video",
    "end_past_duration": "window ends after the end of the video",
    "no_windows_left": "labelled query lost all its windows",
    "empty_text": "query text is empty",
    "duplicate": "same vid + query + windows as an earlier row",
    "unknown_duration": "annotation gives no video duration",
    "missing_video": "video file not found under the video root",
    "duration_mismatch": "annotated and decoded durations disagree",
}


@dataclass(frozen=True)
class ValidationPolicy:
    """The action applied to each kind of problem (see ``ALLOWED_ACTIONS`` for the choices)."""

    start_after_end: Action = "drop"
    empty_window: Action = "drop"
    start_before_zero: Action = "clip"
    start_past_duration: Action = "drop"
    end_past_duration: Action = "clip"
    no_windows_left: Action = "drop"
    empty_text: Action = "drop"
    duplicate: Action = "keep"
    unknown_duration: Action = "keep"
    missing_video: Action = "drop"
    duration_mismatch: Action = "error"
    duration_tolerance_sec: float = 1e-6
    """Slack before a window counts as past the duration. Only float round-off: the ActivityNet
    files store durations such as 70.28999999999999 next to an end of 70.29."""

    def __post_init__(self) -> None:
        for kind in PROBLEM_KINDS:
            action = getattr(self, kind)
            if action not in ALLOWED_ACTIONS[kind]:
                raise ValueError(
                    f"policy for {kind!r}: action {action!r} is not one of {ALLOWED_ACTIONS[kind]}"
                )
        if not (math.isfinite(self.duration_tolerance_sec) and self.duration_tolerance_sec >= 0):
            raise ValueError(f"duration_tolerance_sec must be >= 0, got {self.duration_tolerance_sec}")

    def action(self, kind: str) -> str:
        """Return the action for ``kind``."""
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; known kinds: {', '.join(PROBLEM_KINDS)}")
        return getattr(self, kind)

    @classmethod
    def from_strings(cls, items: Sequence[str], base: ValidationPolicy | None = None) -> ValidationPolicy:
        """Build a policy from ``kind=action`` strings (the CLI's ``--policy`` values)."""
        overrides: dict[str, Any] = {}
        for item in items:
            kind, sep, value = item.partition("=")
            kind, value = kind.strip(), value.strip()
            if not sep or not value:
                raise ValueError(f"policy {item!r} must look like kind=action (e.g. end_past_duration=drop)")
            if kind == "duration_tolerance_sec":
                overrides[kind] = float(value)
            elif kind in PROBLEM_KINDS:
                overrides[kind] = value
            else:
                raise ValueError(
                    f"policy {item!r}: unknown problem kind {kind!r}; known: {', '.join(PROBLEM_KINDS)}"
                )
        return dataclasses.replace(base or cls(), **overrides)


@dataclass(frozen=True)
class Problem:
    """One problem found in one annotation row, with the action taken."""

    kind: str
    """One of ``PROBLEM_KINDS``."""
    action: str
    """The policy action applied, or ``superseded`` when an earlier problem already dropped it."""
    source: str
    """``file:line`` (or ``file#vid[i]``) of the row."""
    qid: str
    vid: str
    detail: str
    """Human-readable description with the numbers involved."""
    split: str = ""
    window: tuple[float, float] | None = None
    """The window as annotated (window problems only)."""
    fixed: tuple[float, float] | None = None
    """The window after ``swap`` or ``clip``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        text = f"{self.source} qid={self.qid} vid={self.vid}: {self.kind}: {self.detail} -> {self.action}"
        if self.fixed is not None and self.action in ("swap", "clip"):
            text += f" [{self.fixed[0]}, {self.fixed[1]}]"
        return text


@dataclass
class ValidationReport:
    """Everything a load found and did: files read, rows per split, problems with actions."""

    dataset: str
    policy: ValidationPolicy
    files: list[str] = field(default_factory=list)
    read_per_split: Counter[str] = field(default_factory=Counter)
    kept_per_split: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    normalized: Counter[str] = field(default_factory=Counter)
    """Documented normalisations with their counts (e.g. ``query_whitespace_stripped``)."""
    notes: list[str] = field(default_factory=list)
    """Adapter remarks (e.g. which copy of a file was read)."""

    @property
    def n_read(self) -> int:
        return sum(self.read_per_split.values())

    @property
    def n_kept(self) -> int:
        return sum(self.kept_per_split.values())

    @property
    def errors(self) -> list[Problem]:
        """Problems whose policy action is ``error``."""
        return [p for p in self.problems if p.action == "error"]

    def counts(self) -> dict[str, int]:
        """Number of problems per kind (kinds with none are left out)."""
        found = Counter(p.kind for p in self.problems)
        return {kind: found[kind] for kind in PROBLEM_KINDS if found[kind]}

    def count(self, kind: str, action: str | None = None, split: str | None = None) -> int:
        """Number of problems of ``kind`` (with ``action`` / in ``split`` when given)."""
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; known kinds: {', '.join(PROBLEM_KINDS)}")
        return sum(
            1
            for p in self.problems
            if p.kind == kind and action in (None, p.action) and split in (None, p.split)
        )

    def summary(self, max_examples: int = 3) -> str:
        """Printable multi-line report: rows read and kept per split, then each problem kind."""
        lines = [f"dataset {self.dataset}: {self.n_read} queries read, {self.n_kept} kept"]
        lines += [f"  file {f}" for f in self.files]
        lines += [f"  note: {note}" for note in self.notes]
        for split in self.read_per_split:
            read, kept = self.read_per_split[split], self.kept_per_split[split]
            lines.append(f"  split {split}: {read} read, {kept} kept, {read - kept} dropped")
        for name, n in sorted(self.normalized.items()):
            lines.append(f"  normalized: {name} x{n}")
        counts = self.counts()
        if not counts:
            lines.append("no problems found")
            return "\n".join(lines)
        lines.append("problems (kind: count [actions]; policy):")
        for kind, n in counts.items():
            of_kind = [p for p in self.problems if p.kind == kind]
            actions = Counter(p.action for p in of_kind)
            done = ", ".join(f"{a} {c}" for a, c in sorted(actions.items()))
            lines.append(
                f"  {kind}: {n} [{done}]; policy {self.policy.action(kind)} ({PROBLEM_DESCRIPTIONS[kind]})"
            )
            lines += [f"    {p}" for p in of_kind[:max_examples]]
            if n > max_examples:
                lines.append(f"    ... {n - max_examples} more")
        return "\n".join(lines)

    def to_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per problem to ``path`` and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for p in self.problems:
                f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        return path


class AnnotationValidationError(AnnotationError):
    """Some problems had the ``error`` action. ``report`` holds every problem found."""

    def __init__(self, report: ValidationReport, max_listed: int = 5) -> None:
        self.report = report
        errors = report.errors
        listed = "\n".join(f"  {p}" for p in errors[:max_listed])
        more = f"\n  ... {len(errors) - max_listed} more" if len(errors) > max_listed else ""
        super().__init__(
            f"{report.dataset}: {len(errors)} annotation problem(s) with policy 'error':\n{listed}{more}"
        )


@dataclass(frozen=True)
class AdapterResult:
    """Validated rows and the report of how they were obtained."""

    rows: tuple[Annotation, ...]
    report: ValidationReport

    def by_split(self) -> dict[str, list[Annotation]]:
        """Rows grouped by split, in file order."""
        out: dict[str, list[Annotation]] = {}
        for row in self.rows:
            out.setdefault(row.split, []).append(row)
        return out


VideoResolver = Callable[[str, str | None], str | None]
"""(vid, annotated video path) -> path relative to the video root, or None when missing."""


class Validator:
    """Applies the policy to raw records one by one and collects the report.

    Args:
        dataset: Dataset name for the report.
        policy: Actions per problem kind.
        resolve_video: Called per row when a video root was given; None skips the check.
        window_duration_checks: Check windows against the row's duration (``start_past_duration``,
            ``end_past_duration``). False when the caller checks them against the decoded
            duration instead, as the extract pipeline does.
    """

    def __init__(
        self,
        dataset: str,
        policy: ValidationPolicy,
        resolve_video: VideoResolver | None = None,
        *,
        window_duration_checks: bool = True,
    ) -> None:
        self.report = ValidationReport(dataset=dataset, policy=policy)
        self.policy = policy
        self._resolve_video = resolve_video
        self._window_duration_checks = window_duration_checks
        self._rows: list[Annotation] = []
        self._qid_source: dict[str, str] = {}
        self._video_seen: dict[str, tuple[float | None, str | None, str]] = {}
        self._row_keys: dict[tuple[Any, ...], str] = {}
        self._resolved: dict[tuple[str, str | None], str | None] = {}

    def add_file(self, path: str | Path) -> None:
        self.report.files.append(str(path))

    def add(self, raw: RawRecord) -> None:
        """Validate one record; keep it, fix it or drop it as the policy says, and record why."""
        self._check_identity(raw)
        self.report.read_per_split[raw.split] += 1
        text = raw.query.strip()
        if text != raw.query:
            self.report.normalized["query_whitespace_stripped"] += 1

        dead = False  # True once the row is dropped (or failed); later problems are superseded
        if not text:
            dead = self._row_problem("empty_text", raw, "query text is empty", dead)
        if raw.duration_sec is None:
            dead = self._row_problem("unknown_duration", raw, "no duration in the annotation", dead)

        kept: list[tuple[float, float]] = []
        for i, window in enumerate(raw.windows):
            fixed = self._check_window(raw, i, window, dead)
            if fixed is not None:
                kept.append(fixed)
        if raw.labelled and raw.windows and not kept and not dead:
            dead = self._row_problem(
                "no_windows_left", raw, f"all {len(raw.windows)} window(s) were dropped", dead
            )

        key = (raw.vid, text, tuple(kept))
        if key in self._row_keys:
            dead = self._row_problem("duplicate", raw, f"same as {self._row_keys[key]}", dead)
        elif not dead:
            self._row_keys[key] = raw.source

        video = raw.video
        if self._resolve_video is not None:
            cache_key = (raw.vid, raw.video)
            if cache_key not in self._resolved:
                self._resolved[cache_key] = self._resolve_video(raw.vid, raw.video)
            found = self._resolved[cache_key]
            if found is None:
                wanted = raw.video or f"{raw.vid}.*"
                dead = self._row_problem("missing_video", raw, f"no video file {wanted}", dead)
            else:
                video = found

        if dead:
            return
        self.report.kept_per_split[raw.split] += 1
        saliency = raw.saliency
        if saliency is not None:
            saliency.setflags(write=False)
        self._rows.append(
            Annotation(
                qid=raw.qid,
                vid=raw.vid,
                video=video,
                query=text,
                split=raw.split,
                duration_sec=raw.duration_sec,
                windows=tuple(kept),
                saliency=saliency,
                saliency_clip_sec=raw.saliency_clip_sec,
                source=raw.source,
            )
        )

    def finish(self) -> AdapterResult:
        """Return the rows and report; raise if any problem had the ``error`` action."""
        for split in self.report.read_per_split:
            self.report.kept_per_split[split] += 0
        if self.report.errors:
            raise AnnotationValidationError(self.report)
        return AdapterResult(rows=tuple(self._rows), report=self.report)

    def _check_identity(self, raw: RawRecord) -> None:
        # A repeated qid or one vid with two durations/videos is a broken file, not a policy choice.
        if raw.qid in self._qid_source:
            raise AnnotationError(
                f"{raw.source}: query id {raw.qid!r} already used at {self._qid_source[raw.qid]}"
            )
        self._qid_source[raw.qid] = raw.source
        seen = self._video_seen.get(raw.vid)
        if seen is None:
            self._video_seen[raw.vid] = (raw.duration_sec, raw.video, raw.source)
            return
        duration_sec, video, source = seen
        if duration_sec != raw.duration_sec:
            raise AnnotationError(
                f"{raw.source}: video {raw.vid!r} has duration {raw.duration_sec} here "
                f"but {duration_sec} at {source}"
            )
        if video != raw.video:
            raise AnnotationError(
                f"{raw.source}: video id {raw.vid!r} points to {raw.video!r} here "
                f"but to {video!r} at {source}"
            )

    def _record(
        self,
        kind: str,
        raw: RawRecord,
        detail: str,
        dead: bool,
        window: tuple[float, float] | None = None,
        fixed: tuple[float, float] | None = None,
    ) -> str:
        action = SUPERSEDED if dead else self.policy.action(kind)
        self.report.problems.append(
            Problem(
                kind,
                action,
                raw.source,
                raw.qid,
                raw.vid,
                detail,
                raw.split,
                window,
                fixed if not dead else None,
            )
        )
        return action

    def _row_problem(self, kind: str, raw: RawRecord, detail: str, dead: bool) -> bool:
        """Record a row problem; return whether the row is dead afterwards."""
        action = self._record(kind, raw, detail, dead)
        return dead or action in ("drop", "error")

    def _check_window(
        self, raw: RawRecord, i: int, window: tuple[float, float], row_dead: bool
    ) -> tuple[float, float] | None:
        """Detect every problem of one window, apply the policy; return the kept window or None."""
        start, end = window
        dead = row_dead
        cur = (start, end)

        def record(kind: str, detail: str, fixed: tuple[float, float] | None = None) -> str:
            return self._record(kind, raw, f"window {i} [{start}, {end}]: {detail}", dead, window, fixed)

        if start > end:
            action = record("start_after_end", "start > end", (end, start))
            if action == "swap":
                cur = (end, start)
            dead = dead or action in ("drop", "error")
        elif start == end:
            action = record("empty_window", "start == end")
            dead = dead or action in ("drop", "error")
        # Duration checks look at the window's earlier and later ends whatever their order, so that
        # a reversed window past the video is counted as past the video too.
        lo, hi = min(start, end), max(start, end)
        if lo < 0:
            action = record("start_before_zero", "start < 0", (0.0, cur[1]))
            if action == "clip":
                cur = (0.0, cur[1])
            dead = dead or action in ("drop", "error")
        duration_sec = raw.duration_sec if self._window_duration_checks else None
        if duration_sec is not None:
            tol = self.policy.duration_tolerance_sec
            if lo >= duration_sec - tol:
                action = record("start_past_duration", f"starts at or after the duration {duration_sec}")
                dead = dead or action in ("drop", "error")
            if hi > duration_sec + tol:
                action = record(
                    "end_past_duration", f"ends after the duration {duration_sec}", (cur[0], duration_sec)
                )
                if action == "clip":
                    cur = (cur[0], duration_sec)
                dead = dead or action in ("drop", "error")
        return None if dead else (float(cur[0]), float(cur[1]))


def check_duration(
    row_or_vid: Annotation | str,
    decoded_duration_sec: float,
    tolerance_sec: float = 1.0,
    *,
    annotation_duration_sec: float | None = None,
    policy: ValidationPolicy | None = None,
) -> Problem | None:
    """Cross-check an annotated video duration against the decoded one.

    The default tolerance is one second because benchmark durations are rounded (QVHighlights
    stores whole seconds, Charades two decimals) while containers report the exact stream length.

    Args:
        row_or_vid: An ``Annotation`` (its ``duration_sec`` is used) or a video id.
        decoded_duration_sec: Duration reported by the decoder.
        tolerance_sec: Largest accepted absolute difference.
        annotation_duration_sec: The annotated duration when ``row_or_vid`` is a video id.
        policy: Gives the action recorded in the problem (``duration_mismatch``).

    Returns:
        A ``duration_mismatch`` problem, or None when the durations agree or the annotation has no
        duration to compare with.
    """
    policy = policy or ValidationPolicy()
    if isinstance(row_or_vid, Annotation):
        if annotation_duration_sec is not None:
            raise ValueError(f"qid {row_or_vid.qid}: pass annotation_duration_sec only with a video id")
        vid, qid, source, annotated = (
            row_or_vid.vid,
            row_or_vid.qid,
            row_or_vid.source,
            row_or_vid.duration_sec,
        )
    else:
        vid, qid, source, annotated = row_or_vid, "", "", annotation_duration_sec
    if not (np.isfinite(decoded_duration_sec) and decoded_duration_sec > 0):
        raise ValueError(f"video {vid}: decoded duration {decoded_duration_sec} is not a positive number")
    if not tolerance_sec >= 0:
        raise ValueError(f"video {vid}: tolerance_sec must be >= 0, got {tolerance_sec}")
    if annotated is None:
        return None
    diff = decoded_duration_sec - annotated
    if abs(diff) <= tolerance_sec:
        return None
    return Problem(
        kind="duration_mismatch",
        action=policy.duration_mismatch,
        source=source,
        qid=qid,
        vid=vid,
        split=row_or_vid.split if isinstance(row_or_vid, Annotation) else "",
        detail=(
            f"annotated duration {annotated:.3f} s, decoded {decoded_duration_sec:.3f} s "
            f"(differ by {diff:+.3f} s, tolerance {tolerance_sec} s)"
        ),
    )
