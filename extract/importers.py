"""Import public pre-extracted features into a cache, next to the annotations of a dataset adapter.

Two layouts are read:

- ``moment_detr``: the Moment-DETR / Lighthouse release, one ``<stream_dir>/<vid>.npz`` per video
  and stream (key ``features``, (T, D), one row per ``clip_sec`` clip) and one
  ``<text_dir>/qid<qid>.npz`` per query (key ``last_hidden_state``, (L, D); ``pooler_output``
  (D,) when present).
- ``hdf5_c3d``: one HDF5 file of C3D features keyed by video id (a dataset ``<vid>`` or a group
  ``<vid>`` holding ``c3d_features``), as the public ActivityNet and TACoS files used by 2D-TAN.

Text features come either from per-query npz files or from a registered text encoder of
:mod:`extract.encoders` (``--text-encoder bert_base``). Imported features have no decoder
timestamps: feature i of a video covers ``[i * clip_sec, min((i + 1) * clip_sec, duration)]``.

Nothing is trimmed silently. A video whose streams disagree in length, whose features reach past
the annotated duration, or whose files are missing or malformed is recorded in
``<out stem>.failures.jsonl`` and skipped (``--align-streams truncate`` / ``--past-duration truncate``
truncate instead, and record each truncation in ``<out stem>.import_report.json``); the import
finishes the other videos and exits non-zero. Re-running resumes: committed videos and queries
are skipped.

    python -m extract import --format moment_detr --annotations qvhighlights \\
        --video-feats features/clip_features features/slowfast_features \\
        --text-feats features/clip_text_features --out data/qvhighlights/mdetr.h5
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, get_args

import numpy as np

from cache_schema import CacheWriter, EncoderSpec, QueryItem, SchemaError, VideoItem
from cache_schema.errors import GroundcacheError
from cache_schema.spec import FeatureDtype
from extract.datasets import (
    Annotation,
    ValidationPolicy,
    annotations_from_strings,
    list_datasets,
    load_dataset,
)

ImportFormat = Literal["moment_detr", "hdf5_c3d"]
FORMATS: tuple[str, ...] = get_args(ImportFormat)
AlignStreams = Literal["error", "truncate"]
"""What to do when a video's streams have different numbers of features."""
PastDuration = Literal["error", "truncate"]
"""What to do when a stream has features starting at or after the annotated duration."""
FailureKind = Literal[
    "missing_file",
    "bad_file",
    "dim_mismatch",
    "nonfinite",
    "stream_length_mismatch",
    "past_duration",
    "unknown_duration",
    "no_qid_map_entry",
    "invalid_item",
]
FAILURE_KINDS: tuple[str, ...] = get_args(FailureKind)

DEFAULT_TEXT_PATTERN = "qid{qid}.npz"
"""Moment-DETR's text feature file name; Lighthouse's TACoS files are ``{qid}.npz``."""
DURATION_EPS_SEC = 1e-6
"""A feature whose start is within this of the duration starts at the end of the video."""
C3D_DATASET = "c3d_features"
"""Name of the dataset inside a per-video group of the public ActivityNet C3D file."""


class ImportSetupError(GroundcacheError, ValueError):
    """The import cannot start (bad arguments, no feature file at all); the message says why."""


class ImportItemError(Exception):
    """One video or query cannot be imported; recorded as a failure, the import goes on.

    Args:
        kind: One of ``FAILURE_KINDS``.
        detail: What is wrong, with the numbers involved.
        path: The offending file, when there is one.
    """

    def __init__(self, kind: FailureKind, detail: str, path: str | Path = "") -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.path = str(path)


