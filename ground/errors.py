"""Errors of the grounding stage caused by bad input, and the encoder check every entry point shares.

Each error derives from `cache_schema.errors.GroundcacheError`, so `python -m ground` prints it as
one line and exits 2 (`cache_schema.cli.error_boundary`); each also keeps the builtin base its
callers catch (``ValueError``, ``KeyError``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from cache_schema import EncoderSpec
from cache_schema.errors import GroundcacheError


class EncoderMismatchError(GroundcacheError, ValueError):
    """A checkpoint is used with features from other encoders; the message names both sets and dims."""


class CheckpointError(GroundcacheError, ValueError):
    """A checkpoint cannot be rebuilt into a `GroundingModule`, or lacks what `ground` writes
    (hyperparameters, encoder record); the message names the file.

    Attributes:
        path: the checkpoint file.
        reason: the message after the path.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}")


class UnknownEncoderError(GroundcacheError, KeyError):
    """An encoder chosen by name is not in the cache; the message names the cache and lists its encoders."""


class UnknownModelError(GroundcacheError, KeyError):
    """A model name that no network is registered under; the message lists the registered ones."""


class ModelConfigError(GroundcacheError, ValueError):
    """A network's constructor refuses its hyperparameters (an unknown key, a value out of range);
    the message names the model, the key or the value, and where they come from."""


class GroundingInputError(GroundcacheError, ValueError):
    """Bad input to a grounding command (queries, options, a split unfit for the task); names the item."""


def describe_specs(specs: Sequence[EncoderSpec]) -> str:
    """``name(dim=D, weights=W[, stride_sec=S])`` per encoder, comma separated."""
    return ", ".join(
        f"{s.name}(dim={s.dim}, weights={s.weights_id or '?'}"
        + (f", stride_sec={s.stride_sec}" if s.modality == "video" else "")
        + ")"
        for s in specs
    )


def describe_record(record: dict) -> str:
    """``video encoders [...] and text encoder [...]``, every dim named, of an encoder record.

    The record is what `GroundingDataModule.encoder_record` returns and a checkpoint stores.
    """
    video = [EncoderSpec.from_dict(d) for d in record["video_encoders"]]
    text = EncoderSpec.from_dict(record["text_encoder"])
    return f"video encoders [{describe_specs(video)}] and text encoder [{describe_specs([text])}]"


def same_features(a: EncoderSpec, b: EncoderSpec) -> bool:
    """Whether two specs describe the same features.

    The library version may move between extraction and serving (extract.api warns about it);
    every other field decides what the features mean.
    """
    return dataclasses.replace(a, library="") == dataclasses.replace(b, library="")


def check_trained_encoders(
    checkpoint: str | os.PathLike,
    trained: dict | None,
    trained_dims: tuple[int, int],
    cache: str | os.PathLike,
    provided: dict,
) -> None:
    """Refuse to run a checkpoint on a cache whose features come from other encoders.

    Args:
        checkpoint: the checkpoint's path, for the message.
        trained: the checkpoint's encoder record (None for a checkpoint saved without one).
        trained_dims: (video_dim, text_dim) the network was built for.
        cache: the cache's path, for the message.
        provided: the cache's encoder record (`GroundingDataModule.encoder_record`).

    Raises:
        EncoderMismatchError: naming both encoder sets with their dims (or the trained dims when
            the checkpoint has no record).
    """
    video = [EncoderSpec.from_dict(d) for d in provided["video_encoders"]]
    text = EncoderSpec.from_dict(provided["text_encoder"])
    provided_dims = (sum(s.dim for s in video), text.dim)
    if trained is None:
        if tuple(trained_dims) == provided_dims:
            return
        raise EncoderMismatchError(
            f"checkpoint {checkpoint} was trained on features of dims video {trained_dims[0]} / text "
            f"{trained_dims[1]} (it records no encoders); cache {cache} provides {describe_record(provided)}"
        )
    trained_video = [EncoderSpec.from_dict(d) for d in trained["video_encoders"]]
    trained_text = EncoderSpec.from_dict(trained["text_encoder"])
    if (
        len(trained_video) == len(video)
        and all(same_features(a, b) for a, b in zip(trained_video, video, strict=True))
        and same_features(trained_text, text)
    ):
        return
    raise EncoderMismatchError(
        f"checkpoint {checkpoint} was trained on {describe_record(trained)}; "
        f"cache {cache} provides {describe_record(provided)}"
    )
