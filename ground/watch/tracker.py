"""Hysteresis over one standing query's successive answers: occurrences, reported once, then updated.

Each grounding pass on the window gives the query's best window (in stream seconds), its score
and the presence probability. An occurrence:

- starts when presence reaches `on` (and the score reaches `min_score`, when given), unless the
  best window is one that has already ended and is still inside the window;
- is updated (`ongoing`) while presence stays at or above `off` (< `on`: the hysteresis band) and
  the best window touches it (within one clip); its end only moves forward;
- ends when presence drops below `off`, when the best window moves elsewhere, or when its end
  has not moved for `settle_sec` of stream time (the event is over, though still in the window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

QueryState = Literal["started", "ongoing", "ended"]


@dataclass
class Occurrence:
    start_sec: float
    end_sec: float
    score: float
    presence: float
    grown_at_sec: float  # stream time when end_sec last moved


@dataclass(frozen=True)
class QueryEvent:
    query: str
    state: QueryState
    start_sec: float
    end_sec: float
    score: float
    presence: float
    stream_time: float

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "state": self.state,
            "start_sec": round(self.start_sec, 4),
            "end_sec": round(self.end_sec, 4),
            "score": round(self.score, 6),
            "presence": round(self.presence, 6),
            "stream_time": round(self.stream_time, 4),
        }


class OccurrenceTracker:
    """Turns one query's answers on successive windows into events.

    Args:
        query: the sentence (named in the events).
        on: presence at and above which an occurrence starts (the calibrated threshold).
        off: presence below which an occurrence ends (<= on).
        clip_sec: one clip; windows closer than this touch.
        settle_sec: an occurrence whose end has not moved for this long ended.
        min_score: an occurrence starts only with a score at least this (None: any).
    """

    def __init__(
        self,
        query: str,
        *,
        on: float,
        off: float,
        clip_sec: float,
        settle_sec: float,
        min_score: float | None = None,
    ) -> None:
        if not off <= on:
            raise ValueError(f"hysteresis: the off threshold {off} must not exceed the on threshold {on}")
        self.query = query
        self.on, self.off = on, off
        self.clip_sec = clip_sec
        self.settle_sec = settle_sec
        self.min_score = min_score
        self.current: Occurrence | None = None
        self._ended: list[tuple[float, float]] = []  # windows of ended occurrences still in view

    def update(
        self, window: tuple[float, float, float], presence: float, view_sec: tuple[float, float]
    ) -> list[QueryEvent]:
        """One grounding pass.

        Args:
            window: the best `(start_sec, end_sec, score)` in stream seconds.
            presence: probability that the event is in the view.
            view_sec: the [first, last] stream seconds the pass saw; `last` is now.
        """
        start, end, score = window
        now = view_sec[1]
        self._ended = [w for w in self._ended if w[1] > view_sec[0]]
        events: list[QueryEvent] = []
        occ = self.current
        if occ is not None:
            touches = start <= occ.end_sec + self.clip_sec and end >= occ.start_sec - self.clip_sec
            if presence < self.off or not touches:
                events.append(self._end(now))
            else:
                if end > occ.end_sec + 1e-6:
                    occ.end_sec, occ.grown_at_sec = end, now
                occ.start_sec = min(occ.start_sec, start)
                occ.score, occ.presence = score, presence
                if now - occ.grown_at_sec >= self.settle_sec:
                    events.append(self._end(now))
                else:
                    events.append(self._event("ongoing", now))
                return events
        if presence >= self.on and (self.min_score is None or score >= self.min_score):
            if not any(start < e and end > s for s, e in self._ended):
                self.current = Occurrence(start, end, score, presence, grown_at_sec=now)
                events.append(self._event("started", now))
        return events

    def close(self, now: float) -> list[QueryEvent]:
        """End the open occurrence (the stream stopped)."""
        return [] if self.current is None else [self._end(now)]

    def _end(self, now: float) -> QueryEvent:
        event = self._event("ended", now)
        self._ended.append((self.current.start_sec, self.current.end_sec))
        self.current = None
        return event

    def _event(self, state: QueryState, now: float) -> QueryEvent:
        occ = self.current
        return QueryEvent(self.query, state, occ.start_sec, occ.end_sec, occ.score, occ.presence, now)
