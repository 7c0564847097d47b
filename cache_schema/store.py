"""Writer and reader of a groundcache store (HDF5 file or Zarr directory, same layout).

Layout (see docs/cache_schema.md for the full contract)::

    attrs: schema_version, dataset, created, encoders {video: {name: spec}, text: {name: spec}},
           manifest {videos: N, queries: M}          <- the commit point
    videos/meta, videos/meta_offsets                 JSON record per video (vid, duration_sec, ...)
    videos/offsets/<enc>                             (N, 2) row range of each video in video/<enc>/*
    video/<enc>/features      (sum T, D)             packed along T, all videos back to back
    video/<enc>/timestamps    (sum T, 2) float64     [start, end) seconds of each feature
    video/<enc>/block_inputs  (sum T, L, W)          optional (schema 1.3.0, attrs.block_inputs):
                                                     hidden states entering block N-K, row i
                                                     belongs to features row i
    queries/meta, queries/meta_offsets               JSON record per query (qid, vid, text, split, ...)
    queries/offsets/<enc>                            (M, 2) row range of each query in text/<enc>/tokens
    text/<enc>/tokens         (sum L, D)
    text/<enc>/pooled         (M, D)

Encoders added to an existing cache (schema 1.2.0, ``CacheWriter.add_encoder``) are *indexed*:
their rows cover only the items where they are committed, in commit order::

    videos/entries/<enc>      (K, 3) [video row, start, stop] into video/<enc>/*
    queries/entries/<enc>     (K, 3) [query row, start, stop] into text/<enc>/tokens
    text/<enc>/pooled         (K, D) row k belongs to entry k
    manifest.entries          {video: {enc: K}, text: {enc: K}}  <- committed entries per indexed encoder

Commit protocol: an item's rows are written past the committed end of every array, flushed,
and only then is the manifest count raised (and flushed). Readers never look past the manifest,
so a killed writer leaves nothing that reads as complete; reopening for writing truncates the
uncommitted tail and carries on. A new store is built complete (attributes, empty arrays,
manifest) under a temporary name and renamed into place (``backends.create_store``), so a writer
killed while creating it leaves no store at its path rather than one without a manifest.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cache_schema.backends import NotAStoreError, Store, create_store, remove_store
from cache_schema.spec import (
    GROWN_SCHEMA_VERSION,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    BlockInputsSpec,
    EncoderNotCommittedError,
    EncoderSpec,
    MissingBlockInputsError,
    Modality,
    Orientation,
    QueryItem,
    SchemaError,
    SchemaVersionError,
    UncoveredItemsError,
    VideoItem,
    check_timestamps,
    check_windows,
)

WriteMode = Literal["resume", "overwrite", "create"]
Uncovered = Literal["error", "skip"]

BLOCK_INPUTS_SINCE = "1.3.0"
"""Schema version that introduced block inputs; written as ``min_reader_version`` by a cache that
has them, because an older writer resuming it would not keep them aligned with the features."""


def block_inputs_array(name: str) -> str:
    """The packed block-input array of a video encoder: ``video/<enc>/block_inputs``."""
    return f"video/{name}/block_inputs"


def block_inputs_table(specs: Iterable[BlockInputsSpec]) -> dict[str, dict]:
    """The ``block_inputs`` attribute: encoder name -> `BlockInputsSpec` as a dict."""
    return {spec.encoder: spec.to_dict() for spec in specs}


def items_table(modality: Modality) -> str:
    """The item table an encoder's rows belong to: ``videos`` or ``queries``."""
    return "videos" if modality == "video" else "queries"


def data_array(modality: Modality, name: str) -> str:
    """The packed array of an encoder: ``video/<enc>/features`` or ``text/<enc>/tokens``."""
    return f"video/{name}/features" if modality == "video" else f"text/{name}/tokens"


def index_array(modality: Modality, name: str, indexed: bool) -> str:
    """``<table>/offsets/<enc>`` (N, 2) for an encoder written with the cache, ``<table>/entries/<enc>``
    (K, 3) for one added later."""
    return f"{items_table(modality)}/{'entries' if indexed else 'offsets'}/{name}"


def indexed_counts(manifest: dict) -> dict[str, dict[str, int]]:
    """Committed entries of each indexed encoder, by modality (empty for caches before 1.2.0)."""
    entries = manifest.get("entries") or {}
    return {m: dict(entries.get(m, {})) for m in ("video", "text")}


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(version).split("."))
    except ValueError:
        raise SchemaError(f"schema version {version!r} is not MAJOR.MINOR.PATCH") from None


