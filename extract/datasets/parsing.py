"""Small strict readers shared by the adapters: every failure names the file, line and field."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from extract.datasets.annotation import AnnotationError


def display_path(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies under it (shorter sources), else as given."""
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


@contextmanager
def open_text(path: Path, shown: str, newline: str | None = None) -> Iterator[TextIO]:
    """Open an annotation file as UTF-8 text (``newline`` as for :func:`open`).

    Raises:
        AnnotationError: While the file is read, on its first byte that is not UTF-8; the message
            names the file (as ``shown``), the line and the byte's column.
    """
    try:
        with path.open(encoding="utf-8", newline=newline) as f:
            yield f
    except UnicodeDecodeError as err:
        raise AnnotationError(not_utf8_message(path, shown, err)) from err


def not_utf8_message(path: Path, shown: str, err: UnicodeDecodeError) -> str:
    """``shown:line: not UTF-8 ...`` for the file's first undecodable byte.

    The text reader decodes ahead in chunks, so the error's own offset is not the file's: the
    file is read again as bytes to find the line (``\n``, ``\r\n`` or ``\r`` ends a line, as
    in text mode).
    """
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as found:
        before = data[: found.start]
        line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
        column = found.start - max(before.rfind(b"\n"), before.rfind(b"\r"))
        return (
            f"{shown}:{line}: not UTF-8 text (byte 0x{data[found.start]:02x} at column {column}); "
            "annotation files must be UTF-8"
        )
    return f"{shown}: not UTF-8 text ({err.reason})"


def read_jsonl(path: Path, shown: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(source, record)`` for each non-blank line; ``source`` is ``shown:line``.

    Raises:
        AnnotationError: A line is not UTF-8, not JSON or not a JSON object (file and line named).
    """
    with open_text(path, shown) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{shown}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{source}: invalid JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(record, dict):
                raise AnnotationError(f"{source}: expected a JSON object, got {type(record).__name__}")
            yield source, record


def read_json_object(path: Path, shown: str) -> dict[str, Any]:
    """Load a JSON file whose top level must be an object.

    Raises:
        AnnotationError: The file is not UTF-8, not JSON or not an object (file and line named).
    """
    with open_text(path, shown) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise AnnotationError(
                f"{shown}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})"
            ) from err
    if not isinstance(data, dict):
        raise AnnotationError(f"{shown}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def field(record: dict[str, Any], key: str, source: str) -> Any:
    """``record[key]``, or an error naming the missing field."""
    if key not in record:
        raise AnnotationError(f"{source}: missing required field {key!r}")
    return record[key]


def text_field(record: dict[str, Any], key: str, source: str) -> str:
    value = field(record, key, source)
    if not isinstance(value, str):
        raise AnnotationError(f"{source}: field {key!r} must be a string, got {value!r}")
    return value


def id_field(record: dict[str, Any], key: str, source: str) -> str:
    """An id given as a string or an integer, returned as ``str`` (``9769`` -> ``"9769"``)."""
    value = field(record, key, source)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AnnotationError(f"{source}: field {key!r} must be a string or an integer, got {value!r}")
    if isinstance(value, str) and not value.strip():
        raise AnnotationError(f"{source}: field {key!r} is empty")
    return str(value)


def number(value: Any, what: str, source: str) -> float:
    """A finite int/float as float (bools and numeric strings are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AnnotationError(f"{source}: {what} must be a finite number, got {value!r}")
    return float(value)


def parse_float(text: str, what: str, source: str) -> float:
    """A finite float from text (txt/csv files)."""
    try:
        value = float(text)
    except ValueError as err:
        raise AnnotationError(f"{source}: {what} {text!r} is not a number") from err
    if not math.isfinite(value):
        raise AnnotationError(f"{source}: {what} {text!r} is not finite")
    return value


def duration(value: Any, what: str, source: str) -> float:
    seconds = number(value, what, source)
    if seconds <= 0:
        raise AnnotationError(f"{source}: {what} must be positive, got {value!r}")
    return seconds


def windows_field(value: Any, what: str, source: str, scale: float = 1.0) -> list[tuple[float, float]]:
    """A list of ``[start, end]`` number pairs, divided by ``scale`` (fps for frame indices).

    The order of start and end is kept as written: the validator reports reversed windows.
    """
    if not isinstance(value, list):
        raise AnnotationError(f"{source}: {what} must be a list of [start, end] pairs, got {value!r}")
    out: list[tuple[float, float]] = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise AnnotationError(f"{source}: {what}[{i}] must be a [start, end] pair, got {pair!r}")
        start = number(pair[0], f"{what}[{i}] start", source)
        end = number(pair[1], f"{what}[{i}] end", source)
        out.append((start / scale, end / scale))
    return out
