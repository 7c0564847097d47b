"""The two storage backends behind one small interface: resizable 2-D-ish arrays + JSON attributes.

The cache layout (docs/cache_schema.md) only needs named arrays that grow along their first
axis, random reads of row ranges, and a JSON attribute dictionary on the root. Both HDF5 (h5py)
and Zarr v3 provide that; this module hides their differences so that the writer, the reader
and `validate` are written once.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from cache_schema.spec import CacheReadError, SchemaError


class NotAStoreError(CacheReadError):
    """Something exists at a store's path but is not a complete store: a 0-byte, truncated or
    foreign file, a folder that is no Zarr group, or a store without its manifest."""


Backend = Literal["hdf5", "zarr"]
Mode = Literal["r", "r+", "w-"]
"""``r`` reads an existing store, ``r+`` reads and writes one, ``w-`` creates one (refusing an
existing path). Only ``create_store`` uses ``w-``: a store comes into being complete or not at all."""


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
        if mode not in get_args(Mode):
            raise ValueError(f"{path}: unknown store mode {mode!r}; modes: {get_args(Mode)}")
        self.path = Path(path)
        self.backend: Backend = backend_for(path)
        self.mode = mode
        self.compression = compression
        self._arrays: dict[str, Any] = {}
        if mode != "w-" and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such store")
        try:
            if self.backend == "hdf5":
                import h5py

                # HDF5 opens a 0-byte file in "r+" mode as a new, empty file (writing a
                # superblock into it): test the signature first so that nothing is written.
                if mode != "w-" and self.path.is_file() and not h5py.is_hdf5(self.path):
                    raise OSError("not an HDF5 file (no HDF5 signature)")
                # libver "earliest" on purpose: no "file open for writing" flag is left behind by
                # a killed writer, so a crashed extraction can simply be reopened and resumed.
                self._root = h5py.File(self.path, mode)
            else:
                import zarr

                self._root = zarr.open_group(
                    store=str(self.path), mode=mode, zarr_format=3 if mode == "w-" else None
                )
        except BlockingIOError as err:
            raise SchemaError(f"{self.path}: in use by another process (HDF5 file lock): {err}") from err
        except PermissionError as err:
            raise SchemaError(f"{self.path}: cannot be opened: {err}") from err
        except (OSError, ValueError) as err:
            # h5py raises OSError for a 0-byte, truncated or foreign file; zarr raises
            # GroupNotFoundError (a FileNotFoundError) for a folder without zarr.json and
            # ValueErrors for malformed metadata.
            if mode == "w-" and self.path.exists():
                raise FileExistsError(f"{self.path}: already exists") from err
            kind = "an HDF5" if self.backend == "hdf5" else "a Zarr"
            raise NotAStoreError(f"{self.path}: cannot be opened as {kind} store: {err}") from err

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


# -- creating and removing whole stores -------------------------------------------------------
#
# A store is created under a hidden temporary name beside its final path and renamed into place
# once complete, and removed by renaming it away before deleting it. A process killed at any
# moment therefore leaves at the final path either nothing or a complete store, never a 0-byte
# HDF5 file or a Zarr folder without its manifest. What it leaves instead is a temporary named
# ``.<name>.<creating|removing>.<pid>@<host><suffix>``, which no reader opens (it is no store's
# or shard's name), and which the next creation or removal of the same path on that host deletes
# once its process is gone.

_Activity = Literal["creating", "removing"]


def _temporary(path: Path, activity: _Activity) -> Path:
    # The suffix is kept so that the temporary opens with the same backend.
    return path.with_name(f".{path.name}.{activity}.{os.getpid()}@{socket.gethostname()}{path.suffix}")


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ``path`` left by killed processes of this host (see the comment above)."""
    path = Path(path)
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.(?:creating|removing)\.(\d+)@(.+){re.escape(path.suffix)}"
    )
    host = socket.gethostname()
    stale = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*"):
        match = pattern.fullmatch(candidate.name)
        if match and match.group(2) == host and not _process_alive(int(match.group(1))):
            stale.append(candidate)
    return sorted(stale)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _delete_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush every file and folder of a store to disk (a Zarr store is a few dozen small files)."""
    if path.is_dir():
        for folder, _, files in os.walk(path):
            for name in files:
                _fsync(Path(folder, name))
            _fsync(Path(folder))
    else:
        _fsync(path)


def create_store(
    path: str | os.PathLike, initialize: Callable[[Store], None], *, compression: str | None = None
) -> None:
    """Create a complete new store at ``path``, atomically.

    ``initialize`` builds the store (attributes, empty arrays) under a temporary name beside
    ``path``; the store is then closed, synced to disk and renamed into place. Stale temporaries
    of ``path`` from killed processes are deleted first.

    Raises:
        FileExistsError: ``path`` exists, or appeared while the store was being built.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path):
        _delete_tree(stale)
    tmp = _temporary(path, "creating")
    _delete_tree(tmp)  # a leftover whose pid is now ours (pid reuse) belongs to nobody alive
    try:
        store = Store(tmp, "w-", compression=compression)
        try:
            initialize(store)
        finally:
            store.close()
        _fsync_tree(tmp)
        if path.exists():
            raise FileExistsError(f"{path}: appeared while this store was being created")
        # rename(2) replaces a file, or a missing/empty folder, in one step.
        os.replace(tmp, path)
    except BaseException:
        _delete_tree(tmp)
        raise
    _fsync(path.parent)


def remove_store(path: str | os.PathLike) -> None:
    """Delete the store at ``path`` (if any) so that no half-deleted store is ever left there.

    The store is first renamed to a temporary name (one atomic step), then deleted.
    """
    path = Path(path)
    for stale in stale_temporaries(path):
        _delete_tree(stale)
    if not path.exists() and not path.is_symlink():
        return
    doomed = _temporary(path, "removing")
    _delete_tree(doomed)  # as in create_store: a leftover with our pid is nobody's
    os.replace(path, doomed)
    _fsync(path.parent)
    _delete_tree(doomed)
