"""Encoder registry: one entry per encoder name, each a frozen config of its family.

An entry is a function decorated with ``@register_encoder(name)`` that returns the family's config
(a frozen dataclass implementing :class:`EncoderConfig`). The config knows how to describe its
features (:meth:`EncoderConfig.specs`, without building anything) and how to build the
:class:`Encoder`. A *parametric* entry (``@register_encoder("hf_vision", parametric=True)``)
takes one string argument, given as ``"hf_vision:microsoft/swin-tiny-patch4-window7-224"``.

Every encoder shares the batching, input checks, ``torch.inference_mode`` and bf16 autocast
implemented once in :class:`Encoder`; a family only implements the per-batch forward passes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch

from cache_schema.errors import GroundcacheError
from cache_schema.spec import EncoderSpec

if TYPE_CHECKING:
    from extract.encoders.blocks import VisualSplit

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
RANDOM_INIT = "none"
"""``weights=`` value (and ``EncoderSpec.weights_id``) for a seeded random initialisation."""
RANDOM_INIT_SEED = 0
"""Seed of every random initialisation, so two processes build identical encoders."""
FEATURE_DTYPE = "float16"
"""Storage dtype recorded in every spec: features are computed in fp32/bf16 and stored as fp16."""
PARAM_SEP = "--"
"""Separator of a parametric name inside a spec name (``/`` is not allowed there): Hugging Face
repository ids never contain ``--``, so ``hf_vision--org--model`` maps back to ``org/model``."""


class EncoderError(GroundcacheError, ValueError):
    """An encoder cannot be built or cannot encode the given input. The message names the item."""


class Encoder:
    """A frozen feature extractor with a video tower, a text tower or both.

    Subclasses set ``video_spec`` / ``text_spec`` and implement ``preprocess_video`` +
    ``forward_video`` and/or ``_encode_text_batch``; this class owns input checks, batching,
    ``inference_mode`` and autocast.

    Attributes:
        video_spec: Spec of the (N, D) video features, or None when there is no video tower.
        text_spec: Spec of the token and pooled text features, or None when there is no text tower.
        device: Device the model runs on; outputs are always returned on CPU.
        precision: ``fp32``, or ``bf16`` to run under bfloat16 autocast.
        batch_size: Frames (or clips) per forward pass, and texts per forward pass.
    """

    video_spec: EncoderSpec | None = None
    text_spec: EncoderSpec | None = None
    default_batch_size = 64
    """Batch size when the caller gives none; a family with large inputs (C3D clips) lowers it."""

    def __init__(self, *, device: str | torch.device, precision: Precision, batch_size: int | None) -> None:
        if precision not in PRECISIONS:
            raise EncoderError(f"precision {precision!r} is not one of {PRECISIONS}")
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise EncoderError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.precision: Precision = precision
        self.batch_size = batch_size
        self._adapted_forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def name(self) -> str:
        spec = self.video_spec or self.text_spec
        assert spec is not None, "an encoder has at least one tower"
        return spec.name

    def __repr__(self) -> str:
        towers = [s.modality + f"(D={s.dim})" for s in (self.video_spec, self.text_spec) if s is not None]
        return f"{type(self).__name__}({self.name!r}, {', '.join(towers)}, device={self.device})"

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """``torch.inference_mode`` plus bf16 autocast when ``precision == "bf16"``."""
        # Autocast is entered on the model's own device type so bf16 also works (slowly) on CPU
        # instead of being silently ignored there.
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            yield

    # -- video ---------------------------------------------------------------------------------

    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """Encode frames (image encoders) or clips (clip encoders) into one feature each.

        Args:
            frames: uint8 RGB array, (N, H, W, 3) when ``video_spec.frames_per_feature == 1``,
                else (N, F, H, W, 3) with F = ``frames_per_feature``.

        Returns:
            (N, D) float32 tensor on CPU, D = ``video_spec.dim``.
        """
        spec = self.video_spec
        if spec is None:
            raise EncoderError(f"encoder {self.name!r} has no video tower (video_spec is None)")
        check_frames(spec, frames)
        outputs = []
        with self.inference():
            for start in range(0, frames.shape[0], self.batch_size):
                pixels = self.preprocess_video(frames[start : start + self.batch_size])
                out = (self._adapted_forward or self.forward_video)(pixels)  # (B, D)
                outputs.append(out.float().cpu())
        features = torch.cat(outputs)  # (N, D)
        if features.shape != (frames.shape[0], spec.dim):
            raise EncoderError(
                f"encoder {spec.name!r} produced features of shape {tuple(features.shape)}, "
                f"its spec says ({frames.shape[0]}, {spec.dim})"
            )
        return features

    def preprocess_video(self, frames: np.ndarray) -> torch.Tensor:
        """The model's input for one batch of frames or clips, on ``self.device``.

        Kept apart from :meth:`forward_video` so benchmarks can time the model alone.
        """
        raise NotImplementedError(f"{type(self).__name__} has no video tower")

    def forward_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) features of a batch made by :meth:`preprocess_video`; call inside :meth:`inference`."""
        raise NotImplementedError(f"{type(self).__name__} has no video tower")

    # -- text ----------------------------------------------------------------------------------

    def encode_text(self, texts: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encode sentences into per-token features and one pooled sentence embedding each.

        Args:
            texts: Non-empty list of non-blank strings.

        Returns:
            One ``(tokens, pooled)`` pair per text: tokens (L, D) float32 on CPU with padding
            removed (L is the true token count, special tokens included), pooled (D,) float32.
        """
        spec = self.text_spec
        if spec is None:
            raise EncoderError(f"encoder {self.name!r} has no text tower (text_spec is None)")
        check_texts(spec, texts)
        results: list[tuple[torch.Tensor, torch.Tensor]] = []
        with self.inference():
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                for tokens, pooled in self._encode_text_batch(batch):
                    results.append((tokens.float().cpu(), pooled.float().cpu()))
        for i, (tokens, pooled) in enumerate(results):
            if tokens.ndim != 2 or tokens.shape[1] != spec.dim or pooled.shape != (spec.dim,):
                raise EncoderError(
                    f"encoder {spec.name!r}, text {i}: got tokens {tuple(tokens.shape)} and pooled "
                    f"{tuple(pooled.shape)}, its spec says (L, {spec.dim}) and ({spec.dim},)"
                )
        return results

    def _encode_text_batch(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} has no text tower")

    # -- block inputs --------------------------------------------------------------------------

    def adapt_tail(self, tail: Callable[[torch.Tensor], torch.Tensor], blocks: int, pool: int) -> None:
        """Encode frames through an adapted copy of the last ``blocks`` blocks from now on.

        `encode_video` then runs the tower's stem (embedding and blocks 0..N-K-1), pools the patch
        grid by ``pool`` as the cache's block inputs were pooled, and maps the result with ``tail``
        ((N, L, W) -> (N, D); a LoRA adapter trained on the cache, `ground.adapter`).

        Raises:
            EncoderError: K is out of range or the tower cannot be cut; names the encoder.
        """
        from extract.encoders.blocks import check_blocks, pool_patch_tokens  # blocks imports this module

        split = self.visual_split()
        start = check_blocks(self.name, blocks, split.depth)

        def forward(pixels: torch.Tensor) -> torch.Tensor:
            x = split.stem(pixels, start)  # (B, L, W)
            return tail(pool_patch_tokens(x, split.prefix_tokens, split.grid, pool))  # (B, D)

        self._adapted_forward = forward

    def visual_split(self) -> VisualSplit:
        """The video tower as stem, transformer blocks and head (`extract.encoders.blocks`).

        Raises:
            EncoderError: the family has no transformer blocks to cut (C3D, Hugging Face towers).
        """
        raise EncoderError(
            f"encoder {self.name!r} ({type(self).__name__}) cannot store block inputs: only open_clip "
            "ViT and timm-trunk towers can be cut before their last blocks"
        )


def check_frames(spec: EncoderSpec, frames: np.ndarray) -> None:
    """Raise EncoderError unless ``frames`` is a non-empty uint8 RGB batch shaped for ``spec``."""
    per_feature = spec.frames_per_feature or 1
    expected = "(N, H, W, 3)" if per_feature == 1 else f"(N, {per_feature}, H, W, 3)"
    ndim = 4 if per_feature == 1 else 5
    if not isinstance(frames, np.ndarray):
        raise EncoderError(f"encoder {spec.name!r}: frames must be a numpy array {expected}, "
                           f"got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise EncoderError(f"encoder {spec.name!r}: frames must be uint8, got {frames.dtype}")
    if frames.ndim != ndim or frames.shape[-1] != 3 or (per_feature > 1 and frames.shape[1] != per_feature):
        raise EncoderError(f"encoder {spec.name!r}: frames must be {expected}, got {frames.shape}")
    if frames.shape[0] == 0 or 0 in frames.shape[-3:-1]:
        raise EncoderError(f"encoder {spec.name!r}: frames {frames.shape} are empty")


def check_texts(spec: EncoderSpec, texts: Sequence[str]) -> None:
    """Raise EncoderError unless ``texts`` is a non-empty sequence of non-blank strings."""
    if isinstance(texts, str):
        raise EncoderError(f"encoder {spec.name!r}: texts must be a list of strings, got one string")
    if len(texts) == 0:
        raise EncoderError(f"encoder {spec.name!r}: texts is empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise EncoderError(f"encoder {spec.name!r}: text {i} ({text!r}) is not a non-blank string")


def warn_if_truncated(spec: EncoderSpec, text: str, n_tokens: int) -> None:
    """Report a text whose tokens fill the whole context: anything longer was truncated."""
    if spec.max_tokens is not None and n_tokens >= spec.max_tokens:
        log.warning("encoder %s: text %r fills the context of %d tokens; any longer part was truncated",
                    spec.name, text[:80], spec.max_tokens)


@contextlib.contextmanager
def seeded_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Make parameter initialisation inside the block deterministic without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def stride_from_fps(name: str, fps: float) -> float:
    """Seconds between features for sampling at ``fps``."""
    if not (math.isfinite(fps) and fps > 0):
        raise EncoderError(f"encoder {name!r}: fps must be a positive number, got {fps}")
    return 1.0 / fps


def resolve_weights_path(name: str, weights: str) -> Path:
    """Return ``weights`` as an existing local path, or raise naming the encoder and the path."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise EncoderError(f"encoder {name!r}: weights path {str(path)!r} does not exist "
                           f"(use weights=None for the default hub weights, {RANDOM_INIT!r} for random init)")
    return path.resolve()


