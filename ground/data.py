"""Training data straight from a cache: whole splits as tensors, batches gathered by index.

A split is loaded once with `CacheReader.load_split` (a few large reads) and kept as padded
tensors (on the GPU when training there). A batch is a vectorized gather of query indices: no
per-sample Python in the hot loop. Long videos are trained on random crops that contain the
target window (`max_train_clips`); evaluation sees whole videos (the module slides a window
over very long ones, see `ground.module`).

Under DDP each process holds every split it uses in full (on its device when `device_resident`)
and iterates over its share of the queries (`_BatchIndices`); docs/scaling.md gives the memory.

Block inputs for a visual adapter (docs/adapter.md) are the exception when they do not fit: a
split's block inputs can be left in the cache and read per batch (`StreamedBlockInputs`), with the
same batch contents bit for bit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import psutil
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cache_schema import CacheReader, EncoderSpec, SplitArrays
from cache_schema.store import BlockInputRows, Uncovered
from ground.errors import UnknownEncoderError

log = logging.getLogger(__name__)

WindowPolicy = Literal["clip", "error"]

BLOCK_INPUTS_MEMORY_FRACTION = 0.5
"""``block_inputs_in_memory: auto`` holds a split's block inputs in memory when their padded
(V, T, L, W) array takes at most this fraction of the memory available as the split is loaded:
host RAM (psutil's ``available``), and also the accelerator's free memory when the split is kept there."""


@dataclass
class StreamedBlockInputs:
    """A split's block inputs left in the cache, read per batch (V videos).

    ``at`` returns what indexing the padded in-memory array would: the rows of the clips asked
    for, zeros past a video's end, in the stored dtype; it reads only those clips' rows.
    """

    rows: BlockInputRows  # the cache's block-input array, opened once per process
    ranges: np.ndarray  # (V, 2) int64 [start, stop) rows of each video in that array

    def at(self, vi: Tensor, pos: Tensor) -> Tensor:
        """(B, C, L, W) block inputs of videos `vi` (B,) at clip positions `pos` (B, C), on the CPU.

        Raises:
            CacheReadError: the cache cannot be read (names the path and the array).
        """
        vi, pos = vi.cpu(), pos.cpu()
        spec = self.rows.spec
        out = torch.zeros((*pos.shape, *spec.row_shape), dtype=getattr(torch, spec.dtype))  # (B, C, L, W)
        done: dict[tuple[int, ...], int] = {}  # (video, *clips) -> the batch row that holds them
        for b, (v, p) in enumerate(zip(vi.tolist(), pos, strict=True)):
            key = (v, *p.tolist())
            if key in done:  # another query of the same video and clips: copy, do not read again
                out[b] = out[done[key]]
                continue
            done[key] = b
            start, stop = (int(x) for x in self.ranges[v])
            real = p < stop - start  # (C,) clips inside the video; padding stays zero
            if not real.any():
                continue
            lo, hi = int(p[real].min()), int(p[real].max()) + 1
            rows = torch.from_numpy(self.rows.read(start + lo, start + hi))  # (hi - lo, L, W)
            out[b, real] = rows[p[real] - lo]
        return out


@dataclass
class SplitTensors:
    """One split as padded tensors (Q queries, V videos, T clips, L tokens, W windows)."""

    video: Tensor  # (V, T, Dv) stored dtype (float16 by default)
    video_lengths: Tensor  # (V,)
    timestamps: Tensor  # (V, T, 2) float32 seconds
    duration: Tensor  # (V,)
    video_index: Tensor  # (Q,)
    tokens: Tensor  # (Q, L, Dt)
    token_lengths: Tensor  # (Q,)
    pooled: Tensor  # (Q, Dt)
    windows: Tensor  # (Q, W, 2) float32 seconds, clipped to the features' end (training targets)
    gt_windows: Tensor  # (Q, W, 2) float64 seconds exactly as the cache holds them (metrics)
    window_counts: Tensor  # (Q,)
    saliency: Tensor  # (Q, T) mean annotator score of the clip under each feature, 0 where unknown
    saliency_mask: Tensor  # (Q, T) bool
    qids: list[str]
    vids: list[str]  # per query
    texts: list[str]
    # (V, T, L, W) one encoder's block inputs, when the adapter needs them; left in the cache when too large
    block_inputs: Tensor | StreamedBlockInputs | None = None

    def __len__(self) -> int:
        return len(self.qids)

    def to(self, device: torch.device | str) -> SplitTensors:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device)
        return SplitTensors(**moved)

    @classmethod
    def from_arrays(
        cls,
        arrays: SplitArrays,
        *,
        split: str,
        policy: WindowPolicy = "clip",
        block_rows: BlockInputRows | None = None,
    ) -> SplitTensors:
        """Convert `load_split` output, checking windows against the features' time span.

        `block_rows` reads the block inputs that `load_split` left in the cache
        (``arrays.block_inputs`` None, ``arrays.block_input_ranges`` set); batches then read them.
        """
        video_index = torch.from_numpy(arrays.video_index)
        lengths = arrays.video_lengths
        # The features' last window end: ground truth past it cannot be predicted.
        feature_end = arrays.timestamps_sec[np.arange(len(lengths)), lengths - 1, 1][
            arrays.video_index
        ]  # (Q,)
        windows = arrays.windows.copy()
        real = np.arange(windows.shape[1])[None, :] < arrays.window_counts[:, None]
        past = real & (windows[:, :, 1] > feature_end[:, None] + 1e-3)
        if past.any():
            bad = [arrays.qids[i] for i in np.flatnonzero(past.any(axis=1))]
            message = (
                f"split {split!r}: {len(bad)} queries have windows past the end of their video's "
                f"features (e.g. {bad[:5]})"
            )
            if policy == "error":
                raise ValueError(message)
            log.warning("%s; clipped to the features' end", message)
            windows[:, :, 1] = np.where(past, feature_end[:, None], windows[:, :, 1])
        saliency, saliency_mask = _saliency_per_feature(arrays)
        blocks: Tensor | StreamedBlockInputs | None = None
        if arrays.block_inputs is not None:
            blocks = torch.from_numpy(arrays.block_inputs)
        elif arrays.block_input_ranges is not None:
            if block_rows is None:
                raise ValueError(f"split {split!r}: block inputs were left in the cache; pass block_rows")
            blocks = StreamedBlockInputs(block_rows, arrays.block_input_ranges)
        return cls(
            video=torch.from_numpy(arrays.video),
            video_lengths=torch.from_numpy(lengths),
            timestamps=torch.from_numpy(arrays.timestamps_sec).float(),
            duration=torch.from_numpy(arrays.duration_sec).float(),
            video_index=video_index,
            tokens=torch.from_numpy(arrays.tokens),
            token_lengths=torch.from_numpy(arrays.token_lengths),
            pooled=torch.from_numpy(arrays.pooled),
            windows=torch.from_numpy(windows).float(),
            # Metrics score the windows as stored, in float64 like the official evaluator reading
            # the annotation file: float32 moves an edge such as 3.3 s, and an IoU sitting on a
            # threshold then crosses it, so `ground test` and `ground eval` would disagree.
            gt_windows=torch.from_numpy(np.asarray(arrays.windows, dtype=np.float64)),
            window_counts=torch.from_numpy(arrays.window_counts),
            saliency=torch.from_numpy(saliency),
            saliency_mask=torch.from_numpy(saliency_mask),
            qids=arrays.qids,
            vids=[arrays.vids[i] for i in arrays.video_index],
            texts=arrays.texts,
            block_inputs=blocks,
        )

    def gather(
        self, idx: Tensor, *, max_clips: int | None = None, generator: torch.Generator | None = None
    ) -> dict:
        """The batch dict (docs/architecture.md) of queries `idx`, trimmed to the longest member.

        With `max_clips`, videos longer than that are cropped to `max_clips` consecutive clips
        chosen at random among the crops that contain the first ground-truth window (or as
        much of it as fits); windows are clipped to the crop, and such a training batch carries
        no `gt_windows` (metrics score whole videos).
        """
        idx = idx.to(self.video_index.device)
        vi = self.video_index[idx]  # (B,)
        lengths = self.video_lengths[vi]  # (B,)
        t = int(lengths.max())
        if max_clips is not None and t > max_clips:
            return self._gather_cropped(idx, vi, lengths, max_clips, generator)
        arange_t = torch.arange(t, device=idx.device)
        token_lengths = self.token_lengths[idx]
        n_tok = int(token_lengths.max())
        counts = self.window_counts[idx]
        return {
            **self._block_inputs(vi, arange_t[None, :].expand(len(vi), t)),
            # index_select on the view, then one conversion: on CPU a third of the time of
            # advanced indexing (`video[vi, :t]`), which the training step waits for.
            "video": self.video[:, :t].index_select(0, vi).float(),  # (B, T, Dv)
            "video_mask": arange_t[None, :] < lengths[:, None],  # (B, T)
            "timestamps": self.timestamps[vi, :t],  # (B, T, 2)
            "duration": self.duration[vi],  # (B,)
            "text": self.tokens[idx, :n_tok].float(),  # (B, L, Dt)
            "text_mask": torch.arange(n_tok, device=idx.device)[None, :] < token_lengths[:, None],
            "text_pooled": self.pooled[idx].float(),  # (B, Dt)
            "windows": self.windows[idx],  # (B, W, 2)
            "gt_windows": self.gt_windows[idx],  # (B, W, 2) float64
            "window_mask": torch.arange(self.windows.shape[1], device=idx.device)[None, :] < counts[:, None],
            "saliency": self.saliency[idx, :t],  # (B, T)
            "saliency_mask": self.saliency_mask[idx, :t],
            "query_index": idx,  # (B,) position of each query in the split
            "qid": [self.qids[i] for i in idx.tolist()],
            "vid": [self.vids[i] for i in idx.tolist()],
        }

    def _gather_cropped(
        self, idx: Tensor, vi: Tensor, lengths: Tensor, crop: int, generator: torch.Generator | None
    ) -> dict:
        device = idx.device
        ts = self.timestamps[vi]  # (B, Tmax, 2)
        arange_all = torch.arange(ts.shape[1], device=device)
        real = arange_all[None, :] < lengths[:, None]
        first = self.windows[idx, 0]  # (B, 2)
        # Clip range [s, e] covered by the first window.
        s = ((ts[:, :, 1] > first[:, :1]) & real).float().argmax(dim=1)
        e = torch.where(real & (ts[:, :, 0] < first[:, 1:]), arange_all[None, :], -1).amax(dim=1).clamp(min=s)
        lo = (e - crop + 1).clamp(min=0)
        hi = torch.minimum(s, (lengths - crop).clamp(min=0))
        lo = torch.minimum(lo, hi)  # window longer than the crop: start inside it
        u = torch.rand(len(idx), generator=generator, device="cpu").to(device)
        start = lo + torch.floor(u * (hi - lo + 1).float()).long().clamp(max=(hi - lo))
        start = torch.where(lengths > crop, start, torch.zeros_like(start))
        pos = start[:, None] + torch.arange(crop, device=device)[None, :]  # (B, C)
        video_mask = pos < lengths[:, None]
        pos = pos.clamp(max=ts.shape[1] - 1)
        rows = vi[:, None].expand_as(pos)
        timestamps = self.timestamps[rows, pos]  # (B, C, 2)
        crop_lo = timestamps[:, 0, 0]
        crop_hi = torch.where(video_mask, timestamps[:, :, 1], crop_lo[:, None]).amax(dim=1)
        windows = self.windows[idx].clone()
        windows[..., 0] = torch.maximum(windows[..., 0], crop_lo[:, None])
        windows[..., 1] = torch.minimum(windows[..., 1], crop_hi[:, None])
        counts = self.window_counts[idx]
        window_mask = (torch.arange(windows.shape[1], device=device)[None, :] < counts[:, None]) & (
            windows[..., 1] > windows[..., 0]
        )
        token_lengths = self.token_lengths[idx]
        n_tok = int(token_lengths.max())
        qrows = idx[:, None].expand_as(pos)
        return {
            **self._block_inputs(vi, pos),
            "video": self.video[rows, pos].float(),
            "video_mask": video_mask,
            "timestamps": timestamps,
            "duration": self.duration[vi],
            "text": self.tokens[idx, :n_tok].float(),
            "text_mask": torch.arange(n_tok, device=device)[None, :] < token_lengths[:, None],
            "text_pooled": self.pooled[idx].float(),
            "windows": windows,
            "window_mask": window_mask,
            "saliency": self.saliency[qrows, pos] * video_mask,
            "saliency_mask": self.saliency_mask[qrows, pos] & video_mask,
            "query_index": idx,  # (B,) position of each query in the split
            "qid": [self.qids[i] for i in idx.tolist()],
            "vid": [self.vids[i] for i in idx.tolist()],
        }

    def _block_inputs(self, vi: Tensor, pos: Tensor) -> dict:
        """``{"block_inputs": (B, C, L, W)}`` of videos `vi` (B,) at clips `pos` (B, C) for a visual
        adapter (ground.adapter), from memory or read from the cache; {} without block inputs."""
        if self.block_inputs is None:
            return {}
        if isinstance(self.block_inputs, StreamedBlockInputs):
            return {"block_inputs": self.block_inputs.at(vi, pos).to(pos.device)}  # read on the CPU
        return {"block_inputs": self.block_inputs[vi[:, None], pos]}


PER_CLIP_KEYS = ("video", "video_mask", "timestamps", "saliency", "saliency_mask")
"""Batch keys with a clip axis (dim 1), padded by `pad_clips`."""


def pad_clips(batch: dict, multiple: int) -> dict:
    """The batch with T padded up to a multiple of `multiple`, so a compiled network sees few shapes.

    Padding clips are what the collate already puts past a short video: zero features, zero
    timestamps, zero saliency, False in both masks. Every network masks them out, so outputs on
    real clips do not change (tests/ground/test_bench_train.py checks `span`'s loss).

    Args:
        batch: the batch dict of `SplitTensors.gather` (docs/architecture.md), T clips.
        multiple: clip bucket, >= 1.

    Returns:
        A new dict; the per-clip tensors (`PER_CLIP_KEYS`) have ``ceil(T / multiple) * multiple`` clips.
    """
    if multiple < 1:
        raise ValueError(f"pad_clips: multiple must be >= 1, got {multiple}")
    t = batch["video"].shape[1]
    extra = -t % multiple
    if not extra:
        return batch
    padded = dict(batch)
    for key in PER_CLIP_KEYS:
        value = batch[key]
        pad = value.new_zeros((value.shape[0], extra, *value.shape[2:]))  # zeros / False
        padded[key] = torch.cat([value, pad], dim=1)  # (B, T', ...)
    return padded


def _saliency_per_feature(arrays: SplitArrays) -> tuple[np.ndarray, np.ndarray]:
    """Map each query's clip-grid saliency (mean over annotators) onto its video's features."""
    q = len(arrays.qids)
    t = arrays.video.shape[1]
    out = np.zeros((q, t), dtype=np.float32)
    mask = np.zeros((q, t), dtype=bool)
    if arrays.saliency is None:
        return out, mask
    labelled = ~np.isnan(arrays.saliency)  # (Q, C, A)
    counts = labelled.sum(axis=2)
    mean = np.where(
        counts > 0, np.where(labelled, arrays.saliency, 0).sum(axis=2) / np.maximum(counts, 1), np.nan
    )
    for i in range(q):  # once per split, not per batch
        clip_sec = arrays.saliency_clip_sec[i]
        if not np.isfinite(clip_sec):
            continue
        v = arrays.video_index[i]
        n = arrays.video_lengths[v]
        centres = arrays.timestamps_sec[v, :n].mean(axis=1)
        clip = np.floor(centres / clip_sec).astype(np.int64)
        valid = (clip < mean.shape[1]) & ~np.isnan(mean[i, np.minimum(clip, mean.shape[1] - 1)])
        out[i, :n][valid] = mean[i, clip[valid]]
        mask[i, :n] = valid
    return out, mask


class _IndexBatches(Dataset):
    """A dataset whose items are whole batches: `__getitem__(batch_indices)` gathers them at once."""

    def __init__(self, split: SplitTensors, max_clips: int | None, generator: torch.Generator | None) -> None:
        self.split, self.max_clips, self.generator = split, max_clips, generator

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: list[int]) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.split.gather(idx, max_clips=self.max_clips, generator=self.generator)


class _BatchIndices(DistributedSampler):
    """Batches of query indices from this process's share of a split.

    The split's queries (in a new order each epoch when shuffled, seeded by `seed + epoch` so every
    process draws the same one and a resumed run the one it would have drawn) are cut into
    `num_replicas` contiguous shares of `ceil(n / num_replicas)` queries; the last shares are padded
    by repeating the final query, so every process runs the same number of batches (DDP steps in
    lockstep). Metrics (by `query_index`) and predictions (by qid) count a repeated query once.

    It is a `DistributedSampler` only so that Lightning leaves it alone: Lightning wraps any other
    sampler in its `DistributedSamplerWrapper`, which would shard the batches a second time.

    Args:
        n: queries in the split.
        batch_size: queries per batch.
        shuffle: draw a new order each epoch (training) instead of split order.
        seed: base seed of the order.
        num_replicas: processes sharing the split (the world size).
        rank: this process's rank.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.n, self.batch_size = n, batch_size
        self.share = math.ceil(n / num_replicas)  # queries per process, repeats included

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        padded = torch.cat([order, order[-1:].expand(self.share * self.num_replicas - self.n)])
        mine = padded[self.rank * self.share : (self.rank + 1) * self.share]  # (share,)
        for i in range(0, self.share, self.batch_size):
            yield mine[i : i + self.batch_size].tolist()

    def __len__(self) -> int:
        return math.ceil(self.share / self.batch_size)


class GroundingDataModule(L.LightningDataModule):
    """Splits of one cache as batches for any grounding network.

    Args:
        cache: path of the cache (.h5 or .zarr).
        video_encoders: video encoders to concatenate along D (default: every video encoder of the cache).
        text_encoder: text encoder (default: the cache's only one; with several, an error lists them).
        train_split: split trained on.
        val_split: split validated on (checkpoint selection).
        test_split: split tested on.
        predict_split: split `predict` writes predictions for.
        batch_size: queries per batch (per process under DDP).
        eval_batch_size: queries per batch in validation/test/predict (default: batch_size).
        max_train_clips: crop training videos longer than this many clips around the target (None: no crop).
        window_policy: ground truth past the end of the features: "clip" (counted, warned) or "error".
        length_buckets: ground-truth length buckets (seconds) reported beside "full", per dataset, e.g.
            "short=0:10,middle=10:30,long=30:150" (QVHighlights'); passed on to the model's metrics.
        device_resident: keep split tensors on the accelerator and gather batches there.
        seed: seed of shuffling and crops.
        uncovered: queries whose video lacks one of the chosen video encoders, or which lack the
            text encoder (encoders added to a cache may be committed for some items only):
            "error" (default) stops, giving how many; "skip" leaves them out, logs how many and
            keeps the counts in ``skipped[split]``.
        block_inputs: a chosen video encoder whose cached block inputs every batch then carries
            (``batch["block_inputs"]`` (B, T, L, W)), for a model trained with ``adapter: lora``
            (docs/adapter.md).
        block_inputs_in_memory: hold a split's block inputs in memory like its features (true),
            or leave them in the cache and read each batch's rows from it (false; the same batches
            bit for bit); "auto" (default) holds them when their padded (V, T, L, W) array takes at
            most `BLOCK_INPUTS_MEMORY_FRACTION` of the memory available as the split is loaded.

    Raises:
        FileNotFoundError: no cache at `cache`.
        SchemaVersionError: the cache was written with another major schema version (both named).
        CacheReadError: the cache cannot be opened or read (truncated, not HDF5/Zarr); names the path.
        UnknownEncoderError: (a KeyError) a chosen encoder is not in the cache; lists those it has.
        UncoveredItemsError: (when a split is loaded, ``uncovered="error"``) some of its queries
            lack a chosen encoder; the message gives the counts.
        MissingBlockInputsError: `block_inputs` names an encoder the cache has no block inputs of;
            names the cache, the encoder and the extract option that adds them.
    """

    def __init__(
        self,
        cache: str,
        video_encoders: list[str] | None = None,
        text_encoder: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        predict_split: str = "test",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        max_train_clips: int | None = None,
        window_policy: WindowPolicy = "clip",
        length_buckets: str | None = None,
        device_resident: bool = True,
        seed: int = 0,
        uncovered: Uncovered = "error",
        block_inputs: str | None = None,
        block_inputs_in_memory: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not (isinstance(block_inputs_in_memory, bool) or block_inputs_in_memory == "auto"):
            raise ValueError(
                f"block_inputs_in_memory must be true, false or 'auto', got {block_inputs_in_memory!r}"
            )
        self.cache = Path(cache)
        with CacheReader(self.cache) as reader:
            self.video_specs = self._choose_video(reader, video_encoders)
            self.text_spec = self._choose_text(reader, text_encoder)
            self.block_spec = None
            if block_inputs is not None:
                if block_inputs not in [s.name for s in self.video_specs]:
                    raise UnknownEncoderError(
                        f"{reader.path}: block_inputs {block_inputs!r} is not among the chosen video "
                        f"encoders {[s.name for s in self.video_specs]}"
                    )
                self.block_spec = reader.block_inputs_spec(block_inputs)
            self.schema_version = reader.schema_version
            self.dataset_name = reader.dataset
        if uncovered not in ("error", "skip"):
            raise ValueError(f"uncovered must be 'error' or 'skip', got {uncovered!r}")
        self.splits: dict[str, SplitTensors] = {}
        self.skipped: dict[str, tuple[int, int]] = {}
        """Split -> (queries, videos) left out because a chosen encoder is not committed for them."""
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def _choose_video(reader: CacheReader, names: list[str] | None) -> list[EncoderSpec]:
        if not names:
            return list(reader.video_encoders.values())
        missing = [n for n in names if n not in reader.video_encoders]
        if missing:
            raise UnknownEncoderError(
                f"{reader.path}: video encoders {missing} are not in the cache; it has "
                f"{sorted(reader.video_encoders)}"
            )
        return [reader.video_encoders[n] for n in names]

    @staticmethod
    def _choose_text(reader: CacheReader, name: str | None) -> EncoderSpec:
        if name is None:
            if len(reader.text_encoders) != 1:
                raise UnknownEncoderError(
                    f"{reader.path}: choose a text encoder among {sorted(reader.text_encoders)}"
                )
            return next(iter(reader.text_encoders.values()))
        if name not in reader.text_encoders:
            raise UnknownEncoderError(
                f"{reader.path}: text encoder {name!r} is not in the cache; it has "
                f"{sorted(reader.text_encoders)}"
            )
        return reader.text_encoders[name]

    @property
    def video_dim(self) -> int:
        return sum(s.dim for s in self.video_specs)

    @property
    def text_dim(self) -> int:
        return self.text_spec.dim

    @property
    def adapter_source(self) -> dict | None:
        """What a visual adapter needs to know about the cache (linked into the model), or None.

        ``encoder``: the adapted encoder's spec; ``block_inputs``: its block-input spec;
        ``column``: first column of its features in the concatenated video features.
        """
        if self.block_spec is None:
            return None
        names = [s.name for s in self.video_specs]
        position = names.index(self.block_spec.encoder)
        return {
            "encoder": self.video_specs[position].to_dict(),
            "block_inputs": self.block_spec.to_dict(),
            "column": sum(s.dim for s in self.video_specs[:position]),
        }

    def encoder_record(self) -> dict:
        """What a checkpoint stores about the features it was trained on."""
        return {
            "schema_version": self.schema_version,
            "dataset": self.dataset_name,
            "video_encoders": [s.to_dict() for s in self.video_specs],
            "text_encoder": self.text_spec.to_dict(),
        }

    def load(self, split: str) -> SplitTensors:
        if split not in self.splits:
            with CacheReader(self.cache) as reader:
                arrays = reader.load_split(
                    split,
                    [s.name for s in self.video_specs],
                    self.text_spec.name,
                    uncovered=self.hparams.uncovered,
                    block_inputs=self.hparams.block_inputs,
                    block_inputs_max_bytes=self._block_inputs_budget(),
                )
                block_rows = None
                if arrays.block_input_ranges is not None and arrays.block_inputs is None:
                    block_rows = reader.block_input_rows(self.hparams.block_inputs)
            self.skipped[split] = (arrays.skipped_queries, arrays.skipped_videos)
            if arrays.skipped_queries:
                log.warning(
                    "split %r: skipped %d queries of %d videos that lack encoders %s",
                    split,
                    arrays.skipped_queries,
                    arrays.skipped_videos,
                    [s.name for s in self.video_specs] + [self.text_spec.name],
                )
            if arrays.block_input_ranges is not None:
                log.info(
                    "split %r: block inputs of %r take %.2f GB padded: %s",
                    split,
                    self.hparams.block_inputs,
                    arrays.block_inputs_bytes / 1e9,
                    "read per batch from the cache" if block_rows is not None else "held in memory",
                )
            tensors = SplitTensors.from_arrays(
                arrays, split=split, policy=self.hparams.window_policy, block_rows=block_rows
            )
            device = self._device()
            if self.hparams.device_resident and device.type != "cpu":
                tensors = tensors.to(device)
            self.splits[split] = tensors
        return self.splits[split]

    def _block_inputs_budget(self) -> int | None:
        """Bytes a split's block inputs may take in memory (`load_split`'s ``block_inputs_max_bytes``)."""
        mode = self.hparams.block_inputs_in_memory
        if mode is True:
            return None
        if mode is False:
            return 0  # a split has at least one clip, so its block inputs take more
        available = psutil.virtual_memory().available
        device = self._device()
        if self.hparams.device_resident and device.type == "cuda":
            available = min(available, torch.cuda.mem_get_info(device)[0])
        return int(BLOCK_INPUTS_MEMORY_FRACTION * available)

    def teardown(self, stage: str) -> None:
        """Close the cache handles of streamed block inputs (a later batch opens them again)."""
        for tensors in self.splits.values():
            if isinstance(tensors.block_inputs, StreamedBlockInputs):
                tensors.block_inputs.rows.close()

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        tensors = self.load(split)
        batch_size = (
            self.hparams.batch_size if train else (self.hparams.eval_batch_size or self.hparams.batch_size)
        )
        dataset = _IndexBatches(
            tensors, self.hparams.max_train_clips if train else None, self.generator if train else None
        )
        trainer = getattr(self, "trainer", None)
        sampler = _BatchIndices(
            len(tensors),
            batch_size,
            shuffle=train,
            seed=self.hparams.seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        # batch_size=None: each sampler item is already a batch of indices, gathered in one call.
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, train=False)

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
