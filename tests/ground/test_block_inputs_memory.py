"""Block inputs read per batch from the cache give the same batches as block inputs held in memory.

ViT-B/32's block inputs of QVHighlights take 115 GB, so `GroundingDataModule` can leave them in
the cache (`block_inputs_in_memory`, docs/adapter.md "Memory"). Caches are made in code with random
block inputs (no encoder), on both backends.
"""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ground.data
from cache_schema import BlockInputsSpec, CacheReader, CacheWriter, QueryItem, VideoItem
from cache_schema.fake import fake_encoders
from ground.data import GroundingDataModule, StreamedBlockInputs, _BatchIndices, _IndexBatches

LENGTHS = (3, 11, 7, 16, 5, 9)
"""Clips per video: several longer than the crop below, several shorter than a batch's longest."""
MAX_TRAIN_CLIPS = 6
ENCODER = "fake_video0"
SPEC = BlockInputsSpec(encoder=ENCODER, blocks=1, depth=2, tokens=3, width=4, prefix_tokens=1, grid=1)


def write_cache(path: Path) -> Path:
    """Videos of `LENGTHS` clips with random fp16 block inputs, two queries each, in train and val."""
    rng = np.random.default_rng(0)
    specs = fake_encoders(video_dims=(8,), text_dim=4)
    with CacheWriter(path, dataset="blocks", encoders=specs, mode="overwrite", block_inputs=[SPEC]) as writer:
        for v, n in enumerate(LENGTHS):
            vid = f"v{v}"
            starts = np.arange(n, dtype=np.float64)
            writer.add_video(
                VideoItem(
                    vid=vid,
                    duration_sec=float(n),
                    features={ENCODER: rng.standard_normal((n, 8))},
                    timestamps_sec={ENCODER: np.stack([starts, starts + 1], axis=1)},
                    block_inputs={ENCODER: rng.standard_normal((n, *SPEC.row_shape)).astype(np.float16)},
                )
            )
            queries = []
            for k in range(2):
                first = int(rng.integers(0, n))
                tokens = rng.standard_normal((3, 4))
                queries.append(
                    QueryItem(
                        qid=f"{vid}_q{k}",
                        vid=vid,
                        text=f"query {v}-{k}",
                        split="val" if v == 4 else "train",
                        windows=[(float(first), float(min(n, first + 2)))],
                        tokens={"fake_text": tokens},
                        pooled={"fake_text": tokens.mean(axis=0)},
                    )
                )
            writer.add_queries(queries)
    return path