class EncoderConfig(Protocol):
    """What a registry entry returns: a frozen description of one encoder of a family."""

    def specs(self, name: str, *, weights: str | None, fps: float) -> tuple[EncoderSpec | None,
                                                                           EncoderSpec | None]:
        """(video_spec, text_spec) of the encoder built with these arguments, without building it."""
        ...

    def build(self, name: str, *, weights: str | None, device: str | torch.device, precision: Precision,
              compile: bool, batch_size: int | None, fps: float) -> Encoder:
        """Build the encoder (load or initialise weights, move to ``device``)."""
        ...


@dataclass(frozen=True)
class _Entry:
    name: str
    make_config: Callable[..., EncoderConfig]
    parametric: bool


_REGISTRY: dict[str, _Entry] = {}


def register_encoder(name: str, *, parametric: bool = False) -> Callable:
    """Register the decorated function as the config factory of encoder ``name``.

    Args:
        name: Registry name; also the spec name written into caches (so no ``/`` and no ``:``).
        parametric: The function takes one string argument, given after a colon
            (``"name:argument"``) or, in a spec name, after ``--`` with ``/`` written as ``--``.
    """
    if not name or any(c in name for c in "/:") or PARAM_SEP in name:
        raise EncoderError(f"encoder name {name!r} must be non-empty without '/', ':' or {PARAM_SEP!r}")

    def decorator(fn: Callable[..., EncoderConfig]) -> Callable[..., EncoderConfig]:
        if name in _REGISTRY:
            raise EncoderError(f"encoder {name!r} is registered twice "
                               f"({_REGISTRY[name].make_config} and {fn})")
        _REGISTRY[name] = _Entry(name=name, make_config=fn, parametric=parametric)
        return fn

    return decorator


