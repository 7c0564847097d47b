"""The extraction config: one typed, frozen dataclass read from YAML, with command-line overrides.

``python -m extract --config extract/configs/qvhighlights.yaml --limit 10 --fps 2 --batch_size 32``
reads the YAML file, then applies every ``--field value`` given after it (nested fields with dots:
``--policy.end_past_duration drop``). Parsing and type checks are jsonargparse's, driven by the
dataclass signatures below, so a wrong type or an unknown key fails with the key named.

Relative paths are taken relative to the current directory (the repository root for the shipped
configs and the Makefile).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from cache_schema.backends import backend_for
from cache_schema.errors import GroundcacheError
from extract.datasets.validation import ValidationPolicy
from extract.encoders.registry import Precision
from extract.video import Backend


class ConfigError(GroundcacheError, ValueError):
    """The extraction config is invalid. The message names the field."""


@dataclass(frozen=True)
class EncoderChoice:
    """One encoder of the run, by registry name.

    Args:
        name: Registry name (``python -c "import extract.encoders as e; print(e.list_encoders())"``).
        weights: None for the encoder's default (hub) weights, ``none`` for a seeded random
            initialisation (offline), or a local checkpoint path.
        batch_size: Frames (clips) or texts per forward pass; None uses the run's ``batch_size``.
    """

    name: str
    weights: str | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("encoder name is empty")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"encoder {self.name!r}: batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class SyntheticData:
    """Generate the embedded synthetic dataset when its annotations are missing.

    Args:
        n_videos: Number of videos.
        seed: Random seed (the same seed gives the same files).
    """

    n_videos: int = 60
    seed: int = 0


def _default_policy() -> ValidationPolicy:
    # Extraction is where a video's real duration becomes known. A missing file is kept so that it
    # becomes a failure entry (nothing vanishes from a run without a line in failures.jsonl), and a
    # decoded duration that disagrees with the annotation fails the video instead of storing
    # windows measured on some other copy of it.
    return ValidationPolicy(missing_video="keep", duration_mismatch="error")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run needs.

    Args:
        dataset: Dataset name recorded in the cache.
        output: Cache path; ``.h5`` writes HDF5, ``.zarr`` writes Zarr.
        video_encoders: One or more video encoders; their features share the timestamps.
        text_encoders: One or more text encoders.
        adapter: Annotation adapter (``extract.datasets`` registry name, e.g. ``custom``, ``qvhighlights``).
        annotations: Annotation file or folder for the adapter; None uses the adapter's default folder.
        video_root: Folder of the videos; annotation paths are relative to it.
        splits: Splits to extract; None extracts every split.
        variant: Adapter variant; None uses the adapter's default.
        policy: Action per annotation problem (see ``extract.datasets.validation``), also applied
            to windows that end past the decoded duration.
        duration_mismatch_tolerance_sec: Largest accepted difference between an annotated and a
            decoded duration before ``policy.duration_mismatch`` applies.
        synthetic: When set and ``annotations`` does not exist, generate the synthetic dataset into
            ``video_root`` first.
        fps: Features per second of video.
        batch_size: Frames (or clips) per encoder forward pass, across videos; also texts per pass.
        num_workers: Decode worker processes (0 decodes in the main process).
        prefetch_videos: Videos each decode worker prepares ahead of the encoder.
        frame_size: Shorter side in pixels that decoded frames are resized to (FFmpeg area filter)
            before the encoders' own preprocessing; None derives it from the encoders' input sizes
            (``extract.api.decode_short_side``), 0 keeps the native size.
        decode_backend: ``auto`` (decord, falling back to PyAV), ``decord`` or ``pyav``.
        decode_threads: Decoder threads per video; None means 1 with decode workers (the workers
            are the parallelism) and FFmpeg's choice (0) when decoding in the main process.
        device: Torch device of the encoders (``cpu``, ``cuda``; ``cuda`` maps to the local rank's
            GPU under torchrun).
        precision: ``fp32`` or ``bf16`` autocast.
        compile: ``torch.compile`` the encoders' forward passes.
        limit: Extract only the first N videos (sorted by video id); None for all.
        overwrite: Delete an existing cache instead of resuming it.
        dist_timeout_min: How long a rank waits for the others at the final barrier (minutes).
    """

    dataset: str
    output: str
    video_encoders: list[EncoderChoice]
    text_encoders: list[EncoderChoice]
    adapter: str = "custom"
    annotations: str | None = None
    video_root: str | None = None
    splits: list[str] | None = None
    variant: str | None = None
    policy: ValidationPolicy = field(default_factory=_default_policy)
    duration_mismatch_tolerance_sec: float = 1.0
    synthetic: SyntheticData | None = None
    fps: float = 1.0
    batch_size: int = 64
    num_workers: int = 2
    prefetch_videos: int = 2
    frame_size: int | None = None
    decode_backend: Backend = "auto"
    decode_threads: int | None = None
    device: str = "cpu"
    precision: Precision = "fp32"
    compile: bool = False
    limit: int | None = None
    overwrite: bool = False
    dist_timeout_min: float = 24 * 60.0

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset is empty")
        try:
            backend_for(self.output)
        except ValueError as err:
            raise ConfigError(f"output: {err}") from err
        if not self.video_encoders:
            raise ConfigError("video_encoders: at least one video encoder is needed")
        if not self.text_encoders:
            raise ConfigError("text_encoders: at least one text encoder is needed")
        for kind, choices in (("video_encoders", self.video_encoders), ("text_encoders", self.text_encoders)):
            names = [c.name for c in choices]
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind}: an encoder is listed twice in {names}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"fps must be a positive number, got {self.fps}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch_videos < 1:
            raise ConfigError(f"prefetch_videos must be >= 1, got {self.prefetch_videos}")
        if self.decode_threads is not None and self.decode_threads < 0:
            raise ConfigError(f"decode_threads must be >= 0 (0 = FFmpeg's choice), got {self.decode_threads}")
        if self.frame_size is not None and self.frame_size < 0:
            raise ConfigError(f"frame_size must be >= 0 (0 = native size), got {self.frame_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if not self.duration_mismatch_tolerance_sec >= 0:
            raise ConfigError(
                f"duration_mismatch_tolerance_sec must be >= 0, got {self.duration_mismatch_tolerance_sec}"
            )
        if not self.dist_timeout_min > 0:
            raise ConfigError(f"dist_timeout_min must be positive, got {self.dist_timeout_min}")

    @property
    def output_path(self) -> Path:
        return Path(self.output)

    @property
    def decoder_threads(self) -> int:
        """``decode_threads`` with its default applied: 1 per decode worker, 0 in-process."""
        if self.decode_threads is not None:
            return self.decode_threads
        return 1 if self.num_workers > 0 else 0


def build_parser(prog: str = "python -m extract") -> ArgumentParser:
    """The ``run`` parser: ``--config FILE`` then any ``--field value`` override."""
    parser = ArgumentParser(
        prog=prog, description="Extract video and text features into a cache.", exit_on_error=True
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (extract/configs/*.yaml)")
    parser.add_class_arguments(ExtractConfig, as_group=False)
    return parser


def parse_config(argv: Sequence[str] | None = None, prog: str = "python -m extract") -> ExtractConfig:
    """Parse ``--config FILE [--field value ...]`` into an :class:`ExtractConfig`."""
    parser = build_parser(prog)
    namespace = parser.parse_args(list(argv) if argv is not None else None)
    values = parser.instantiate(namespace)
    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    return ExtractConfig(**{name: values[name] for name in fields})


def load_config(path: str | Path, **overrides: object) -> ExtractConfig:
    """Read a YAML config and replace fields by keyword (``load_config(p, limit=3)``)."""
    config = parse_config(["--config", str(path)])
    return dataclasses.replace(config, **overrides) if overrides else config
