"""Answer sentence queries on new videos (or cached ones) with a trained checkpoint.

    grounder = Grounder.from_checkpoint("runs/demo/checkpoints/best.ckpt")
    [result] = grounder.ground("cooking.mp4", ["a man slices an onion"])
    result.windows  # [(start_sec, end_sec, score), ...] best first

A video is either a file, decoded and encoded with the encoders the checkpoint was trained on
(through `extract.api`, imported only when a file has to be read), or the id of a video in a
cache, answered from its stored features without decoding anything.

Coarse-to-fine (after GroundZero, /work/shared/design/span_groundzero.txt): the network first
scans the whole video at the training feature rate; the region around its best window is then
re-sampled at `FINE_FACTOR` times that rate and run through the network again, and the best
fine window replaces the coarse one when the two overlap. docs/serving.md has the measured gain
that sets `COARSE_TO_FINE_DEFAULT`.

"Not found": a network with a presence head gives the probability that the event happens in the
video at all. `calibrate_presence` picks the threshold on validation data and stores it beside
the checkpoint (`<ckpt>.presence.json`), where `Grounder.from_checkpoint` finds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cache_schema import CacheReader, EncoderSpec
from cache_schema.errors import GroundcacheError
from ground.adapter import VisualAdapter
from ground.data import SplitTensors
from ground.errors import (
    EncoderMismatchError,
    GroundingInputError,
    describe_specs,
    same_features,
)
from ground.models.blocks import Predictions, temporal_iou
from ground.module import load_checkpoint, require_encoder_record, sliding_window_decode

log = logging.getLogger(__name__)

FINE_FACTOR = 4
"""The fine pass samples this many features per coarse feature (GroundZero: 1 fps -> 4 fps)."""
FINE_MARGIN_CLIPS = 2.0
"""The fine region extends the coarse window by at least this many coarse clips on each side..."""
FINE_MARGIN_FRACTION = 0.25
"""...or by this fraction of the coarse window's length, whichever is larger."""
COARSE_TO_FINE_DEFAULT = False
"""Whether `ground(..., coarse_to_fine=None)` refines; set from the measurements in docs/serving.md."""
DEFAULT_MAX_CLIPS = 1024
"""Videos longer than this many clips are decoded with overlapping sliding windows when the
checkpoint does not set `eval_max_clips` (bounds the T x T attention and span tables)."""
UNCALIBRATED_THRESHOLD = 0.5
"""Presence threshold without a calibration file: the decision point of the sigmoid trained with
balanced positive/negative pairs."""
_EDGE_TOLERANCE_SEC = 1e-3
"""Window edges come from float32 clip timestamps; an edge this close past the video is rounding."""


class VideoNotFoundError(GroundcacheError, LookupError):
    """A video is neither a file nor a video id of the cache."""


class VideoReadError(GroundcacheError, RuntimeError):
    """A video file could not be decoded or encoded; the message names the file."""


class FeatureDimError(EncoderMismatchError):
    """Precomputed features whose dim differs from the checkpoint's encoders; names both dims."""


@dataclass(frozen=True)
class GroundingResult:
    """The answer to one query on one video.

    Attributes:
        query: the sentence.
        duration_sec: duration of the video.
        windows: up to top-k `(start_sec, end_sec, score)`, best first, each inside [0, duration_sec].
        presence: probability that the event happens in the video, None without a presence head.
        found: presence >= the presence threshold (always True without a presence head).
        saliency: `(t_sec, score)` per feature (t at the feature window's centre), None without a
            saliency head.
        refined: the top window comes from the fine pass of coarse-to-fine.
    """

    query: str
    duration_sec: float
    windows: list[tuple[float, float, float]]
    presence: float | None
    found: bool
    saliency: list[tuple[float, float]] | None
    refined: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "duration_sec": self.duration_sec,
            "windows": [{"start_sec": s, "end_sec": e, "score": c} for s, e, c in self.windows],
            "presence": self.presence,
            "found": self.found,
            "saliency": None if self.saliency is None else [list(p) for p in self.saliency],
            "refined": self.refined,
        }


@dataclass(frozen=True)
class _Video:
    """Features of one video at the model's rate."""

    features: np.ndarray  # (T, Dv) float32, the video encoders concatenated in checkpoint order
    timestamps_sec: np.ndarray  # (T, 2) float64
    duration_sec: float
    path: Path | None  # the file, when it can be re-sampled (None for cached features)


def presence_path(checkpoint: str | os.PathLike) -> Path:
    """Where the calibrated presence threshold of a checkpoint is stored."""
    return Path(f"{checkpoint}.presence.json")


def check_cache_encoders(
    video_specs: Sequence[EncoderSpec], text_spec: EncoderSpec, reader: CacheReader, checkpoint: str
) -> None:
    """Raise EncoderMismatchError unless the cache holds features of exactly these encoders."""
    problems = []
    for spec in video_specs:
        have = reader.video_encoders.get(spec.name)
        if have is None or not same_features(spec, have):
            problems.append(f"video encoder {spec.name!r}")
    have = reader.text_encoders.get(text_spec.name)
    if have is None or not same_features(text_spec, have):
        problems.append(f"text encoder {text_spec.name!r}")
    if problems:
        raise EncoderMismatchError(
            f"checkpoint {checkpoint} was trained on video encoders [{describe_specs(video_specs)}] and text "
            f"encoder [{describe_specs([text_spec])}]; cache {reader.path} provides video encoders "
            f"[{describe_specs(list(reader.video_encoders.values()))}] and text encoders "
            f"[{describe_specs(list(reader.text_encoders.values()))}] "
            f"({', '.join(problems)} differ or are missing)"
        )