def read_ranges(
    store: Store, modality: Modality, name: str, n_items: int, indexed: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Where each committed item's rows of one encoder lie.

    Returns:
        ``ranges`` (n_items, 2) int64 [start, stop) rows in the encoder's packed array, and
        ``entry`` (n_items,) int64 row of the item in the encoder's per-item arrays (``pooled``);
        both -1 for items where the encoder is not committed.
    """
    if name not in indexed:
        ranges = store.read(index_array(modality, name, False), 0, n_items)
        return ranges, np.arange(n_items, dtype=np.int64)
    entries = store.read(index_array(modality, name, True), 0, indexed[name])  # (K, 3)
    ranges = np.full((n_items, 2), -1, dtype=np.int64)
    entry = np.full(n_items, -1, dtype=np.int64)
    ranges[entries[:, 0]] = entries[:, 1:]
    entry[entries[:, 0]] = np.arange(len(entries), dtype=np.int64)
    return ranges, entry


def _encode_json(record: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(record, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def _decode_json(blob: np.ndarray, offsets: np.ndarray) -> list[dict]:
    raw = blob.tobytes()
    return [json.loads(raw[start:stop]) for start, stop in offsets]


def encoder_table(encoders: Iterable[EncoderSpec]) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = {"video": {}, "text": {}}
    for spec in encoders:
        if spec.name in table[spec.modality]:
            raise SchemaError(f"{spec.modality} encoder {spec.name!r} is listed twice")
        table[spec.modality][spec.name] = spec.to_dict()
    return table


def check_version(path: str | os.PathLike, found: str | None, min_reader: str | None = None) -> None:
    """Refuse a cache this reader cannot read, naming both versions.

    Args:
        path: The cache, for the message.
        found: Its ``schema_version``.
        min_reader: Its ``min_reader_version`` (None when absent): the oldest schema a reader
            must know to read it correctly (written with block inputs, and once an encoder was
            added, see `GROWN_SCHEMA_VERSION`).

    Raises:
        SchemaVersionError: Its major is not in `READABLE_VERSIONS`, or ``min_reader`` is newer
            than what this code reads of that major.
        SchemaError: No ``schema_version`` at all.
    """
    if not found:
        raise SchemaError(f"{path}: not a groundcache store (no schema_version attribute)")
    readable = " and ".join(READABLE_VERSIONS.values())
    theirs = str(found).split(".")[0]
    if theirs not in READABLE_VERSIONS:
        raise SchemaVersionError(
            f"{path}: cache schema version {found} is not readable by this groundcache "
            f"(it reads schema {readable}); major version {theirs} is not one of "
            f"{', '.join(READABLE_VERSIONS)}"
        )
    if min_reader is not None:
        newest = READABLE_VERSIONS.get(str(min_reader).split(".")[0])
        if newest is None or _version_tuple(min_reader) > _version_tuple(newest):
            raise SchemaVersionError(
                f"{path}: cache schema version {found} needs a reader of schema {min_reader} or "
                f"newer; this groundcache reads schema {readable}"
            )


def open_store(path: str | os.PathLike, mode: Literal["r", "r+"], compression: str | None = None) -> Store:
    """Open a complete groundcache store: readable, of our major schema version, with a manifest.

    Stores are created atomically (``backends.create_store``), so an incomplete one at a store's
    path is a foreign file or was left by an older groundcache killed while creating it; either
    way it holds no committed item, and it is refused rather than guessed at.

    Raises:
        FileNotFoundError: Nothing exists at ``path``.
        NotAStoreError: ``path`` is not a complete groundcache store (a 0-byte or truncated HDF5
            file, a Zarr folder without metadata or manifest, another program's file); the
            one-line message names the path and how to recover.
        SchemaVersionError: The store's major schema version is not ours.
        SchemaError: The store cannot be opened (another process holds its HDF5 lock; no
            permission).
    """
    recover = "delete it, or rebuild it with --overwrite"
    try:
        store = Store(path, mode, compression=compression)
    except NotAStoreError as err:
        raise NotAStoreError(f"{err}; not a groundcache store: {recover}") from err
    try:
        version = store.get_attr("schema_version")
        if version is None:
            raise NotAStoreError(f"{path}: not a groundcache store (no schema_version attribute): {recover}")
        check_version(path, version)
        manifest = store.get_attr("manifest")
        if not (isinstance(manifest, dict) and {"videos", "queries"} <= manifest.keys()):
            raise NotAStoreError(
                f"{path}: incomplete groundcache store (no manifest; its creation was interrupted): {recover}"
            )
    except BaseException:
        store.close()
        raise
    return store


class CacheWriter:
    """Appends videos and queries to a store, one atomic item (or query batch) at a time.

    Args:
        path: `.h5` for HDF5 or `.zarr` for Zarr.
        dataset: dataset name recorded in the metadata.
        encoders: specs of every encoder whose features will be written; None (resume only) takes
            the existing cache's encoders.
        mode: ``resume`` reopens an existing store (its encoders must match) and truncates any
            uncommitted tail, or creates a missing one; ``overwrite`` deletes an existing store
            first; ``create`` refuses an existing path.
        compression: None (default: embeddings barely compress, see docs/cache_schema.md),
            ``gzip``/``lzf`` for HDF5, ``zstd``/``lz4`` for Zarr.
        block_inputs: video encoders (of ``encoders``, written with the cache) whose block inputs
            every video then carries (`VideoItem.block_inputs`). None keeps an existing cache's (none
            for a new one); a list must equal a resumed cache's.

    Raises:
        FileExistsError: ``mode="create"`` and ``path`` exists.
        SchemaError: ``path`` holds something that is not a complete groundcache store (see
            `open_store`), or a store with other encoders.
        SchemaVersionError: ``path`` holds a store of another major schema version.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dataset: str,
        encoders: Sequence[EncoderSpec] | None,
        mode: WriteMode = "resume",
        compression: str | None = None,
        block_inputs: Sequence[BlockInputsSpec] | None = None,
    ) -> None:
        self.path = Path(path)
        if encoders is None and not (self.path.exists() and mode == "resume"):
            raise FileNotFoundError(f"{self.path}: no cache to take the encoders from (encoders=None)")
        if mode == "create" and self.path.exists():
            raise FileExistsError(f"{self.path}: cache already exists (use mode='resume' or 'overwrite')")
        if mode == "overwrite":
            remove_store(self.path)
        if not self.path.exists():
            created = encoder_table(encoders)
            blocks = block_inputs_table(block_inputs or ())
            unknown = sorted(set(blocks) - set(created["video"]))
            if unknown:
                raise SchemaError(
                    f"{self.path}: block inputs of {unknown}, which are not video encoders of the cache "
                    f"{sorted(created['video'])}"
                )
            # Built under a temporary name and renamed into place: a writer killed here leaves
            # no store at `path`, never one without its manifest.
            create_store(
                self.path,
                lambda store: self._initialize(store, dataset, created, blocks),
                compression=compression,
            )
        self._store = open_store(self.path, "r+", compression=compression)
        try:
            check_version(
                self.path, self._store.get_attr("schema_version"), self._store.get_attr("min_reader_version")
            )
        except SchemaError:
            self._store.close()
            raise
        table = self._store.get_attr("encoders") if encoders is None else encoder_table(encoders)
        if self._store.get_attr("encoders") != table:
            existing = _describe(self._store.get_attr("encoders"))
            self._store.close()
            raise SchemaError(
                f"{self.path}: existing cache has encoders {existing}, "
                f"this run writes {_describe(table)}; use another path or mode='overwrite'"
            )
        existing_blocks = self._store.get_attr("block_inputs") or {}
        if block_inputs is not None and block_inputs_table(block_inputs) != existing_blocks:
            self._store.close()
            raise SchemaError(
                f"{self.path}: existing cache has block inputs {existing_blocks or 'of no encoder'}, "
                f"this run writes {block_inputs_table(block_inputs) or 'none'}; use another path or "
                "mode='overwrite'"
            )
        self.block_inputs = {n: BlockInputsSpec.from_dict(d) for n, d in existing_blocks.items()}
        """Video encoder -> spec of the block inputs every video carries."""
        self._truncate_uncommitted()
        self.encoders = {m: {n: EncoderSpec.from_dict(d) for n, d in t.items()} for m, t in table.items()}
        manifest = self._store.get_attr("manifest")
        self._n_videos, self._n_queries = manifest["videos"], manifest["queries"]
        self._indexed = indexed_counts(manifest)
        """Modality -> indexed (added) encoder -> committed entries."""
        # Committed end row of every ragged column, kept in memory so appends never read back.
        self._ends: dict[str, int] = {}
        for table_name in ("videos", "queries"):
            for _, index, count, stop_col in self._ragged_columns(table_name):
                self._ends[index] = (
                    int(self._store.read(index, count - 1, count)[0, stop_col]) if count else 0
                )
        self._video_meta = self._read_meta("videos")
        self._query_meta = self._read_meta("queries")
        self._vids = {m["vid"]: m for m in self._video_meta}
        self._qids = {m["qid"] for m in self._query_meta}
        self._video_rows = {m["vid"]: i for i, m in enumerate(self._video_meta)}
        self._query_rows = {m["qid"]: i for i, m in enumerate(self._query_meta)}
        # Items each indexed encoder is committed for (every item, for the others).
        self._covered: dict[str, dict[str, set[int]]] = {"video": {}, "text": {}}
        for modality, counts in self._indexed.items():
            for name, count in counts.items():
                entries = self._store.read(index_array(modality, name, True), 0, count)
                self._covered[modality][name] = set(entries[:, 0].tolist())

    # -- set-up -----------------------------------------------------------------------------
    @staticmethod
    def _initialize(
        s: Store, dataset: str, table: dict[str, dict[str, dict]], blocks: dict[str, dict]
    ) -> None:
        """Write the attributes and empty arrays of a new store; the manifest last (the commit point)."""
        s.set_attr("schema_version", SCHEMA_VERSION)
        if blocks:
            s.set_attr("min_reader_version", BLOCK_INPUTS_SINCE)
            s.set_attr("block_inputs", blocks)
            for name, spec in blocks.items():
                block_spec = BlockInputsSpec.from_dict(spec)
                s.create(block_inputs_array(name), block_spec.row_shape, np.dtype(block_spec.dtype))
        s.set_attr("dataset", dataset)
        s.set_attr(
            "created",
            {
                "utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "host": platform.node(),
                "user": _safe_user(),
                "groundcache": _package_version(),
            },
        )
        s.set_attr("encoders", table)
        for table_name in ("videos", "queries"):
            s.create(f"{table_name}/meta", (), np.uint8)
            s.create(f"{table_name}/meta_offsets", (2,), np.int64)
        for name, spec in table["video"].items():
            dtype = EncoderSpec.from_dict(spec).numpy_dtype
            s.create(f"videos/offsets/{name}", (2,), np.int64)
            s.create(f"video/{name}/features", (spec["dim"],), dtype)
            s.create(f"video/{name}/timestamps", (2,), np.float64)
        for name, spec in table["text"].items():
            dtype = EncoderSpec.from_dict(spec).numpy_dtype
            s.create(f"queries/offsets/{name}", (2,), np.int64)
            s.create(f"text/{name}/tokens", (spec["dim"],), dtype)
            s.create(f"text/{name}/pooled", (spec["dim"],), dtype)
        s.set_attr("manifest", {"videos": 0, "queries": 0})
        s.flush()

    def _ragged_columns(self, table_name: str) -> list[tuple[str, str, int, int]]:
        """(data array, index array, committed rows of the index, column of each row's stop) of one
        table, read from the store's attributes; the index's rows give row ranges of the data."""
        manifest = self._store.get_attr("manifest")
        count = manifest[table_name]
        indexed = indexed_counts(manifest)
        modality: Modality = "video" if table_name == "videos" else "text"
        columns = [(f"{table_name}/meta", f"{table_name}/meta_offsets", count, 1)]
        for name in self._store.get_attr("encoders")[modality]:
            is_indexed = name in indexed[modality]
            index = index_array(modality, name, is_indexed)
            rows, stop_col = (indexed[modality][name], 2) if is_indexed else (count, 1)
            columns.append((data_array(modality, name), index, rows, stop_col))
            if modality == "video":
                columns.append((f"video/{name}/timestamps", index, rows, stop_col))
                if name in (self._store.get_attr("block_inputs") or {}):
                    columns.append((block_inputs_array(name), index, rows, stop_col))
        return columns

    def _truncate_uncommitted(self) -> None:
        s = self._store
        manifest = s.get_attr("manifest")
        indexed = indexed_counts(manifest)
        for table_name in ("videos", "queries"):
            for data, index, count, stop_col in self._ragged_columns(table_name):
                end = int(s.read(index, count - 1, count)[0, stop_col]) if count else 0
                s.resize(index, count)
                s.resize(data, end)
        for name in s.get_attr("encoders")["text"]:
            s.resize(f"text/{name}/pooled", indexed["text"].get(name, manifest["queries"]))
        if s.backend == "zarr":
            # Temporary files of an interrupted atomic write; never referenced by metadata.
            for partial in self.path.rglob("*.partial"):
                partial.unlink(missing_ok=True)
        s.flush()

    def _read_meta(self, table_name: str) -> list[dict]:
        offsets = self._store.read(f"{table_name}/meta_offsets")
        return _decode_json(self._store.read(f"{table_name}/meta"), offsets)

    # -- state ------------------------------------------------------------------------------
    @property
    def completed_videos(self) -> set[str]:
        return set(self._vids)

    @property
    def completed_queries(self) -> set[str]:
        return set(self._qids)

    def covered_videos(self, encoder: str) -> set[str]:
        """Committed videos that have ``encoder``'s features (all of them unless it was added)."""
        if encoder not in self._covered["video"]:
            return self.completed_videos
        return {self._video_meta[row]["vid"] for row in self._covered["video"][encoder]}

    def covered_queries(self, encoder: str) -> set[str]:
        """Committed queries that have ``encoder``'s tokens (all of them unless it was added)."""
        if encoder not in self._covered["text"]:
            return self.completed_queries
        return {self._query_meta[row]["qid"] for row in self._covered["text"][encoder]}

    def _append(
        self, data: str, index: str, position: int, rows: np.ndarray, item_row: int | None = None
    ) -> int:
        """Write rows right after the previous entry's and record their range at ``position`` of
        ``index`` (with the item's row first for an indexed encoder); return the start row."""
        start = self._ends[index]
        self._store.write(data, start, rows)
        record = [start, start + len(rows)] if item_row is None else [item_row, start, start + len(rows)]
        self._store.write(index, position, np.array([record], dtype=np.int64))
        self._ends[index] = start + len(rows)
        return start

    def _commit(self) -> None:
        self._store.flush()  # every array of the item is on disk before the manifest says so
        manifest: dict = {"videos": self._n_videos, "queries": self._n_queries}
        if any(self._indexed.values()):
            manifest["entries"] = self._indexed
        self._store.set_attr("manifest", manifest)
        self._store.flush()

    # -- items ------------------------------------------------------------------------------
    def add_video(self, item: VideoItem) -> None:
        """Validate and append one video; it becomes visible to readers when this returns.

        Features of every encoder written with the cache are required; an added (indexed)
        encoder missing from ``item.features`` is simply not committed for this video.
        """
        problems = self.check_video(item)
        if problems:
            raise SchemaError("; ".join(problems))
        n = self._n_videos
        for name, spec in self.encoders["video"].items():
            if name in self._indexed["video"] and name not in item.features:
                continue
            feats = np.asarray(item.features[name]).astype(spec.numpy_dtype, copy=False)
            if name in self._indexed["video"]:
                index, position = index_array("video", name, True), self._indexed["video"][name]
                start = self._append(f"video/{name}/features", index, position, feats, item_row=n)
                self._indexed["video"][name] += 1
            else:
                start = self._append(f"video/{name}/features", f"videos/offsets/{name}", n, feats)
            # timestamps share the features' offsets: row i of one is row i of the other
            self._store.write(
                f"video/{name}/timestamps", start, np.asarray(item.timestamps_sec[name], np.float64)
            )
            if name in self.block_inputs:  # shares the features' offsets too
                dtype = np.dtype(self.block_inputs[name].dtype)
                rows = np.asarray(item.block_inputs[name]).astype(dtype, copy=False)
                self._store.write(block_inputs_array(name), start, rows)
        meta = {
            "vid": item.vid,
            "duration_sec": float(item.duration_sec),
            "fps": _json_float(item.fps),
            "n_frames": int(item.n_frames),
            "source": str(item.source),
            "orientation": None if item.orientation is None else item.orientation.to_dict(),
        }
        self._append("videos/meta", "videos/meta_offsets", n, _encode_json(meta))
        self._n_videos += 1
        self._commit()
        self._video_meta.append(meta)
        self._vids[item.vid] = meta
        self._video_rows[item.vid] = n
        for name, rows in self._covered["video"].items():
            if name in item.features:
                rows.add(n)

    def check_video(self, item: VideoItem) -> list[str]:
        """Every way `item` breaks the contract, as messages naming the video."""
        problems: list[str] = []
        vid = item.vid
        if not vid:
            return ["video with an empty id"]
        if vid in self._vids:
            problems.append(f"video {vid}: already in the cache")
        if not (np.isfinite(item.duration_sec) and item.duration_sec > 0):
            problems.append(f"video {vid}: duration_sec must be positive, got {item.duration_sec}")
            return problems
        if item.orientation is not None and not isinstance(item.orientation, Orientation):
            problems.append(
                f"video {vid}: orientation must be an Orientation or None, not {item.orientation!r}"
            )
        for name, spec in self.encoders["video"].items():
            if name in self._indexed["video"] and name not in item.features:
                continue  # an added encoder is optional
            if name not in item.features or name not in item.timestamps_sec:
                problems.append(f"video {vid}: no features/timestamps for encoder {name!r}")
                continue
            feats, ts = np.asarray(item.features[name]), np.asarray(item.timestamps_sec[name])
            if feats.ndim != 2 or feats.shape[1] != spec.dim:
                problems.append(
                    f"video {vid}: encoder {name!r} features have shape {feats.shape}, "
                    f"the encoder table says (T, {spec.dim})"
                )
                continue
            if ts.shape != (feats.shape[0], 2):
                problems.append(
                    f"video {vid}: encoder {name!r} has {feats.shape[0]} features but "
                    f"timestamps of shape {ts.shape}"
                )
                continue
            if not np.all(np.isfinite(feats)):
                problems.append(f"video {vid}: encoder {name!r} features contain NaN/Inf")
            problems += [f"{p} (encoder {name!r})" for p in check_timestamps(vid, ts, item.duration_sec)]
            if name in self.block_inputs:
                problems += _check_block_inputs(vid, self.block_inputs[name], item, feats.shape[0])
        unstored = sorted(set(item.block_inputs) - set(self.block_inputs))
        if unstored:
            problems.append(
                f"video {vid}: block inputs of {unstored}, but the cache stores block inputs of "
                f"{sorted(self.block_inputs) or 'no encoder'}"
            )
        extra = set(item.features) - set(self.encoders["video"])
        if extra:
            problems.append(
                f"video {vid}: encoders {sorted(extra)} are not in the cache's encoder table "
                f"{sorted(self.encoders['video'])}"
            )
        return problems

    def add_queries(self, items: Sequence[QueryItem]) -> None:
        """Validate and append queries (their videos must be committed); atomic as a batch.

        As in `add_video`, an added (indexed) text encoder missing from ``item.tokens`` is not
        committed for that query; every other encoder is required."""
        problems = [p for item in items for p in self.check_query(item)]
        qids = [q.qid for q in items]
        if len(set(qids)) != len(qids):
            problems.append(
                f"queries: duplicate qids in one batch: {sorted({q for q in qids if qids.count(q) > 1})}"
            )
        if problems:
            raise SchemaError("; ".join(problems))
        for item in items:
            m = self._n_queries
            for name, spec in self.encoders["text"].items():
                if name in self._indexed["text"] and name not in item.tokens:
                    continue  # an added encoder is optional
                tokens = np.asarray(item.tokens[name]).astype(spec.numpy_dtype, copy=False)
                pooled = np.asarray(item.pooled[name]).astype(spec.numpy_dtype, copy=False)
                if name in self._indexed["text"]:
                    position = self._indexed["text"][name]
                    self._append(f"text/{name}/tokens", index_array("text", name, True), position, tokens, m)
                    self._store.write(f"text/{name}/pooled", position, pooled[None])
                    self._indexed["text"][name] += 1
                    self._covered["text"][name].add(m)
                else:
                    self._append(f"text/{name}/tokens", f"queries/offsets/{name}", m, tokens)
                    self._store.write(f"text/{name}/pooled", m, pooled[None])
            meta = {
                "qid": item.qid,
                "vid": item.vid,
                "text": item.text,
                "split": item.split,
                "windows": [[float(s), float(e)] for s, e in item.windows],
                "saliency": None if item.saliency is None else np.asarray(item.saliency).tolist(),
                "saliency_clip_sec": item.saliency_clip_sec,
            }
            self._append("queries/meta", "queries/meta_offsets", m, _encode_json(meta))
            self._n_queries += 1
            self._query_meta.append(meta)
            self._query_rows[item.qid] = m
        self._commit()
        self._qids.update(qids)

    def check_query(self, item: QueryItem) -> list[str]:
        """Every way `item` breaks the contract, as messages naming the query."""
        qid = item.qid
        if not qid:
            return [f"query with an empty id (video {item.vid})"]
        problems: list[str] = []
        if qid in self._qids:
            problems.append(f"query {qid}: already in the cache")
        if not item.split:
            problems.append(f"query {qid}: empty split")
        video = self._vids.get(item.vid)
        if video is None:
            problems.append(f"query {qid}: video {item.vid!r} is not in the cache (write the video first)")
        else:
            problems += check_windows(qid, item.windows, video["duration_sec"])
        if item.saliency is not None:
            sal = np.asarray(item.saliency, dtype=np.float64)
            if sal.ndim != 2 or not item.saliency_clip_sec or item.saliency_clip_sec <= 0:
                problems.append(
                    f"query {qid}: saliency must be (clips, annotators) with a positive "
                    f"saliency_clip_sec, got shape {sal.shape} and {item.saliency_clip_sec}"
                )
            elif not np.all(np.isfinite(sal)):
                problems.append(f"query {qid}: saliency contains NaN/Inf")
        for name, spec in self.encoders["text"].items():
            if name in self._indexed["text"] and name not in item.tokens:
                continue  # an added encoder is optional
            if name not in item.tokens or name not in item.pooled:
                problems.append(f"query {qid}: no tokens/pooled for text encoder {name!r}")
                continue
            tokens, pooled = np.asarray(item.tokens[name]), np.asarray(item.pooled[name])
            if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] != spec.dim:
                problems.append(
                    f"query {qid}: encoder {name!r} tokens have shape {tokens.shape}, "
                    f"the encoder table says (L>=1, {spec.dim})"
                )
            elif pooled.shape != (spec.dim,):
                problems.append(
                    f"query {qid}: encoder {name!r} pooled has shape {pooled.shape}, expected ({spec.dim},)"
                )
            elif not (np.all(np.isfinite(tokens)) and np.all(np.isfinite(pooled))):
                problems.append(f"query {qid}: encoder {name!r} text features contain NaN/Inf")
        return problems

    # -- growing: encoders added to an existing cache ----------------------------------------
    def add_encoder(self, spec: EncoderSpec) -> bool:
        """Add an (indexed) encoder with no committed features yet; existing arrays are untouched.

        Idempotent, so that a killed run can call it again: an encoder already in the table with
        the same spec is kept with what it has committed.

        Returns:
            True when the encoder was added, False when it was already there.

        Raises:
            SchemaError: the cache has an encoder of that name and modality with another spec.
        """
        table = self._store.get_attr("encoders")
        existing = table[spec.modality].get(spec.name)
        if existing is not None:
            if existing != spec.to_dict():
                raise SchemaError(
                    f"{self.path}: {spec.modality} encoder {spec.name!r} is already in the cache with "
                    f"another spec ({_describe({spec.modality: {spec.name: existing}})}); "
                    "drop it first (python -m cache_schema drop-encoder)"
                )
            return False
        s = self._store
        index = index_array(spec.modality, spec.name, True)
        arrays = [
            (index, (3,), np.int64),
            (data_array(spec.modality, spec.name), (spec.dim,), spec.numpy_dtype),
        ]
        if spec.modality == "video":
            arrays.append((f"video/{spec.name}/timestamps", (2,), np.float64))
        else:
            arrays.append((f"text/{spec.name}/pooled", (spec.dim,), spec.numpy_dtype))
        # Arrays first, then the manifest (0 entries), then the encoder table: a kill at any point
        # leaves arrays no table names (reused here on the next call), never a table naming no arrays.
        for name, row_shape, dtype in arrays:
            if s.has(name) and (s.row_shape(name) != row_shape or s.dtype(name) != np.dtype(dtype)):
                s.delete(name)  # left by an earlier add of another spec that was then dropped
            if s.has(name):
                s.resize(name, 0)
            else:
                s.create(name, row_shape, dtype)
        self._indexed[spec.modality][spec.name] = 0
        self._covered[spec.modality][spec.name] = set()
        self._ends[index] = 0
        self._commit()
        # A major older readers refuse by name (`GROWN_SCHEMA_VERSION`); never lowered.
        s.set_attr("schema_version", GROWN_SCHEMA_VERSION)
        if _version_tuple(s.get_attr("min_reader_version") or "0.0.0") < _version_tuple(GROWN_SCHEMA_VERSION):
            s.set_attr("min_reader_version", GROWN_SCHEMA_VERSION)
        table[spec.modality][spec.name] = spec.to_dict()
        s.set_attr("encoders", table)
        s.flush()
        self.encoders[spec.modality][spec.name] = spec
        return True

    def _indexed_encoder(self, modality: Modality, name: str) -> EncoderSpec:
        if name not in self._indexed[modality]:
            kind = "added" if name in self.encoders[modality] else "in the cache"
            raise SchemaError(
                f"{self.path}: {modality} encoder {name!r} is not {kind} (add_encoder first); "
                f"added: {sorted(self._indexed[modality])}"
            )
        return self.encoders[modality][name]

    def add_video_features(
        self, vid: str, encoder: str, features: np.ndarray, timestamps_sec: np.ndarray
    ) -> None:
        """Commit one added encoder's features for one committed video (atomic, like `add_video`).

        Args:
            vid: A video already in the cache, without this encoder's features.
            encoder: An encoder added with `add_encoder`.
            features: (T, D) features.
            timestamps_sec: (T, 2) float64 [start, end) seconds of each feature's window.

        Raises:
            SchemaError: naming the video and encoder, for an unknown video, features already
                committed, a wrong dim, NaN/Inf, or timestamps that break the invariants.
        """
        spec = self._indexed_encoder("video", encoder)
        row = self._video_rows.get(vid)
        feats, ts = np.asarray(features), np.asarray(timestamps_sec, dtype=np.float64)
        problems: list[str] = []
        if row is None:
            problems.append(f"video {vid}: not in the cache (add_video first)")
        elif row in self._covered["video"][encoder]:
            problems.append(f"video {vid}: encoder {encoder!r} is already committed")
        elif feats.ndim != 2 or feats.shape[1] != spec.dim or feats.shape[0] < 1:
            problems.append(
                f"video {vid}: encoder {encoder!r} features have shape {feats.shape}, "
                f"the encoder table says (T>=1, {spec.dim})"
            )
        elif ts.shape != (feats.shape[0], 2):
            problems.append(
                f"video {vid}: encoder {encoder!r} has {feats.shape[0]} features "
                f"but timestamps of shape {ts.shape}"
            )
        else:
            if not np.all(np.isfinite(feats)):
                problems.append(f"video {vid}: encoder {encoder!r} features contain NaN/Inf")
            problems += [
                f"{p} (encoder {encoder!r})"
                for p in check_timestamps(vid, ts, self._vids[vid]["duration_sec"])
            ]
        if problems:
            raise SchemaError("; ".join(problems))
        assert row is not None
        position = self._indexed["video"][encoder]
        index = index_array("video", encoder, True)
        rows = feats.astype(spec.numpy_dtype, copy=False)
        start = self._append(f"video/{encoder}/features", index, position, rows, item_row=row)
        self._store.write(f"video/{encoder}/timestamps", start, ts)
        self._indexed["video"][encoder] += 1
        self._commit()
        self._covered["video"][encoder].add(row)

    def add_text_features(self, encoder: str, features: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Commit one added text encoder's features for committed queries, atomic as a batch.

        Args:
            encoder: A text encoder added with `add_encoder`.
            features: qid -> (tokens (L, D), pooled (D,)).

        Raises:
            SchemaError: naming the query and encoder, for an unknown query, features already
                committed, wrong shapes or NaN/Inf.
        """
        spec = self._indexed_encoder("text", encoder)
        problems: list[str] = []
        for qid, (tokens, pooled) in features.items():
            row = self._query_rows.get(qid)
            tokens, pooled = np.asarray(tokens), np.asarray(pooled)
            if row is None:
                problems.append(f"query {qid}: not in the cache (add_queries first)")
            elif row in self._covered["text"][encoder]:
                problems.append(f"query {qid}: encoder {encoder!r} is already committed")
            elif tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] != spec.dim:
                problems.append(
                    f"query {qid}: encoder {encoder!r} tokens have shape {tokens.shape}, "
                    f"the encoder table says (L>=1, {spec.dim})"
                )
            elif pooled.shape != (spec.dim,):
                problems.append(
                    f"query {qid}: encoder {encoder!r} pooled has shape {pooled.shape}, "
                    f"expected ({spec.dim},)"
                )
            elif not (np.all(np.isfinite(tokens)) and np.all(np.isfinite(pooled))):
                problems.append(f"query {qid}: encoder {encoder!r} text features contain NaN/Inf")
        if problems:
            raise SchemaError("; ".join(problems))
        index = index_array("text", encoder, True)
        rows = []
        for qid, (tokens, pooled) in features.items():
            row, position = self._query_rows[qid], self._indexed["text"][encoder]
            self._append(
                f"text/{encoder}/tokens", index, position, np.asarray(tokens).astype(spec.numpy_dtype), row
            )
            self._store.write(
                f"text/{encoder}/pooled", position, np.asarray(pooled).astype(spec.numpy_dtype)[None]
            )
            self._indexed["text"][encoder] += 1
            rows.append(row)
        self._commit()
        self._covered["text"][encoder].update(rows)

    def close(self) -> None:
        """Trim the spare capacity of every array to the committed rows, then close."""
        if self._store.mode == "r+" and not getattr(self, "_closed", False):
            self._truncate_uncommitted()
            self._closed = True
        self._store.close()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class VideoMeta:
    vid: str
    duration_sec: float
    fps: float | None
    """None when unknown (e.g. imported features)."""
    n_frames: int
    source: str
    orientation: Orientation | None = None
    """None when unknown (imported features, or a cache written before schema 1.1.0)."""

    @classmethod
    def from_record(cls, record: dict) -> VideoMeta:
        """A video's JSON record as written by ``CacheWriter.add_video`` (any 1.x schema)."""
        fields = dict(record)
        orientation = fields.pop("orientation", None)
        try:
            parsed = None if orientation is None else Orientation.from_dict(orientation)
        except SchemaError as err:
            raise SchemaError(f"video {record.get('vid')}: {err}") from None
        return cls(**fields, orientation=parsed)


@dataclass
class SplitArrays:
    """A whole split as dense padded numpy arrays (Q queries over V videos).

    Video arrays are per video (shared by its queries through ``video_index``); padding is 0 for
    features and timestamps, NaN for saliency.
    """

    qids: list[str]
    vids: list[str]
    """Per video (V)."""
    texts: list[str]
    video_index: np.ndarray
    """(Q,) int64 index into the video arrays."""
    video: np.ndarray
    """(V, T, Dv) the chosen video encoders concatenated along D, in the order given."""
    video_lengths: np.ndarray
    """(V,) int64 number of real features per video."""
    timestamps_sec: np.ndarray
    """(V, T, 2) float64."""
    duration_sec: np.ndarray
    """(V,) float64."""
    tokens: np.ndarray
    """(Q, L, Dt)."""
    token_lengths: np.ndarray
    """(Q,) int64."""
    pooled: np.ndarray
    """(Q, Dt)."""
    windows: np.ndarray
    """(Q, W, 2) float64 seconds."""
    window_counts: np.ndarray
    """(Q,) int64 (0 for unlabelled queries)."""
    saliency: np.ndarray | None
    """(Q, C, A) float32 on each query's saliency grid, NaN padded; None when no query has saliency."""
    saliency_clip_sec: np.ndarray
    """(Q,) float64, NaN where a query has no saliency."""
    skipped_queries: int = 0
    """Queries of the split left out because an encoder was not committed for them (``uncovered="skip"``)."""
    skipped_videos: int = 0
    """Videos of the split whose queries were all left out for that reason."""
    block_inputs: np.ndarray | None = None
    """(V, T, L, W) one encoder's block inputs (``load_split(block_inputs=...)``), 0 padded; None when
    not asked for, or left in the cache because they exceed ``block_inputs_max_bytes``."""
    block_input_ranges: np.ndarray | None = None
    """(V, 2) int64 [start, stop) rows of each video in the encoder's block-input array (read them
    with `CacheReader.block_input_rows`), whenever block inputs were asked for; else None."""
    block_inputs_bytes: int = 0
    """Bytes the padded (V, T, L, W) block inputs take in memory, held or not (0: not asked for)."""


class CacheReader:
    """Lazy random access to a committed store by id, plus `load_split` for training."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such cache")
        self._store = open_store(self.path, "r")
        s = self._store
        self.schema_version: str = s.get_attr("schema_version")
        self.min_reader_version: str | None = s.get_attr("min_reader_version")
        """The oldest schema a reader must know to read this cache (None: any reader of its major)."""
        check_version(self.path, self.schema_version, self.min_reader_version)
        self.dataset: str = s.get_attr("dataset")
        self.created: dict = s.get_attr("created")
        table = s.get_attr("encoders")
        self.video_encoders = {n: EncoderSpec.from_dict(d) for n, d in table["video"].items()}
        self.text_encoders = {n: EncoderSpec.from_dict(d) for n, d in table["text"].items()}
        self.block_inputs = {
            n: BlockInputsSpec.from_dict(d) for n, d in (s.get_attr("block_inputs") or {}).items()
        }
        """Video encoder -> spec of its block inputs (schema 1.3.0; empty for older caches)."""
        manifest = s.get_attr("manifest")
        self.n_videos, self.n_queries = manifest["videos"], manifest["queries"]
        # Only the committed prefix of every array is ever read.
        self._video_meta = _decode_json(
            s.read("videos/meta"), s.read("videos/meta_offsets", 0, self.n_videos)
        )
        self._query_meta = _decode_json(
            s.read("queries/meta"), s.read("queries/meta_offsets", 0, self.n_queries)
        )
        self._video_rows = {m["vid"]: i for i, m in enumerate(self._video_meta)}
        self._query_rows = {m["qid"]: i for i, m in enumerate(self._query_meta)}
        # Per encoder: (N, 2) row range of each item, -1 where the encoder is not committed, and
        # the row of each item in the encoder's per-item arrays (text pooled).
        indexed = indexed_counts(manifest)
        self.added_encoders = {m: sorted(set(indexed[m]) & set(table[m])) for m in ("video", "text")}
        """Encoders added to the cache after it was written (they may cover only some items)."""
        self._video_offsets: dict[str, np.ndarray] = {}
        self._query_offsets: dict[str, np.ndarray] = {}
        self._pooled_rows: dict[str, np.ndarray] = {}
        for n in self.video_encoders:
            self._video_offsets[n], _ = read_ranges(s, "video", n, self.n_videos, indexed["video"])
        for n in self.text_encoders:
            self._query_offsets[n], self._pooled_rows[n] = read_ranges(
                s, "text", n, self.n_queries, indexed["text"]
            )

    # -- ids and metadata -----------------------------------------------------------------
    @property
    def video_ids(self) -> list[str]:
        return [m["vid"] for m in self._video_meta]

    @property
    def query_ids(self) -> list[str]:
        return [m["qid"] for m in self._query_meta]

    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self._query_meta:
            counts[m["split"]] = counts.get(m["split"], 0) + 1
        return counts

    def _video_row(self, vid: str) -> int:
        try:
            return self._video_rows[vid]
        except KeyError:
            raise KeyError(f"{self.path}: video {vid!r} is not in the cache") from None

    def _query_row(self, qid: str) -> int:
        try:
            return self._query_rows[qid]
        except KeyError:
            raise KeyError(f"{self.path}: query {qid!r} is not in the cache") from None

    def _video_encoder(self, name: str) -> EncoderSpec:
        if name not in self.video_encoders:
            raise KeyError(
                f"{self.path}: no video encoder {name!r}; the cache has {sorted(self.video_encoders)}"
            )
        return self.video_encoders[name]

    def _text_encoder(self, name: str) -> EncoderSpec:
        if name not in self.text_encoders:
            raise KeyError(
                f"{self.path}: no text encoder {name!r}; the cache has {sorted(self.text_encoders)}"
            )
        return self.text_encoders[name]

    def video_meta(self, vid: str) -> VideoMeta:
        return VideoMeta.from_record(self._video_meta[self._video_row(vid)])

    def coverage(self) -> dict[str, dict[str, int]]:
        """Modality -> encoder -> number of committed items (videos or queries) that have its features."""
        return {
            "video": {n: int((o[:, 0] >= 0).sum()) for n, o in self._video_offsets.items()},
            "text": {n: int((o[:, 0] >= 0).sum()) for n, o in self._query_offsets.items()},
        }

    def videos_with(self, encoders: Sequence[str]) -> list[str]:
        """Committed videos that have the features of every video encoder in ``encoders``."""
        for name in encoders:
            self._video_encoder(name)
        mask = np.ones(self.n_videos, dtype=bool)
        for name in encoders:
            mask &= self._video_offsets[name][:, 0] >= 0
        return [self._video_meta[i]["vid"] for i in np.flatnonzero(mask)]

    def queries_with(self, encoder: str) -> list[str]:
        """Committed queries that have the tokens of text encoder ``encoder``."""
        self._text_encoder(encoder)
        return [self._query_meta[i]["qid"] for i in np.flatnonzero(self._query_offsets[encoder][:, 0] >= 0)]

    def _video_range(self, vid: str, encoder: str) -> tuple[int, int]:
        self._video_encoder(encoder)
        start, stop = self._video_offsets[encoder][self._video_row(vid)]
        if start < 0:
            raise EncoderNotCommittedError(
                f"{self.path}: video {vid}: encoder {encoder!r} is not committed for it "
                f"({self.coverage()['video'][encoder]} of {self.n_videos} videos have it)"
            )
        return int(start), int(stop)

    def video_features(self, vid: str, encoder: str) -> np.ndarray:
        """(T, D) features of one video.

        Raises:
            KeyError: unknown video or encoder; `EncoderNotCommittedError` (a KeyError) when the
                encoder was added to the cache and is not committed for this video.
        """
        start, stop = self._video_range(vid, encoder)
        return self._store.read(f"video/{encoder}/features", start, stop)

    def video_timestamps(self, vid: str, encoder: str) -> np.ndarray:
        """(T, 2) [start, end) seconds of each feature of one video (errors as `video_features`)."""
        start, stop = self._video_range(vid, encoder)
        return self._store.read(f"video/{encoder}/timestamps", start, stop)

    def block_inputs_spec(self, encoder: str) -> BlockInputsSpec:
        """The block-input spec of a video encoder.

        Raises:
            MissingBlockInputsError: the cache stores no block inputs of ``encoder``; the message
                names the cache, the encoder and the extract option that adds them.
        """
        self._video_encoder(encoder)
        if encoder not in self.block_inputs:
            raise MissingBlockInputsError(
                f"{self.path}: the cache has no block inputs of video encoder {encoder!r} (it has them of "
                f"{sorted(self.block_inputs) or 'no encoder'}); extract them with the encoder's "
                f"block_inputs option, video_encoders=[{{name: {encoder}, block_inputs: K}}] with K the "
                f"number of last blocks to adapt (1 to the encoder's depth)"
            )
        return self.block_inputs[encoder]

    def video_block_inputs(self, vid: str, encoder: str) -> np.ndarray:
        """(T, L, W) hidden states entering block N-K of ``encoder``, one row per feature of ``vid``."""
        self.block_inputs_spec(encoder)
        start, stop = self._video_range(vid, encoder)
        return self._store.read(block_inputs_array(encoder), start, stop)

    def block_input_rows(self, encoder: str) -> BlockInputRows:
        """A reader of ``encoder``'s block-input rows by range, for training that streams them.

        Raises:
            MissingBlockInputsError: as `block_inputs_spec`.
        """
        return BlockInputRows(self.path, encoder, self.block_inputs_spec(encoder))

    def video_encoders_of(self, vid: str) -> list[str]:
        """The video encoders committed for ``vid``."""
        row = self._video_row(vid)
        return [n for n in self.video_encoders if self._video_offsets[n][row, 0] >= 0]

    def text_encoders_of(self, qid: str) -> list[str]:
        """The text encoders committed for ``qid``."""
        row = self._query_row(qid)
        return [n for n in self.text_encoders if self._query_offsets[n][row, 0] >= 0]

    def video(self, vid: str) -> VideoItem:
        meta = self.video_meta(vid)
        return VideoItem(
            vid=vid,
            duration_sec=meta.duration_sec,
            fps=meta.fps,
            n_frames=meta.n_frames,
            source=meta.source,
            orientation=meta.orientation,
            features={n: self.video_features(vid, n) for n in self.video_encoders_of(vid)},
            timestamps_sec={n: self.video_timestamps(vid, n) for n in self.video_encoders_of(vid)},
            block_inputs={
                n: self.video_block_inputs(vid, n)
                for n in self.video_encoders_of(vid)
                if n in self.block_inputs
            },
        )

    def _query_item(self, meta: dict) -> QueryItem:
        return QueryItem(
            qid=meta["qid"],
            vid=meta["vid"],
            text=meta["text"],
            split=meta["split"],
            windows=[(s, e) for s, e in meta["windows"]],
            saliency=None if meta["saliency"] is None else np.asarray(meta["saliency"], dtype=np.float32),
            saliency_clip_sec=meta["saliency_clip_sec"],
        )

    def query(self, qid: str, *, features: bool = True) -> QueryItem:
        """One query; with ``features`` its tokens and pooled embedding for every text encoder
        committed for it."""
        item = self._query_item(self._query_meta[self._query_row(qid)])
        if features:
            names = self.text_encoders_of(qid)
            item.tokens = {n: self.query_tokens(qid, n) for n in names}
            item.pooled = {n: self.query_pooled(qid, n) for n in names}
        return item

    def _query_entry(self, qid: str, encoder: str) -> int:
        self._text_encoder(encoder)
        row = self._query_row(qid)
        entry = int(self._pooled_rows[encoder][row])
        if entry < 0:
            raise EncoderNotCommittedError(
                f"{self.path}: query {qid}: text encoder {encoder!r} is not committed for it "
                f"({self.coverage()['text'][encoder]} of {self.n_queries} queries have it)"
            )
        return row

    def query_tokens(self, qid: str, encoder: str) -> np.ndarray:
        """(L, D) token features of one query (`EncoderNotCommittedError` where not committed)."""
        row = self._query_entry(qid, encoder)
        start, stop = self._query_offsets[encoder][row]
        return self._store.read(f"text/{encoder}/tokens", start, stop)

    def query_pooled(self, qid: str, encoder: str) -> np.ndarray:
        """(D,) sentence embedding of one query (`EncoderNotCommittedError` where not committed)."""
        entry = int(self._pooled_rows[encoder][self._query_entry(qid, encoder)])
        return self._store.read(f"text/{encoder}/pooled", entry, entry + 1)[0]

    def queries(self, split: str | None = None) -> list[QueryItem]:
        """Query records (without features), optionally of one split."""
        return [self._query_item(m) for m in self._query_meta if split is None or m["split"] == split]

    def size_on_disk(self) -> int:
        return self._store.size_on_disk()

    # -- the training fast path -----------------------------------------------------------
    def load_split(
        self,
        split: str,
        video_encoders: Sequence[str],
        text_encoder: str,
        *,
        uncovered: Uncovered = "error",
        block_inputs: str | None = None,
        block_inputs_max_bytes: int | None = None,
    ) -> SplitArrays:
        """Load every query of `split` and its videos as dense padded arrays, in a few large reads.

        Several video encoders are concatenated along D; their timestamps must agree per video.
        A query is covered when its video has every one of ``video_encoders`` committed and the
        query has ``text_encoder`` committed (encoders added to a cache may cover only some items).

        Args:
            uncovered: ``error`` (default) refuses a split with uncovered queries, giving the
                counts; ``skip`` leaves them out and counts them in ``SplitArrays.skipped_*``.
            block_inputs: also load this video encoder's block inputs (``SplitArrays.block_inputs``).
            block_inputs_max_bytes: load them only when their padded (V, T, L, W) array takes at
                most this many bytes (None: always); otherwise ``SplitArrays.block_inputs`` is None
                and ``block_input_ranges`` says where each video's rows lie, to be read per batch.
                Either way ``block_inputs_bytes`` gives the padded size. They are read one video
                at a time, so loading them takes no memory beyond the padded array.

        Raises:
            MissingBlockInputsError: ``block_inputs`` names an encoder the cache has none of.
            UncoveredItemsError: some queries are not covered and ``uncovered`` is ``error``, or
                none is covered.
            SchemaError: the split has no queries, or the encoders' timestamps disagree.
        """
        if not video_encoders:
            raise ValueError("load_split needs at least one video encoder")
        if uncovered not in ("error", "skip"):
            raise ValueError(f"uncovered must be 'error' or 'skip', got {uncovered!r}")
        specs = [self._video_encoder(n) for n in video_encoders]
        text_spec = self._text_encoder(text_encoder)
        if block_inputs is not None:
            if block_inputs not in video_encoders:
                raise SchemaError(
                    f"{self.path}: block inputs of {block_inputs!r} need it among the video encoders "
                    f"{list(video_encoders)}"
                )
            block_spec = self.block_inputs_spec(block_inputs)
        all_rows = [i for i, m in enumerate(self._query_meta) if m["split"] == split]
        if not all_rows:
            raise SchemaError(f"{self.path}: split {split!r} has no queries; splits: {self.splits()}")
        video_ok = np.ones(self.n_videos, dtype=bool)
        for name in video_encoders:
            video_ok &= self._video_offsets[name][:, 0] >= 0
        qrows = [
            i
            for i in all_rows
            if video_ok[self._video_rows[self._query_meta[i]["vid"]]]
            and self._query_offsets[text_encoder][i, 0] >= 0
        ]
        skipped_queries = len(all_rows) - len(qrows)
        skipped_videos = len(
            {self._query_meta[i]["vid"] for i in all_rows} - {self._query_meta[i]["vid"] for i in qrows}
        )
        if skipped_queries and (uncovered == "error" or not qrows):
            raise UncoveredItemsError(
                f"{self.path}: split {split!r}: {skipped_queries} of {len(all_rows)} queries "
                f"({skipped_videos} videos) lack committed features of video encoders "
                f"{list(video_encoders)} or text encoder {text_encoder!r}"
                + ("; none is covered" if not qrows else "; skip them explicitly to train on the rest")
            )
        qmeta = [self._query_meta[i] for i in qrows]
        vids = list(dict.fromkeys(m["vid"] for m in qmeta))
        vrows = np.array([self._video_row(v) for v in vids], dtype=np.int64)
        video_pos = {v: i for i, v in enumerate(vids)}

        # Lengths and timestamps; every encoder must cut the video into the same windows.
        ranges = {n: self._video_offsets[n][vrows] for n in video_encoders}
        first = video_encoders[0]
        lengths = ranges[first][:, 1] - ranges[first][:, 0]
        ts_all = {n: _gather_rows(self._store, f"video/{n}/timestamps", ranges[n]) for n in video_encoders}
        for name in video_encoders[1:]:
            other = ranges[name][:, 1] - ranges[name][:, 0]
            for i in np.flatnonzero(other != lengths):
                raise SchemaError(
                    f"video {vids[i]}: encoder {name!r} has {other[i]} features, "
                    f"{first!r} has {lengths[i]}; their timestamps must agree to concatenate"
                )
            for i, (a, b) in enumerate(zip(ts_all[first], ts_all[name], strict=True)):
                if not np.allclose(a, b, atol=1e-4):
                    raise SchemaError(
                        f"video {vids[i]}: timestamps of encoders {first!r} and {name!r} disagree"
                    )
        t_max = int(lengths.max())
        dtype = np.result_type(*[s.numpy_dtype for s in specs])
        video = np.zeros((len(vids), t_max, sum(s.dim for s in specs)), dtype=dtype)
        col = 0
        for name, spec in zip(video_encoders, specs, strict=True):
            for i, feats in enumerate(_gather_rows(self._store, f"video/{name}/features", ranges[name])):
                video[i, : len(feats), col : col + spec.dim] = feats
            col += spec.dim
        timestamps = np.zeros((len(vids), t_max, 2), dtype=np.float64)
        for i, ts in enumerate(ts_all[first]):
            timestamps[i, : len(ts)] = ts
        blocks, block_ranges, block_bytes = None, None, 0
        if block_inputs is not None:
            block_ranges = ranges[block_inputs].astype(np.int64)
            padded_shape = (len(vids), t_max, *block_spec.row_shape)
            block_bytes = int(np.prod(padded_shape, dtype=np.int64)) * np.dtype(block_spec.dtype).itemsize
            if block_inputs_max_bytes is None or block_bytes <= block_inputs_max_bytes:
                # One read per video, not `_gather_rows`' slab: the slab spans every video between
                # the split's first and last rows (other splits' too), as large as the split again.
                blocks = np.zeros(padded_shape, dtype=block_spec.dtype)
                name = block_inputs_array(block_inputs)
                for i, (start, stop) in enumerate(block_ranges):
                    blocks[i, : stop - start] = self._store.read(name, int(start), int(stop))

        qrows_arr = np.asarray(qrows, dtype=np.int64)
        tranges = self._query_offsets[text_encoder][qrows_arr]
        token_lengths = tranges[:, 1] - tranges[:, 0]
        tokens = np.zeros((len(qrows), int(token_lengths.max()), text_spec.dim), dtype=text_spec.numpy_dtype)
        for i, tok in enumerate(_gather_rows(self._store, f"text/{text_encoder}/tokens", tranges)):
            tokens[i, : len(tok)] = tok
        pooled_rows = self._pooled_rows[text_encoder]
        pooled_all = self._store.read(f"text/{text_encoder}/pooled", 0, int(pooled_rows.max()) + 1)
        pooled = pooled_all[pooled_rows[qrows_arr]]

        window_counts = np.array([len(m["windows"]) for m in qmeta], dtype=np.int64)
        windows = np.zeros((len(qmeta), max(1, int(window_counts.max())), 2), dtype=np.float64)
        for i, m in enumerate(qmeta):
            if m["windows"]:
                windows[i, : len(m["windows"])] = m["windows"]
        saliency, clip_sec = _pad_saliency(qmeta)
        return SplitArrays(
            qids=[m["qid"] for m in qmeta],
            vids=vids,
            texts=[m["text"] for m in qmeta],
            video_index=np.array([video_pos[m["vid"]] for m in qmeta], dtype=np.int64),
            video=video,
            video_lengths=lengths.astype(np.int64),
            timestamps_sec=timestamps,
            duration_sec=np.array([self._video_meta[r]["duration_sec"] for r in vrows], dtype=np.float64),
            tokens=tokens,
            token_lengths=token_lengths.astype(np.int64),
            pooled=pooled,
            windows=windows,
            window_counts=window_counts,
            saliency=saliency,
            saliency_clip_sec=clip_sec,
            skipped_queries=skipped_queries,
            skipped_videos=skipped_videos,
            block_inputs=blocks,
            block_input_ranges=block_ranges,
            block_inputs_bytes=block_bytes,
        )

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockInputRows:
    """One video encoder's block inputs left in a cache, read a row range at a time.

    For training that cannot hold a split's block inputs in memory (ViT-B/32's of QVHighlights take
    115 GB): each batch reads its videos' rows. The store is opened read-only on the first read in
    each process and again in any other process that uses the object (a forked DataLoader worker, a
    DDP process): an HDF5 handle must not cross a fork, and pickling drops it.

    Args:
        path: the cache (.h5 or .zarr).
        encoder: the video encoder whose block inputs are read.
        spec: their spec (row shape and dtype), from `CacheReader.block_inputs_spec`.
    """

    def __init__(self, path: str | os.PathLike, encoder: str, spec: BlockInputsSpec) -> None:
        self.path, self.encoder, self.spec = Path(path), encoder, spec
        self._store: Store | None = None
        self._pid: int | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, L, W) rows [start, stop) of the encoder's block inputs, in the stored dtype.

        Raises:
            FileNotFoundError, NotAStoreError, CacheReadError: the store is gone, is no longer a
                groundcache store or cannot be read (each names the path).
        """
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = open_store(self.path, "r"), os.getpid()
        return self._store.read(block_inputs_array(self.encoder), start, stop)

    def close(self) -> None:
        """Close this process's handle (the next `read` opens it again)."""
        if self._store is not None and self._pid == os.getpid():
            self._store.close()
        self._store = self._pid = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_pid": None}


