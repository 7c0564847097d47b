"""`validate` and `inspect`: check every invariant of a store and describe what it holds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cache_schema.backends import Store
from cache_schema.spec import (
    BlockInputsSpec,
    EncoderSpec,
    Orientation,
    SchemaError,
    check_timestamps,
    check_windows,
)
from cache_schema.store import (
    CacheReader,
    _decode_json,
    block_inputs_array,
    check_version,
    index_array,
    indexed_counts,
)

_BLOCK_ROWS = 1 << 16


def validate(path: str | os.PathLike) -> list[str]:
    """Return every violation found in the store at `path` (empty list when it is valid)."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: no such cache"]
    try:
        store = Store(path, "r")
    except SchemaError as err:  # unreadable, or not an HDF5 file / Zarr group
        return [str(err)]
    try:
        return _validate_store(path, store)
    finally:
        store.close()


def _validate_store(path: Path, store: Store) -> list[str]:
    try:
        check_version(path, store.get_attr("schema_version"), store.get_attr("min_reader_version"))
    except SchemaError as err:
        return [str(err)]
    problems: list[str] = []
    table = store.get_attr("encoders") or {}
    manifest = store.get_attr("manifest")
    if not isinstance(manifest, dict) or not {"videos", "queries"} <= set(manifest):
        return [f"{path}: manifest attribute missing or malformed: {manifest!r}"]
    try:
        specs = {
            m: {n: EncoderSpec.from_dict(d) for n, d in table.get(m, {}).items()} for m in ("video", "text")
        }
    except (SchemaError, TypeError) as err:
        return [f"{path}: encoder table is invalid: {err}"]
    n_videos, n_queries = manifest["videos"], manifest["queries"]
    indexed = indexed_counts(manifest)

    def ranges(name: str, count: int, data: str) -> np.ndarray | None:
        """Committed offsets of one ragged column, checked for shape, contiguity and bounds."""
        if not store.has(name) or not store.has(data):
            problems.append(f"{path}: array {name if not store.has(name) else data} is missing")
            return None
        if store.nrows(name) < count:
            problems.append(f"{path}: {name} has {store.nrows(name)} rows, the manifest commits {count}")
            return None
        offs = store.read(name, 0, count)
        if count and (
            offs[0, 0] != 0 or np.any(offs[1:, 0] != offs[:-1, 1]) or np.any(offs[:, 1] < offs[:, 0])
        ):
            problems.append(f"{path}: {name} offsets are not contiguous")
            return None
        if count and offs[-1, 1] > store.nrows(data):
            problems.append(f"{path}: {data} has {store.nrows(data)} rows, offsets reach {offs[-1, 1]}")
            return None
        return offs

    vmeta_offs = ranges("videos/meta_offsets", n_videos, "videos/meta")
    qmeta_offs = ranges("queries/meta_offsets", n_queries, "queries/meta")
    if vmeta_offs is None or qmeta_offs is None:
        return problems
    videos = _decode_json(store.read("videos/meta"), vmeta_offs)
    queries = _decode_json(store.read("queries/meta"), qmeta_offs)
    durations = {}
    for v in videos:
        if v["vid"] in durations:
            problems.append(f"video {v['vid']}: appears more than once")
        durations[v["vid"]] = v["duration_sec"]
        if not (np.isfinite(v["duration_sec"]) and v["duration_sec"] > 0):
            problems.append(f"video {v['vid']}: duration_sec {v['duration_sec']} is not positive")
        if v.get("orientation") is not None:  # absent or null: unknown (schema < 1.1.0, imports)
            try:
                Orientation.from_dict(v["orientation"])
            except SchemaError as err:
                problems.append(f"video {v['vid']}: {err}")

    def entries(modality: str, name: str, n_items: int, data: str) -> tuple[np.ndarray, list[int]] | None:
        """An encoder's committed row ranges and the item row of each, checked like `ranges`."""
        if name not in indexed[modality]:
            offs = ranges(f"{'videos' if modality == 'video' else 'queries'}/offsets/{name}", n_items, data)
            return None if offs is None else (offs, list(range(n_items)))
        index = index_array(modality, name, True)  # type: ignore[arg-type]
        count = indexed[modality][name]
        if not store.has(index) or store.nrows(index) < count or store.row_shape(index) != (3,):
            problems.append(f"{path}: {index} is missing or has fewer than the {count} committed entries")
            return None
        table = store.read(index, 0, count)
        rows = table[:, 0]
        kind = "video" if modality == "video" else "query"
        if np.any((rows < 0) | (rows >= n_items)):
            problems.append(f"{path}: {index} names {kind} rows outside [0, {n_items})")
            return None
        if len(set(rows.tolist())) != len(rows):
            problems.append(f"{path}: {index} commits some {kind} twice")
            return None
        offs = ranges_of(index, table[:, 1:], data)
        return None if offs is None else (offs, rows.tolist())

    def ranges_of(name: str, offs: np.ndarray, data: str) -> np.ndarray | None:
        if len(offs) and (
            offs[0, 0] != 0 or np.any(offs[1:, 0] != offs[:-1, 1]) or np.any(offs[:, 1] < offs[:, 0])
        ):
            problems.append(f"{path}: {name} offsets are not contiguous")
            return None
        if not store.has(data):
            problems.append(f"{path}: array {data} is missing")
            return None
        if len(offs) and offs[-1, 1] > store.nrows(data):
            problems.append(f"{path}: {data} has {store.nrows(data)} rows, offsets reach {offs[-1, 1]}")
            return None
        return offs

    for name, spec in specs["video"].items():
        found = entries("video", name, n_videos, f"video/{name}/features")
        if found is None:
            continue
        offs, rows = found
        covered = [videos[r] for r in rows]
        problems += _check_dim(store, f"video/{name}/features", spec.dim)
        problems += _check_block_inputs(path, store, name, int(offs[-1, 1]) if len(offs) else 0)
        if store.nrows(f"video/{name}/timestamps") < (offs[-1, 1] if len(offs) else 0):
            problems.append(f"{path}: video/{name}/timestamps is shorter than its features")
            continue
        ts_all = store.read(f"video/{name}/timestamps", 0, int(offs[-1, 1]) if len(offs) else 0)
        for v, (start, stop) in zip(covered, offs, strict=True):
            if stop == start:
                problems.append(f"video {v['vid']}: encoder {name!r} has no features")
                continue
            problems += [
                f"{p} (encoder {name!r})"
                for p in check_timestamps(v["vid"], ts_all[start:stop], v["duration_sec"])
            ]
        problems += _check_finite(
            store, f"video/{name}/features", offs, [v["vid"] for v in covered], "video", name
        )

    qids: set[str] = set()
    for q in queries:
        if q["qid"] in qids:
            problems.append(f"query {q['qid']}: appears more than once")
        qids.add(q["qid"])
        if q["vid"] not in durations:
            problems.append(f"query {q['qid']}: video {q['vid']!r} is not in the cache")
        else:
            problems += check_windows(q["qid"], q["windows"], durations[q["vid"]])
        if not q["split"]:
            problems.append(f"query {q['qid']}: empty split")
    for name, spec in specs["text"].items():
        found = entries("text", name, n_queries, f"text/{name}/tokens")
        if found is None:
            continue
        offs, rows = found
        covered = [queries[r] for r in rows]
        problems += _check_dim(store, f"text/{name}/tokens", spec.dim)
        problems += _check_dim(store, f"text/{name}/pooled", spec.dim)
        for q, (start, stop) in zip(covered, offs, strict=True):
            if stop == start:
                problems.append(f"query {q['qid']}: encoder {name!r} has no tokens")
        ids = [q["qid"] for q in covered]
        problems += _check_finite(store, f"text/{name}/tokens", offs, ids, "query", name)
        if store.nrows(f"text/{name}/pooled") < len(rows):
            problems.append(f"{path}: text/{name}/pooled has fewer rows than committed queries")
        else:
            pooled = store.read(f"text/{name}/pooled", 0, len(rows))
            for i in np.flatnonzero(~np.isfinite(pooled.astype(np.float32)).all(axis=1)):
                problems.append(f"query {ids[i]}: encoder {name!r} pooled contains NaN/Inf")
    return problems