# -- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportFailure:
    """One video or query that was not imported, and why (one line of ``failures.jsonl``)."""

    item: Literal["video", "query"]
    id: str
    """Video id or query id."""
    kind: str
    detail: str
    path: str = ""
    vid: str = ""
    queries_skipped: int = 0
    """For a failed video: how many of its queries were skipped with it."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        skipped = f"; {self.queries_skipped} queries skipped" if self.queries_skipped else ""
        return f"{self.item} {self.id}: {self.kind}: {self.detail}{where}{skipped}"


@dataclass(frozen=True)
class Truncation:
    """A video whose streams were truncated on request (``--align-streams`` / ``--past-duration``)."""

    vid: str
    reason: Literal["align_streams", "past_duration"]
    lengths_before: dict[str, int]
    """Features per stream as found in the files."""
    length_after: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ImportReport:
    """What an import did: counts, failures, truncations and videos with fewer features than clips."""

    out: Path
    videos_imported: int = 0
    videos_already_committed: int = 0
    queries_imported: int = 0
    queries_already_committed: int = 0
    failures: list[ImportFailure] = field(default_factory=list)
    truncations: list[Truncation] = field(default_factory=list)
    short_videos: list[dict[str, Any]] = field(default_factory=list)
    """Videos imported with fewer features than ``ceil(duration / clip_sec)`` (their end is not covered)."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures_path(self) -> Path:
        return sibling_path(self.out, "failures.jsonl")

    @property
    def report_path(self) -> Path:
        return sibling_path(self.out, "import_report.json")

    def counts(self) -> dict[str, int]:
        """Failures per kind (kinds with none are left out)."""
        found = collections.Counter(f.kind for f in self.failures)
        return {kind: found[kind] for kind in FAILURE_KINDS if found[kind]}

    def summary(self, max_examples: int = 3) -> str:
        failed_videos = sum(f.item == "video" for f in self.failures)
        failed_queries = sum(f.item == "query" for f in self.failures)
        skipped = sum(f.queries_skipped for f in self.failures)
        lines = [
            f"import into {self.out} in {self.seconds:.1f} s:",
            f"  videos: {self.videos_imported} imported, {self.videos_already_committed} committed before, "
            f"{failed_videos} failed",
            f"  queries: {self.queries_imported} imported, {self.queries_already_committed} committed before,"
            f" {failed_queries} failed, {skipped} skipped with their video",
        ]
        if self.truncations:
            reasons = collections.Counter(t.reason for t in self.truncations)
            lines.append(f"  truncated on request: {dict(reasons)} (listed in {self.report_path})")
        if self.short_videos:
            lines.append(
                f"  {len(self.short_videos)} videos have fewer features than ceil(duration / clip_sec) "
                f"(e.g. {self.short_videos[0]}); listed in {self.report_path}"
            )
        for kind, n in self.counts().items():
            of_kind = [f for f in self.failures if f.kind == kind]
            lines.append(f"  failed: {kind} x{n}")
            lines += [f"    {f}" for f in of_kind[:max_examples]]
            if n > max_examples:
                lines.append(f"    ... {n - max_examples} more in {self.failures_path}")
        return "\n".join(lines)

    def write(self) -> None:
        """Write ``failures.jsonl`` (empty when nothing failed) and ``import_report.json`` by the cache."""
        self.failures_path.parent.mkdir(parents=True, exist_ok=True)
        with self.failures_path.open("w") as f:
            for failure in self.failures:
                f.write(json.dumps(failure.to_dict()) + "\n")
        record = {
            "out": str(self.out),
            "seconds": round(self.seconds, 3),
            "videos_imported": self.videos_imported,
            "videos_already_committed": self.videos_already_committed,
            "queries_imported": self.queries_imported,
            "queries_already_committed": self.queries_already_committed,
            "failures": self.counts(),
            "truncations": [t.to_dict() for t in self.truncations],
            "short_videos": self.short_videos,
        }
        self.report_path.write_text(json.dumps(record, indent=1) + "\n")


def sibling_path(out: Path, suffix: str) -> Path:
    """``data/x/cache.h5`` -> ``data/x/cache.<suffix>`` (works for ``.zarr`` directories too)."""
    return out.with_name(f"{out.stem}.{suffix}")


# -- video sources -----------------------------------------------------------------------------


class VideoSource(Protocol):
    """Where the video features of an import come from."""

    def specs(self, rows: Sequence[Annotation], dtype: FeatureDtype) -> list[EncoderSpec]:
        """One spec per stream, dims read from the first file found for ``rows``' videos."""
        ...

    def load(self, vid: str, video: str | None) -> dict[str, np.ndarray]:
        """Stream name -> (T, D) float features of one video; raises ImportItemError."""
        ...

    def close(self) -> None:
        """Release open files."""
        ...


