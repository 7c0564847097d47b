"""The cache contract: schema version, encoder specs and the records stored per video and query.

Everything here is plain Python + numpy (no torch), so both stages and third-party tools can
import it. The on-disk layout that stores these records is described in docs/cache_schema.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cache_schema.errors import GroundcacheError

SCHEMA_VERSION = "1.3.0"
"""Semantic version of the on-disk layout this code writes to a new cache (docs/cache_schema.md)."""

GROWN_SCHEMA_VERSION = "2.0.0"
"""``schema_version`` (and ``min_reader_version``) of a cache once an encoder was added to it.

Readers of 1.0.0 and 1.1.0 compare major versions only and would fail on an added encoder's
arrays with a missing-array error; a major version they do not know makes them refuse the cache
in one line naming both versions instead. Everything else in the layout is that of
`SCHEMA_VERSION`."""

READABLE_VERSIONS: dict[str, str] = {"1": SCHEMA_VERSION, "2": GROWN_SCHEMA_VERSION}
"""Major version -> the newest schema of that major this code reads. A cache is read when its
major is here and its ``min_reader_version`` (when present) is not newer than the entry of that
version's major."""

Modality = Literal["video", "text"]
MODALITIES: tuple[Modality, ...] = ("video", "text")
FeatureDtype = Literal["float16", "float32", "bfloat16"]
Split = str
"""Split names are free text ("train", "val", "test", "val_1", ...), validated as non-empty."""


class SchemaError(GroundcacheError, ValueError):
    """A record or a cache breaks the cache contract. The message names the offending item."""


class SchemaVersionError(SchemaError):
    """A cache was written with a major schema version this reader does not know."""


class EncoderNotCommittedError(SchemaError, KeyError):
    """An encoder's features are asked for an item (video or query) where it is not committed."""


class MissingBlockInputsError(SchemaError, KeyError):
    """A cache has no block inputs of an encoder; names the cache, the encoder and the extract option."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UncoveredItemsError(SchemaError):
    """A split asks for several encoders and some of its items lack one; the message gives the counts."""


class CacheReadError(SchemaError):
    """A store cannot be opened or read (truncated, corrupt, not HDF5/Zarr); the message names the path."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything a reader needs to know about one encoder's features.

    Video encoders fill ``stride_sec``, ``frames_per_feature`` and ``input_size``; text encoders
    fill ``tokenizer`` and ``max_tokens``. The spec is written verbatim into the cache metadata.
    """

    name: str
    """Registry name, unique per modality within a cache (e.g. ``clip_vit_b32``)."""
    modality: Modality
    dim: int
    """Feature dimension D of ``features`` / ``tokens`` / ``pooled``."""
    dtype: FeatureDtype = "float16"
    """Storage dtype of the features."""
    weights_id: str = ""
    """Where the weights came from: hub name + tag, a local path, or ``none`` for random init."""
    library: str = ""
    """Library that ran the encoder (``open_clip 3.3.0``, ``transformers 5.23.0``, ``torch``)."""
    normalized: bool = False
    """Whether features were L2-normalized before storage."""
    stride_sec: float | None = None
    """Video: seconds between consecutive features (1 / fps)."""
    frames_per_feature: int | None = None
    """Video: frames fed to the encoder per feature (1 for image encoders, 16 for C3D)."""
    input_size: int | None = None
    """Video: side of the square model input in pixels."""
    tokenizer: str | None = None
    """Text: tokenizer identifier."""
    max_tokens: int | None = None
    """Text: context length; longer queries are truncated by the tokenizer and reported."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise SchemaError(f"encoder name {self.name!r} must be non-empty and contain no '/'")
        if self.modality not in MODALITIES:
            raise SchemaError(f"encoder {self.name!r}: modality {self.modality!r} not in {MODALITIES}")
        if self.dim <= 0:
            raise SchemaError(f"encoder {self.name!r}: dim must be positive, got {self.dim}")
        if self.dtype not in ("float16", "float32", "bfloat16"):
            raise SchemaError(f"encoder {self.name!r}: dtype {self.dtype!r} is not supported")
        if self.modality == "video" and (self.stride_sec is None or self.stride_sec <= 0):
            raise SchemaError(f"video encoder {self.name!r} needs a positive stride_sec")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SchemaError(f"encoder spec has unknown fields {sorted(unknown)}")
        return cls(**data)

    @property
    def numpy_dtype(self) -> np.dtype:
        # bfloat16 has no numpy dtype: stored as float32 on disk, recorded as bf16 for provenance.
        return np.dtype("float32" if self.dtype == "bfloat16" else self.dtype)


