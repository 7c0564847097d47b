"""Add encoders to an existing cache: ``python -m extract --config C --add-encoder NAME``.

Only the added encoders run. A video encoder decodes the videos already in the cache (from the
``source`` path each video record holds) and commits its features per video; a text encoder
re-encodes the queries already in the cache and decodes no video. Existing arrays are never
written (`cache_schema.CacheWriter.add_encoder`). Every commit is per video (per batch of
queries) and per encoder, so a killed run resumes where it stopped: running the command again
skips what is committed.

The decoded timestamps and duration of each video must be the ones the cache holds (the same
``fps`` as the first extraction); a video whose decode disagrees fails, with its reason, and the
rest carry on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from cache_schema.spec import EncoderSpec, SchemaError
from cache_schema.store import CacheReader, CacheWriter
from extract.api import (
    encode_texts,
    max_frames_per_feature,
    resolve_frame_size,
)
from extract.config import ConfigError, EncoderChoice, ExtractConfig
from extract.encoders import Encoder, build_encoder, encoder_specs
from extract.pipeline import (
    DecodeDataset,
    DecodedVideo,
    DistContext,
    Failure,
    RunSummary,
    VideoTask,
    _FrameQueue,
    _Pending,
    _write_jsonl,
    decoded_videos,
    encoder_table,
)

TEXT_COMMIT_QUERIES = 256
"""Queries per text commit: big enough that the manifest rewrite is rare, small enough that a
killed run loses little."""


@dataclass(frozen=True)
class _Added:
    """One encoder being added: the config entry it comes from and the spec it writes."""

    choice: EncoderChoice
    spec: EncoderSpec


def added_specs(config: ExtractConfig) -> list[_Added]:
    """The towers named by ``config.add_encoder``: a name listed under ``video_encoders`` adds its
    video tower, under ``text_encoders`` its text tower (both, when listed under both)."""
    added = []
    for modality, choices in (("video", config.video_encoders), ("text", config.text_encoders)):
        for choice in choices:
            if choice.name in config.add_encoder:
                video, text = encoder_specs(choice.name, weights=choice.weights, fps=config.fps)
                spec = video if modality == "video" else text
                assert spec is not None  # encoder_table(config) has refused a missing tower
                added.append(_Added(choice, spec))
    return added


def check_tables(config: ExtractConfig, cache: CacheReader, added: Sequence[_Added]) -> None:
    """The cache must hold every encoder of the config except the added ones, with the same specs,
    and no other; so that after the run the config describes the cache.

    Raises:
        ConfigError: naming the encoders that differ.
    """
    wanted = {(s.modality, s.name): s for s in encoder_table(config)}
    new = {(a.spec.modality, a.spec.name) for a in added}
    have = {("video", n): s for n, s in cache.video_encoders.items()}
    have.update({("text", n): s for n, s in cache.text_encoders.items()})
    missing = sorted(f"{m}:{n}" for m, n in set(wanted) - set(have) - new)
    extra = sorted(f"{m}:{n}" for m, n in set(have) - set(wanted))
    differ = sorted(
        f"{m}:{n}"
        for key in set(wanted) & set(have)
        if key not in new
        for m, n in [key]
        if wanted[key] != have[key]
    )
    if missing or extra or differ:
        raise ConfigError(
            f"{cache.path}: the config and the cache disagree beyond the added encoders "
            f"{sorted(config.add_encoder)}: not in the cache {missing}, only in the cache {extra}, "
            f"other spec {differ}; list the cache's encoders (python -m cache_schema inspect) in the config"
        )


def add_encoders(config: ExtractConfig, *, device: str, console: Console | None = None) -> RunSummary:
    """Add ``config.add_encoder`` to the cache at ``config.output``; resumable, failures recorded.

    Returns:
        The run's summary: ``done`` videos given the new video encoders' features, ``skipped``
        ones that had them, ``failures`` (decode errors, timestamps that disagree with the cache),
        ``queries_written`` queries given the new text encoders' features.

    Raises:
        FileNotFoundError: No cache at ``config.output``.
        ConfigError: The config and the cache disagree (`check_tables`).
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    output = config.output_path
    if not output.exists():
        raise FileNotFoundError(
            f"{output}: no cache to add encoders to; extract it first (without --add-encoder)"
        )
    added = added_specs(config)
    with CacheReader(output) as cache:
        check_tables(config, cache, added)
        videos = {vid: cache.video_meta(vid) for vid in cache.video_ids}
        covered = {
            a.spec.name: set(cache.videos_with([a.spec.name]))
            for a in added
            if a.spec.modality == "video" and a.spec.name in cache.video_encoders
        }
        todo = [
            v
            for v in videos
            if any(v not in covered.get(a.spec.name, ()) for a in added if a.spec.modality == "video")
        ]
        # The feature windows each video already has (any committed encoder's: they all agree),
        # None for a video with no committed video encoder (then only the duration is checked).
        timestamps: dict[str, tuple[str, np.ndarray] | None] = {}
        for v in todo:
            have = cache.video_encoders_of(v)
            timestamps[v] = (have[0], cache.video_timestamps(v, have[0])) if have else None
        queries = [(q.qid, q.text) for q in cache.queries()]
    summary = RunSummary(
        output=output, total=len(videos) if any(a.spec.modality == "video" for a in added) else 0
    )
    summary.skipped = summary.total - len(todo)

    video_added = [a for a in added if a.spec.modality == "video"]
    text_added = [a for a in added if a.spec.modality == "text"]
    tasks = [
        VideoTask(v, videos[v].source or None, f"video {v}: the cache records no source file") for v in todo
    ]
    decoded_iter = None
    if video_added and tasks:
        # Decode workers start before any model exists, as in a full extraction (extract.pipeline).
        specs = [a.spec for a in video_added]
        # The frame size a full extraction of this config decodes at, so that the added features
        # equal those of a cache extracted with every encoder at once.
        every_video_spec = [s for s in encoder_table(config) if s.modality == "video"]
        dataset = DecodeDataset(
            tasks,
            specs,
            fps=config.fps,
            frame_size=resolve_frame_size(config.frame_size, every_video_spec),
            backend=config.decode_backend,
            threads=config.decoder_threads,
        )
        decoded_iter = decoded_videos(
            dataset, num_workers=config.num_workers, prefetch_videos=config.prefetch_videos
        )
    try:
        encoders = {a.spec.name + ":" + a.spec.modality: _build(config, a.choice, device) for a in added}
        writer = CacheWriter(output, dataset=config.dataset, encoders=None, mode="resume")
    except BaseException:
        if decoded_iter is not None:
            decoded_iter.close()
        raise
    try:
        for a in added:
            if writer.add_encoder(a.spec):
                console.print(
                    f"added {a.spec.modality} encoder {escape(a.spec.name)} to {escape(str(output))}"
                )
        for a in text_added:
            written, encoded = _add_text(writer, a.spec.name, encoders[a.spec.name + ":text"], queries)
            summary.queries_written += written
            summary.texts_encoded += encoded
        if decoded_iter is not None:
            _add_video(
                config, writer, video_added, encoders, decoded_iter, timestamps, covered, summary, console
            )
    finally:
        if decoded_iter is not None:
            decoded_iter.close()  # the workers first: a worker restarted mid-run inherited the cache's file
        writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _add_video(
    config: ExtractConfig,
    writer: CacheWriter,
    video_added: Sequence[_Added],
    encoders: dict[str, Encoder],
    decoded_iter: Iterable[DecodedVideo],
    timestamps: dict[str, tuple[str, np.ndarray] | None],
    covered: dict[str, set[str]],
    summary: RunSummary,
    console: Console,
) -> None:
    """Encode the decoded videos with the added video encoders and commit per video per encoder.

    Frames are packed across videos into full batches (``extract.pipeline``'s frame queues), so
    short videos cost no padding; each video is committed once all its frames are encoded.
    """
    loop_start = time.perf_counter()
    longest = max_frames_per_feature([a.spec for a in video_added])
    queues = {
        a.spec.name: _FrameQueue(a.spec.name, encoders[a.spec.name + ":video"], longest) for a in video_added
    }
    max_pending = max(1, config.num_workers) * config.prefetch_videos + 1
    pending: deque[_Pending] = deque()

    def write_finished() -> None:
        while pending and pending[0].finished:
            video = pending.popleft()
            vid = video.decoded.vid
            try:
                for name, features in video.features.items():  # (T, D) per encoder it lacked
                    writer.add_video_features(vid, name, features, video.decoded.timestamps_sec)
                    summary.frames += len(features)
            except SchemaError as err:
                _fail(summary, console, Failure(vid, video.decoded.path, "write", str(err)))
                continue
            summary.done += 1

    for decoded in decoded_iter:
        if decoded.error is not None:
            _fail(summary, console, Failure(decoded.vid, decoded.path, "decode", decoded.error))
            continue
        known = timestamps[decoded.vid]
        if known is not None and (
            decoded.timestamps_sec.shape != known[1].shape
            or not np.allclose(decoded.timestamps_sec, known[1], atol=1e-4)
        ):
            reason = (
                f"video {decoded.vid}: decoded {len(decoded.timestamps_sec)} feature windows that "
                f"disagree with the cache's {len(known[1])} (encoder {known[0]!r}); "
                f"is fps ({config.fps}) the one the cache was extracted with?"
            )
            _fail(summary, console, Failure(decoded.vid, decoded.path, "decode", reason))
            continue
        needed = [a for a in video_added if decoded.vid not in covered.get(a.spec.name, ())]
        n = decoded.frames.shape[0]
        video = _Pending(
            decoded,
            [],
            decoded.frames,
            features={a.spec.name: np.empty((n, a.spec.dim), np.float32) for a in needed},
            remaining={a.spec.name: n for a in needed},
        )
        pending.append(video)
        for a in needed:
            queues[a.spec.name].push(video)
            queues[a.spec.name].run_full_batches()
        write_finished()
        # As in the pipeline: past the decoders' look-ahead, finish the oldest video in a padded batch.
        while len(pending) > max_pending:
            for queue in queues.values():
                queue.finish(pending[0])
            write_finished()
    while pending:  # the last, partial batches
        for queue in queues.values():
            queue.finish(pending[0])
        write_finished()
    summary.loop_seconds = time.perf_counter() - loop_start