class Grounder:
    """A trained grounding network with the encoders its features came from.

    Build it with `from_checkpoint`. `ground` is thread-safe (one call at a time), so a server
    may share one Grounder between requests.

    Args:
        net: the grounding network (`ground.models`), in eval mode on `device`.
        encoders: the checkpoint's encoder record (`checkpoint["groundcache"]["encoders"]`).
        checkpoint: path of the checkpoint, for messages and the presence calibration file.
        device: torch device of the network (and of the encoders built for new videos).
        cache: a cache whose video ids (and query texts) can be answered without encoding.
        weights: encoder weights for new videos (see `extract.api.FeatureExtractor.from_specs`);
            None reproduces the recorded weights.
        max_clips: longer videos are decoded with sliding windows of this many clips.
        presence_threshold: presence probability at and above which an event counts as found.
        adapter: the checkpoint's visual adapter (`ground.adapter`), or None. Its LoRA update is
            merged into its blocks, and the adapted encoder's features of a new video (or of a
            cached one, from the cache's block inputs) are the adapter's embeddings.
    """

    def __init__(
        self,
        net: nn.Module,
        encoders: dict,
        *,
        checkpoint: str = "<in memory>",
        device: str | torch.device = "cpu",
        cache: str | os.PathLike | None = None,
        weights: str | dict[str, str | None] | None = None,
        max_clips: int = DEFAULT_MAX_CLIPS,
        presence_threshold: float = UNCALIBRATED_THRESHOLD,
        adapter: VisualAdapter | None = None,
    ) -> None:
        self.net = net.eval()
        self.adapter = adapter
        if adapter is not None:
            adapter.eval().merge()
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.weights = weights
        self.max_clips = max_clips
        self.presence_threshold = presence_threshold
        self.encoder_record = encoders
        self.video_specs = [EncoderSpec.from_dict(d) for d in encoders["video_encoders"]]
        self.text_spec = EncoderSpec.from_dict(encoders["text_encoder"])
        strides = {s.stride_sec for s in self.video_specs}
        if len(strides) != 1:
            raise GroundingInputError(
                f"checkpoint {checkpoint}: video encoders have different strides {sorted(strides)}"
            )
        self.stride_sec = float(strides.pop())
        self.cache: CacheReader | None = None
        self._cached_texts: dict[str, str] = {}  # text -> qid of a cached query with that text
        self._cached_windows: dict[tuple[str, str], list[tuple[float, float]]] = {}
        if cache is not None:
            self.cache = CacheReader(cache)
            check_cache_encoders(self.video_specs, self.text_spec, self.cache, checkpoint)
            if adapter is not None:
                cached = self.cache.block_inputs_spec(adapter.encoder.name)  # names the extract option
                if cached != adapter.spec:
                    raise EncoderMismatchError(
                        f"checkpoint {checkpoint} adapts block inputs {adapter.spec.to_dict()}; cache "
                        f"{self.cache.path} holds {cached.to_dict()}"
                    )
            for item in self.cache.queries():
                self._cached_texts.setdefault(item.text, item.qid)
                if item.windows:
                    self._cached_windows.setdefault((item.vid, item.text), [tuple(w) for w in item.windows])
        self._extractor = None
        self._lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        cache: str | os.PathLike | None = None,
        weights: str | dict[str, str | None] | None = None,
    ) -> Grounder:
        """Load a checkpoint written by `python -m ground fit` (weights_only: no code is unpickled).

        The presence threshold comes from `<path>.presence.json` when it exists.

        Raises:
            FileNotFoundError: no such checkpoint.
            CheckpointError: the checkpoint does not rebuild a GroundingModule
                (`ground.module.load_checkpoint`).
            CheckpointError: the checkpoint lacks its encoder record.
            EncoderMismatchError: `cache` holds features of other encoders.
        """
        path = Path(path)
        module = load_checkpoint(path, device=device)
        encoders = require_encoder_record(
            module, path, "it was not saved by a GroundingModule trained on a cache"
        )
        net = module.net
        threshold = UNCALIBRATED_THRESHOLD
        calibration = presence_path(path)
        if calibration.exists():
            threshold = float(json.loads(calibration.read_text())["threshold"])
        return cls(
            net,
            encoders,
            checkpoint=str(path),
            device=device,
            cache=cache,
            weights=weights,
            max_clips=module.hparams.eval_max_clips or DEFAULT_MAX_CLIPS,
            presence_threshold=threshold,
            adapter=module.adapter,
        )

    # -- what is known about cached videos --------------------------------------------------------

    @property
    def cached_video_ids(self) -> list[str]:
        return [] if self.cache is None else self.cache.video_ids

    def ground_truth(self, vid: str, query: str) -> list[tuple[float, float]] | None:
        """Windows of the cached query with exactly this text on this cached video, if there is one."""
        return self._cached_windows.get((vid, query))

    # -- answering --------------------------------------------------------------------------------

    def ground(
        self,
        video: str | os.PathLike,
        queries: Sequence[str],
        *,
        top_k: int = 5,
        coarse_to_fine: bool | None = None,
    ) -> list[GroundingResult]:
        """Find each query's moments in a video.

        Args:
            video: a video file (a `Path` is always a file), or a video id of the cache; a string
                that is a cached id is answered from the cache.
            queries: one or more non-empty sentences.
            top_k: windows returned per query.
            coarse_to_fine: refine the top window at `FINE_FACTOR` x the feature rate; None uses
                `COARSE_TO_FINE_DEFAULT` where possible (a file, image encoders). True on a cached
                video or with clip encoders is an error.

        Returns:
            One result per query, in order.

        Raises:
            ValueError: empty query list, an empty query, top_k < 1, or coarse-to-fine impossible.
            VideoNotFoundError: `video` is neither a file nor a cached id.
            VideoReadError: the file cannot be decoded.
        """
        queries = _checked_queries(queries, "ground")
        if top_k < 1:
            raise GroundingInputError(f"ground: top_k must be >= 1, got {top_k}")
        with self._lock, torch.inference_mode():
            clip = self._load_video(video)
            refine = self._decide_coarse_to_fine(coarse_to_fine, clip, video)
            text = self._text_features(queries)
            return self._answer(clip, queries, text, top_k, refine)

    def encode_queries(self, queries: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Text features of sentences, to ground them many times without re-encoding (standing queries).

        Returns:
            One `(tokens (L, Dt), pooled (Dt,))` pair per sentence (cached texts are read from the cache).

        Raises:
            GroundingInputError: no queries, or an empty one.
        """
        queries = _checked_queries(queries, "encode_queries")
        with self._lock, torch.inference_mode():
            return self._text_features(queries)

    def ground_features(
        self,
        features: np.ndarray,
        queries: Sequence[str] | None = None,
        *,
        timestamps_sec: np.ndarray | None = None,
        clip_sec: float | None = None,
        duration_sec: float | None = None,
        text_features: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
        labels: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> list[GroundingResult]:
        """Ground queries on precomputed per-clip video features: no video is decoded.

        The features must come from the checkpoint's video encoders (concatenated in checkpoint
        order, `video_dims`); nothing checks more than the dim, so features of another model with
        the same dim give meaningless answers.

        Args:
            features: (T, Dv) per-clip video features, any float dtype.
            queries: sentences (the text encoder runs); or None with `text_features`.
            timestamps_sec: (T, 2) [start, end) of each clip in seconds, increasing, inside
                [0, duration_sec]; or None with `clip_sec`.
            clip_sec: clip length: clip i covers [i * clip_sec, (i + 1) * clip_sec).
            duration_sec: video duration; None takes the end of the last clip.
            text_features: precomputed `(tokens (L, Dt), pooled (Dt,))` per query, instead of
                `queries` (see `encode_queries`).
            labels: what the results call each `text_features` query (default `features[i]`).
            top_k: windows returned per query.

        Returns:
            One result per query, in order; windows in the seconds of `timestamps_sec`.

        Raises:
            FeatureDimError: a feature dim differs from the checkpoint's encoders (both named).
            GroundingInputError: anything else malformed (shapes, non-finite values, timestamps
                that overlap or lie outside the duration, both or neither of queries /
                text_features or timestamps_sec / clip_sec).
        """
        if top_k < 1:
            raise GroundingInputError(f"ground_features: top_k must be >= 1, got {top_k}")
        clip = self._feature_video(features, timestamps_sec, clip_sec, duration_sec)
        if (queries is None) == (text_features is None):
            raise GroundingInputError("ground_features: give either queries or text_features")
        with self._lock, torch.inference_mode():
            if queries is not None:
                if labels is not None:
                    raise GroundingInputError("ground_features: labels name text_features, not queries")
                names = _checked_queries(queries, "ground_features")
                text = self._text_features(names)
            else:
                text = self._checked_text_features(text_features)
                names = list(labels) if labels is not None else [f"features[{i}]" for i in range(len(text))]
                if len(names) != len(text):
                    raise GroundingInputError(
                        f"ground_features: {len(names)} labels for {len(text)} text_features"
                    )
            return self._answer(clip, names, text, top_k, refine=False)

    def video_features(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float]:
        """The features `ground` computes for a video file, as `ground_features` takes them.

        Returns:
            features (T, Dv) float32, timestamps_sec (T, 2), duration_sec.

        Raises:
            VideoNotFoundError: no such file.
            VideoReadError: the file cannot be decoded.
        """
        path = Path(path)
        if not path.is_file():
            raise VideoNotFoundError(f"video {str(path)!r} is not a file")
        with self._lock, torch.inference_mode():
            clip = self._load_video(path)
        return clip.features, clip.timestamps_sec, clip.duration_sec

    def encode_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Features of frames decoded elsewhere (a live stream), resized as files are.

        A pass is padded to the next power of two of its rows, not to the encoder's full batch as
        files are (`extract.api.PassPadding`): 2 frames compute 2 rows, not 64, and the features
        equal those `ground-video` computes for the same frames up to float rounding
        (docs/serving.md, "Live features and offline ones").

        Args:
            frames: N >= 1 RGB frames (H, W, 3) uint8 at their native size.

        Returns:
            (N, Dv) float32: the video encoders' features concatenated in checkpoint order, as
            `ground_features` takes them.

        Raises:
            GroundingInputError: an encoder takes clips (frames_per_feature > 1), not single frames.
        """
        clip_encoders = [s.name for s in self.video_specs if (s.frames_per_feature or 1) > 1]
        if clip_encoders:
            raise GroundingInputError(
                f"checkpoint {self.checkpoint}: clip encoders {clip_encoders} cannot encode single frames"
            )
        with self._lock, torch.inference_mode():
            features = self._feature_extractor().encode_decoded_frames(frames)
        return np.concatenate([features[s.name].astype(np.float32) for s in self.video_specs], axis=1)

    @property
    def video_dims(self) -> dict[str, int]:
        """Feature dim of each video encoder, in the order their features are concatenated."""
        return {s.name: s.dim for s in self.video_specs}

    def _feature_video(
        self,
        features: np.ndarray,
        timestamps_sec: np.ndarray | None,
        clip_sec: float | None,
        duration_sec: float | None,
    ) -> _Video:
        """Precomputed features checked against the checkpoint, with their clip times."""
        features = np.asarray(features)
        expected = sum(self.video_dims.values())
        if features.ndim != 2 or len(features) == 0:
            raise GroundingInputError(f"video features must be (T >= 1, D), got shape {features.shape}")
        if features.shape[1] != expected:
            raise FeatureDimError(
                f"video features have dim {features.shape[1]}; checkpoint {self.checkpoint} expects dim "
                f"{expected} ({describe_specs(self.video_specs)})"
            )
        if not np.issubdtype(features.dtype, np.floating) or not np.isfinite(features).all():
            raise GroundingInputError(
                f"video features must be finite floats (dtype {features.dtype}; "
                f"first bad clip {_first_bad_row(features)})"
            )
        t = len(features)
        if (timestamps_sec is None) == (clip_sec is None):
            raise GroundingInputError("video features need either clip timestamps_sec or a clip_sec")
        if clip_sec is not None:
            if not (math.isfinite(clip_sec) and clip_sec > 0):
                raise GroundingInputError(f"clip_sec must be a positive number, got {clip_sec}")
            i = np.arange(t, dtype=np.float64)
            ts = np.stack([i * clip_sec, (i + 1) * clip_sec], axis=1)  # (T, 2)
        else:
            ts = np.asarray(timestamps_sec, dtype=np.float64)
            if ts.shape != (t, 2):
                raise GroundingInputError(f"timestamps_sec must be ({t}, 2) for {t} clips, got {ts.shape}")
            bad = ~np.isfinite(ts).all(axis=1) | (ts[:, 0] < 0) | (ts[:, 1] <= ts[:, 0])
            bad[1:] |= ts[1:, 0] < ts[:-1, 1] - _EDGE_TOLERANCE_SEC
            if bad.any():
                i = int(np.argmax(bad))
                raise GroundingInputError(
                    f"clip {i}: timestamps [{ts[i, 0]}, {ts[i, 1]}] must be finite, non-negative, "
                    "start < end, and not before the previous clip's end"
                )
        end_sec = float(ts[-1, 1])
        if duration_sec is None:
            duration_sec = end_sec
        elif not (math.isfinite(duration_sec) and duration_sec >= end_sec - _EDGE_TOLERANCE_SEC):
            raise GroundingInputError(
                f"duration_sec {duration_sec} ends before the last clip's end {end_sec}"
            )
        return _Video(features.astype(np.float32), ts, float(duration_sec), path=None)

    def _checked_text_features(
        self, text_features: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        dim = self.text_spec.dim
        if len(text_features) == 0:
            raise GroundingInputError("ground_features: no text_features given")
        for i, pair in enumerate(text_features):
            tokens, pooled = (np.asarray(a) for a in pair)
            if tokens.ndim != 2 or len(tokens) == 0 or pooled.ndim != 1:
                raise GroundingInputError(
                    f"text_features[{i}]: tokens must be (L >= 1, D) and pooled (D,), got "
                    f"{tokens.shape} and {pooled.shape}"
                )
            for what, got in (("tokens", tokens.shape[1]), ("pooled", pooled.shape[0])):
                if got != dim:
                    raise FeatureDimError(
                        f"text_features[{i}]: {what} have dim {got}; checkpoint {self.checkpoint} expects "
                        f"dim {dim} ({describe_specs([self.text_spec])})"
                    )
            for what, a in (("tokens", tokens), ("pooled", pooled)):
                if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
                    raise GroundingInputError(f"text_features[{i}]: {what} must be finite floats")
            out.append((tokens.astype(np.float32), pooled.astype(np.float32)))
        return out

    def _answer(
        self,
        clip: _Video,
        queries: Sequence[str],
        text: list[tuple[np.ndarray, np.ndarray]],
        top_k: int,
        refine: bool,
    ) -> list[GroundingResult]:
        """Run the network on one video against every query (the caller holds the lock)."""
        batch = _batch(clip, text, self.device)
        preds = self._decode(batch, top_k)
        refined = [False] * len(queries)
        windows = preds.windows.double().cpu().numpy()  # (B, K, 2)
        scores = preds.scores.double().cpu().numpy()  # (B, K)
        if refine:
            windows, refined = self._refine(clip, text, windows, scores)
        return [
            self._result(i, query, clip, windows[i], scores[i], preds, refined[i], batch)
            for i, query in enumerate(queries)
        ]

    def _result(
        self,
        i: int,
        query: str,
        clip: _Video,
        windows: np.ndarray,
        scores: np.ndarray,
        preds: Predictions,
        refined: bool,
        batch: dict,
    ) -> GroundingResult:
        real = np.isfinite(scores)
        out = [
            (*_inside(float(s), float(e), clip.duration_sec, query), float(c))
            for (s, e), c in zip(windows[real], scores[real], strict=True)
        ]
        presence = None if preds.presence is None else float(preds.presence[i])
        saliency = None
        if preds.saliency is not None:
            centres = clip.timestamps_sec.mean(axis=1)
            values = preds.saliency[i, : len(centres)].double().cpu().tolist()
            saliency = [(float(t), float(v)) for t, v in zip(centres, values, strict=True)]
        return GroundingResult(
            query=query,
            duration_sec=clip.duration_sec,
            windows=out,
            presence=presence,
            found=presence is None or presence >= self.presence_threshold,
            saliency=saliency,
            refined=refined,
        )

    def _decode(self, batch: dict, k: int) -> Predictions:
        if batch["video"].shape[1] <= self.max_clips:
            return self.net.decode(self.net(batch), batch, k)
        return sliding_window_decode(self.net, batch, k, self.max_clips)

    # -- features ---------------------------------------------------------------------------------

    def _feature_extractor(self):
        """The encoders of the checkpoint, built on first use (extract's heavy deps load only here)."""
        if self._extractor is None:
            from extract.api import FeatureExtractor

            self._extractor = FeatureExtractor.from_specs(
                self.video_specs, self.text_spec, weights=self.weights, device=self.device
            )
            if self.adapter is not None:
                adapter = self.adapter
                self._extractor.adapt_video_encoder(adapter.encoder.name, adapter, adapter.spec)
        return self._extractor

    def _load_video(self, video: str | os.PathLike) -> _Video:
        if isinstance(video, str) and self.cache is not None and video in self.cache.video_ids:
            return self._cached_video(video)
        path = Path(video)
        if not path.is_file():
            where = f" nor a video id of the cache {self.cache.path}" if self.cache is not None else ""
            raise VideoNotFoundError(f"video {str(video)!r} is not a file{where}")
        extractor = self._feature_extractor()
        with _reading(path):
            features, timestamps_sec, duration_sec = extractor.encode_video(path)
        return _Video(
            features=np.concatenate([features[s.name].astype(np.float32) for s in self.video_specs], axis=1),
            timestamps_sec=np.asarray(timestamps_sec, dtype=np.float64),
            duration_sec=float(duration_sec),
            path=path,
        )

    def _cached_video(self, vid: str) -> _Video:
        reader = self.cache
        first = self.video_specs[0].name
        timestamps = reader.video_timestamps(vid, first)
        for spec in self.video_specs[1:]:
            if not np.allclose(reader.video_timestamps(vid, spec.name), timestamps, atol=1e-4):
                raise GroundingInputError(
                    f"cache {reader.path}: video {vid}: timestamps of {first!r} and {spec.name!r} differ"
                )
        features = np.concatenate(
            [self._cached_features(vid, s).astype(np.float32) for s in self.video_specs], axis=1
        )
        return _Video(features, timestamps, reader.video_meta(vid).duration_sec, path=None)

    def _cached_features(self, vid: str, spec: EncoderSpec) -> np.ndarray:
        """(T, D) features of one encoder of a cached video; the adapter's for the adapted encoder,
        stored as the cache would store them (the spec's dtype)."""
        if self.adapter is None or spec.name != self.adapter.encoder.name:
            return self.cache.video_features(vid, spec.name)
        hidden = torch.from_numpy(self.cache.video_block_inputs(vid, spec.name)).to(self.device)  # (T, L, W)
        with torch.inference_mode():
            embedded = self.adapter(hidden)  # (T, D)
        return embedded.cpu().numpy().astype(spec.numpy_dtype)

    def _text_features(self, queries: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(tokens (L, Dt), pooled (Dt,)) per query: cached texts are read, the others encoded."""
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        name = self.text_spec.name
        for i, query in enumerate(queries):
            qid = self._cached_texts.get(query)
            if qid is not None:
                out[i] = (self.cache.query_tokens(qid, name), self.cache.query_pooled(qid, name))
        missing = [i for i in range(len(queries)) if i not in out]
        if missing:
            encoded = self._feature_extractor().encode_texts([queries[i] for i in missing])
            out.update(zip(missing, encoded, strict=True))
        return [out[i] for i in range(len(queries))]

    # -- coarse to fine ---------------------------------------------------------------------------

    def _decide_coarse_to_fine(self, requested: bool | None, clip: _Video, video: object) -> bool:
        if requested is False:
            return False
        clip_encoders = [s.name for s in self.video_specs if (s.frames_per_feature or 1) > 1]
        reason = None
        if clip.path is None:
            reason = f"video {video!r} is answered from cached features (no frames to re-sample)"
        elif clip_encoders:
            reason = f"clip encoders {clip_encoders} cannot be re-sampled frame by frame"
        if reason is None:
            return COARSE_TO_FINE_DEFAULT if requested is None else True
        if requested:
            raise GroundingInputError(f"coarse-to-fine is not possible: {reason}")
        return False

    def _refine(
        self, clip: _Video, text: list[tuple[np.ndarray, np.ndarray]], windows: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, list[bool]]:
        """Re-run each query on its best region at FINE_FACTOR x the rate; keep an overlapping fine top-1."""
        fine_stride_sec = self.stride_sec / FINE_FACTOR
        grids = []
        for i in range(len(text)):
            start, end = windows[i, 0]
            margin = max(FINE_MARGIN_CLIPS * self.stride_sec, FINE_MARGIN_FRACTION * (end - start))
            grids.append(
                fine_grid(max(0.0, start - margin), min(clip.duration_sec, end + margin), fine_stride_sec)
            )
        # One decode of every query's region: the union of the times, each frame decoded once.
        times = np.concatenate([g.mean(axis=1) for g in grids])
        unique, inverse = np.unique(times, return_inverse=True)
        with _reading(clip.path):
            fine = self._feature_extractor().encode_video_at(clip.path, unique)
        fine_features = np.concatenate([fine[s.name].astype(np.float32) for s in self.video_specs], axis=1)
        fine_features = fine_features[inverse]  # (sum N_i, Dv)
        bounds = np.cumsum([0] + [len(g) for g in grids])
        out = windows.copy()
        refined = []
        for i, grid in enumerate(grids):
            region = _Video(fine_features[bounds[i] : bounds[i + 1]], grid, clip.duration_sec, clip.path)
            batch = _batch(region, [text[i]], self.device)
            best = self._decode(batch, 1).windows[0, 0].double().cpu()  # (2,)
            coarse = torch.as_tensor(windows[i, 0], dtype=torch.float64)
            overlap = float(temporal_iou(best[None], coarse[None])[0, 0]) > 0
            if overlap:
                out[i, 0] = best.numpy()
            refined.append(overlap)
        return out, refined


def _checked_queries(queries: Sequence[str], where: str) -> list[str]:
    queries = list(queries)
    if not queries:
        raise GroundingInputError(f"{where}: no queries given")
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise GroundingInputError(f"{where}: query {i} is empty")
    return queries


def _first_bad_row(features: np.ndarray) -> int | None:
    if not np.issubdtype(features.dtype, np.floating):
        return None
    return int(np.argmax(~np.isfinite(features).all(axis=1)))


def fine_grid(lo_sec: float, hi_sec: float, stride_sec: float) -> np.ndarray:
    """(N, 2) consecutive windows of `stride_sec` covering [lo_sec, hi_sec], the last one cut at hi_sec."""
    if not hi_sec > lo_sec:
        raise ValueError(f"fine_grid: empty region [{lo_sec}, {hi_sec}]")
    n = max(1, math.ceil((hi_sec - lo_sec) / stride_sec - 1e-9))
    edges = lo_sec + stride_sec * np.arange(n + 1, dtype=np.float64)
    edges[-1] = hi_sec
    return np.stack([edges[:-1], edges[1:]], axis=1)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a failure to decode `path` into VideoReadError naming it."""
    try:
        yield
    except RuntimeError as err:
        import extract.api as api

        # extract.api raises VideoDecodeError (a RuntimeError). When extract.api exports that name
        # only decoding failures are translated; otherwise any RuntimeError of the decode/encode step.
        decode_error = getattr(api, "VideoDecodeError", RuntimeError)
        if isinstance(err, decode_error) and not isinstance(err, VideoReadError):
            raise VideoReadError(f"{path}: cannot read the video: {err}") from err
        raise


def _inside(start: float, end: float, duration_sec: float, query: str) -> tuple[float, float]:
    """The window, with float32 rounding past the video's ends snapped back; a real excess raises."""
    if start < -_EDGE_TOLERANCE_SEC or end > duration_sec + _EDGE_TOLERANCE_SEC or end < start:
        raise RuntimeError(
            f"query {query!r}: decoded window [{start}, {end}] lies outside the video [0, {duration_sec}]"
        )
    return max(0.0, start), min(duration_sec, end)


def _batch(clip: _Video, text: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device) -> dict:
    """The batch dict of docs/architecture.md: one video against every query of `text`."""
    b = len(text)
    t = len(clip.features)
    lengths = [len(tokens) for tokens, _ in text]
    n_tok = max(lengths)
    tokens = np.zeros((b, n_tok, text[0][0].shape[1]), dtype=np.float32)
    for i, (tok, _) in enumerate(text):
        tokens[i, : len(tok)] = tok
    video = torch.from_numpy(clip.features).to(device)
    return {
        "video": video[None].expand(b, -1, -1),  # (B, T, Dv)
        "video_mask": torch.ones(b, t, dtype=torch.bool, device=device),
        "timestamps": torch.from_numpy(clip.timestamps_sec).float().to(device)[None].expand(b, -1, -1),
        "duration": torch.full((b,), clip.duration_sec, dtype=torch.float32, device=device),
        "text": torch.from_numpy(tokens).to(device),  # (B, L, Dt)
        "text_mask": torch.arange(n_tok, device=device)[None, :]
        < torch.tensor(lengths, device=device)[:, None],
        "text_pooled": torch.from_numpy(np.stack([p.astype(np.float32) for _, p in text])).to(device),
        "windows": torch.zeros(b, 1, 2, device=device),
        "window_mask": torch.zeros(b, 1, dtype=torch.bool, device=device),
        "saliency": torch.zeros(b, t, device=device),
        "saliency_mask": torch.zeros(b, t, dtype=torch.bool, device=device),
        "qid": [f"query[{i}]" for i in range(b)],
        "vid": ["video"] * b,
    }


# -- presence calibration ---------------------------------------------------------------------------


def presence_scores(grounder: Grounder, split: SplitTensors, batch_size: int = 64) -> Tensor:
    """Presence probability of every query of `split` against its own video, (Q,)."""
    out = []
    with grounder._lock, torch.inference_mode():
        for lo in range(0, len(split), batch_size):
            idx = torch.arange(lo, min(lo + batch_size, len(split)))
            batch = {
                k: v.to(grounder.device) if isinstance(v, Tensor) else v for k, v in split.gather(idx).items()
            }
            preds = grounder._decode(batch, 1)
            if preds.presence is None:
                raise GroundingInputError(
                    f"checkpoint {grounder.checkpoint}: the network has no presence head to calibrate"
                )
            out.append(preds.presence.double().cpu())
    return torch.cat(out)


def calibrate_presence(
    grounder: Grounder, cache: str | os.PathLike, split: str = "val", *, save: bool = True
) -> float:
    """Choose the presence threshold that maximizes Youden's J (TPR - FPR) on a labelled split.

    Positives are the split's queries with their own video; negatives the same queries with the
    next other video of the split (videos in cache order, wrapping around). Youden's J rather than
    F1: it weighs misses and false alarms alike and does not depend on the positive:negative
    ratio, which here is set by construction (1:1) rather than by how users ask.

    Args:
        grounder: the loaded checkpoint.
        cache: a cache made with the checkpoint's encoders.
        split: the split to calibrate on (never the test split you report on).
        save: write `<checkpoint>.presence.json` and set `grounder.presence_threshold`.

    Returns:
        The threshold (a presence probability).
    """
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    with CacheReader(cache) as reader:
        check_cache_encoders(grounder.video_specs, grounder.text_spec, reader, grounder.checkpoint)
        arrays = reader.load_split(split, [s.name for s in grounder.video_specs], grounder.text_spec.name)
    if len(arrays.vids) < 2:
        raise GroundingInputError(
            f"{cache}: split {split!r} has {len(arrays.vids)} video; negatives need at least 2"
        )
    positives = SplitTensors.from_arrays(arrays, split=split)
    # Each query meets the next video of the split: never its own, since video ids are distinct.
    other = (positives.video_index + 1) % len(arrays.vids)
    negatives = dataclasses.replace(
        positives, video_index=other, vids=[arrays.vids[i] for i in other.tolist()]
    )
    scores = torch.cat([presence_scores(grounder, positives), presence_scores(grounder, negatives)])
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).long()
    fpr, tpr, thresholds = binary_roc(scores, labels)
    best = int(torch.argmax(tpr - fpr))
    # binary_roc's first threshold is above every score (nothing found); it cannot win unless no
    # threshold separates anything, and then the uncalibrated default is the honest answer.
    threshold = float(thresholds[best]) if best > 0 else UNCALIBRATED_THRESHOLD
    record = {
        "threshold": threshold,
        "criterion": "youden_j",
        "split": split,
        "cache": str(cache),
        "n_positive": len(positives),
        "n_negative": len(negatives),
        "tpr": float(tpr[best]),
        "fpr": float(fpr[best]),
        "auroc": float(binary_auroc(scores, labels)),
    }
    if save:
        if grounder.checkpoint == "<in memory>":
            raise ValueError("calibrate_presence: this Grounder has no checkpoint path to save beside")
        presence_path(grounder.checkpoint).write_text(json.dumps(record, indent=2) + "\n")
        grounder.presence_threshold = threshold
    log.info(
        "presence threshold %.4f (TPR %.3f, FPR %.3f, AUROC %.3f)",
        threshold,
        record["tpr"],
        record["fpr"],
        record["auroc"],
    )
    return threshold


# -- coarse-to-fine measurement ---------------------------------------------------------------------


def measure_coarse_to_fine(
    grounder: Grounder, cache: str | os.PathLike, splits: Sequence[str]
) -> dict[str, float]:
    """Top-1 boundary error of the coarse pass and of coarse-to-fine on labelled cached queries.

    Each video is read from its source file (recorded in the cache) and grounded twice, without
    and with refinement. A prediction is compared with the ground-truth window it overlaps most.

    Returns:
        `queries`, `coarse_err_sec` / `fine_err_sec` (mean |start err| + |end err|),
        `coarse_miou` / `fine_miou`, `coarse_r1_05` / `fine_r1_05` / `coarse_r1_07` / `fine_r1_07`
        (percent) and `refined` (fraction of queries whose top window the fine pass replaced).
    """
    by_video: dict[str, list] = {}
    with CacheReader(cache) as reader:
        for split in splits:
            for item in reader.queries(split):
                if item.windows:
                    by_video.setdefault(item.vid, []).append(item)
        sources = {vid: reader.video_meta(vid).source for vid in by_video}
    if not by_video:
        raise GroundingInputError(f"{cache}: splits {list(splits)} have no labelled queries")
    rows: dict[str, list[float]] = {
        k: [] for k in ("coarse_err", "fine_err", "coarse_iou", "fine_iou", "refined")
    }
    for vid, items in by_video.items():
        source = Path(sources[vid])
        if not source.is_file():
            raise FileNotFoundError(f"video {vid}: source file {source} (recorded in {cache}) is missing")
        texts = [q.text for q in items]
        coarse = grounder.ground(source, texts, top_k=1, coarse_to_fine=False)
        fine = grounder.ground(source, texts, top_k=1, coarse_to_fine=True)
        for item, c, f in zip(items, coarse, fine, strict=True):
            gt = torch.tensor(item.windows, dtype=torch.float64)  # (W, 2)
            for name, result in (("coarse", c), ("fine", f)):
                pred = torch.tensor([result.windows[0][:2]], dtype=torch.float64)  # (1, 2)
                iou = temporal_iou(pred, gt)[0]  # (W,)
                best = gt[int(iou.argmax())]
                rows[f"{name}_err"].append(float((pred[0] - best).abs().sum()))
                rows[f"{name}_iou"].append(float(iou.max()))
            rows["refined"].append(float(f.refined))
    ious = {name: np.asarray(rows[f"{name}_iou"]) for name in ("coarse", "fine")}
    return {
        "queries": len(rows["refined"]),
        "coarse_err_sec": float(np.mean(rows["coarse_err"])),
        "fine_err_sec": float(np.mean(rows["fine_err"])),
        "coarse_miou": float(ious["coarse"].mean() * 100),
        "fine_miou": float(ious["fine"].mean() * 100),
        "coarse_r1_05": float((ious["coarse"] >= 0.5).mean() * 100),
        "fine_r1_05": float((ious["fine"] >= 0.5).mean() * 100),
        "coarse_r1_07": float((ious["coarse"] >= 0.7).mean() * 100),
        "fine_r1_07": float((ious["fine"] >= 0.7).mean() * 100),
        "refined": float(np.mean(rows["refined"])),
    }


# -- command lines ----------------------------------------------------------------------------------


def _load(args: argparse.Namespace, cache: str | None) -> Grounder:
    return Grounder.from_checkpoint(args.ckpt, device=args.device, cache=cache)


def load_array(path: str | os.PathLike) -> np.ndarray:
    """A `.npy` array (no pickles), or GroundingInputError naming the file."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise GroundingInputError(f"{path}: no such file") from None
    except (OSError, ValueError) as err:
        raise GroundingInputError(f"{path}: not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise GroundingInputError(f"{path}: an .npz archive; save one array with numpy.save")
    return array


def ground_video_main(argv: Sequence[str] | None = None) -> int:
    """`python -m ground ground-video --ckpt M.ckpt --video V.mp4 --query "..." [--query ...]`.

    With `--features F.npy --clip-sec S` (or `--timestamps TS.npy`) precomputed features are
    grounded instead of a video (`Grounder.ground_features`).
    """
    parser = argparse.ArgumentParser(
        prog="python -m ground ground-video", description="Ground sentences in a video."
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `python -m ground fit`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file, or a video id of --cache")
    source.add_argument(
        "--features",
        help="precomputed (T, D) per-clip video features (.npy) of the checkpoint's video encoders; "
        "needs --clip-sec or --timestamps",
    )
    parser.add_argument("--clip-sec", type=float, default=None, help="with --features: seconds per clip")
    parser.add_argument(
        "--timestamps", default=None, help="with --features: (T, 2) [start, end) seconds per clip (.npy)"
    )
    parser.add_argument("--query", action="append", required=True, help="a sentence (repeat for several)")
    parser.add_argument("--top-k", type=int, default=5, help="windows per query")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-coarse-to-fine", action="store_true", help="skip the fine re-sampling pass")
    parser.add_argument(
        "--cache", default=None, help="cache whose video ids and query texts need no encoding"
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    args = parser.parse_args(argv)
    if args.features is None and (args.clip_sec is not None or args.timestamps is not None):
        parser.error("--clip-sec and --timestamps go with --features")
    grounder = _load(args, args.cache)
    if args.features is not None:
        results = grounder.ground_features(
            load_array(args.features),
            args.query,
            timestamps_sec=None if args.timestamps is None else load_array(args.timestamps),
            clip_sec=args.clip_sec,
            top_k=args.top_k,
        )
    else:
        results = grounder.ground(
            args.video, args.query, top_k=args.top_k, coarse_to_fine=False if args.no_coarse_to_fine else None
        )
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Queries and paths are user text: escaped, or rich reads "[...]" in them as markup.
    table = Table(
        "query",
        "found",
        "presence",
        "rank",
        "start (s)",
        "end (s)",
        "score",
        title=escape(str(args.video or args.features)),
    )
    for r in results:
        presence = "-" if r.presence is None else f"{r.presence:.3f}"
        for rank, (start, end, score) in enumerate(r.windows, 1):
            first = rank == 1
            table.add_row(
                escape(r.query) if first else "",
                ("yes" if r.found else "[red]not found[/red]") if first else "",
                presence if first else "",
                f"{rank}" + (" *" if first and r.refined else ""),
                f"{start:.2f}",
                f"{end:.2f}",
                f"{score:.3f}",
            )
    console = Console()
    console.print(table)
    console.print(f"presence threshold {grounder.presence_threshold:.3f}; * = refined by coarse-to-fine")
    return 0


def calibrate_main(argv: Sequence[str] | None = None) -> int:
    """`python -m ground calibrate-presence --ckpt M.ckpt --cache C.h5 [--split val]`."""
    parser = argparse.ArgumentParser(
        prog="python -m ground calibrate-presence",
        description="Choose the presence ('not found') threshold on a labelled split "
        "(saved as <ckpt>.presence.json).",
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--cache", required=True, help="cache made with the checkpoint's encoders")
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    grounder = _load(args, None)
    threshold = calibrate_presence(grounder, args.cache, args.split)
    record = json.loads(presence_path(args.ckpt).read_text())
    print(
        f"presence threshold {threshold:.4f} (Youden's J on {args.split}: TPR {record['tpr']:.3f}, "
        f"FPR {record['fpr']:.3f}, AUROC {record['auroc']:.3f}) -> {presence_path(args.ckpt)}"
    )
    return 0


def bench_coarse_to_fine_main(argv: Sequence[str] | None = None) -> int:
    """`python -m ground bench-coarse-to-fine --ckpt M.ckpt --cache C.h5 [--split val --split test]`."""
    parser = argparse.ArgumentParser(
        prog="python -m ground bench-coarse-to-fine",
        description="Top-1 boundary error of the coarse pass vs coarse-to-fine on a cache's labelled videos.",
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--cache", required=True, help="cache whose video sources are readable files")
    parser.add_argument("--split", action="append", default=None, help="splits (default: val and test)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    splits = args.split or ["val", "test"]
    grounder = _load(args, None)
    numbers = measure_coarse_to_fine(grounder, args.cache, splits)
    print(json.dumps({"splits": splits, **numbers}, indent=2))
    return 0


if __name__ == "__main__":
    from ground.cli import main

    sys.exit(main(["ground-video", *sys.argv[1:]]))
