"""Frozen feature encoders, selected by name from one registry.

Importing this package registers every family (registration only fills a dict; no model is
built and nothing is downloaded at import time).

    >>> enc = build_encoder("tiny_clip", weights="none")
    >>> enc.encode_video(frames)          # (N, H, W, 3) uint8 -> (N, D) float32
    >>> enc.encode_text(["a man slices an onion"])  # [(tokens (L, D), pooled (D,))]
"""

from extract.encoders import c3d, hf, open_clip_family  # noqa: F401  (registers the families)
from extract.encoders.registry import (
    RANDOM_INIT,
    Encoder,
    EncoderConfig,
    EncoderError,
    Precision,
    build_encoder,
    encoder_specs,
    list_encoders,
    register_encoder,
)

__all__ = [
    "RANDOM_INIT",
    "Encoder",
    "EncoderConfig",
    "EncoderError",
    "Precision",
    "build_encoder",
    "encoder_specs",
    "list_encoders",
    "register_encoder",
]
