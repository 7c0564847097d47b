"""The small interface other stages use to turn new videos and sentences into cache-like features.

``ground`` (answering queries on a video that is not in a cache) imports only this module of
``extract``: it rebuilds the encoders a cache was made with from the cache's encoder table and
encodes one video or a few sentences exactly the way ``python -m extract`` did.

    >>> fx = FeatureExtractor.from_cache("data/synthetic/cache.h5")
    >>> features, timestamps_sec, duration_sec = fx.encode_video("new.mp4")
    >>> [(tokens, pooled)] = fx.encode_texts(["a red circle moves to the left"])

Features come back as numpy arrays in each spec's storage dtype (float16), i.e. the values a cache
would hold. The frame preprocessing and the encoder batching are the ones the pipeline uses
(:func:`decode_short_side`, :func:`encode_frames`, :func:`encode_texts`): with the same device and
batch size, a video encoded here gives bit-identical features to its row in the cache. Frames of a
live stream (:meth:`FeatureExtractor.encode_decoded_frames`) are encoded in small passes instead,
and equal the cache's features up to float rounding (:data:`PassPadding`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from cache_schema.spec import BlockInputsSpec, EncoderSpec
from cache_schema.store import CacheReader
from extract.encoders import RANDOM_INIT, Encoder, EncoderError, Precision, build_encoder, encoder_specs
from extract.encoders.blocks import VisualSplit, block_inputs_spec, check_blocks, encode_with_block_inputs
from extract.video import (
    Backend,
    SampledVideo,
    VideoDecodeError,
    _output_size,
    _resize,
    decode_frames_at,
    sample_video,
)

# Re-exported: what callers of this interface catch when a video cannot be read.
__all__ = [
    "FeatureExtractor",
    "PassPadding",
    "VideoDecodeError",
    "decode_short_side",
    "encode_frames",
    "encode_texts",
    "frames_for_encoder",
    "sample_for_encoders",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
"""Frames (texts) per forward pass; the same default as ``ExtractConfig.batch_size``."""
PassPadding = Literal["full_batch", "pow2"]
"""How :func:`encode_frames` pads the last forward pass of a call.

``full_batch``: to the encoder's ``batch_size`` rows (offline extraction; a frame's feature is
then bit-identical whatever frames share its pass, so a resumed run stores what an uninterrupted
one does). ``pow2``: to the next power of two of its rows, capped at ``batch_size`` (live streams,
which encode 1 or 2 new frames a hop: a 2-frame pass computes 2 rows, not 64). A ``pow2`` feature
differs from the ``full_batch`` one by float rounding only, because different matrix shapes pick
different BLAS kernels (measured differences in docs/serving.md, "Live features and offline ones")."""
LIVE_PASS_PADDING: PassPadding = "pow2"
"""The padding of frames decoded elsewhere (`FeatureExtractor.encode_decoded_frames`, a live stream)."""
_DECODE_MARGIN = 8 / 7
"""Decoded frames are this much larger than the largest encoder input, the 256 -> 224 ratio of the
standard resize-then-crop preprocessing, so every encoder's own resize still scales down."""


# ----------------------------------------------------------------------------------------------
# Pieces shared with the pipeline


def decode_short_side(specs: Sequence[EncoderSpec]) -> int | None:
    """Shorter side (pixels) frames are decoded at for these video encoders.

    Decoding straight to about the model input size keeps decode-worker memory and transfer small
    (a 720p frame is 2.7 MB, a 256-pixel one 0.2 MB) while every encoder's own preprocessing still
    resizes down from a larger frame.

    Returns:
        ``ceil(max(input_size) * 8 / 7)``, or None (native size) when no spec states an input size.
    """
    sizes = [s.input_size for s in specs if s.input_size]
    return math.ceil(max(sizes) * _DECODE_MARGIN) if sizes else None


def resolve_frame_size(frame_size: int | None, specs: Sequence[EncoderSpec]) -> int | None:
    """A config's ``frame_size`` as ``sample_video``'s ``size``: None derives it, 0 means native."""
    if frame_size is None:
        return decode_short_side(specs)
    return frame_size or None


def max_frames_per_feature(specs: Sequence[EncoderSpec]) -> int:
    """Longest clip any of the encoders needs (1 when all are image encoders)."""
    return max(s.frames_per_feature or 1 for s in specs)


