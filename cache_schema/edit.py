"""Whole-cache edits: drop an encoder, merge caches of one dataset.

- `drop_encoder` removes one encoder and reclaims its space. Zarr: the encoder leaves the
  table and the manifest first, then its arrays are deleted (a kill in between leaves arrays no
  encoder names; they are ignored, and reused by a later `CacheWriter.add_encoder`). HDF5 cannot
  give back the space of a deleted dataset, so every other array is copied into a new file
  beside the cache, which then replaces it in one rename: readers see the old file or the new
  one, never a mix.
- `merge_caches` writes the videos and queries of several caches of one dataset into one, in
  video-id order, resumably (items already in the output are skipped). `extract merge` uses it
  for the shards of a torchrun extraction. Encoders that every input has for all its videos are
  written with the cache; the others become added (indexed) encoders of the output, committed
  where the inputs have them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cache_schema.backends import Store
from cache_schema.spec import Modality, SchemaError
from cache_schema.store import (
    CacheReader,
    CacheWriter,
    check_version,
    data_array,
    index_array,
    indexed_counts,
)


def _encoder_arrays(modality: Modality, name: str) -> list[str]:
    """Every array an encoder may own, in either layout (written with the cache, or added)."""
    per_item = f"video/{name}/timestamps" if modality == "video" else f"text/{name}/pooled"
    return [
        data_array(modality, name),
        per_item,
        index_array(modality, name, False),
        index_array(modality, name, True),
    ]


def drop_encoder(path: str | os.PathLike, name: str, modality: Modality | None = None) -> int:
    """Remove encoder ``name`` from the cache at ``path`` and reclaim its space.

    Args:
        path: A cache (``.h5`` or ``.zarr``); no writer may have it open.
        name: The encoder's name.
        modality: ``video`` or ``text``; needed only when both towers of ``name`` are in the cache.

    Returns:
        Bytes on disk freed (size before minus size after).

    Raises:
        FileNotFoundError: no cache at ``path``.
        SchemaError: the cache has no such encoder, ``name`` is ambiguous without ``modality``,
            or it is the cache's last encoder of its modality (a cache needs one of each).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such cache")
    store = Store(path, "r+")
    try:
        check_version(path, store.get_attr("schema_version"), store.get_attr("min_reader_version"))
        table = store.get_attr("encoders")
        found = [m for m in ("video", "text") if name in table[m] and modality in (None, m)]
        if not found:
            have = {m: sorted(table[m]) for m in ("video", "text")}
            kind_text = f"{modality} encoder" if modality else "encoder"
            raise SchemaError(f"{path}: no {kind_text} {name!r}; the cache has {have}")
        if len(found) > 1:
            raise SchemaError(
                f"{path}: {name!r} is both a video and a text encoder; choose one with --modality"
            )
        kind: Modality = found[0]  # type: ignore[assignment]
        if len(table[kind]) == 1:
            raise SchemaError(f"{path}: {name!r} is the cache's only {kind} encoder; a cache needs one")
        size_before = store.size_on_disk()
        del table[kind][name]
        manifest = store.get_attr("manifest")
        entries = indexed_counts(manifest)
        entries[kind].pop(name, None)
        if "entries" in manifest:
            manifest["entries"] = entries
        dropped = [a for a in _encoder_arrays(kind, name) if store.has(a)]
        if store.backend == "zarr":
            # The table first: from then on no reader looks at the arrays being deleted.
            store.set_attr("encoders", table)
            store.set_attr("manifest", manifest)
            for array in dropped:
                store.delete(array)
            group = "video" if kind == "video" else "text"
            if store.has(f"{group}/{name}"):
                store.delete(f"{group}/{name}")
            store.close()
        else:
            store.close()
            _copy_hdf5_without(path, dropped, {"encoders": table, "manifest": manifest})
    finally:
        store.close()
    after = Store(path, "r")
    try:
        return size_before - after.size_on_disk()
    finally:
        after.close()