def _build(config: ExtractConfig, choice: EncoderChoice, device: str) -> Encoder:
    return build_encoder(
        choice.name,
        weights=choice.weights,
        device=device,
        precision=config.precision,
        compile=config.compile,
        batch_size=choice.batch_size or config.batch_size,
        fps=config.fps,
    )


def _add_text(
    writer: CacheWriter, name: str, encoder: Encoder, queries: Sequence[tuple[str, str]]
) -> tuple[int, int]:
    """Encode and commit the queries ``name`` lacks, ``TEXT_COMMIT_QUERIES`` at a time.

    Returns:
        (queries written, texts encoded).
    """
    done = writer.covered_queries(name)
    todo = [(qid, text) for qid, text in queries if qid not in done]
    encoded = 0
    for lo in range(0, len(todo), TEXT_COMMIT_QUERIES):
        chunk = todo[lo : lo + TEXT_COMMIT_QUERIES]
        texts = list(dict.fromkeys(text for _, text in chunk))  # each unique text once
        # text -> (tokens (L, D), pooled (D,))
        out = dict(zip(texts, encode_texts(encoder, texts), strict=True))
        writer.add_text_features(name, {qid: out[text] for qid, text in chunk})
        encoded += len(texts)
    return len(todo), encoded


def _fail(summary: RunSummary, console: Console, failure: Failure) -> None:
    summary.failures.append(failure)
    console.print(f"[red]failed[/red] {escape(failure.vid)}: {escape(failure.reason)}", highlight=False)


