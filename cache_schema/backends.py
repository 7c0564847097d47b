"""The two storage backends behind one small interface: resizable 2-D-ish arrays + JSON attributes.

The cache layout (docs/cache_schema.md) only needs named arrays that grow along their first
axis, random reads of row ranges, and a JSON attribute dictionary on the root. Both HDF5 (h5py)
and Zarr v3 provide that; this module hides their differences so that the writer, the reader
and `validate` are written once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cache_schema.spec import CacheReadError, SchemaError

Backend = Literal["hdf5", "zarr"]
Mode = Literal["r", "a"]


def backend_for(path: str | os.PathLike) -> Backend:
    """The backend is chosen by the store's suffix: `.h5`/`.hdf5` -> HDF5, `.zarr` -> Zarr.

    Raises:
        SchemaError: (a ValueError) naming the path for any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    if suffix == ".zarr":
        return "zarr"
    raise SchemaError(f"{path}: unknown cache suffix {suffix!r}; use .h5 (HDF5) or .zarr (Zarr)")


def _chunk_rows(row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    # Feature arrays: ~1 MiB chunks, big enough that load_split streams, small enough that a
    # random single-video read touches one or two chunks. Index arrays (small rows, appended one
    # item at a time): 64 KiB chunks, because every commit rewrites the partly filled last chunk.
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    target = (1 << 20) if row_bytes >= 4096 else (1 << 16)
    return int(max(16, target // row_bytes))


class Store:
    """Named arrays that grow along axis 0, plus a JSON attribute dict on the root."""

    def __init__(self, path: str | os.PathLike, mode: Mode, compression: str | None = None) -> None:
        self.path = Path(path)
        self.backend: Backend = backend_for(path)
        self.mode = mode
        self.compression = compression
        self._arrays: dict[str, Any] = {}
        try:
            self._root = self._open(mode)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as err:  # h5py: truncated or not HDF5; zarr: not a group
            raise CacheReadError(f"{self.path}: cannot be opened as a cache: {err}") from err

    def _open(self, mode: Mode) -> Any:
        if self.backend == "hdf5":
            import h5py

            # libver "earliest" on purpose: no "file open for writing" flag is left behind by a
            # killed writer, so a crashed extraction can simply be reopened and resumed.
            return h5py.File(self.path, "r" if mode == "r" else "a")
        import zarr

        if mode == "r":
            return zarr.open_group(store=str(self.path), mode="r")
        return zarr.open_group(store=str(self.path), mode="a", zarr_format=3)

    # -- attributes -----------------------------------------------------------------------
    def get_attr(self, key: str, default: Any = None) -> Any:
        if key not in self._root.attrs:
            return default
        raw = self._root.attrs[key]
        return json.loads(raw) if isinstance(raw, str | bytes) else raw

    def set_attr(self, key: str, value: Any) -> None:
        # Stored as one JSON string: both backends keep it verbatim, and nested dicts survive.
        self._root.attrs[key] = json.dumps(value, sort_keys=True)

    # -- arrays ---------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self._root

    def array_names(self) -> list[str]:
        names: list[str] = []
        if self.backend == "hdf5":
            import h5py

            self._root.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        else:
            names = [name for name, _ in self._root.arrays()]
            for gname, group in self._root.groups():
                names += [f"{gname}/{n}" for n in _zarr_array_paths(group)]
        return sorted(names)

    def create(self, name: str, row_shape: tuple[int, ...], dtype: np.dtype | str) -> None:
        """Create an empty array of shape (0, *row_shape), growable along axis 0."""
        dtype = np.dtype(dtype)
        chunks = (_chunk_rows(row_shape, dtype), *row_shape)
        if self.backend == "hdf5":
            self._root.create_dataset(
                name,
                shape=(0, *row_shape),
                maxshape=(None, *row_shape),
                dtype=dtype,
                chunks=chunks,
                compression=self.compression,
            )
        else:
            import zarr

            compressors = None
            if self.compression:
                compressors = (
                    zarr.codecs.ZstdCodec(level=3)
                    if self.compression == "zstd"
                    else zarr.codecs.BloscCodec(cname=self.compression)
                )
            self._root.create_array(
                name, shape=(0, *row_shape), dtype=dtype, chunks=chunks, compressors=compressors, fill_value=0
            )

    def delete(self, name: str) -> None:
        """Remove array ``name`` (Zarr frees its files; HDF5 only unlinks it, the file keeps its size)."""
        self._arrays.pop(name, None)
        del self._root[name]

    def _array(self, name: str) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = self._root[name]
        return arr

    def nrows(self, name: str) -> int:
        return int(self._array(name).shape[0])

    def row_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._array(name).shape[1:])

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._array(name).dtype)

    def resize(self, name: str, nrows: int) -> None:
        arr = self._array(name)
        if self.backend == "hdf5":
            arr.resize(nrows, axis=0)
        else:
            arr.resize((nrows, *arr.shape[1:]))

    def write(self, name: str, start: int, data: np.ndarray) -> None:
        """Write rows [start, start + len(data)), growing the array geometrically when needed.

        Rows past what the manifest commits are invisible to readers, so spare capacity is free;
        growing by doubling keeps metadata rewrites (one file per resize in Zarr) rare.
        """
        end = start + len(data)
        if self.nrows(name) < end:
            self.resize(name, max(end, 2 * self.nrows(name), 64))
        if len(data):
            self._array(name)[start:end] = data

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of array `name`.

        Raises:
            CacheReadError: naming the store and the array when the bytes cannot be read (a store
                truncated or damaged after it was opened).
        """
        try:
            return np.asarray(self._array(name)[start:stop])
        except OSError as err:
            raise CacheReadError(f"{self.path}: cannot read {name}[{start}:{stop}]: {err}") from err

    def flush(self) -> None:
        if self.backend == "hdf5":
            self._root.flush()
        # Zarr's LocalStore writes each chunk and metadata file atomically at assignment time.

    def close(self) -> None:
        if self.backend == "hdf5" and self._root.id.valid:
            self._root.close()
        self._arrays.clear()

    def size_on_disk(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _zarr_array_paths(group: Any) -> list[str]:
    names = [name for name, _ in group.arrays()]
    for gname, sub in group.groups():
        names += [f"{gname}/{n}" for n in _zarr_array_paths(sub)]
    return names