def _check_features(name: str, array: np.ndarray, dim: int, path: str | Path) -> None:
    if array.ndim != 2 or array.shape[0] == 0:
        raise ImportItemError(
            "bad_file", f"stream {name!r}: features must be (T>=1, D), got {array.shape}", path
        )
    if array.shape[1] != dim:
        raise ImportItemError(
            "dim_mismatch", f"stream {name!r}: features are {array.shape[1]}-d, the stream is {dim}-d", path
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ImportItemError(
            "bad_file", f"stream {name!r}: features have dtype {array.dtype}, not float", path
        )
    if not np.all(np.isfinite(array)):
        raise ImportItemError("nonfinite", f"stream {name!r}: features contain NaN/Inf", path)


_NPY_HEADER_LOCK = threading.Lock()
"""numpy parses every .npy header with `ast.literal_eval`, and CPython 3.11's parser is not safe
from several threads at once: `SystemError: AST constructor recursion depth mismatch` (seen in
this project's CI while the import pool loaded npz files). The files are read one at a time."""


def _read_npz(path: Path, key: str) -> dict[str, np.ndarray]:
    """Every array of an npz file, which must hold ``key``; ImportItemError when it cannot be had."""
    if not path.is_file():
        raise ImportItemError("missing_file", f"no file {path.name}", path)
    try:
        with _NPY_HEADER_LOCK, np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                raise ImportItemError("bad_file", f"no key {key!r} (keys: {npz.files})", path)
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ImportItemError("bad_file", f"cannot be read as npz: {err}", path) from err


class NpzVideoStreams:
    """Moment-DETR / Lighthouse video features: ``<stream_dir>/<vid>.npz`` with key ``features``.

    Args:
        streams: (name, directory) of each stream; the name becomes the encoder name in the cache.
        clip_sec: Seconds covered by one feature (2 for the QVHighlights release).
        format_name: Recorded in ``weights_id`` as ``<format_name>:<directory name>``.
        key: Array key inside each npz.
    """

    def __init__(
        self,
        streams: Sequence[tuple[str, Path]],
        clip_sec: float,
        *,
        format_name: str = "moment_detr",
        key: str = "features",
    ) -> None:
        if not streams:
            raise ImportSetupError("at least one video feature directory is needed")
        names = [name for name, _ in streams]
        if len(set(names)) != len(names):
            raise ImportSetupError(f"video stream names {names} repeat; give distinct --names")
        for name, directory in streams:
            if not Path(directory).is_dir():
                raise ImportSetupError(f"video stream {name!r}: {directory} is not a directory")
        if not (math.isfinite(clip_sec) and clip_sec > 0):
            raise ImportSetupError(f"clip_sec must be positive, got {clip_sec}")
        self.streams = [(name, Path(directory)) for name, directory in streams]
        self.clip_sec = clip_sec
        self.format_name = format_name
        self.key = key
        self._dims: dict[str, int] = {}

    def specs(self, rows: Sequence[Annotation], dtype: FeatureDtype) -> list[EncoderSpec]:
        specs = []
        vids = list(dict.fromkeys(r.vid for r in rows))
        for name, directory in self.streams:
            probe = next((directory / f"{v}.npz" for v in vids if (directory / f"{v}.npz").is_file()), None)
            if probe is None:
                raise ImportSetupError(
                    f"video stream {name!r}: none of the {len(vids)} videos has a <vid>.npz in {directory} "
                    f"(e.g. {vids[:3]})"
                )
            try:
                array = _read_npz(probe, self.key)[self.key]
            except ImportItemError as err:
                raise ImportSetupError(f"video stream {name!r}: {probe}: {err.detail}") from err
            if array.ndim != 2:
                raise ImportSetupError(
                    f"video stream {name!r}: {probe}: features must be (T, D), got {array.shape}"
                )
            self._dims[name] = int(array.shape[1])
            specs.append(
                EncoderSpec(
                    name=name,
                    modality="video",
                    dim=int(array.shape[1]),
                    dtype=dtype,
                    weights_id=f"{self.format_name}:{directory.name}",
                    library=f"imported from {self.format_name} npz (key {self.key!r}) by extract.importers",
                    normalized=False,
                    stride_sec=self.clip_sec,
                    frames_per_feature=None,  # not recorded in the release
                )
            )
        return specs

    def load(self, vid: str, video: str | None) -> dict[str, np.ndarray]:
        paths = {name: directory / f"{vid}.npz" for name, directory in self.streams}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if missing:
            raise ImportItemError(
                "missing_file",
                f"no feature file for stream(s) {missing}",
                ", ".join(str(paths[name]) for name in missing),
            )
        features = {}
        for name, path in paths.items():
            array = _read_npz(path, self.key)[self.key]
            _check_features(name, array, self._dims[name], path)
            features[name] = array
        return features

    def close(self) -> None:
        """Nothing to release: every file is opened and closed by ``load``."""


class Hdf5C3DVideo:
    """One HDF5 file of C3D features keyed by video (``<key>`` dataset or ``<key>/c3d_features``).

    A video is looked up under its id, then under its annotated file name (TACoS keys are
    ``s30-d52.avi``, ActivityNet keys ``v_<id>`` like the adapter's ids).

    Args:
        path: The HDF5 file.
        stride_sec: Seconds between consecutive features.
        name: Encoder name in the cache.
        frames_per_feature: Frames per C3D clip, recorded in the spec (None when unknown).
    """

    def __init__(
        self, path: Path, stride_sec: float, *, name: str = "c3d", frames_per_feature: int | None = None
    ) -> None:
        import h5py

        if not Path(path).is_file():
            raise ImportSetupError(f"C3D feature file {path} does not exist")
        if not (math.isfinite(stride_sec) and stride_sec > 0):
            raise ImportSetupError(f"stride_sec must be positive, got {stride_sec}")
        self.path = Path(path)
        self.stride_sec = stride_sec
        self.name = name
        self.frames_per_feature = frames_per_feature
        # h5py serialises every call behind one lock, so loader threads share this handle safely.
        self._file = h5py.File(self.path, "r")
        self._dim = 0

    def _dataset(self, vid: str, video: str | None) -> Any:
        import h5py

        for key in dict.fromkeys([vid] + ([video] if video else [])):
            if key not in self._file:
                continue
            node = self._file[key]
            if isinstance(node, h5py.Group):
                if C3D_DATASET not in node:
                    raise ImportItemError(
                        "bad_file", f"group {key!r} has no {C3D_DATASET!r} (has {list(node)})", self.path
                    )
                return node[C3D_DATASET]
            return node
        tried = list(dict.fromkeys([vid] + ([video] if video else [])))
        raise ImportItemError(
            "missing_file", f"no entry {' or '.join(map(repr, tried))} in the HDF5 file", self.path
        )

    def specs(self, rows: Sequence[Annotation], dtype: FeatureDtype) -> list[EncoderSpec]:
        for row in rows:
            try:
                shape = self._dataset(row.vid, row.video).shape
            except ImportItemError:
                continue
            if len(shape) != 2:
                raise ImportSetupError(f"{self.path}: features of {row.vid} must be (T, D), got {shape}")
            self._dim = int(shape[1])
            break
        else:
            raise ImportSetupError(
                f"{self.path}: none of the {len(rows)} annotation rows' videos is in the file "
                f"(e.g. {[r.vid for r in rows[:3]]}; top-level keys e.g. {list(self._file)[:3]})"
            )
        return [
            EncoderSpec(
                name=self.name,
                modality="video",
                dim=self._dim,
                dtype=dtype,
                weights_id=f"hdf5_c3d:{self.path.name}",
                library="imported from a C3D HDF5 file by extract.importers",
                normalized=False,
                stride_sec=self.stride_sec,
                frames_per_feature=self.frames_per_feature,
            )
        ]

    def load(self, vid: str, video: str | None) -> dict[str, np.ndarray]:
        array = np.asarray(self._dataset(vid, video)[()])
        _check_features(self.name, array, self._dim, self.path)
        return {self.name: array}

    def close(self) -> None:
        self._file.close()


# -- text sources ------------------------------------------------------------------------------

TextResult = tuple[np.ndarray, np.ndarray] | ImportItemError
"""(tokens (L, D), pooled (D,)) of one query, or why it could not be had."""


class TextSource(Protocol):
    """Where the text features of an import come from."""

    def spec(self, rows: Sequence[Annotation], dtype: FeatureDtype) -> EncoderSpec: ...

    def load_batch(self, rows: Sequence[Annotation], map_fn: Callable) -> list[TextResult]:
        """One result per row, in order; ``map_fn`` is a (thread-pool) ``map`` for file reads."""
        ...


class NpzText:
    """Per-query text features: ``<text_dir>/<pattern>`` with ``last_hidden_state`` (L, D).

    The pooled embedding is ``pooler_output`` when the files have it, else the mean of the
    tokens; which one is decided by the first file and written into the spec's ``library``, and
    every file must agree.

    Args:
        text_dir: Folder of the npz files.
        name: Encoder name in the cache.
        pattern: File name with ``{qid}`` standing for the feature id of a query.
        qid_map: Adapter qid -> feature id (see :func:`read_qid_map`); None uses the adapter qid.
        format_name: Recorded in ``weights_id``.
    """

    TOKENS_KEY = "last_hidden_state"
    POOLED_KEY = "pooler_output"

    def __init__(
        self,
        text_dir: Path,
        name: str,
        *,
        pattern: str = DEFAULT_TEXT_PATTERN,
        qid_map: dict[str, str] | None = None,
        format_name: str = "moment_detr",
    ) -> None:
        if not Path(text_dir).is_dir():
            raise ImportSetupError(f"text features: {text_dir} is not a directory")
        if "{qid}" not in pattern:
            raise ImportSetupError(f"text file pattern {pattern!r} must contain {{qid}}")
        self.text_dir = Path(text_dir)
        self.name = name
        self.pattern = pattern
        self.qid_map = qid_map
        self.format_name = format_name
        self._dim = 0
        self._pooler: bool | None = None

    def path(self, qid: str) -> Path:
        feature_id = qid if self.qid_map is None else self.qid_map.get(qid)
        if feature_id is None:
            raise ImportItemError("no_qid_map_entry", "no row with this vid and query text in the qid map")
        return self.text_dir / self.pattern.format(qid=feature_id)

    def spec(self, rows: Sequence[Annotation], dtype: FeatureDtype) -> EncoderSpec:
        probe = None
        for row in rows:
            try:
                path = self.path(row.qid)
            except ImportItemError:
                continue
            if path.is_file():
                probe = path
                break
        if probe is None:
            raise ImportSetupError(
                f"text features: none of the {len(rows)} queries has a file in {self.text_dir} "
                f"(pattern {self.pattern!r}, e.g. {self.pattern.format(qid=rows[0].qid)!r})"
            )
        try:
            arrays = _read_npz(probe, self.TOKENS_KEY)
        except ImportItemError as err:
            raise ImportSetupError(f"text features: {probe}: {err.detail}") from err
        tokens = arrays[self.TOKENS_KEY]
        if tokens.ndim != 2:
            raise ImportSetupError(
                f"text features: {probe}: {self.TOKENS_KEY} must be (L, D), got {tokens.shape}"
            )
        self._dim = int(tokens.shape[1])
        self._pooler = self.POOLED_KEY in arrays
        pooled = self.POOLED_KEY if self._pooler else f"mean of {self.TOKENS_KEY} tokens"
        return EncoderSpec(
            name=self.name,
            modality="text",
            dim=self._dim,
            dtype=dtype,
            weights_id=f"{self.format_name}:{self.text_dir.name}",
            library=f"imported from {self.format_name} npz by extract.importers; pooled = {pooled}",
            normalized=False,
            tokenizer="unknown (imported)",
            max_tokens=None,
        )

    def load(self, qid: str) -> TextResult:
        try:
            path = self.path(qid)
            arrays = _read_npz(path, self.TOKENS_KEY)
            tokens = arrays[self.TOKENS_KEY]  # (L, D)
            if tokens.ndim != 2 or tokens.shape[0] == 0:
                raise ImportItemError(
                    "bad_file", f"{self.TOKENS_KEY} must be (L>=1, D), got {tokens.shape}", path
                )
            if tokens.shape[1] != self._dim:
                raise ImportItemError(
                    "dim_mismatch", f"tokens are {tokens.shape[1]}-d, the stream is {self._dim}-d", path
                )
            if (self.POOLED_KEY in arrays) != self._pooler:
                raise ImportItemError(
                    "bad_file",
                    f"{'has' if not self._pooler else 'lacks'} {self.POOLED_KEY!r} "
                    "unlike the first text file, which decided how pooled is made",
                    path,
                )
            if self._pooler:
                pooled = arrays[self.POOLED_KEY].reshape(-1)  # some releases store it as (1, D)
                if pooled.shape != (self._dim,):
                    raise ImportItemError(
                        "bad_file",
                        f"{self.POOLED_KEY} has shape {pooled.shape}, expected ({self._dim},)",
                        path,
                    )
            else:
                pooled = tokens.astype(np.float32).mean(axis=0)  # (D,)
            if not (np.all(np.isfinite(tokens)) and np.all(np.isfinite(pooled))):
                raise ImportItemError("nonfinite", "text features contain NaN/Inf", path)
            return tokens, pooled
        except ImportItemError as err:
            return err

    def load_batch(self, rows: Sequence[Annotation], map_fn: Callable) -> list[TextResult]:
        return list(map_fn(self.load, [r.qid for r in rows]))


class EncoderText:
    """Text features computed here by a registered text encoder (``extract.encoders``).

    Args:
        name: Registry name (``bert_base``; ``tiny_bert`` offline).
        weights: As for ``build_encoder``: None for the hub weights, a local path, ``"none"`` for random init.
        device: Torch device.
        batch_size: Texts per forward pass (None: the encoder's default).
    """

    def __init__(
        self, name: str, *, weights: str | None = None, device: str = "cpu", batch_size: int | None = None
    ) -> None:
        from extract.encoders import build_encoder

        self.encoder = build_encoder(name, weights=weights, device=device, batch_size=batch_size)
        if self.encoder.text_spec is None:
            raise ImportSetupError(f"encoder {name!r} has no text tower; choose a text encoder")

    def spec(self, rows: Sequence[Annotation], dtype: FeatureDtype) -> EncoderSpec:
        return self.encoder.text_spec

    def load_batch(self, rows: Sequence[Annotation], map_fn: Callable) -> list[TextResult]:
        # The encoder checks its inputs; adapters already drop or report empty queries.
        return [
            (tokens.numpy(), pooled.numpy())
            for tokens, pooled in self.encoder.encode_text([r.query for r in rows])
        ]


def read_qid_map(paths: Sequence[Path], rows: Sequence[Annotation]) -> dict[str, str]:
    """Map adapter qids to the qids of Lighthouse-style jsonl files (which name the text feature files).

    Lighthouse numbers Charades-STA and ActivityNet queries in the order of its own jsonl files.
    Rows are matched on (vid, query text), in file order when a pair repeats; a jsonl row must be
    used at most once. Rows without a match are left out (their queries fail as ``no_qid_map_entry``).
    """
    queues: dict[tuple[str, str], collections.deque[str]] = collections.defaultdict(collections.deque)
    for path in paths:
        with Path(path).open() as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key = (str(record["vid"]), str(record["query"]).strip())
                    queues[key].append(str(record["qid"]))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ImportSetupError(
                        f"{path}:{line_no}: not a jsonl row with qid, vid and query: {err}"
                    ) from err
    mapping = {}
    for row in rows:
        queue = queues.get((row.vid, row.query.strip()))
        if queue:
            mapping[row.qid] = queue.popleft()
    return mapping


# -- the import --------------------------------------------------------------------------------


def clip_timestamps(n_features: int, clip_sec: float, duration_sec: float) -> np.ndarray:
    """(T, 2) float64 ``[i * clip_sec, min((i + 1) * clip_sec, duration_sec)]``."""
    starts = np.arange(n_features, dtype=np.float64) * clip_sec
    return np.stack([starts, np.minimum(starts + clip_sec, duration_sec)], axis=1)


def clips_in_duration(duration_sec: float, clip_sec: float) -> int:
    """How many clips start before the end of the video: ``ceil(duration / clip_sec)``."""
    return max(1, math.ceil((duration_sec - DURATION_EPS_SEC) / clip_sec))


@dataclass
class _LoadedVideo:
    item: VideoItem
    truncations: list[Truncation]
    short: dict[str, Any] | None


T = TypeVar("T")
R = TypeVar("R")


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int
) -> Iterator[R]:
    """``pool.map`` in order, with at most ``ahead`` items in flight (bounds the memory held)."""
    pending: collections.deque[Future[R]] = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Importer:
    def __init__(
        self,
        video: VideoSource,
        stride_sec: float,
        align_streams: AlignStreams,
        past_duration: PastDuration,
        dtypes: dict[str, np.dtype],
    ) -> None:
        self.video = video
        self.stride_sec = stride_sec
        self.align_streams = align_streams
        self.past_duration = past_duration
        self.dtypes = dtypes

    def load(self, rows: list[Annotation]) -> _LoadedVideo | ImportFailure:
        """Read, check and time-stamp one video's features (runs in a loader thread)."""
        vid, video_file, duration = rows[0].vid, rows[0].video, rows[0].duration_sec
        if duration is None or not (math.isfinite(duration) and duration > 0):
            return ImportFailure(
                "video",
                vid,
                "unknown_duration",
                f"the annotation gives duration {duration}; imported features need it to place their clips",
                vid=vid,
                queries_skipped=len(rows),
            )
        try:
            features = self.video.load(vid, video_file)
        except ImportItemError as err:
            return ImportFailure(
                "video", vid, err.kind, err.detail, err.path, vid=vid, queries_skipped=len(rows)
            )
        truncations = []
        lengths = {name: len(f) for name, f in features.items()}
        n = min(lengths.values())
        if len(set(lengths.values())) > 1:
            if self.align_streams == "error":
                return ImportFailure(
                    "video",
                    vid,
                    "stream_length_mismatch",
                    f"streams have different numbers of features {lengths} "
                    "(--align-streams truncate keeps the shorter length)",
                    vid=vid,
                    queries_skipped=len(rows),
                )
            truncations.append(Truncation(vid, "align_streams", lengths, n))
        fit = clips_in_duration(duration, self.stride_sec)
        if n > fit:
            if self.past_duration == "error":
                return ImportFailure(
                    "video",
                    vid,
                    "past_duration",
                    f"{n} features of {self.stride_sec} s but the annotated duration {duration} s "
                    f"holds {fit} (--past-duration truncate drops the features past the end)",
                    vid=vid,
                    queries_skipped=len(rows),
                )
            truncations.append(Truncation(vid, "past_duration", {name: n for name in features}, fit))
            n = fit
        short = {"vid": vid, "features": n, "clips": fit, "duration_sec": duration} if n < fit else None
        ts = clip_timestamps(n, self.stride_sec, duration)  # (T, 2)
        converted = {}
        for name, array in features.items():
            stored = array[:n].astype(self.dtypes[name], copy=False)  # (T, D)
            if not np.all(np.isfinite(stored)):
                return ImportFailure(
                    "video",
                    vid,
                    "nonfinite",
                    f"stream {name!r}: features overflow the storage dtype {self.dtypes[name]}",
                    vid=vid,
                    queries_skipped=len(rows),
                )
            converted[name] = stored
        item = VideoItem(
            vid=vid,
            duration_sec=float(duration),
            features=converted,
            timestamps_sec={name: ts for name in converted},
            source=f"imported:{vid}",
        )
        return _LoadedVideo(item, truncations, short)