@pytest.fixture(params=["cache.h5", "cache.zarr"], ids=["hdf5", "zarr"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write_cache(tmp_path / request.param)


def data_module(cache: Path, in_memory: bool | str) -> GroundingDataModule:
    return GroundingDataModule(
        str(cache),
        batch_size=4,
        max_train_clips=MAX_TRAIN_CLIPS,
        device_resident=False,
        block_inputs=ENCODER,
        block_inputs_in_memory=in_memory,
    )


def assert_same_batch(streamed: dict, held: dict) -> None:
    assert streamed.keys() == held.keys()
    for key, value in held.items():
        if isinstance(value, torch.Tensor):
            assert streamed[key].dtype == value.dtype and streamed[key].shape == value.shape, key
            assert torch.equal(streamed[key], value), key
        else:
            assert streamed[key] == value, key


def test_streamed_batches_equal_the_in_memory_batches_bit_for_bit(cache: Path) -> None:
    held, streamed = data_module(cache, True), data_module(cache, False)
    assert isinstance(held.load("train").block_inputs, torch.Tensor)
    assert isinstance(streamed.load("train").block_inputs, StreamedBlockInputs)

    # Training: shuffled batches of random crops (the generators draw the same crops).
    train_batches = list(zip(held.train_dataloader(), streamed.train_dataloader(), strict=True))
    assert any(
        b["block_inputs"].shape[1] == MAX_TRAIN_CLIPS and "gt_windows" not in b for b, _ in train_batches
    )
    for a, b in train_batches:
        assert_same_batch(b, a)
    # Evaluation: whole videos, padded to the longest of the batch.
    for split in ("train", "val"):
        tensors_held, tensors_streamed = held.load(split), streamed.load(split)
        for lo in range(0, len(tensors_held), 5):
            idx = torch.arange(lo, min(lo + 5, len(tensors_held)))
            assert_same_batch(tensors_streamed.gather(idx), tensors_held.gather(idx))


def test_streamed_rows_are_the_cached_rows_and_padding_is_zero(cache: Path) -> None:
    split = data_module(cache, False).load("train")
    idx = torch.arange(len(split))
    batch = split.gather(idx)
    with CacheReader(cache) as reader:
        for i, vid in enumerate(batch["vid"]):
            n = int(batch["video_mask"][i].sum())
            cached = torch.from_numpy(reader.video_block_inputs(vid, ENCODER))  # (T, L, W)
            assert torch.equal(batch["block_inputs"][i, :n], cached)
            assert not batch["block_inputs"][i, n:].any()


def test_auto_holds_block_inputs_under_half_the_available_memory(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = [n for v, n in enumerate(LENGTHS) if v != 4]
    padded_bytes = len(train) * max(train) * SPEC.bytes_per_frame  # (V, T, L, W) fp16
    with CacheReader(cache) as reader:
        arrays = reader.load_split("train", [ENCODER], "fake_text", block_inputs=ENCODER)
    assert arrays.block_inputs_bytes == padded_bytes == arrays.block_inputs.nbytes

    def available(n: int) -> None:
        monkeypatch.setattr(ground.data.psutil, "virtual_memory", lambda: SimpleNamespace(available=n))

    assert ground.data.BLOCK_INPUTS_MEMORY_FRACTION == 0.5
    available(2 * padded_bytes)
    assert isinstance(data_module(cache, "auto").load("train").block_inputs, torch.Tensor)
    available(2 * padded_bytes - 2)
    assert isinstance(data_module(cache, "auto").load("train").block_inputs, StreamedBlockInputs)


def _read_in_child(rows, queue) -> None:
    queue.put(rows.read(2, 9))


def test_block_input_rows_reopen_the_store_in_another_process(cache: Path) -> None:
    with CacheReader(cache) as reader:
        rows = reader.block_input_rows(ENCODER)
        expected = reader._store.read(f"video/{ENCODER}/block_inputs", 2, 9)
    np.testing.assert_array_equal(rows.read(2, 9), expected)  # this process's handle is open now
    copy = pickle.loads(pickle.dumps(rows))
    assert copy._store is None
    np.testing.assert_array_equal(copy.read(2, 9), expected)
    # A forked process (a DataLoader worker) inherits the open handle and must not use it.
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(rows, queue))
    child.start()
    from_child = queue.get(timeout=60)
    child.join()
    assert child.exitcode == 0
    np.testing.assert_array_equal(from_child, expected)


def test_a_dataloader_worker_reads_the_same_batches(cache: Path) -> None:
    held, streamed = data_module(cache, True).load("val"), data_module(cache, False).load("val")
    streamed.block_inputs.rows.read(0, 1)  # open the handle before the fork
    sampler = _BatchIndices(len(streamed), 1, shuffle=False)
    loader = torch.utils.data.DataLoader(
        _IndexBatches(streamed, None, None),
        sampler=sampler,
        batch_size=None,
        num_workers=1,
        multiprocessing_context="fork",
    )
    for indices, batch in zip(sampler, loader, strict=True):
        assert_same_batch(batch, held.gather(torch.as_tensor(indices)))


def test_block_inputs_in_memory_takes_true_false_or_auto(tmp_path: Path) -> None:
    cache = write_cache(tmp_path / "cache.h5")
    with pytest.raises(ValueError, match="block_inputs_in_memory must be true, false or 'auto', got 'yes'"):
        data_module(cache, "yes")
