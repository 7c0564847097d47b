"""Extraction: annotations -> decode workers -> batched frozen encoders -> a resumable cache.

One run, top to bottom:

1. The adapter reads and validates the annotations; videos are the distinct ``vid`` s, sorted. ``limit``
   keeps the first N; under ``torchrun`` rank ``r`` of ``N`` takes the videos at positions
   ``i % N == r`` and writes its own shard store ``<output>.rank<r>-of-<N>.<suffix>``.
2. Videos already committed in the store (or, for a shard, in the final store) are skipped; a
   video whose queries were not all written gets the missing ones. The cache's commit protocol
   drops the uncommitted tail of a killed run, so a partial video is simply redone.
3. Decode worker processes (:class:`extract.workers.SupervisedMap`) sample each video at ``fps``
   and prefetch ahead, so the encoders run while the next videos decode; a worker killed by its
   decoder fails only the video it held. Frames of consecutive videos are packed into
   forward passes of exactly ``batch_size`` frames (the last one padded; see
   :func:`extract.api.encode_frames`), so a frame's feature never depends on its batch mates and a
   resumed run stores the same bits as an uninterrupted one.
4. Each finished video is written through ``CacheWriter.add_video`` (atomic), then its queries.
   Every unique query text is encoded once, in full batches just ahead of the videos that need
   it, and freed after its last use.
5. A video that cannot be decoded, whose decoded duration disagrees with its annotation, whose
   windows the policy rejects against the decoded duration, or that the cache refuses, becomes
   one line of ``<output stem>.failures.jsonl`` (vid, path, stage, reason); the others go on and
   the run exits non-zero. Every annotation problem found (at load and against the decoded
   durations) with the action taken is in ``<output stem>.problems.jsonl``.
6. Under ``torchrun`` (a process group: gloo on CPU, nccl on GPU), rank 0 merges the shards into
   the final store after all ranks finish, validates it and removes the shards. Ranks started
   without a process group (``RANK``/``WORLD_SIZE`` only) leave their shards for
   ``python -m extract merge OUTPUT``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shutil
import time
from collections import Counter, deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
import torch.distributed as torch_dist
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cache_schema.backends import remove_store
from cache_schema.edit import merge_caches
from cache_schema.errors import GroundcacheError
from cache_schema.spec import (
    BlockInputsSpec,
    EncoderSpec,
    Orientation,
    QueryItem,
    SchemaError,
    VideoItem,
    check_windows,
)
from cache_schema.store import CacheReader, CacheWriter
from cache_schema.validate import validate
from extract.api import (
    encode_frames,
    encode_frames_with_block_inputs,
    encode_texts,
    frames_for_encoder,
    max_frames_per_feature,
    resolve_frame_size,
    sample_for_encoders,
)
from extract.config import ConfigError, EncoderChoice, ExtractConfig
from extract.datasets import (
    Annotation,
    AnnotationValidationError,
    Problem,
    RawRecord,
    ValidationPolicy,
    Validator,
    check_duration,
    load_dataset,
)
from extract.encoders import Encoder, build_encoder, encoder_specs
from extract.encoders.blocks import block_inputs_spec
from extract.video import Backend, VideoDecodeError, feature_windows, probe_video
from extract.workers import SupervisedMap

log = logging.getLogger(__name__)

Stage = Literal["decode", "annotation", "write"]
_WINDOW_KINDS = ("start_past_duration", "end_past_duration", "no_windows_left")
"""Problems that only the decoded duration can reveal; the rest were reported at load time."""


# ----------------------------------------------------------------------------------------------
# Files next to the output


def failures_path(output: str | os.PathLike) -> Path:
    """``cache.h5`` -> ``cache.failures.jsonl``: one JSON line per failed video."""
    output = Path(output)
    return output.with_name(output.stem + ".failures.jsonl")


def problems_path(output: str | os.PathLike) -> Path:
    """``cache.h5`` -> ``cache.problems.jsonl``: every annotation problem with its action."""
    output = Path(output)
    return output.with_name(output.stem + ".problems.jsonl")


def shard_path(output: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``cache.h5`` -> ``cache.rank0-of-2.h5``: the store written by one rank."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rank{rank}-of-{world_size}{output.suffix}")


def find_shards(output: str | os.PathLike) -> list[Path]:
    """The complete set of shard stores of ``output`` (one world size, every rank present).

    Raises:
        FileNotFoundError: No shard exists, or some rank's shard is missing.
        FileExistsError: Shards of several world sizes lie next to the output (stale ones to remove).
    """
    output = Path(output)
    pattern = re.compile(rf"{re.escape(output.stem)}\.rank(\d+)-of-(\d+){re.escape(output.suffix)}")
    found: dict[int, set[int]] = {}
    for path in output.parent.glob(f"{output.stem}.rank*-of-*{output.suffix}"):
        match = pattern.fullmatch(path.name)
        if match:
            found.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if not found:
        raise FileNotFoundError(
            f"{output}: no shard stores {output.stem}.rank<r>-of-<N>{output.suffix} beside it"
        )
    if len(found) > 1:
        raise FileExistsError(
            f"{output}: shards of several world sizes {sorted(found)} lie beside it; remove the stale ones"
        )
    ((world_size, ranks),) = found.items()
    missing = sorted(set(range(world_size)) - ranks)
    if missing:
        raise FileNotFoundError(f"{output}: shards of ranks {missing} (of {world_size}) are missing")
    return [shard_path(output, r, world_size) for r in range(world_size)]


# ----------------------------------------------------------------------------------------------
# Records of a run


@dataclass(frozen=True)
class Failure:
    """One video that could not be extracted."""

    vid: str
    path: str
    stage: Stage
    reason: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class RunSummary:
    """What one run (or one rank of a sharded run) did."""

    output: Path
    """The store this process wrote (a shard under torchrun)."""
    total: int
    """Videos assigned to this process (after ``limit`` and sharding)."""
    done: int = 0
    """Videos written by this run."""
    skipped: int = 0
    """Videos already complete in the store."""
    failures: list[Failure] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    queries_written: int = 0
    texts_encoded: int = 0
    frames: int = 0
    """Features computed (frames or clips, per video encoder pass over a video counted once)."""
    seconds: float = 0.0
    """Wall time of the whole call, model loading included."""
    loop_seconds: float = 0.0
    """Wall time from the first decoded video to the last write (decode, encode and write)."""
    merged_into: Path | None = None
    """The final store, when this process merged the shards."""
    failed_elsewhere: int = 0
    """Failures of other ranks (known to rank 0 after a sharded run)."""

    @property
    def frames_per_sec(self) -> float:
        """Frames encoded per second of the decode-encode-write loop (model loading excluded)."""
        return self.frames / self.loop_seconds if self.loop_seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every video was extracted, 1 when any failed (here or, for rank 0, anywhere)."""
        return 1 if self.failures or self.failed_elsewhere else 0