def import_features(
    rows: Sequence[Annotation],
    out: str | Path,
    *,
    dataset: str,
    video: VideoSource,
    text: TextSource,
    align_streams: AlignStreams = "error",
    past_duration: PastDuration = "error",
    dtype: FeatureDtype = "float16",
    mode: Literal["resume", "overwrite"] = "resume",
    workers: int = 8,
    query_batch: int = 256,
) -> ImportReport:
    """Write the videos and queries of ``rows`` into the cache ``out`` from pre-extracted features.

    Args:
        rows: Annotation rows (from ``extract.datasets.load_dataset``); videos are grouped by ``vid``.
        out: Cache path (``.h5`` or ``.zarr``).
        dataset: Dataset name recorded in the cache.
        video: Source of the video streams.
        text: Source of the query features.
        align_streams: ``error`` skips a video whose streams differ in length; ``truncate`` cuts
            to the shorter.
        past_duration: ``error`` skips a video with features past its duration; ``truncate`` drops them.
        dtype: Storage dtype of imported features (a text encoder's spec keeps its own).
        mode: ``resume`` skips committed videos and queries; ``overwrite`` starts a new cache.
        workers: Threads reading feature files.
        query_batch: Queries committed (and encoded, for a text encoder) together.

    Returns:
        The report, already written beside the cache (``failures.jsonl``, ``import_report.json``).
    """
    started = time.perf_counter()
    out = Path(out)
    if not rows:
        raise ImportSetupError("no annotation rows to import")
    if align_streams not in get_args(AlignStreams) or past_duration not in get_args(PastDuration):
        raise ImportSetupError(
            f"align_streams / past_duration must be one of {get_args(AlignStreams)}, got "
            f"{align_streams!r} / {past_duration!r}"
        )
    by_video: dict[str, list[Annotation]] = collections.defaultdict(list)
    for row in rows:
        by_video[row.vid].append(row)
    specs = [*video.specs(rows, dtype), text.spec(rows, dtype)]
    # Every stream of a source shares one clip grid; the timestamps are derived from its spec.
    strides = {s.stride_sec for s in specs if s.modality == "video"}
    if len(strides) != 1:
        raise ImportSetupError(f"the video streams have different strides {sorted(strides)}")
    stride_sec = strides.pop()
    report = ImportReport(out=out)
    writer = CacheWriter(out, dataset=dataset, encoders=specs, mode=mode)
    importer = _Importer(
        video,
        stride_sec,
        align_streams,
        past_duration,
        {s.name: s.numpy_dtype for s in specs if s.modality == "video"},
    )
    text_spec = specs[-1]
    committed_videos, committed_queries = writer.completed_videos, writer.completed_queries
    pending: list[Annotation] = []

    def flush(pool: ThreadPoolExecutor) -> None:
        results = text.load_batch(pending, pool.map)
        items = []
        for row, result in zip(pending, results, strict=True):
            if isinstance(result, ImportItemError):
                report.failures.append(
                    ImportFailure("query", row.qid, result.kind, result.detail, result.path, vid=row.vid)
                )
                continue
            tokens, pooled = result
            item = QueryItem(
                qid=row.qid,
                vid=row.vid,
                text=row.query,
                split=row.split,
                windows=list(row.windows),
                saliency=None if row.saliency is None else np.asarray(row.saliency),
                saliency_clip_sec=row.saliency_clip_sec,
                tokens={text_spec.name: np.asarray(tokens).astype(text_spec.numpy_dtype)},
                pooled={text_spec.name: np.asarray(pooled).astype(text_spec.numpy_dtype)},
            )
            problems = writer.check_query(item)
            if problems:
                report.failures.append(
                    ImportFailure("query", row.qid, "invalid_item", "; ".join(problems), vid=row.vid)
                )
            else:
                items.append(item)
        writer.add_queries(items)
        report.queries_imported += len(items)
        pending.clear()

    def queue_queries(video_rows: list[Annotation], pool: ThreadPoolExecutor) -> None:
        for row in video_rows:
            if row.qid in committed_queries:
                report.queries_already_committed += 1
            else:
                pending.append(row)
        if len(pending) >= query_batch:
            flush(pool)

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            todo = []
            for vid, video_rows in by_video.items():
                if vid in committed_videos:
                    report.videos_already_committed += 1
                    queue_queries(video_rows, pool)
                else:
                    todo.append(video_rows)
            for loaded in _bounded_map(pool, importer.load, todo, ahead=4 * max(1, workers)):
                if isinstance(loaded, ImportFailure):
                    report.failures.append(loaded)
                    continue
                vid = loaded.item.vid
                try:
                    writer.add_video(loaded.item)  # checks the item before writing anything
                except SchemaError as err:
                    report.failures.append(
                        ImportFailure(
                            "video",
                            vid,
                            "invalid_item",
                            str(err),
                            vid=vid,
                            queries_skipped=len(by_video[vid]),
                        )
                    )
                    continue
                report.videos_imported += 1
                report.truncations += loaded.truncations
                if loaded.short:
                    report.short_videos.append(loaded.short)
                queue_queries(by_video[vid], pool)
            if pending:
                flush(pool)
    finally:
        writer.close()
    report.seconds = time.perf_counter() - started
    report.write()
    return report


