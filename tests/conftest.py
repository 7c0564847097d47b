"""Suite-wide settings: never touch a model hub, keep torch on the machine's two cores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny tensors: intra-op threads cost more than they save, and on a shared 2-core machine
# their hand-offs made training steps 20x slower. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real annotation files: ../shared/data beside the repo, or $GROUNDCACHE_SHARED_DATA."""
    return Path(os.environ.get("GROUNDCACHE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test, then the previous count (small-tensor model tests).

    With tensors this small, intra-op threading costs more than it saves, and on a shared CPU the
    worker threads' hand-offs made a training step 20x slower than on one thread. Test files use it
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["hdf5", "zarr"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def cache_path(tmp_path: Path, backend: str) -> Path:
    return tmp_path / ("cache.h5" if backend == "hdf5" else "cache.zarr")


def record_encode_rows(encoder) -> list[int]:
    """Wrap ``encoder.encode_video`` on the instance so every forward pass's row count is appended
    to the returned list; ``del encoder.encode_video`` restores the class's method."""
    rows: list[int] = []
    encode_video = encoder.encode_video

    def counted(frames):
        rows.append(frames.shape[0])
        return encode_video(frames)

    encoder.encode_video = counted
    return rows