def _check_dim(store: Store, name: str, dim: int) -> list[str]:
    found = store.row_shape(name)
    if found != (dim,):
        return [f"{store.path}: {name} rows have shape {found}, the encoder table says ({dim},)"]
    return []


def _check_finite(
    store: Store, name: str, offs: np.ndarray, ids: list[str], kind: str, enc: str
) -> list[str]:
    """NaN/Inf rows of a packed array, reported per item; read in blocks to bound memory."""
    if not len(offs):
        return []
    bad_rows: list[int] = []
    total = int(offs[-1, 1])
    for lo in range(0, total, _BLOCK_ROWS):
        block = store.read(name, lo, min(total, lo + _BLOCK_ROWS)).astype(np.float32)
        bad_rows += (np.flatnonzero(~np.isfinite(block).all(axis=1)) + lo).tolist()
    items = sorted(set(np.searchsorted(offs[:, 1], bad_rows, side="right").tolist()))
    return [f"{kind} {ids[i]}: encoder {enc!r} features contain NaN/Inf" for i in items]


def inspect(path: str | os.PathLike) -> dict:
    """Counts, encoders, dims, splits and size on disk of a store."""
    with CacheReader(path) as reader:
        return {
            "path": str(reader.path),
            "backend": reader._store.backend,
            "schema_version": reader.schema_version,
            "dataset": reader.dataset,
            "created": reader.created,
            "videos": reader.n_videos,
            "queries": reader.n_queries,
            "splits": reader.splits(),
            "min_reader_version": reader.min_reader_version,
            "video_encoders": {n: s.to_dict() for n, s in reader.video_encoders.items()},
            "text_encoders": {n: s.to_dict() for n, s in reader.text_encoders.items()},
            "coverage": reader.coverage(),
            "added_encoders": reader.added_encoders,
            "block_inputs": {n: s.to_dict() for n, s in reader.block_inputs.items()},
            "features_per_video": _length_stats(
                [reader._video_offsets[n] for n in reader.video_encoders][:1]
            ),
            "size_on_disk_bytes": reader.size_on_disk(),
        }


def _check_block_inputs(path: Path, store: Store, name: str, rows: int) -> list[str]:
    """Problems of one video encoder's block-input array (schema 1.3.0), if the cache has one."""
    table = store.get_attr("block_inputs") or {}
    if name not in table:
        return []
    try:
        spec = BlockInputsSpec.from_dict(table[name])
    except (SchemaError, TypeError) as err:
        return [f"{path}: block inputs of {name!r} are described invalidly: {err}"]
    array = block_inputs_array(name)
    if not store.has(array):
        return [f"{path}: array {array} is missing"]
    if store.row_shape(array) != spec.row_shape:
        return [f"{path}: {array} rows are {store.row_shape(array)}, its spec says {spec.row_shape}"]
    if store.nrows(array) < rows:
        return [f"{path}: {array} has {store.nrows(array)} rows, the features {rows}"]
    return []


def _length_stats(offsets: list[np.ndarray]) -> dict:
    if not offsets or not len(offsets[0]):
        return {}
    committed = offsets[0][offsets[0][:, 0] >= 0]
    if not len(committed):
        return {}
    lengths = committed[:, 1] - committed[:, 0]
    return {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())}
