"""The common row every dataset adapter produces, and the errors adapters raise.

An adapter parses its dataset's own annotation format into :class:`RawRecord` objects (exactly
what the file says, converted to seconds), and the validator in :mod:`extract.datasets.validation`
turns each one into an :class:`Annotation` after applying the validation policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cache_schema.errors import GroundcacheError


class AnnotationError(GroundcacheError, ValueError):
    """An annotation file cannot be parsed. The message names the file, the line and the item."""


@dataclass(frozen=True)
class Annotation:
    """One query to ground in one video, in seconds, after validation.

    ``windows`` is a tuple (not a list) so that the frozen row is really immutable; ``saliency``
    is a read-only array for the same reason.
    """

    qid: str
    """Query id, unique within a dataset (original integer ids are kept as their ``str``)."""
    vid: str
    """Video id, the key of the video in the cache."""
    video: str | None
    """Video file path relative to the video root (or absolute), None when not resolved."""
    query: str
    """Query text, leading/trailing whitespace stripped (counted in the report)."""
    split: str
    """Split name as the dataset calls it (``train``, ``val_1``, ...)."""
    duration_sec: float | None
    """Video duration from the annotation, None when the annotation does not give it."""
    windows: tuple[tuple[float, float], ...]
    """Ground-truth ``(start_sec, end_sec)`` windows; empty for unlabelled queries."""
    saliency: np.ndarray | None = field(default=None, compare=False)
    """(n_clips, n_annotators) highlight scores on the ``saliency_clip_sec`` grid, dense over the
    whole video (0 for clips no annotator marked), or None when the dataset has none."""
    saliency_clip_sec: float | None = None
    """Length of one saliency clip in seconds (2.0 for QVHighlights)."""
    source: str = ""
    """Where the row came from (``file:line`` or ``file#vid[i]``), for error messages."""

    @property
    def labelled(self) -> bool:
        """Whether the row has at least one ground-truth window."""
        return bool(self.windows)


@dataclass
class RawRecord:
    """One query exactly as an adapter read it, before any validation or policy.

    ``windows`` keeps the annotated order of start and end (a reversed window stays reversed so
    the validator can report it).
    """

    qid: str
    vid: str
    query: str
    split: str
    duration_sec: float | None
    windows: list[tuple[float, float]]
    source: str
    labelled: bool
    """Whether the file labels this query (False for test files without ground truth)."""
    video: str | None = None
    saliency: np.ndarray | None = None
    saliency_clip_sec: float | None = None