@dataclass(frozen=True)
class BlockInputsSpec:
    """The optional block-input array of one video encoder (schema 1.3.0).

    For every feature the cache then also holds the hidden states that enter the encoder's block
    N-K, all tokens in the encoder's own layout (``prefix_tokens`` class/register tokens, then the
    patch grid row by row), so a LoRA adapter can train the last K blocks from the cache.
    Stored as ``video/<encoder>/block_inputs`` (sum T, tokens, width), row i belonging to feature
    row i of ``video/<encoder>/features``.
    """

    encoder: str
    """Name of the video encoder (a key of the cache's video encoder table)."""
    blocks: int
    """K: the hidden states enter block ``depth - blocks``; the adapter holds the last K blocks."""
    depth: int
    """N: the encoder's number of transformer blocks."""
    tokens: int
    """L: tokens per frame, after pooling."""
    width: int
    """W: token width."""
    prefix_tokens: int
    """Class and register tokens before the patch grid."""
    grid: int
    """Side of the patch grid before pooling."""
    pool: int = 1
    """P: the patch grid was averaged over P x P cells. With P > 1 the adapter sees fewer tokens
    than the encoder did, so its output differs from the cached features even at a zero update."""
    dtype: FeatureDtype = "float16"

    def __post_init__(self) -> None:
        if not 1 <= self.blocks <= self.depth:
            raise SchemaError(
                f"encoder {self.encoder!r}: block inputs of K={self.blocks} blocks, but the encoder has "
                f"{self.depth}"
            )
        if min(self.tokens, self.width, self.grid, self.pool) < 1 or self.prefix_tokens < 0:
            raise SchemaError(f"encoder {self.encoder!r}: block inputs spec {self} has a non-positive size")
        if self.dtype not in ("float16", "float32"):
            raise SchemaError(f"encoder {self.encoder!r}: block inputs dtype {self.dtype!r} is not supported")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockInputsSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SchemaError(f"block inputs spec has unknown fields {sorted(unknown)}")
        return cls(**data)

    @property
    def row_shape(self) -> tuple[int, int]:
        return (self.tokens, self.width)

    @property
    def bytes_per_frame(self) -> int:
        return self.tokens * self.width * np.dtype(self.dtype).itemsize


QUARTER_TURNS_DEG: tuple[int, ...] = (0, 90, 180, 270)


@dataclass(frozen=True)
class Orientation:
    """How a video's decoded pictures were turned to come out as players show them.

    A container's display matrix (a phone's portrait video says "turn 90 degrees clockwise")
    maps to one of the eight quarter-turn/mirror transforms. It is stored in one canonical form:
    mirror left-right first when ``hflip``, then turn clockwise by ``rotation_deg``. A top-bottom
    mirror is therefore ``hflip=True, rotation_deg=180``.
    """

    rotation_deg: int = 0
    """Clockwise turn in degrees: 0, 90, 180 or 270."""
    hflip: bool = False
    """Whether the picture is mirrored left-right before the turn."""

    def __post_init__(self) -> None:
        if self.rotation_deg not in QUARTER_TURNS_DEG or isinstance(self.rotation_deg, bool):
            raise SchemaError(
                f"orientation rotation_deg must be one of {QUARTER_TURNS_DEG}, got {self.rotation_deg!r}"
            )
        if not isinstance(self.hflip, bool):
            raise SchemaError(f"orientation hflip must be true or false, got {self.hflip!r}")

    @property
    def is_identity(self) -> bool:
        """True when the pictures are shown as decoded."""
        return self.rotation_deg == 0 and not self.hflip

    @property
    def swaps_sides(self) -> bool:
        """True when the shown picture is the decoded one's height wide (a quarter turn)."""
        return self.rotation_deg in (90, 270)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Orientation:
        """Parse a cache record's ``orientation``; SchemaError names what is wrong with it."""
        if not isinstance(data, dict) or set(data) != {"rotation_deg", "hflip"}:
            raise SchemaError(f"orientation must be {{rotation_deg, hflip}}, got {data!r}")
        return cls(**data)