def list_encoders() -> list[str]:
    """Registered encoder names, sorted; a parametric family is listed as ``name:<argument>``."""
    return sorted(e.name + (":<argument>" if e.parametric else "") for e in _REGISTRY.values())


def is_parametric(name: str) -> bool:
    """Whether the registered family ``name`` (without its argument) takes an argument."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise EncoderError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    return entry.parametric


def _lookup(name: str) -> tuple[_Entry, str | None, str]:
    """Return (entry, argument, spec name) for a registry name, ``family:arg`` or ``family--arg``."""
    family, argument = name, None
    if ":" in name:
        family, argument = name.split(":", 1)
    elif PARAM_SEP in name:
        family, rest = name.split(PARAM_SEP, 1)
        argument = rest.replace(PARAM_SEP, "/")
    entry = _REGISTRY.get(family)
    if entry is None:
        raise EncoderError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    if entry.parametric and not argument:
        raise EncoderError(f"encoder {family!r} needs an argument: {family}:<argument>")
    if not entry.parametric and argument is not None:
        raise EncoderError(f"encoder {family!r} takes no argument, got {name!r}; "
                           f"available: {', '.join(list_encoders())}")
    spec_name = family if argument is None else family + PARAM_SEP + argument.replace("/", PARAM_SEP)
    return entry, argument, spec_name


def get_encoder_config(name: str) -> tuple[str, EncoderConfig]:
    """Return (spec name, config) of a registered encoder."""
    entry, argument, spec_name = _lookup(name)
    config = entry.make_config() if argument is None else entry.make_config(argument)
    return spec_name, config


def encoder_specs(name: str, *, weights: str | None = None,
                  fps: float = 1.0) -> tuple[EncoderSpec | None, EncoderSpec | None]:
    """(video_spec, text_spec) of an encoder, computed from its config without building the model.

    Args:
        name: Registry name (see :func:`list_encoders`).
        weights: As for :func:`build_encoder`; it only changes ``weights_id``.
        fps: Features per second of video; sets ``stride_sec``.
    """
    spec_name, config = get_encoder_config(name)
    return config.specs(spec_name, weights=weights, fps=fps)


def build_encoder(name: str, *, weights: str | None = None, device: str | torch.device = "cpu",
                  precision: Precision = "fp32", compile: bool = False, batch_size: int | None = None,
                  fps: float = 1.0) -> Encoder:
    """Build a registered encoder, ready to encode.

    Args:
        name: Registry name (see :func:`list_encoders`), ``family:argument`` for a parametric
            family, or the ``name`` of an :class:`EncoderSpec` read back from a cache.
        weights: None for the default (hub) weights, a local checkpoint path, or ``"none"`` for a
            random initialisation with a fixed seed (offline; used by tests and the demo).
        device: Torch device to run on.
        precision: ``fp32``, or ``bf16`` for bfloat16 autocast.
        compile: Wrap the forward passes in ``torch.compile``.
        batch_size: Frames/clips/texts per forward pass; None for the family's default
            (``Encoder.default_batch_size``: 64, or 8 clips for C3D).
        fps: Features per second of video; sets ``video_spec.stride_sec``.
    """
    spec_name, config = get_encoder_config(name)
    return config.build(spec_name, weights=weights, device=device, precision=precision, compile=compile,
                        batch_size=batch_size, fps=fps)
