"""The extraction config: one typed, frozen dataclass read from YAML, with command-line overrides.

``python -m extract --config extract/configs/qvhighlights.yaml --limit 10 --fps 2 --batch_size 32``
reads the YAML file, then applies every ``--field value`` given after it (nested fields with dots:
``--policy.end_past_duration drop``). Parsing and type checks are jsonargparse's, driven by the
dataclass signatures below, so a wrong type or an unknown key fails with the key named.

Two options also take the ``KEY=VALUE`` form that ``python -m extract.datasets report`` and
``python -m extract import`` take (see docs/datasets.md): ``--policy duration_mismatch=keep
end_past_duration=drop`` overrides those kinds, and ``--annotations train=a.jsonl val=b.jsonl``
gives one annotation file per split (replacing the config file's ``annotations``).

Relative paths are taken relative to the current directory (the repository root for the shipped
configs and the Makefile).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from cache_schema.backends import backend_for
from cache_schema.errors import GroundcacheError
from extract.datasets import annotations_from_strings, get_dataset, list_datasets
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
        block_inputs: Video encoders only: also store, for every feature, the hidden states that
            enter the encoder's last ``block_inputs`` (K) transformer blocks, so a LoRA adapter
            can train those blocks from the cache (docs/adapter.md gives the disk cost). 0: off.
        block_pool: Average the stored patch-token grid over P x P cells (P = ``block_pool``) to
            cut the disk cost of large encoders; with P > 1 the adapter no longer reproduces the
            frozen features exactly (the cache records P).
    """

    name: str
    weights: str | None = None
    batch_size: int | None = None
    block_inputs: int = 0
    block_pool: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("encoder name is empty")
        if self.block_inputs < 0 or self.block_pool < 1:
            raise ConfigError(
                f"encoder {self.name!r}: block_inputs must be >= 0 and block_pool >= 1, got "
                f"{self.block_inputs} and {self.block_pool}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"encoder {self.name!r}: batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class SyntheticData:
    """Generate the embedded synthetic dataset when its annotations are missing.

    Args:
        n_videos: Number of videos, split 55/15/30 into train/val/test.
        seed: Random seed (the same seed gives the same files).
        extra_test_videos: Further videos in the test split only (`generate_synthetic`).
    """

    n_videos: int = 100
    seed: int = 0
    extra_test_videos: int = 0


def _default_policy() -> ValidationPolicy:
    # The adapters' defaults, except that a missing video file is kept so that it becomes a failure
    # entry: nothing vanishes from a run without a line in failures.jsonl.
    return ValidationPolicy(missing_video="keep")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run needs.

    Args:
        dataset: Dataset name recorded in the cache.
        output: Cache path; ``.h5`` writes HDF5, ``.zarr`` writes Zarr.
        video_encoders: One or more video encoders; their features share the timestamps.
        text_encoders: One or more text encoders.
        adapter: Annotation adapter (``extract.datasets`` registry name, e.g. ``custom``, ``qvhighlights``).
        annotations: Annotation folder in the adapter's release layout (``custom``: a jsonl file or
            folder), or one file per split (and per extra role, e.g. Charades-STA's
            ``durations_train``): ``{train: a.jsonl, val: b.jsonl}``, on the command line
            ``--annotations train=a.jsonl val=b.jsonl``; None uses the adapter's default folder.
        video_root: Folder of the videos; annotation paths are relative to it.
        splits: Splits to extract; None extracts every split.
        variant: Adapter variant; None uses the adapter's default.
        policy: Action per annotation problem (see ``extract.datasets.validation``): the adapters'
            defaults, except ``missing_video=keep`` (a missing file becomes a failure entry). On
            the command line ``--policy duration_mismatch=keep end_past_duration=drop``. Windows
            are checked against the decoded duration, the one the cache stores.
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
        add_encoder: Encoders (names of ``video_encoders``/``text_encoders`` entries) to add to the
            existing cache at ``output``: only they run, on the videos and queries already there,
            and no existing array is modified (``extract.grow``). On the command line
            ``--add-encoder NAME`` (repeatable). Empty: a normal run.
    """

    dataset: str
    output: str
    video_encoders: list[EncoderChoice]
    text_encoders: list[EncoderChoice]
    adapter: str = "custom"
    annotations: str | dict[str, str] | None = None
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
    add_encoder: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset is empty")
        self._check_annotations()
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
        text_blocks = [c.name for c in self.text_encoders if c.block_inputs]
        if text_blocks:
            raise ConfigError(
                f"text_encoders: block_inputs is an option of video encoders, set on {text_blocks}"
            )
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
        listed = [c.name for c in (*self.video_encoders, *self.text_encoders)]
        unlisted = [n for n in self.add_encoder if n not in listed]
        if unlisted:
            raise ConfigError(
                f"add_encoder: {unlisted} not among the config's video_encoders/text_encoders "
                f"{sorted(set(listed))}; list each there (with its weights) first"
            )
        added_blocks = [c.name for c in self.video_encoders if c.block_inputs and c.name in self.add_encoder]
        if added_blocks:
            # Block inputs share their encoder's feature rows and the cache's per-video commit, so
            # adding them later would need a commit index of their own (docs/adapter.md).
            raise ConfigError(
                f"{self.output}: add_encoder {added_blocks} ask for block_inputs, which cannot be added "
                "to an existing cache (they are written with their encoder's features); extract a new "
                "cache with them: another output, without --add-encoder"
            )
        if self.add_encoder and self.overwrite:
            raise ConfigError("add_encoder adds to an existing cache; it cannot be combined with overwrite")

    def _check_annotations(self) -> None:
        """Adapter, variant, splits and annotation roles, checked before anything is read."""
        if self.adapter not in list_datasets():
            raise ConfigError(
                f"adapter: unknown dataset {self.adapter!r}; available: {', '.join(list_datasets())}"
            )
        try:
            adapter = get_dataset(self.adapter, self.variant)
        except ValueError as err:
            raise ConfigError(f"variant: {err}") from err
        try:
            adapter.select_splits(self.splits)
        except ValueError as err:
            raise ConfigError(f"splits: {err}") from err
        if isinstance(self.annotations, Mapping):
            try:
                adapter.explicit_files(self.annotations, self.splits)
            except ValueError as err:
                raise ConfigError(f"annotations: {err}") from err
        elif self.annotations is None and adapter.needs_annotations:
            raise ConfigError(f"annotations: adapter {self.adapter!r} has no default; give a file")
        if self.synthetic is not None and not isinstance(self.annotations, str):
            raise ConfigError("annotations: synthetic needs one file, <video_root>/annotations.jsonl")

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


KEY_VALUE_OPTIONS = ("--policy", "--annotations")
"""Options that also take ``KEY=VALUE`` items, the form of the other extract commands."""

ADD_ENCODER_OPTION = "--add-encoder"
"""Repeatable ``--add-encoder NAME``; collected into the ``add_encoder`` list field."""


def _collect_add_encoder(argv: Sequence[str]) -> list[str]:
    """``--add-encoder A --add-encoder=B`` -> ``--add_encoder ["A", "B"]`` (jsonargparse's list form)."""
    rest: list[str] = []
    names: list[str] = []
    i = 0
    while i < len(argv):
        option, inline, value = argv[i].partition("=")
        if option != ADD_ENCODER_OPTION:
            rest.append(argv[i])
            i += 1
        elif inline:
            names.append(value)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            names.append(argv[i + 1])
            i += 2
        else:
            raise ConfigError(f"{ADD_ENCODER_OPTION} needs an encoder name")
    return rest + (["--add_encoder", json.dumps(names)] if names else [])


def expand_key_values(argv: Sequence[str]) -> list[str]:
    """Translate ``--policy KIND=ACTION ...`` and ``--annotations SPLIT=PATH ...`` for jsonargparse.

    ``--policy duration_mismatch=keep`` becomes ``--policy.duration_mismatch keep`` (each kind
    overrides the config file's), ``--annotations train=a val=b`` becomes ``--annotations
    {"train": "a", "val": "b"}`` (replaces the config file's). A folder, a YAML/JSON value and the
    dotted forms pass through unchanged.

    Raises:
        ConfigError: An unknown problem kind or action, or a malformed ``SPLIT=PATH`` list.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        option, inline, value = argv[i].partition("=")
        if option not in KEY_VALUE_OPTIONS:
            out.append(argv[i])
            i += 1
            continue
        if inline:
            values, i = [value], i + 1
        else:
            end = i + 1
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            values, i = list(argv[i + 1 : end]), end
        if not values or not all("=" in v for v in values) or values[0].lstrip().startswith("{"):
            out += [option, *values]  # jsonargparse's own forms (and its error when empty)
        elif option == "--policy":
            try:
                ValidationPolicy.from_strings(values)
            except ValueError as err:
                raise ConfigError(f"--policy: {err}") from err
            for item in values:
                kind, _, action = item.partition("=")
                out += [f"--policy.{kind.strip()}", action.strip()]
        else:
            try:
                annotations = annotations_from_strings(values)
            except ValueError as err:
                raise ConfigError(f"--{err}") from err
            out += [option, annotations if isinstance(annotations, str) else json.dumps(annotations)]
    return out


def parse_config(argv: Sequence[str] | None = None, prog: str = "python -m extract") -> ExtractConfig:
    """Parse ``--config FILE [--field value ...]`` into an :class:`ExtractConfig`.

    Raises:
        ConfigError: An invalid value (the message names the field); jsonargparse exits with its
            usage message on a type error or an unknown key.
    """
    parser = build_parser(prog)
    argv = _collect_add_encoder(list(argv) if argv is not None else sys.argv[1:])
    namespace = parser.parse_args(expand_key_values(argv))
    values = parser.instantiate(namespace)
    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    return ExtractConfig(**{name: values[name] for name in fields})


def load_config(path: str | Path, **overrides: object) -> ExtractConfig:
    """Read a YAML config and replace fields by keyword (``load_config(p, limit=3)``)."""
    config = parse_config(["--config", str(path)])
    return dataclasses.replace(config, **overrides) if overrides else config