@dataclass
class VideoItem:
    """One video: features per video encoder and the time window of each feature."""

    vid: str
    duration_sec: float
    features: dict[str, np.ndarray]
    """Encoder name -> (T, D) array."""
    timestamps_sec: dict[str, np.ndarray]
    """Encoder name -> (T, 2) float64 [start, end) of each feature's window, in seconds."""
    fps: float = float("nan")
    """Native frame rate reported by the decoder (NaN when unknown, e.g. imported features)."""
    n_frames: int = -1
    """Native frame count (-1 when unknown)."""
    source: str = ""
    """Path (or URL) of the source video."""
    orientation: Orientation | None = None
    """How the decoded pictures were turned/mirrored before encoding (None when unknown, e.g.
    imported features or caches written before schema 1.1.0)."""
    block_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    """Encoder name -> (T, L, W) hidden states entering its block N-K, for the encoders the cache
    stores block inputs of (`BlockInputsSpec`); empty otherwise."""


@dataclass
class QueryItem:
    """One sentence to ground in one video, with its labels and text features."""

    qid: str
    vid: str
    text: str
    split: Split
    windows: list[tuple[float, float]] = field(default_factory=list)
    """Ground-truth [start_sec, end_sec] windows; empty for unlabelled (test) queries."""
    saliency: np.ndarray | None = None
    """(n_clips, n_annotators) highlight scores on a grid of ``saliency_clip_sec`` clips."""
    saliency_clip_sec: float | None = None
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    """Text encoder name -> (L, D) per-token features (padding removed)."""
    pooled: dict[str, np.ndarray] = field(default_factory=dict)
    """Text encoder name -> (D,) sentence embedding."""


def check_timestamps(item_id: str, ts: np.ndarray, duration_sec: float, atol: float = 1e-3) -> list[str]:
    """Return every violation of the timestamp invariants for one video encoder's (T, 2) array."""
    problems: list[str] = []
    if ts.ndim != 2 or ts.shape[1] != 2 or ts.shape[0] < 1:
        return [f"video {item_id}: timestamps_sec must be (T>=1, 2), got {ts.shape}"]
    if not np.all(np.isfinite(ts)):
        problems.append(f"video {item_id}: timestamps_sec contain NaN/Inf")
        return problems
    if np.any(ts[:, 1] <= ts[:, 0]):
        bad = int(np.argmax(ts[:, 1] <= ts[:, 0]))
        problems.append(f"video {item_id}: feature {bad} window {ts[bad].tolist()} has end <= start")
    if ts.shape[0] > 1 and np.any(np.diff(ts[:, 0]) <= 0):
        bad = int(np.argmax(np.diff(ts[:, 0]) <= 0)) + 1
        problems.append(f"video {item_id}: timestamps not increasing at feature {bad}")
    if ts[0, 0] < -atol or ts[-1, 1] > duration_sec + atol:
        problems.append(
            f"video {item_id}: timestamps span [{ts[0, 0]:.3f}, {ts[-1, 1]:.3f}] s, "
            f"outside the duration [0, {duration_sec:.3f}] s"
        )
    return problems


def check_windows(
    qid: str, windows: list[tuple[float, float]] | np.ndarray, duration_sec: float, atol: float = 1e-3
) -> list[str]:
    """Return every violation of the window invariants: finite, start < end, inside [0, duration]."""
    problems = []
    for start, end in np.asarray(windows, dtype=np.float64).reshape(-1, 2):
        if not (math.isfinite(start) and math.isfinite(end)):
            problems.append(f"query {qid}: window [{start}, {end}] is not finite")
        elif start >= end:
            problems.append(f"query {qid}: window [{start}, {end}] has start >= end")
        elif start < -atol or end > duration_sec + atol:
            problems.append(f"query {qid}: window [{start}, {end}] is outside [0, {duration_sec}] s")
    return problems