def frames_for_encoder(spec: EncoderSpec, frames: np.ndarray, sampled_per_feature: int) -> np.ndarray:
    """Cut one encoder's input from frames sampled with the longest clip of a run.

    ``sample_video`` puts the window's centre frame at clip position ``F // 2``, so a shorter clip
    (or the single frame of an image encoder) is the slice of the longer clip around that position.

    Args:
        spec: The encoder's spec.
        frames: (T, H, W, 3) when ``sampled_per_feature`` is 1, else (T, Fmax, H, W, 3) uint8.
        sampled_per_feature: Fmax, the clip length the frames were sampled with.

    Returns:
        (T, H, W, 3) for an image encoder, (T, F, H, W, 3) for a clip encoder.
    """
    per_feature = spec.frames_per_feature or 1
    if sampled_per_feature == 1:
        return frames
    centre = sampled_per_feature // 2
    if per_feature == 1:
        return frames[:, centre]  # (T, H, W, 3)
    first = centre - per_feature // 2
    return frames[:, first : first + per_feature]  # (T, F, H, W, 3)


def _pad_rows(n_rows: int, batch_size: int, padding: PassPadding = "full_batch") -> int:
    """Rows to add so the last forward pass (of ``batch_size`` rows each) is padded as ``padding`` says."""
    if padding not in get_args(PassPadding):
        raise ValueError(f"padding must be one of {get_args(PassPadding)}, got {padding!r}")
    last = n_rows % batch_size
    if not last:
        return 0
    if padding == "full_batch":
        return batch_size - last
    return min(1 << (last - 1).bit_length(), batch_size) - last


def encode_frames(encoder: Encoder, frames: np.ndarray, *, padding: PassPadding = "full_batch") -> np.ndarray:
    """Encode frames in forward passes of ``encoder.batch_size`` rows, the last one padded.

    A row's result depends on how many rows share its forward pass (BLAS picks its kernels by
    matrix shape), but not on which rows they are. Padding the last pass to the full batch with
    copies of the last frame makes every frame's feature independent of the frames it happened to
    be batched with, so a resumed run and an uninterrupted one store identical features. A live
    stream pads to the next power of two instead (see `PassPadding`): a pass of n rows then
    computes at most 2n - 1 rows, not ``batch_size``, and its features differ from the offline
    ones by float rounding only.

    Args:
        encoder: A video encoder.
        frames: (N, H, W, 3) or (N, F, H, W, 3) uint8.
        padding: ``full_batch`` (offline extraction) or ``pow2`` (live streams).

    Returns:
        (N, D) float32.

    Raises:
        ValueError: ``padding`` is not a `PassPadding`.
    """
    n = frames.shape[0]
    pad = _pad_rows(n, encoder.batch_size, padding)
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    return encoder.encode_video(frames)[:n].numpy()  # (N, D)


def encode_frames_with_block_inputs(
    encoder: Encoder, frames: np.ndarray, blocks: int, pool: int
) -> tuple[np.ndarray, np.ndarray]:
    """`encode_frames` that also returns the hidden states entering the last ``blocks`` blocks.

    Batched and padded exactly like `encode_frames`, and the features are the tower's own
    forward pass op for op, so they equal `encode_frames`' (`extract.encoders.blocks`).

    Args:
        encoder: A video encoder whose tower can be cut (open_clip ViT or timm ViT trunk).
        frames: (N, H, W, 3) uint8.
        blocks: K, 1 <= K <= the encoder's depth.
        pool: Patch-grid pooling factor P of the block inputs (1: none).

    Returns:
        features (N, D) float32 and block inputs (N, L, W) float32.

    Raises:
        EncoderError: K is out of range or the tower cannot be cut; names the encoder.
    """
    n = frames.shape[0]
    pad = _pad_rows(n, encoder.batch_size)
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    features, hidden = encode_with_block_inputs(encoder, frames, blocks, pool)
    return features[:n].numpy(), hidden[:n].numpy()  # (N, D), (N, L, W)