# -- command line ------------------------------------------------------------------------------


def _stream_name(directory: Path) -> str:
    """``clip_features`` -> ``clip``; Lighthouse's ``clip`` stays ``clip``."""
    name = directory.name
    return name.removesuffix("_features") or name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extract import",
        description="Import public pre-extracted features (Moment-DETR / Lighthouse npz, C3D HDF5) "
        "into a cache. "
        "Exits 1 when any video or query failed (see <out stem>.failures.jsonl), 2 when the import "
        "cannot start.",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="layout of the video features")
    parser.add_argument(
        "--annotations",
        required=True,
        nargs="+",
        metavar="DATASET[:DIR] [SPLIT=FILE ...]",
        help=f"dataset adapter ({', '.join(list_datasets())}) and optionally its annotation "
        "folder (default: the shared data folder), or one file per split: qvhighlights "
        "train=a.jsonl val=b.jsonl (see docs/datasets.md)",
    )
    parser.add_argument("--split", nargs="+", default=None, help="splits to import (default: all)")
    parser.add_argument(
        "--variant", default=None, help="adapter variant (e.g. test_release for qvhighlights)"
    )
    parser.add_argument(
        "--policy",
        nargs="+",
        default=[],
        metavar="KIND=ACTION",
        help="annotation validation policy overrides (see docs/datasets.md)",
    )
    parser.add_argument(
        "--video-feats",
        required=True,
        nargs="+",
        type=Path,
        metavar="PATH",
        help="moment_detr: one folder of <vid>.npz per stream; hdf5_c3d: the HDF5 file",
    )
    parser.add_argument(
        "--names",
        nargs="+",
        default=None,
        help="encoder name of each video stream (default: folder name without _features; c3d)",
    )
    parser.add_argument(
        "--clip-sec",
        type=float,
        default=None,
        help="seconds per video feature (moment_detr default 2.0, the QVHighlights clip)",
    )
    parser.add_argument(
        "--stride-frames",
        type=int,
        default=None,
        help="hdf5_c3d: frames between features; with --fps gives the stride instead of --clip-sec",
    )
    parser.add_argument(
        "--fps", type=float, default=None, help="hdf5_c3d: frame rate the features were taken at"
    )
    parser.add_argument(
        "--frames-per-feature",
        type=int,
        default=None,
        help="frames per feature, recorded in the spec (default: unknown)",
    )
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text-feats", type=Path, default=None, help="folder of per-query npz text features")
    text.add_argument(
        "--text-encoder", default=None, help="registered text encoder computing the query features"
    )
    parser.add_argument(
        "--text-name",
        default=None,
        help="encoder name of the npz text features (default: folder name without _features)",
    )
    parser.add_argument(
        "--text-pattern",
        default=DEFAULT_TEXT_PATTERN,
        help="text feature file name, {qid} standing for the query's feature id",
    )
    parser.add_argument(
        "--qid-map",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSONL",
        help="Lighthouse jsonl files whose qids name the text files (Charades-STA, ActivityNet)",
    )
    parser.add_argument(
        "--text-weights",
        default=None,
        help="--text-encoder weights: default hub weights, a local path, or 'none' (random init)",
    )
    parser.add_argument("--device", default="cpu", help="--text-encoder device")
    parser.add_argument("--out", required=True, type=Path, help="cache to write (.h5 or .zarr)")
    parser.add_argument(
        "--dataset-name", default=None, help="dataset name stored in the cache (default: DATASET)"
    )
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=get_args(FeatureDtype),
        help="storage dtype of imported features",
    )
    parser.add_argument(
        "--align-streams",
        default="error",
        choices=get_args(AlignStreams),
        help="streams of different lengths: skip the video (error) or cut to the shorter (truncate)",
    )
    parser.add_argument(
        "--past-duration",
        default="error",
        choices=get_args(PastDuration),
        help="features starting past the annotated duration: skip the video or drop them",
    )
    parser.add_argument("--workers", type=int, default=8, help="threads reading feature files")
    parser.add_argument("--overwrite", action="store_true", help="start a new cache instead of resuming")
    return parser