class VideoFailure(Exception):
    """A video cannot go into the cache; ``stage`` and the message say why."""

    def __init__(self, stage: Stage, reason: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(reason)
        self.stage: Stage = stage
        self.reason = reason
        self.problems = list(problems)
        """The annotation problems behind the failure (also listed in the problems file)."""


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# Annotations -> the videos to extract


@dataclass(frozen=True)
class VideoTask:
    """One video to decode: its id and file (None when no file was found for it)."""

    vid: str
    path: str | None
    missing_reason: str = ""


@dataclass(frozen=True)
class AnnotationPlan:
    """The videos of a dataset, sorted by id, with their validated query rows."""

    tasks: tuple[VideoTask, ...]
    rows: dict[str, list[Annotation]]
    problems: tuple[Problem, ...]
    summary: str


def plan_videos(config: ExtractConfig) -> AnnotationPlan:
    """Load and validate the annotations and resolve each video's file.

    Raises:
        AnnotationError: The annotation files cannot be parsed (or a policy ``error`` fired).
        FileNotFoundError: The annotations or the video root do not exist.
    """
    # Windows stay as annotated here: reconcile_queries checks them against the decoded duration,
    # the one the cache stores, so none is clipped to an annotated duration that was wrong.
    result = load_dataset(
        config.adapter,
        config.annotations,
        split=config.splits,
        policy=config.policy,
        video_root=config.video_root,
        variant=config.variant,
        window_duration_checks=False,
    )
    rows: dict[str, list[Annotation]] = {}
    for row in result.rows:
        rows.setdefault(row.vid, []).append(row)
    tasks = []
    for vid in sorted(rows):
        video = rows[vid][0].video
        if video is None:
            root = config.video_root or "."
            tasks.append(VideoTask(vid, None, f"no video file for video {vid} under {root}"))
        else:
            path = Path(config.video_root) / video if config.video_root else Path(video)
            tasks.append(VideoTask(vid, str(path)))
    return AnnotationPlan(tuple(tasks), rows, tuple(result.report.problems), result.report.summary())


def select_videos(
    tasks: Sequence[VideoTask], *, limit: int | None, rank: int, world_size: int
) -> list[VideoTask]:
    """The first ``limit`` videos (in vid order), then every ``world_size``-th from position ``rank``."""
    chosen = list(tasks[:limit] if limit is not None else tasks)
    return chosen[rank::world_size]


def reconcile_queries(
    rows: Sequence[Annotation],
    decoded_duration_sec: float,
    policy: ValidationPolicy,
    tolerance_sec: float,
    dataset: str,
) -> tuple[list[Annotation], list[Problem]]:
    """Re-check a video's query rows against its decoded duration, with the adapters' policy.

    The annotated duration is compared with the decoded one (``duration_mismatch``), then every
    window is checked against the decoded duration by the same validator the adapters use
    (``start_past_duration`` / ``end_past_duration`` / ``no_windows_left``). :func:`plan_videos`
    loads the windows unchecked against the annotated duration, so this is the only place they are
    clipped or dropped for the video's length, and always against the length the cache stores
    (also under ``duration_mismatch=keep``, where the annotated one is known to be wrong).

    Returns:
        The rows that go into the cache (their ``duration_sec`` is the decoded one) and the problems.

    Raises:
        VideoFailure: A problem whose action is ``error``, or a window the cache cannot hold.
    """
    problems: list[Problem] = []
    vid = rows[0].vid
    mismatch = check_duration(
        vid, decoded_duration_sec, tolerance_sec, annotation_duration_sec=rows[0].duration_sec, policy=policy
    )
    if mismatch is not None:
        mismatch = dataclasses.replace(mismatch, source=rows[0].source, split=rows[0].split)
        problems.append(mismatch)
        if mismatch.action == "error":
            raise VideoFailure("annotation", f"duration_mismatch: {mismatch.detail}", problems)
        if mismatch.action == "drop":
            return [], problems
    # Duplicates were settled at load time; only the window kinds are reported from here, so this
    # pass must not drop a row for any other reason.
    validator = Validator(dataset, dataclasses.replace(policy, duplicate="keep"))
    for row in rows:
        validator.add(
            RawRecord(
                qid=row.qid,
                vid=row.vid,
                query=row.query,
                split=row.split,
                duration_sec=decoded_duration_sec,
                windows=list(row.windows),
                source=row.source,
                labelled=row.labelled,
                video=row.video,
                saliency=row.saliency,
                saliency_clip_sec=row.saliency_clip_sec,
            )
        )
    found = [p for p in validator.report.problems if p.kind in _WINDOW_KINDS]
    problems += found
    errors = [p for p in found if p.action == "error"]
    if errors:
        raise VideoFailure(
            "annotation", "; ".join(f"{p.kind}: qid {p.qid} {p.detail}" for p in errors), problems
        )
    try:
        kept = list(validator.finish().rows)
    except AnnotationValidationError as err:
        raise VideoFailure("annotation", str(err), problems) from err
    outside = [p for row in kept for p in check_windows(row.qid, row.windows, decoded_duration_sec)]
    if outside:
        reason = "; ".join(outside) + " (policy 'keep' cannot store a window past the decoded duration)"
        raise VideoFailure("annotation", reason, problems)
    return kept, problems


# ----------------------------------------------------------------------------------------------
# Decode workers


@dataclass
class DecodedVideo:
    """What a decode worker hands to the encoders: sampled frames and the decoder's facts, or an error."""

    vid: str
    path: str
    frames: np.ndarray | None = None
    """(T, H, W, 3) or (T, Fmax, H, W, 3) uint8, pickled through the worker's pipe."""
    timestamps_sec: np.ndarray | None = None
    """(T, 2) float64 [start, end) of each feature."""
    duration_sec: float = float("nan")
    native_fps: float = float("nan")
    n_frames: int = -1
    orientation: Orientation | None = None
    """How the decoder turned the pictures to show them (the display matrix); None on error."""
    backend: str = ""
    error: str | None = None


class DecodeDataset:
    """Videos as a map-style dataset: item ``i`` is task ``i`` decoded and sampled, or its error.

    Args:
        tasks: Videos to decode.
        specs: Video encoder specs (the longest clip among them is sampled).
        fps: Features per second.
        frame_size: Shorter side of the decoded frames, None for native.
        backend: Decoder backend.
        threads: Decoder threads per video (0: FFmpeg's choice).
    """

    def __init__(
        self,
        tasks: Sequence[VideoTask],
        specs: Sequence[EncoderSpec],
        *,
        fps: float,
        frame_size: int | None,
        backend: Backend,
        threads: int = 0,
    ) -> None:
        self.tasks = list(tasks)
        self.specs = list(specs)
        self.fps = fps
        self.frame_size = frame_size
        self.backend: Backend = backend
        self.threads = threads

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> DecodedVideo:
        task = self.tasks[index]
        if task.path is None:
            return DecodedVideo(task.vid, "", error=task.missing_reason)
        try:
            sampled = sample_for_encoders(
                task.path,
                self.specs,
                fps=self.fps,
                frame_size=self.frame_size,
                backend=self.backend,
                threads=self.threads,
            )
        except VideoDecodeError as err:
            return DecodedVideo(task.vid, task.path, error=str(err))
        except (av.FFmpegError, OSError, ValueError) as err:
            # Not anticipated by the decoder module; still one video's failure, not the run's.
            return DecodedVideo(task.vid, task.path, error=f"{task.path}: {type(err).__name__}: {err}")
        return DecodedVideo(
            vid=task.vid,
            path=task.path,
            frames=np.ascontiguousarray(sampled.frames),
            timestamps_sec=sampled.timestamps_sec,
            duration_sec=sampled.info.duration_sec,
            native_fps=sampled.info.fps,
            n_frames=sampled.info.n_frames,
            orientation=sampled.info.orientation,
            backend=sampled.backend,
        )


def decoded_videos(
    dataset: DecodeDataset, *, num_workers: int, prefetch_videos: int
) -> SupervisedMap[DecodedVideo] | Generator[DecodedVideo, None, None]:
    """Decode the dataset's videos in order, ``num_workers`` processes each ``prefetch_videos`` ahead.

    The workers start here, so create this before opening the cache. A worker killed by its
    decoder (a segfault on a malformed file) fails only the video it was decoding;
    ``num_workers=0`` decodes in this process, where such a crash ends the run. Call ``close()``
    when done.
    """
    if num_workers == 0:
        return (dataset[i] for i in range(len(dataset)))

    def crashed(index: int, reason: str) -> DecodedVideo:
        task = dataset.tasks[index]
        return DecodedVideo(task.vid, task.path or "", error=f"{task.path}: {reason} while decoding it")

    return SupervisedMap(dataset, num_workers=num_workers, prefetch=prefetch_videos, crashed=crashed)


# ----------------------------------------------------------------------------------------------
# Encoders


@dataclass(frozen=True)
class Encoders:
    """The run's encoders, built once per (name, weights) even when one model serves both modalities."""

    video: dict[str, Encoder]
    text: dict[str, Encoder]


def encoder_table(config: ExtractConfig) -> list[EncoderSpec]:
    """The specs the run writes, computed without building any model."""
    specs = []
    for choice in config.video_encoders:
        video, _ = encoder_specs(choice.name, weights=choice.weights, fps=config.fps)
        if video is None:
            raise ConfigError(f"video_encoders: {choice.name!r} has no video tower")
        specs.append(video)
    for choice in config.text_encoders:
        _, text = encoder_specs(choice.name, weights=choice.weights, fps=config.fps)
        if text is None:
            raise ConfigError(f"text_encoders: {choice.name!r} has no text tower")
        specs.append(text)
    return specs


class DiskSpaceError(GroundcacheError, OSError):
    """A run's projected block inputs do not fit the free disk; the message gives both sizes."""


def block_inputs_of(config: ExtractConfig, encoders: Encoders) -> dict[str, BlockInputsSpec]:
    """Spec name -> `BlockInputsSpec` of every video encoder whose config asks for block inputs.

    Raises:
        EncoderError: K exceeds an encoder's depth (naming both), or its tower cannot be cut.
    """
    specs = {}
    # `build_encoders` fills `encoders.video` in the order of `config.video_encoders`.
    for choice, encoder in zip(config.video_encoders, encoders.video.values(), strict=True):
        if choice.block_inputs:
            spec = block_inputs_spec(encoder, choice.block_inputs, choice.block_pool)
            specs[encoder.video_spec.name] = spec
    return specs


def projected_features(plan: AnnotationPlan, tasks: Sequence[VideoTask], fps: float) -> int:
    """Features the videos of ``tasks`` will have: from the annotation's duration, else the file's."""
    total = 0
    for task in tasks:
        durations = [r.duration_sec for r in plan.rows.get(task.vid, []) if r.duration_sec]
        if durations:
            duration_sec = max(durations)
        elif task.path is not None:
            try:
                duration_sec = probe_video(task.path).duration_sec
            except VideoDecodeError:
                continue  # it will fail at decode, with its reason; it writes nothing
        else:
            continue
        total += len(feature_windows(duration_sec, fps))
    return total


def format_bytes(n: float) -> str:
    """``n`` bytes with three significant digits in B, kB, MB, GB or TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def check_block_inputs_disk(
    blocks: dict[str, BlockInputsSpec],
    plan: AnnotationPlan,
    tasks: Sequence[VideoTask],
    fps: float,
    store: Path,
) -> None:
    """Refuse a run whose block inputs would not fit the free disk beside ``store``.

    Raises:
        DiskSpaceError: naming the projected size and the free space, both in GB.
    """
    if not blocks:
        return
    frames = projected_features(plan, tasks, fps)
    need = frames * sum(spec.bytes_per_frame for spec in blocks.values())
    free = shutil.disk_usage(store.parent if store.parent.exists() else Path.cwd()).free
    if need > free:
        raise DiskSpaceError(
            f"{store}: the block inputs of {sorted(blocks)} for {frames} frames need {format_bytes(need)}, "
            f"the disk has {format_bytes(free)} free (lower block_inputs K or raise block_pool P)"
        )


def build_encoders(config: ExtractConfig, device: str) -> Encoders:
    built: dict[tuple[str, str | None, int], Encoder] = {}

    def build(choice: EncoderChoice) -> Encoder:
        batch_size = choice.batch_size or config.batch_size
        key = (choice.name, choice.weights, batch_size)
        if key not in built:
            built[key] = build_encoder(
                choice.name,
                weights=choice.weights,
                device=device,
                precision=config.precision,
                compile=config.compile,
                batch_size=batch_size,
                fps=config.fps,
            )
        return built[key]

    video = {}
    for choice in config.video_encoders:
        encoder = build(choice)
        video[encoder.video_spec.name] = encoder
    text = {}
    for choice in config.text_encoders:
        encoder = build(choice)
        text[encoder.text_spec.name] = encoder
    return Encoders(video, text)


class TextBank:
    """Text features of a run's queries: every unique text encoded once, in full batches.

    Texts are encoded just ahead of the first video that needs them, together with the next
    videos' new texts up to a full batch, and dropped after the last video that uses them is
    written or has failed, so memory stays bounded on datasets with many queries.

    Args:
        encoders: Text encoders by spec name.
        order: ``(vid, texts of its queries still to write)`` in the order videos will be written.
    """

    def __init__(self, encoders: dict[str, Encoder], order: Sequence[tuple[str, list[str]]]) -> None:
        self.encoders = encoders
        self.batch_size = max(enc.batch_size for enc in encoders.values())
        self._order = [vid for vid, _ in order]
        self._texts = dict(order)
        self._position = {vid: i for i, vid in enumerate(self._order)}
        self._uses = Counter(text for _, texts in order for text in texts)
        self._features: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self.n_encoded = 0
        """Texts encoded so far (each unique text once)."""

    def features(self, vid: str) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Text -> encoder name -> (tokens (L, D), pooled (D,)) for every query text of ``vid``."""
        texts = self._texts[vid]
        missing = [t for t in dict.fromkeys(texts) if t not in self._features]
        if missing:
            self._encode(missing, self._position[vid] + 1)
        return {t: self._features[t] for t in texts}

    def release(self, vid: str) -> None:
        """``vid`` is written (or failed): forget texts no later video needs."""
        for text in self._texts[vid]:
            self._uses[text] -= 1
            if self._uses[text] == 0:
                self._features.pop(text, None)

    def _encode(self, needed: list[str], next_position: int) -> None:
        chunk = dict.fromkeys(needed)
        for vid in self._order[next_position:]:
            if len(chunk) >= self.batch_size:
                break
            for text in self._texts[vid]:
                if text not in self._features and len(chunk) < self.batch_size:
                    chunk[text] = None
        texts = list(chunk)
        per_encoder = {name: encode_texts(enc, texts) for name, enc in self.encoders.items()}
        for i, text in enumerate(texts):
            self._features[text] = {name: out[i] for name, out in per_encoder.items()}
        self.n_encoded += len(texts)


@dataclass(eq=False)
class _Pending:
    """A decoded video whose frames are being encoded."""

    decoded: DecodedVideo
    queries: list[Annotation]
    frames: np.ndarray
    features: dict[str, np.ndarray]
    """Encoder name -> (T, D) float32, filled batch by batch."""
    remaining: dict[str, int]
    block_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    """Encoder name -> (T, L, W) hidden states entering its last K blocks, for the encoders whose
    block inputs the run stores; filled with the features (empty when growing a cache)."""

    @property
    def n_features(self) -> int:
        return self.frames.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sampled frame (or clip): frames of different shapes cannot share a batch."""
        return tuple(self.frames.shape[1:])

    @property
    def finished(self) -> bool:
        return not any(self.remaining.values())


class _FrameQueue:
    """Frames (or clips) waiting for one video encoder, packed across videos into full batches.

    Only frames of one size can share a forward pass, so frames wait in one line per frame shape
    (videos of one aspect ratio decode to one shape, so a dataset usually has one or a few lines).
    """

    def __init__(
        self, name: str, encoder: Encoder, sampled_per_feature: int, blocks: BlockInputsSpec | None = None
    ) -> None:
        self.name = name
        self.encoder = encoder
        self.sampled_per_feature = sampled_per_feature
        self.blocks = blocks
        """The block inputs this encoder also stores, or None."""
        self._lines: dict[tuple[int, ...], deque[list]] = {}  # shape -> [[pending video, next row], ...]
        self._waiting: Counter[tuple[int, ...]] = Counter()
        self.encoded = 0
        """Frames encoded so far (padding excluded)."""

    def push(self, video: _Pending) -> None:
        self._lines.setdefault(video.shape, deque()).append([video, 0])
        self._waiting[video.shape] += video.n_features

    def run_full_batches(self) -> None:
        """Encode every full batch waiting."""
        for shape in list(self._lines):
            while self._waiting[shape] >= self.encoder.batch_size:
                self._run_batch(shape)

    def finish(self, video: _Pending) -> None:
        """Encode ``video``'s remaining frames now, in a padded batch if need be."""
        while video.remaining.get(self.name):  # 0, or not pushed here (an encoder it already has)
            self._run_batch(video.shape)

    def _run_batch(self, shape: tuple[int, ...]) -> None:
        """Encode up to one batch of the frames waiting in one line (padded when fewer)."""
        line = self._lines[shape]
        pieces = []
        taken = 0
        while line and taken < self.encoder.batch_size:
            segment = line[0]
            video, start = segment
            n = min(video.n_features - start, self.encoder.batch_size - taken)
            pieces.append((video, start, n))
            taken += n
            if start + n == video.n_features:
                line.popleft()
            else:
                segment[1] = start + n
        spec = self.encoder.video_spec
        frames = np.concatenate(
            [
                frames_for_encoder(spec, video.frames[start : start + n], self.sampled_per_feature)
                for video, start, n in pieces
            ]
        )  # (B, H, W, 3) or (B, F, H, W, 3)
        if self.blocks is None:
            out = encode_frames(self.encoder, frames)  # (B, D)
        else:
            out, hidden = encode_frames_with_block_inputs(
                self.encoder, frames, self.blocks.blocks, self.blocks.pool
            )  # (B, D), (B, L, W)
        row = 0
        for video, start, n in pieces:
            video.features[self.name][start : start + n] = out[row : row + n]
            if self.blocks is not None:
                video.block_inputs[self.name][start : start + n] = hidden[row : row + n]
            video.remaining[self.name] -= n
            row += n
        self._waiting[shape] -= taken
        if not line:
            del self._lines[shape], self._waiting[shape]
        self.encoded += taken


# ----------------------------------------------------------------------------------------------
# One process's extraction


@dataclass(frozen=True)
class _Committed:
    """What a store already holds: video durations and query ids."""

    durations: dict[str, float]
    qids: set[str]


def _committed(path: Path) -> _Committed:
    if not path.exists():
        return _Committed({}, set())
    with CacheReader(path) as reader:
        return _Committed(
            {v: reader.video_meta(v).duration_sec for v in reader.video_ids}, set(reader.query_ids)
        )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("videos"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def extract_videos(
    config: ExtractConfig,
    plan: AnnotationPlan,
    tasks: Sequence[VideoTask],
    store: Path,
    *,
    device: str,
    final: Path | None = None,
    console: Console | None = None,
    label: str = "extract",
) -> RunSummary:
    """Extract ``tasks`` into ``store``, resuming it; failures are recorded, never raised.

    Args:
        config: The run's config.
        plan: Annotation rows per video.
        tasks: The videos this process owns, in write order.
        store: The cache (or shard) to write.
        device: Torch device of the encoders.
        final: For a shard, the final store: videos already there are skipped too.
        console: Where progress and messages go (stderr by default).
        label: Progress bar title.
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    specs = encoder_table(config)
    video_specs = [s for s in specs if s.modality == "video"]
    summary = RunSummary(output=store, total=len(tasks))

    if config.overwrite and store.exists():
        remove_store(store)
    done_here = _committed(store)
    done_final = _committed(final) if final is not None else _Committed({}, set())
    durations = {**done_final.durations, **done_here.durations}
    qids = done_here.qids | done_final.qids

    # Videos already in a store: queries left unwritten by a killed run are written without decoding.
    to_decode = [t for t in tasks if t.vid not in durations]
    query_only: list[str] = []
    for task in tasks:
        if task.vid in durations:
            summary.skipped += 1
            unwritten = [r for r in plan.rows[task.vid] if r.qid not in qids]
            if unwritten and task.vid in done_here.durations:
                query_only.append(task.vid)
            elif unwritten:
                console.print(
                    f"[yellow]warning: video {task.vid} is in {final} without queries "
                    f"{[r.qid for r in unwritten]}; run `python -m extract merge` with its shards"
                )

    # Start the decode workers before any model exists: they fork from a process without
    # encoder threads, and decoding overlaps model loading.
    frame_size = resolve_frame_size(config.frame_size, video_specs)
    dataset = DecodeDataset(
        to_decode,
        video_specs,
        fps=config.fps,
        frame_size=frame_size,
        backend=config.decode_backend,
        threads=config.decoder_threads,
    )
    decoded_iter = decoded_videos(
        dataset, num_workers=config.num_workers, prefetch_videos=config.prefetch_videos
    )

    try:
        encoders = build_encoders(config, device)
        order = [(vid, [r.query for r in plan.rows[vid] if r.qid not in qids]) for vid in query_only]
        order += [(t.vid, [r.query for r in plan.rows[t.vid]]) for t in to_decode]
        bank = TextBank(encoders.text, order)
        longest = max_frames_per_feature(video_specs)
        blocks = block_inputs_of(config, encoders)
        check_block_inputs_disk(blocks, plan, to_decode, config.fps, store)
        queues = [_FrameQueue(name, enc, longest, blocks.get(name)) for name, enc in encoders.video.items()]
        max_pending = max(1, config.num_workers) * config.prefetch_videos + 1

        writer = CacheWriter(
            store, dataset=config.dataset, encoders=specs, mode="resume", block_inputs=list(blocks.values())
        )
    except BaseException:
        decoded_iter.close()
        raise
    try:

        def fail(vid: str, path: str, stage: Stage, reason: str) -> None:
            summary.failures.append(Failure(vid, path, stage, reason))
            console.print(f"[red]failed[/red] {escape(vid)}: {escape(reason)}", highlight=False)
            bank.release(vid)

        def write_queries(vid: str, rows: Sequence[Annotation]) -> None:
            features = bank.features(vid)
            items = [
                QueryItem(
                    qid=r.qid,
                    vid=vid,
                    text=r.query,
                    split=r.split,
                    windows=list(r.windows),
                    saliency=r.saliency,
                    saliency_clip_sec=r.saliency_clip_sec,
                    tokens={name: features[r.query][name][0] for name in encoders.text},
                    pooled={name: features[r.query][name][1] for name in encoders.text},
                )
                for r in rows
                if r.qid not in writer.completed_queries
            ]
            if items:
                writer.add_queries(items)
                summary.queries_written += len(items)

        for vid in query_only:
            rows = plan.rows[vid]
            try:
                kept, problems = reconcile_queries(
                    rows,
                    durations[vid],
                    config.policy,
                    config.duration_mismatch_tolerance_sec,
                    config.dataset,
                )
                summary.problems += problems
                write_queries(vid, kept)
            except VideoFailure as err:
                summary.problems += err.problems
                fail(vid, "", err.stage, err.reason)
                continue
            except SchemaError as err:
                fail(vid, "", "write", str(err))
                continue
            bank.release(vid)

        pending: deque[_Pending] = deque()

        def write_finished() -> None:
            while pending and pending[0].finished:
                video = pending.popleft()
                decoded = video.decoded
                item = VideoItem(
                    vid=decoded.vid,
                    duration_sec=decoded.duration_sec,
                    features=video.features,
                    timestamps_sec={name: decoded.timestamps_sec for name in video.features},
                    fps=decoded.native_fps,
                    n_frames=decoded.n_frames,
                    source=decoded.path,
                    orientation=decoded.orientation,
                    block_inputs=video.block_inputs,
                )
                try:
                    writer.add_video(item)
                    write_queries(decoded.vid, video.queries)
                except SchemaError as err:
                    fail(decoded.vid, decoded.path, "write", str(err))
                    continue
                bank.release(decoded.vid)
                summary.done += 1
                progress.advance(bar)

        with _progress(console) as progress:
            bar = progress.add_task(label, total=len(to_decode), rate="")
            loop_start = time.perf_counter()
            for decoded in decoded_iter:
                if decoded.error is not None:
                    fail(decoded.vid, decoded.path, "decode", decoded.error)
                    progress.advance(bar)
                    continue
                try:
                    queries, problems = reconcile_queries(
                        plan.rows[decoded.vid],
                        decoded.duration_sec,
                        config.policy,
                        config.duration_mismatch_tolerance_sec,
                        config.dataset,
                    )
                except VideoFailure as err:
                    summary.problems += err.problems
                    fail(decoded.vid, decoded.path, err.stage, err.reason)
                    progress.advance(bar)
                    continue
                summary.problems += problems
                frames = decoded.frames
                n = frames.shape[0]
                video = _Pending(
                    decoded,
                    queries,
                    frames,
                    features={q.name: np.empty((n, q.encoder.video_spec.dim), np.float32) for q in queues},
                    remaining={q.name: n for q in queues},
                    block_inputs={
                        q.name: np.empty((n, *q.blocks.row_shape), q.blocks.dtype)
                        for q in queues
                        if q.blocks is not None
                    },
                )
                pending.append(video)
                for queue in queues:
                    queue.push(video)
                    queue.run_full_batches()
                write_finished()
                # A video whose frame shape is rare would hold every later video in memory until
                # its line fills: past the decoders' own look-ahead, finish it in a padded batch.
                while len(pending) > max_pending:
                    for queue in queues:
                        queue.finish(pending[0])
                    write_finished()
                summary.frames = queues[0].encoded
                progress.update(
                    bar, rate=f"{summary.frames / (time.perf_counter() - loop_start):.1f} frames/s"
                )
            while pending:  # the last, partial batches
                for queue in queues:
                    queue.finish(pending[0])
                write_finished()
            summary.frames = queues[0].encoded
            summary.loop_seconds = time.perf_counter() - loop_start
            progress.update(bar, rate=f"{summary.frames / summary.loop_seconds:.1f} frames/s")
    finally:
        decoded_iter.close()  # the workers first: a worker restarted mid-run inherited the cache's file
        writer.close()
    summary.texts_encoded = bank.n_encoded
    summary.seconds = time.perf_counter() - started
    return summary


# ----------------------------------------------------------------------------------------------
# Whole runs: one process, or one rank of a torchrun job


@dataclass(frozen=True)
class DistContext:
    """This process's place in a sharded run, read from torchrun's environment variables.

    Attributes:
        rank: Global rank (``RANK``).
        world_size: Number of ranks (``WORLD_SIZE``); 1 when not sharded.
        local_rank: Rank on this node (``LOCAL_RANK``), which picks the GPU.
        has_process_group: torchrun's rendezvous variables are set, so ranks can meet at a
            barrier and rank 0 merges; otherwise the shards wait for ``python -m extract merge``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    has_process_group: bool = False

    @classmethod
    def from_env(cls) -> DistContext:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a rank of a job")
        rendezvous = "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ
        return cls(rank, world_size, local_rank, world_size > 1 and rendezvous and torch_dist.is_available())

    @property
    def sharded(self) -> bool:
        return self.world_size > 1


def device_for(device: str, ctx: DistContext) -> str:
    """``cuda`` means this rank's GPU (``cuda:<LOCAL_RANK>``) in a sharded run."""
    if device == "cuda" and ctx.sharded:
        return f"cuda:{ctx.local_rank}"
    return device


@contextmanager
def process_group(ctx: DistContext, device: str, timeout_min: float) -> Iterator[None]:
    """Join torchrun's process group for the run (gloo on CPU, nccl on GPU); a no-op without one."""
    if not ctx.has_process_group:
        yield
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    torch_dist.init_process_group(backend, timeout=dt.timedelta(minutes=timeout_min))
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def ensure_dataset(config: ExtractConfig, ctx: DistContext) -> None:
    """Generate the synthetic dataset when the config asks for it and its annotations are missing."""
    if config.synthetic is not None and config.annotations and not Path(config.annotations).exists():
        if (
            config.video_root is None
            or Path(config.annotations) != Path(config.video_root) / "annotations.jsonl"
        ):
            raise ConfigError(
                "synthetic: annotations must be <video_root>/annotations.jsonl, got "
                f"annotations={config.annotations!r}, video_root={config.video_root!r}"
            )
        if ctx.sharded and not ctx.has_process_group:
            raise ConfigError(
                f"{config.annotations} is missing; generate it first: "
                f"python -m extract synthetic --out {config.video_root}"
            )
        if ctx.rank == 0:
            from extract.synthetic import generate_synthetic

            generate_synthetic(
                config.video_root,
                n_videos=config.synthetic.n_videos,
                seed=config.synthetic.seed,
                extra_test_videos=config.synthetic.extra_test_videos,
            )
    if ctx.has_process_group:
        torch_dist.barrier()  # every rank, always: the others wait for rank 0's files


def merge_shards(output: str | os.PathLike, world_size: int | None = None, *, remove: bool = True) -> int:
    """Merge shard stores into ``output`` in video-id order, validate it, then remove the shards.

    Resumable: videos and queries already in ``output`` are skipped, and shards are only removed
    once the merged store validates. The shards' failure and problem files are concatenated into
    the output's.

    Args:
        output: Final store path.
        world_size: Number of shards; None finds them next to ``output``.
        remove: Delete the shards (and their side files) after a successful merge.

    Returns:
        The number of videos added to ``output``.

    Raises:
        FileNotFoundError: A shard is missing.
        SchemaError: The shards disagree on dataset or encoders, share a video, or the merged store
            does not validate.
    """
    output = Path(output)
    shards = (
        find_shards(output)
        if world_size is None
        else [shard_path(output, r, world_size) for r in range(world_size)]
    )
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{output}: shard stores {missing} are missing")
    added = merge_caches(output, shards)
    problems = validate(output)
    if problems:
        shown = "\n  ".join(problems[:10])
        raise SchemaError(f"{output}: the merged cache does not validate (shards kept):\n  {shown}")
    for side_file in (failures_path, problems_path):
        records = [
            rec for shard in shards if side_file(shard).exists() for rec in _read_jsonl(side_file(shard))
        ]
        _write_jsonl(side_file(output), records)
    if remove:
        for shard in shards:
            remove_store(shard)
            failures_path(shard).unlink(missing_ok=True)
            problems_path(shard).unlink(missing_ok=True)
    return added


def _warn_stale_shards(output: Path, console: Console) -> None:
    try:
        shards = find_shards(output)
    except FileNotFoundError:
        return
    except FileExistsError as err:
        console.print(f"[yellow]warning: {escape(str(err))}")
        return
    console.print(
        f"[yellow]warning: shards {[str(s) for s in shards]} of an unmerged torchrun run lie beside "
        f"{output}; merge them first (python -m extract merge {output}) or remove them"
    )


def print_summary(summary: RunSummary, console: Console, label: str) -> None:
    """The end-of-run report: counts, throughput, where the failures and problems are."""
    console.print(
        f"[bold]{label}[/bold]: {summary.done} written, {summary.skipped} already complete, "
        f"{len(summary.failures)} failed, of {summary.total} videos; {summary.frames} frames in "
        f"{summary.loop_seconds:.1f} s ({summary.frames_per_sec:.1f} frames/s); "
        f"{summary.queries_written} queries written, {summary.texts_encoded} unique texts encoded"
    )
    counts = Counter((p.kind, p.action) for p in summary.problems)
    if counts:
        shown = ", ".join(f"{kind} -> {action} x{n}" for (kind, action), n in sorted(counts.items()))
        console.print(f"annotation problems against decoded durations: {shown}")
    if summary.failures:
        console.print(
            f"[red]{len(summary.failures)} video(s) failed[/red]; see {failures_path(summary.output)}"
        )


def run(config: ExtractConfig, *, console: Console | None = None) -> RunSummary:
    """Run one extraction (or this rank's part of a torchrun job) and write its report files.

    Returns:
        This process's summary; ``summary.exit_code`` is the process exit code.
    """
    console = console or Console(stderr=True)
    ctx = DistContext.from_env()
    device = device_for(config.device, ctx)
    output = config.output_path
    with process_group(ctx, device, config.dist_timeout_min):
        ensure_dataset(config, ctx)
        plan = plan_videos(config)
        if ctx.rank == 0 and plan.problems:
            console.print(plan.summary, highlight=False)
        tasks = select_videos(plan.tasks, limit=config.limit, rank=ctx.rank, world_size=ctx.world_size)
        store = shard_path(output, ctx.rank, ctx.world_size) if ctx.sharded else output
        label = f"rank {ctx.rank} of {ctx.world_size}" if ctx.sharded else "extract"
        if not ctx.sharded:
            _warn_stale_shards(output, console)
        summary = extract_videos(
            config,
            plan,
            tasks,
            store,
            device=device,
            final=output if ctx.sharded else None,
            console=console,
            label=label,
        )
        # Load-time problems are the same on every rank: only rank 0 lists them.
        problems = (list(plan.problems) if ctx.rank == 0 else []) + summary.problems
        _write_jsonl(failures_path(store), (f.to_dict() for f in summary.failures))
        _write_jsonl(problems_path(store), (p.to_dict() for p in problems))
        print_summary(summary, console, label)
        if ctx.has_process_group:
            counts: list[int | None] = [None] * ctx.world_size
            torch_dist.all_gather_object(counts, len(summary.failures))
            summary.failed_elsewhere = sum(counts) - len(summary.failures)
            if ctx.rank == 0:
                added = merge_shards(output, ctx.world_size)
                summary.merged_into = output
                console.print(
                    f"merged {ctx.world_size} shards into {output} ({added} videos added); it validates"
                )
                if summary.failures or summary.failed_elsewhere:
                    console.print(
                        f"[red]{sum(counts)} video(s) failed over all ranks[/red]; "
                        f"see {failures_path(output)}"
                    )
            # A rank that exits non-zero makes torchrun stop the others: nobody leaves before the merge.
            torch_dist.barrier()
        elif ctx.sharded:
            console.print(
                f"rank {ctx.rank}: wrote {store}; when every rank is done: python -m extract merge {output}"
            )
    return summary