def encode_texts(encoder: Encoder, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Encode sentences in forward passes of exactly ``encoder.batch_size`` texts (see :func:`encode_frames`).

    Returns:
        One ``(tokens (L, D), pooled (D,))`` float32 pair per text.
    """
    texts = list(texts)
    padded = texts + [texts[-1]] * _pad_rows(len(texts), encoder.batch_size)
    out = encoder.encode_text(padded)[: len(texts)]
    return [(tokens.numpy(), pooled.numpy()) for tokens, pooled in out]


def sample_for_encoders(
    path: str | Path,
    specs: Sequence[EncoderSpec],
    *,
    fps: float,
    frame_size: int | None,
    backend: Backend = "auto",
    threads: int = 0,
) -> SampledVideo:
    """Decode and sample one video once for every video encoder of a run.

    Args:
        path: Video file.
        specs: The video encoders' specs (the longest clip among them is sampled).
        fps: Features per second.
        frame_size: Shorter side of the decoded frames, None for native (see :func:`resolve_frame_size`).
        backend: Decoder backend.
        threads: Decoder threads (0: FFmpeg's choice; see :func:`extract.video.sample_video`).

    Raises:
        VideoDecodeError: The video cannot be probed or decoded.
    """
    return sample_video(
        path,
        fps,
        frames_per_feature=max_frames_per_feature(specs),
        size=frame_size,
        backend=backend,
        threads=threads,
    )


# ----------------------------------------------------------------------------------------------
# Rebuilding encoders from a cache's encoder table


def weights_from_id(weights_id: str) -> str | None:
    """The ``weights=`` argument that reproduces a recorded ``weights_id``.

    ``none`` is the seeded random init; an existing local path is that checkpoint; anything else
    (an ``open_clip:...`` or hub id) is the registry's default weights.
    """
    if weights_id == RANDOM_INIT:
        return RANDOM_INIT
    if weights_id and os.path.exists(weights_id):
        return weights_id
    return None


_IGNORED_WHEN_REBUILT = ("library",)
"""Spec fields that may differ between the cache and the rebuilt encoder (reported, not fatal)."""


def check_rebuilt_spec(recorded: EncoderSpec, rebuilt: EncoderSpec | None, *, weights_given: bool) -> None:
    """Raise EncoderError unless the rebuilt encoder produces the features the cache recorded.

    Args:
        recorded: Spec read from the cache.
        rebuilt: Spec of the encoder built now.
        weights_given: The caller chose the weights (e.g. a local copy of the hub checkpoint), so a
            different ``weights_id`` is accepted.
    """
    if rebuilt is None:
        raise EncoderError(f"encoder {recorded.name!r} has no {recorded.modality} tower any more")
    ignored = set(_IGNORED_WHEN_REBUILT) | ({"weights_id"} if weights_given else set())
    differ = [
        f.name
        for f in fields(EncoderSpec)
        if f.name not in ignored and getattr(recorded, f.name) != getattr(rebuilt, f.name)
    ]
    if differ:
        shown = ", ".join(f"{k}: cache {getattr(recorded, k)!r}, now {getattr(rebuilt, k)!r}" for k in differ)
        raise EncoderError(
            f"{recorded.modality} encoder {recorded.name!r} rebuilt differently from the cache ({shown})"
        )
    if recorded.library != rebuilt.library:
        log.warning(
            "encoder %s: cache made with %s, running %s; features may differ slightly",
            recorded.name,
            recorded.library,
            rebuilt.library,
        )


def build_visual_tail(
    spec: EncoderSpec, blocks: BlockInputsSpec, *, weights: str | None = None
) -> VisualSplit:
    """The last K blocks and the head of a cache's video encoder, rebuilt from its weights.

    The embedding and the early blocks are dropped, so the module holds (and its ``state_dict``
    lists) only what turns the cache's block inputs into embeddings: ``tail(x, 0)`` maps
    (N, L, W) block inputs to (N, D) features.

    Args:
        spec: The encoder's spec as the cache recorded it.
        blocks: The cache's block-input spec of that encoder.
        weights: None rebuilds the recorded ``weights_id``; anything else must give the same id.

    Raises:
        EncoderError: the weights differ from the cache's ``weights_id`` (naming both), the rebuilt
            encoder differs from the recorded one, or its depth is not the recorded depth.
    """
    recorded_weights = weights_from_id(spec.weights_id)
    if weights is not None:
        rebuilt, _ = encoder_specs(spec.name, weights=weights, fps=1.0 / spec.stride_sec)
        if rebuilt is None or rebuilt.weights_id != spec.weights_id:
            raise EncoderError(
                f"encoder {spec.name!r}: adapter weights {None if rebuilt is None else rebuilt.weights_id!r} "
                f"differ from the cache's weights_id {spec.weights_id!r}; the block inputs were made with "
                "the cache's, so the adapter must load the same"
            )
        recorded_weights = weights
    if spec.weights_id == RANDOM_INIT:
        log.warning(
            "encoder %s: the cache was made with random-init weights ('none'); the adapter adapts a "
            "random tower (fine for tests and demos, meaningless for real accuracy)",
            spec.name,
        )
    encoder = build_encoder(spec.name, weights=recorded_weights, fps=1.0 / spec.stride_sec)
    check_rebuilt_spec(spec, encoder.video_spec, weights_given=False)
    split = encoder.visual_split()
    if split.depth != blocks.depth or split.width != blocks.width:
        raise EncoderError(
            f"encoder {spec.name!r}: rebuilt with depth {split.depth} and width {split.width}, the cache's "
            f"block inputs say depth {blocks.depth} and width {blocks.width}"
        )
    start = check_blocks(spec.name, blocks.blocks, split.depth)
    split.drop_stem(start)
    return split.requires_grad_(False)


def describe_block_inputs(
    name: str, blocks: int, pool: int = 1, *, weights: str | None = RANDOM_INIT, fps: float = 1.0
) -> tuple[EncoderSpec, BlockInputsSpec]:
    """The video spec and block-input spec an extraction with ``block_inputs: blocks`` would record.

    Builds the encoder (random init by default: offline), for benchmarks and tests that need the
    specs of an encoder without extracting a cache.

    Raises:
        EncoderError: K is out of range (naming K and the depth), or the tower cannot be cut.
    """
    encoder = build_encoder(name, weights=weights, fps=fps)
    return encoder.video_spec, block_inputs_spec(encoder, blocks, pool)


@dataclass(frozen=True)
class _BuildKey:
    name: str
    weights: str | None


class FeatureExtractor:
    """Video and text encoders of one cache, applied to new videos and sentences.

    Build it with :meth:`from_specs` or :meth:`from_cache` rather than directly.

    Args:
        video_encoders: Video encoders by spec name (all with the same ``stride_sec``).
        text_encoder: The text encoder, or None when only videos are encoded.
        frame_size: Shorter side of decoded frames (see :func:`resolve_frame_size`); None native.
        backend: Decoder backend.
    """

    def __init__(
        self,
        video_encoders: Mapping[str, Encoder],
        text_encoder: Encoder | None = None,
        *,
        frame_size: int | None,
        backend: Backend = "auto",
    ) -> None:
        if not video_encoders and text_encoder is None:
            raise EncoderError("FeatureExtractor needs at least one video encoder or a text encoder")
        strides = {enc.video_spec.stride_sec for enc in video_encoders.values()}
        if len(strides) > 1:
            raise EncoderError(
                f"video encoders have different strides {sorted(strides)} s; they must share one"
            )
        self.video_encoders = dict(video_encoders)
        self.text_encoder = text_encoder
        self.frame_size = frame_size
        self.backend: Backend = backend

    @classmethod
    def from_specs(
        cls,
        video_specs: Sequence[EncoderSpec | dict],
        text_spec: EncoderSpec | dict | None = None,
        *,
        weights: str | Mapping[str, str | None] | None = None,
        device: str | torch.device = "cpu",
        precision: Precision = "fp32",
        batch_size: int = DEFAULT_BATCH_SIZE,
        frame_size: int | None = None,
        backend: Backend = "auto",
    ) -> FeatureExtractor:
        """Rebuild encoders from specs read from a cache (by registry name and ``weights_id``).

        Args:
            video_specs: Video encoder specs (``EncoderSpec`` or their dicts from the cache).
            text_spec: Text encoder spec, or None.
            weights: None reproduces each recorded ``weights_id`` (see :func:`weights_from_id`); a
                string is used for every encoder; a mapping gives it per encoder name (missing
                names fall back to the recorded id).
            device: Torch device.
            precision: ``fp32`` or ``bf16``.
            batch_size: Rows per forward pass; the cache's batch size reproduces it bit for bit.
            frame_size: Shorter side of decoded frames; None derives it as the pipeline does.
            backend: Decoder backend.

        Raises:
            EncoderError: An encoder is unknown, cannot be built, or builds a different spec.
        """
        video = [EncoderSpec.from_dict(s) if isinstance(s, dict) else s for s in video_specs]
        text = EncoderSpec.from_dict(text_spec) if isinstance(text_spec, dict) else text_spec
        if any(s.modality != "video" for s in video) or (text is not None and text.modality != "text"):
            raise EncoderError("from_specs: video_specs must be video encoders and text_spec a text encoder")
        # All video encoders share one stride (checked when the specs are compared below).
        fps = 1.0 / video[0].stride_sec if video else 1.0
        built: dict[_BuildKey, Encoder] = {}

        def build(spec: EncoderSpec) -> Encoder:
            given = weights.get(spec.name) if isinstance(weights, Mapping) else weights
            choice = given if given is not None else weights_from_id(spec.weights_id)
            key = _BuildKey(spec.name, choice)
            if key not in built:
                built[key] = build_encoder(
                    spec.name,
                    weights=choice,
                    device=device,
                    precision=precision,
                    batch_size=batch_size,
                    fps=fps,
                )
            encoder = built[key]
            rebuilt = encoder.video_spec if spec.modality == "video" else encoder.text_spec
            check_rebuilt_spec(spec, rebuilt, weights_given=given is not None)
            return encoder

        video_encoders = {spec.name: build(spec) for spec in video}
        text_encoder = build(text) if text is not None else None
        return cls(
            video_encoders, text_encoder, frame_size=resolve_frame_size(frame_size, video), backend=backend
        )

    @classmethod
    def from_cache(
        cls,
        path: str | os.PathLike,
        *,
        video_encoders: Sequence[str] | None = None,
        text_encoder: str | None = None,
        **kwargs: object,
    ) -> FeatureExtractor:
        """Rebuild the encoders recorded in a cache.

        Args:
            path: Cache path.
            video_encoders: Names of the video encoders to rebuild; None for all.
            text_encoder: Name of the text encoder; None for the cache's only text encoder (an
                error when it has several).
            **kwargs: Passed to :meth:`from_specs`.
        """
        with CacheReader(path) as reader:
            video_table, text_table = reader.video_encoders, reader.text_encoders
        names = list(video_table) if video_encoders is None else list(video_encoders)
        unknown = [n for n in names if n not in video_table]
        if unknown:
            raise EncoderError(f"{path}: no video encoder(s) {unknown}; the cache has {sorted(video_table)}")
        if text_encoder is None:
            if len(text_table) > 1:
                raise EncoderError(f"{path}: choose text_encoder= among {sorted(text_table)}")
            text_encoder = next(iter(text_table))
        if text_encoder not in text_table:
            raise EncoderError(
                f"{path}: no text encoder {text_encoder!r}; the cache has {sorted(text_table)}"
            )
        return cls.from_specs([video_table[n] for n in names], text_table[text_encoder], **kwargs)

    # -- properties ------------------------------------------------------------------------------

    @property
    def video_specs(self) -> dict[str, EncoderSpec]:
        return {name: enc.video_spec for name, enc in self.video_encoders.items()}

    @property
    def text_spec(self) -> EncoderSpec | None:
        return None if self.text_encoder is None else self.text_encoder.text_spec

    @property
    def fps(self) -> float:
        """Features per second the video encoders were built for (1 / stride_sec)."""
        self._require_video()
        return 1.0 / next(iter(self.video_specs.values())).stride_sec

    def _require_video(self) -> None:
        if not self.video_encoders:
            raise EncoderError("this FeatureExtractor has no video encoder")

    # -- encoding --------------------------------------------------------------------------------

    def encode_video(
        self,
        path: str | Path,
        fps: float | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
        """Decode, sample and encode one video.

        Args:
            path: Video file.
            fps: Features per second; None uses the encoders' (the cache's) rate.

        Returns:
            ``(features, timestamps_sec, duration_sec)``: encoder name -> (T, D) features in the
            spec's storage dtype, (T, 2) float64 [start, end) seconds, and the decoded duration.

        Raises:
            VideoDecodeError: The video cannot be decoded.
        """
        self._require_video()
        specs = list(self.video_specs.values())
        sampled = sample_for_encoders(
            path,
            specs,
            fps=self.fps if fps is None else fps,
            frame_size=self.frame_size,
            backend=self.backend,
        )
        longest = max_frames_per_feature(specs)
        features = {
            name: encode_frames(enc, frames_for_encoder(enc.video_spec, sampled.frames, longest)).astype(
                enc.video_spec.numpy_dtype
            )
            for name, enc in self.video_encoders.items()
        }
        return features, sampled.timestamps_sec, sampled.info.duration_sec

    def encode_video_at(
        self, path: str | Path, times_sec: Sequence[float] | np.ndarray
    ) -> dict[str, np.ndarray]:
        """Features of the frames nearest the given times (coarse-to-fine re-sampling of a window).

        Args:
            path: Video file.
            times_sec: Times in seconds inside ``[0, duration]``.

        Returns:
            Encoder name -> (N, D) features in the spec's storage dtype, in the order of ``times_sec``.

        Raises:
            ValueError: A time lies outside the video, or an encoder takes clips (frames_per_feature > 1).
            VideoDecodeError: The video cannot be decoded.
        """
        self._require_video()
        clip_encoders = [n for n, s in self.video_specs.items() if (s.frames_per_feature or 1) > 1]
        if clip_encoders:
            raise ValueError(
                f"encode_video_at decodes single frames; clip encoders {clip_encoders} need clips"
            )
        frames = decode_frames_at(path, times_sec, size=self.frame_size, backend=self.backend)  # (N, H, W, 3)
        return {
            name: encode_frames(enc, frames).astype(enc.video_spec.numpy_dtype)
            for name, enc in self.video_encoders.items()
        }

    def encode_decoded_frames(
        self, frames: Sequence[np.ndarray], *, padding: PassPadding = LIVE_PASS_PADDING
    ) -> dict[str, np.ndarray]:
        """Features of frames decoded elsewhere (a live stream), one feature per frame.

        Each frame is resized as :meth:`encode_video` resizes the frames it decodes (shorter side
        ``frame_size``, FFmpeg's area filter). By default the pass is padded to the next power of
        two of its rows, not to the full batch: a frame gives the feature it has in a cache up to
        float rounding (see `PassPadding`), at the cost of the rows it needs.

        Args:
            frames: N >= 1 RGB frames (H, W, 3) uint8 at their native size.
            padding: ``pow2`` (`LIVE_PASS_PADDING`) or ``full_batch``, the offline padding (bit
                for bit the cache's features, ``batch_size`` rows per pass whatever N).

        Returns:
            Encoder name -> (N, D) features in the spec's storage dtype.

        Raises:
            ValueError: An encoder takes clips (frames_per_feature > 1), a frame is not (H, W, 3)
                uint8, or ``padding`` is not a `PassPadding`.
        """
        self._require_video()
        clip_encoders = [n for n, s in self.video_specs.items() if (s.frames_per_feature or 1) > 1]
        if clip_encoders:
            raise ValueError(
                f"encode_decoded_frames encodes single frames; clip encoders {clip_encoders} need clips"
            )
        resized = []
        for i, rgb in enumerate(frames):
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise ValueError(f"frame {i}: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
            height, width = rgb.shape[:2]
            resized.append(_resize(rgb, _output_size(width, height, self.frame_size)))
        if not resized:
            raise ValueError("encode_decoded_frames: no frames")
        batch = np.stack(resized)  # (N, H, W, 3)
        return {
            name: encode_frames(enc, batch, padding=padding).astype(enc.video_spec.numpy_dtype)
            for name, enc in self.video_encoders.items()
        }

    def adapt_video_encoder(
        self, name: str, tail: Callable[[torch.Tensor], torch.Tensor], blocks: BlockInputsSpec
    ) -> None:
        """Encode videos with ``name``'s last K blocks replaced by ``tail`` (see `Encoder.adapt_tail`).

        Raises:
            EncoderError: no such video encoder, or its tower cannot be cut as ``blocks`` says.
        """
        if name not in self.video_encoders:
            raise EncoderError(
                f"no video encoder {name!r} to adapt; this extractor has {sorted(self.video_encoders)}"
            )
        self.video_encoders[name].adapt_tail(tail, blocks.blocks, blocks.pool)

    def encode_texts(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Encode sentences with the text encoder.

        Returns:
            One ``(tokens (L, D), pooled (D,))`` pair per text, in the spec's storage dtype.
        """
        if self.text_encoder is None:
            raise EncoderError("this FeatureExtractor has no text encoder")
        dtype = self.text_encoder.text_spec.numpy_dtype
        return [
            (tokens.astype(dtype), pooled.astype(dtype))
            for tokens, pooled in encode_texts(self.text_encoder, texts)
        ]