def _check_block_inputs(vid: str, spec: BlockInputsSpec, item: VideoItem, n_features: int) -> list[str]:
    """How one video's block inputs of one encoder break the contract, naming the video and encoder."""
    if spec.encoder not in item.block_inputs:
        return [f"video {vid}: no block inputs for encoder {spec.encoder!r}, which the cache stores them of"]
    rows = np.asarray(item.block_inputs[spec.encoder])
    if rows.shape != (n_features, *spec.row_shape):
        return [
            f"video {vid}: encoder {spec.encoder!r} block inputs have shape {rows.shape}, "
            f"expected ({n_features}, {spec.tokens}, {spec.width})"
        ]
    if not np.all(np.isfinite(rows)):
        return [f"video {vid}: encoder {spec.encoder!r} block inputs contain NaN/Inf"]
    return []


def _gather_rows(store: Store, name: str, ranges: np.ndarray) -> list[np.ndarray]:
    """Rows [start, stop) for each range, read as one contiguous slab covering all of them."""
    if len(ranges) == 0:
        return []
    lo, hi = int(ranges[:, 0].min()), int(ranges[:, 1].max())
    slab = store.read(name, lo, hi)
    return [slab[start - lo : stop - lo] for start, stop in ranges]


def _pad_saliency(qmeta: list[dict]) -> tuple[np.ndarray | None, np.ndarray]:
    clip_sec = np.array([m["saliency_clip_sec"] if m["saliency"] is not None else np.nan for m in qmeta])
    labelled = [np.asarray(m["saliency"], dtype=np.float32) for m in qmeta if m["saliency"] is not None]
    if not labelled:
        return None, clip_sec
    clips = max(s.shape[0] for s in labelled)
    annotators = max(s.shape[1] for s in labelled)
    out = np.full((len(qmeta), clips, annotators), np.nan, dtype=np.float32)
    for i, m in enumerate(qmeta):
        if m["saliency"] is not None:
            sal = np.asarray(m["saliency"], dtype=np.float32)
            out[i, : sal.shape[0], : sal.shape[1]] = sal
    return out, clip_sec


def _describe(table: dict | None) -> str:
    if not table:
        return "none"
    return ", ".join(f"{m}:{n}({d['dim']})" for m in ("video", "text") for n, d in table.get(m, {}).items())


def _json_float(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _safe_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("groundcache")
    except PackageNotFoundError:
        return "source"