def _video_source(args: argparse.Namespace) -> VideoSource:
    if args.format == "moment_detr":
        if args.stride_frames is not None or args.fps is not None:
            raise ImportSetupError("--stride-frames / --fps are for hdf5_c3d; moment_detr uses --clip-sec")
        clip_sec = 2.0 if args.clip_sec is None else args.clip_sec
        names = args.names or [_stream_name(d) for d in args.video_feats]
        if len(names) != len(args.video_feats):
            raise ImportSetupError(f"{len(names)} --names for {len(args.video_feats)} --video-feats folders")
        return NpzVideoStreams(list(zip(names, args.video_feats, strict=True)), clip_sec)
    if len(args.video_feats) != 1:
        raise ImportSetupError("hdf5_c3d reads one HDF5 file; give one --video-feats")
    if args.names is not None and len(args.names) != 1:
        raise ImportSetupError("hdf5_c3d has one stream; give at most one --names")
    by_frames = args.stride_frames is not None or args.fps is not None
    if by_frames == (args.clip_sec is not None):
        raise ImportSetupError(
            "hdf5_c3d needs the feature stride: --clip-sec S, or --stride-frames N with --fps F"
        )
    if by_frames:
        if args.stride_frames is None or args.fps is None or args.stride_frames <= 0 or args.fps <= 0:
            raise ImportSetupError("--stride-frames and --fps go together and must be positive")
        stride_sec = args.stride_frames / args.fps
    else:
        stride_sec = args.clip_sec
    name = args.names[0] if args.names else "c3d"
    return Hdf5C3DVideo(
        args.video_feats[0], stride_sec, name=name, frames_per_feature=args.frames_per_feature
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m extract import ...``; returns 0, 1 when items failed, 2 when the import cannot start."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    dataset, _, annotation_dir = args.annotations[0].partition(":")
    video: VideoSource | None = None
    try:
        # Every setup error is a ValueError subclass (unknown dataset, split or policy,
        # AnnotationError, EncoderError, ImportSetupError) or a missing path.
        annotations: str | dict[str, str] | None = annotation_dir or None
        if len(args.annotations) > 1:
            if annotation_dir:
                raise ImportSetupError(
                    f"--annotations: {dataset}:{annotation_dir} and SPLIT=FILE items; use one"
                )
            annotations = annotations_from_strings(args.annotations[1:])
            if isinstance(annotations, str):
                raise ImportSetupError(
                    f"--annotations: give the folder as {dataset}:{annotations}, or files as SPLIT=FILE"
                )
        policy = ValidationPolicy.from_strings(args.policy)
        result = load_dataset(dataset, annotations, split=args.split, policy=policy, variant=args.variant)
        rows = list(result.rows)
        print(result.report.summary(max_examples=1))
        video = _video_source(args)
        if args.text_feats is not None:
            qid_map = read_qid_map(args.qid_map, rows) if args.qid_map else None
            text: TextSource = NpzText(
                args.text_feats,
                args.text_name or _stream_name(args.text_feats),
                pattern=args.text_pattern,
                qid_map=qid_map,
            )
        else:
            if args.text_name or args.qid_map or args.text_pattern != DEFAULT_TEXT_PATTERN:
                raise ImportSetupError("--text-name / --text-pattern / --qid-map describe --text-feats files")
            text = EncoderText(args.text_encoder, weights=args.text_weights, device=args.device)
    except (ValueError, FileNotFoundError) as err:
        if video is not None:
            video.close()
        print(f"import cannot start: {err}", file=sys.stderr)
        return 2
    try:
        report = import_features(
            rows,
            args.out,
            dataset=args.dataset_name or dataset,
            video=video,
            text=text,
            align_streams=args.align_streams,
            past_duration=args.past_duration,
            dtype=args.dtype,
            mode="overwrite" if args.overwrite else "resume",
            workers=args.workers,
        )
    except (ImportSetupError, FileExistsError, SchemaError) as err:
        # No feature file at all for a stream, or a resumed cache written with other encoders.
        print(f"import cannot start: {err}", file=sys.stderr)
        return 2
    finally:
        video.close()
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