def _copy_hdf5_without(path: Path, dropped: Sequence[str], attrs: dict) -> None:
    """Copy every array of the HDF5 cache but ``dropped`` into a new file, set ``attrs``, then
    atomically replace the cache with it."""
    import h5py

    tmp = path.with_name(f".{path.name}.drop-encoder.tmp.h5")
    tmp.unlink(missing_ok=True)
    src = Store(path, "r")
    names = [n for n in src.array_names() if n not in dropped]
    root_attrs = dict(src._root.attrs)
    src.close()
    try:
        with h5py.File(path, "r") as source, h5py.File(tmp, "w") as target:
            for key, value in root_attrs.items():
                target.attrs[key] = value
            for name in names:
                parent = name.rsplit("/", 1)[0] if "/" in name else ""
                group = target.require_group(parent) if parent else target
                source.copy(source[name], group, name=name.rsplit("/", 1)[-1])
        out = Store(tmp, "r+")
        for key, value in attrs.items():
            out.set_attr(key, value)
        out.flush()
        out.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def merge_caches(output: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> int:
    """Write every video and query of ``inputs`` into ``output`` (created, or resumed), by video id.

    Args:
        output: The merged cache; when it exists, items already in it are skipped.
        inputs: Caches of one dataset with the same encoders (same specs).

    Returns:
        The number of videos added to ``output``.

    Raises:
        FileNotFoundError: an input is missing.
        SchemaError: the inputs differ in dataset or encoders, or two inputs hold the same video.
    """
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{output}: caches to merge {missing} are missing")
    if not inputs:
        raise SchemaError(f"{output}: no caches to merge")
    readers = [CacheReader(p) for p in inputs]
    added = 0
    try:
        first = readers[0]
        for reader in readers[1:]:
            if (reader.dataset, reader.video_encoders, reader.text_encoders, reader.block_inputs) != (
                first.dataset,
                first.video_encoders,
                first.text_encoders,
                first.block_inputs,
            ):
                raise SchemaError(
                    f"{reader.path}: dataset, encoders or block inputs differ from {first.path}"
                )
        owner: dict[str, CacheReader] = {}
        qids_of: dict[str, list[str]] = {}
        for reader in readers:
            for vid in reader.video_ids:
                if vid in owner:
                    raise SchemaError(f"video {vid}: in two caches, {owner[vid].path} and {reader.path}")
                owner[vid] = reader
            for query in reader.queries():
                qids_of.setdefault(query.vid, []).append(query.qid)
        # Encoders some input lacks for some item become added encoders of the output.
        partial = {
            (m, n)
            for r in readers
            for m, counts in r.coverage().items()
            for n, count in counts.items()
            if count < (r.n_videos if m == "video" else r.n_queries)
        }
        specs = [*first.video_encoders.values(), *first.text_encoders.values()]
        written = [s for s in specs if (s.modality, s.name) not in partial]
        later = [s for s in specs if (s.modality, s.name) in partial]
        partial_blocks = sorted(n for m, n in partial if m == "video" and n in first.block_inputs)
        if partial_blocks:
            raise SchemaError(
                f"{output}: video encoders {partial_blocks} have block inputs but are not committed for "
                "every video of the inputs; block inputs are stored only for encoders written with a cache"
            )
        output = Path(output)
        if output.exists():
            writer = CacheWriter(
                output, dataset=first.dataset, encoders=None, mode="resume", block_inputs=None
            )
            have = {(m, n): s for m, t in writer.encoders.items() for n, s in t.items()}
            if have != {(s.modality, s.name): s for s in specs}:
                writer.close()
                raise SchemaError(
                    f"{output}: its encoders {sorted(f'{m}:{n}' for m, n in have)} differ from "
                    f"the inputs' {sorted(f'{s.modality}:{s.name}' for s in specs)}"
                )
        else:
            writer = CacheWriter(
                output,
                dataset=first.dataset,
                encoders=written,
                mode="resume",
                block_inputs=list(first.block_inputs.values()),
            )
        with writer:
            for spec in later:
                writer.add_encoder(spec)
            for vid in sorted(owner):
                reader = owner[vid]
                if vid not in writer.completed_videos:
                    writer.add_video(reader.video(vid))
                    added += 1
                queries = [reader.query(q) for q in qids_of.get(vid, []) if q not in writer.completed_queries]
                if queries:
                    writer.add_queries(queries)
    finally:
        for reader in readers:
            reader.close()
    return added