def add_failures_path(output: str | Path) -> Path:
    """``<output stem>.add-encoder.failures.jsonl``: the videos an --add-encoder run could not add to."""
    output = Path(output)
    return output.with_name(f"{output.stem}.add-encoder.failures.jsonl")


def run_add(config: ExtractConfig, *, console: Console | None = None) -> RunSummary:
    """`add_encoders` as a command: one process, failures written beside the cache, a summary printed.

    Raises:
        ConfigError: started as one rank of several (torchrun); adding runs in one process.
    """
    console = console or Console(stderr=True)
    ctx = DistContext.from_env()
    if ctx.sharded:
        raise ConfigError("--add-encoder runs in one process; start it without torchrun")
    summary = add_encoders(config, device=config.device, console=console)
    _write_jsonl(add_failures_path(config.output_path), (f.to_dict() for f in summary.failures))
    console.print(
        f"[bold]add-encoder[/bold]: {summary.done} videos given {escape(str(sorted(config.add_encoder)))}, "
        f"{summary.skipped} already had them, {len(summary.failures)} failed, of {summary.total}; "
        f"{summary.frames} frames encoded in {summary.loop_seconds:.1f} s; "
        f"{summary.queries_written} queries given text features ({summary.texts_encoded} texts encoded)"
    )
    if summary.failures:
        console.print(
            f"[red]{len(summary.failures)} video(s) failed[/red]; "
            f"see {escape(str(add_failures_path(config.output_path)))}"
        )
    return summary
