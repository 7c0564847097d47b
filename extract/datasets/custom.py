"""Custom JSON Lines: a user's own videos and queries (the format in docs/architecture.md).

One query per line::

    {"qid": "q0001", "video": "videos/cooking.mp4", "query": "a man slices an onion",
     "windows": [[12.0, 19.5]], "split": "train"}

``qid``, ``video`` and ``query`` are required; ``vid`` defaults to the video file's stem,
``windows`` (seconds) to none (unlabelled), ``split`` to ``test`` (or to the split a file is given
for: ``{"train": "a.jsonl"}``) and ``duration`` (seconds) to unknown, in which case the decoded
duration is used. Any other field is an error, so that a typo such as ``window`` cannot silently
leave a query unlabelled.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

from extract.datasets.annotation import Annotation, AnnotationError, RawRecord
from extract.datasets.parsing import (
    duration,
    id_field,
    read_jsonl,
    text_field,
    windows_field,
)
from extract.datasets.registry import AnnotationFiles, DatasetAdapter, register_dataset
from extract.datasets.validation import Validator

REQUIRED_FIELDS = ("qid", "video", "query")
OPTIONAL_FIELDS = ("vid", "windows", "split", "duration")
DEFAULT_SPLIT = "test"


@register_dataset("custom")
class CustomJsonl(DatasetAdapter):
    """A user's jsonl file, a folder of ``*.jsonl`` files (read in name order), or one file per split.

    ``video`` is relative to the video root (or absolute); with a video root the file must exist.
    Split names are free text, taken from the file; a file given for a split (``{"train":
    "a.jsonl"}``) holds that split: its lines may omit ``split``, and one naming another split is
    an error.
    """

    needs_annotations = True
    SOURCE_INFO = """\
custom: your own videos and queries in JSON Lines (see docs/datasets.md, "Custom format").
  Nothing is downloaded: point --annotations at your jsonl (or give train=FILE val=FILE ...) and
  --video-root at your videos."""

    def release_files(self, root: Path, splits: tuple[str, ...]) -> dict[str, Path]:
        files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
        if not files:
            raise FileNotFoundError(f"dataset 'custom': no *.jsonl file in {root}")
        return {path.name: path for path in files}

    def read(self, files: AnnotationFiles, validator: Validator) -> None:
        not_selected: Counter[str] = Counter()
        for role in files.paths:
            path = files.path(role)
            validator.add_file(path)
            for source, record in read_jsonl(path, files.shown(role)):
                raw = parse_record(record, source, file_split=role if files.explicit else None)
                if files.splits and raw.split not in files.splits:
                    not_selected[raw.split] += 1
                    continue
                validator.add(raw)
        for name, n in sorted(not_selected.items()):
            validator.report.notes.append(f"{n} row(s) of split {name!r} not selected")

    def video_candidates(self, vid: str, video: str | None) -> list[str]:
        # The path is explicit in this format: no guessing of extensions.
        return [video] if video else []


def parse_record(record: dict[str, Any], source: str, file_split: str | None = None) -> RawRecord:
    """One custom jsonl line -> RawRecord.

    Args:
        record: The parsed line.
        source: ``file:line`` for messages.
        file_split: The split the file was given for; the line's ``split``, if any, must equal it.

    Raises:
        AnnotationError: A field is missing, unknown or malformed (the message names ``source``).
    """
    unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise AnnotationError(
            f"{source}: unknown field(s) {unknown}; allowed: {list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}"
        )
    qid = id_field(record, "qid", source)
    source_q = f"{source} (qid {qid})"
    video = text_field(record, "video", source_q)
    if not video.strip():
        raise AnnotationError(f"{source_q}: field 'video' is empty")
    vid = id_field(record, "vid", source_q) if "vid" in record else PurePath(video).stem
    split = text_field(record, "split", source_q) if "split" in record else file_split or DEFAULT_SPLIT
    if not split.strip():
        raise AnnotationError(f"{source_q}: field 'split' is empty")
    if file_split is not None and split != file_split:
        raise AnnotationError(f"{source_q}: split {split!r}, but the file is given as split {file_split!r}")
    duration_sec = duration(record["duration"], "duration", source_q) if "duration" in record else None
    windows = windows_field(record["windows"], "windows", source_q) if "windows" in record else []
    return RawRecord(
        qid=qid,
        vid=vid,
        query=text_field(record, "query", source_q),
        split=split,
        duration_sec=duration_sec,
        windows=windows,
        source=source,
        labelled=bool(windows),
        video=video,
    )


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write custom-format rows (dicts with the fields above) to ``path``, one JSON object per line.

    Every row is checked with :func:`parse_record` first, so a file written here always loads.
    """
    path = Path(path)
    for i, row in enumerate(rows):
        parse_record(row, f"row {i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def to_record(row: Annotation) -> dict[str, Any]:
    """An ``Annotation`` as a custom-format dict (the inverse of loading it)."""
    if row.video is None:
        raise ValueError(f"qid {row.qid}: the row has no video path to write")
    record: dict[str, Any] = {"qid": row.qid, "vid": row.vid, "video": row.video, "query": row.query}
    record["split"] = row.split
    if row.windows:
        record["windows"] = [list(w) for w in row.windows]
    if row.duration_sec is not None:
        record["duration"] = row.duration_sec
    return record
