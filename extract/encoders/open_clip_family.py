"""open_clip encoders: CLIP and SigLIP / SigLIP2 image towers plus their own text towers.

Video: one pooled, projected image embedding per frame (``model.encode_image``), after open_clip's
own inference transform for the pretrained tag (resize, crop, normalisation constants).

Text, from the same model's text tower in one forward pass (``model.forward_intermediates``):

* tokens (L, D): the output of the *last* transformer block, passed through ``ln_final`` and then
  the text projection, applied to every token. open_clip's pooled embedding is exactly this
  projection applied to one token (the EOT token for CLIP, the last context position for SigLIP),
  so projecting every token puts the tokens in the joint image-text space, with the same D as the
  video features, and the CLIP token at the EOT position equals the pooled embedding. Padding is
  removed: L runs up to and including the tokenizer's end-of-text token.
* pooled (D,): ``encode_text`` output (not L2-normalised).

Weights: ``weights=None`` loads the registered open_clip pretrained tag (downloaded by open_clip);
a file path loads that checkpoint (``open_clip_pytorch_model.bin`` of the same architecture);
``"none"`` initialises randomly with a fixed seed, offline. ``tiny_clip`` is a 2-layer config
bundled as ``groundcache-tiny-clip.json`` for tests and the demo; it has no pretrained weights.
``tiny_siglip`` (``groundcache-tiny-timm-vit.json``; no "siglip" in the open_clip name, which would
select the hub-only SigLIP tokenizer) is the SigLIP layout in small: a timm ViT trunk
(timm's 9-block ``test_vit3``, one register token, MAP attention pooling) with a CLIP-BPE text
tower, so tests of timm-trunk towers run offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image
from torch import nn

from cache_schema.spec import EncoderSpec
from extract.encoders.blocks import VisualSplit, split_visual
from extract.encoders.registry import (
    FEATURE_DTYPE,
    RANDOM_INIT,
    Encoder,
    EncoderError,
    Precision,
    register_encoder,
    resolve_weights_path,
    seeded_init,
    stride_from_fps,
    warn_if_truncated,
)

BUNDLED_CONFIGS = (
    Path(__file__).parent / "groundcache-tiny-clip.json",
    Path(__file__).parent / "groundcache-tiny-timm-vit.json",
)
"""open_clip model configs shipped with groundcache (open_clip's JSON format; the stem is the name)."""
CLIP_BPE_TOKENIZER = "open_clip SimpleTokenizer (CLIP BPE)"


def _add_bundled_configs() -> None:
    # Registered lazily (not at import) and once: add_model_config rescans every config file.
    known = set(open_clip.list_models())
    for path in BUNDLED_CONFIGS:
        if path.stem not in known:
            open_clip.add_model_config(path)


@dataclass(frozen=True)
class OpenClipConfig:
    """One open_clip architecture and its default pretrained tag.

    Attributes:
        model_name: open_clip config name (``open_clip.list_models()``).
        pretrained_tag: open_clip pretrained tag loaded for ``weights=None``
            (``open_clip.list_pretrained()``); None for configs without released weights, whose
            default is the seeded random initialisation.
    """

    model_name: str
    pretrained_tag: str | None

    def model_cfg(self) -> dict[str, Any]:
        _add_bundled_configs()
        cfg = open_clip.get_model_config(self.model_name)
        if cfg is None:
            raise EncoderError(f"open_clip has no model config {self.model_name!r}")
        return cfg

    def tag_cfg(self) -> dict[str, Any]:
        """The pretrained tag's config: preprocessing constants and activation (QuickGELU)."""
        if self.pretrained_tag is None:
            return {}
        cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained_tag)
        if not cfg:
            raise EncoderError(f"open_clip has no pretrained tag {self.pretrained_tag!r} "
                               f"for {self.model_name!r}")
        return cfg

    def weights_id(self, name: str, weights: str | None) -> str:
        if weights is None:
            if self.pretrained_tag is None:
                return RANDOM_INIT
            return f"open_clip:{self.model_name}/{self.pretrained_tag}"
        if weights == RANDOM_INIT:
            return RANDOM_INIT
        return str(resolve_weights_path(name, weights))

    def specs(self, name: str, *, weights: str | None, fps: float) -> tuple[EncoderSpec, EncoderSpec]:
        cfg = self.model_cfg()
        # open_clip's own config dataclasses fill the defaults a JSON config leaves out.
        vision_cfg = open_clip.CLIPVisionCfg(**cfg["vision_cfg"])
        text_cfg = open_clip.CLIPTextCfg(**cfg["text_cfg"])
        image_size = vision_cfg.image_size
        if not isinstance(image_size, int):
            height, width = image_size
            if height != width:
                raise EncoderError(f"encoder {name!r}: non-square input {image_size} is not supported")
            image_size = height
        common = dict(name=name, dtype=FEATURE_DTYPE, weights_id=self.weights_id(name, weights),
                      library=f"open_clip {open_clip.__version__}", normalized=False)
        video = EncoderSpec(modality="video", dim=cfg["embed_dim"], stride_sec=stride_from_fps(name, fps),
                            frames_per_feature=1, input_size=image_size, **common)
        text_dim = text_cfg.width if text_cfg.proj_type == "none" else cfg["embed_dim"]
        text = EncoderSpec(modality="text", dim=text_dim,
                           tokenizer=text_cfg.hf_tokenizer_name or CLIP_BPE_TOKENIZER,
                           max_tokens=text_cfg.context_length, **common)
        return video, text

    def build(self, name: str, *, weights: str | None, device: str | torch.device, precision: Precision,
              compile: bool, batch_size: int | None, fps: float) -> OpenClipEncoder:
        video_spec, text_spec = self.specs(name, weights=weights, fps=fps)
        tag_cfg = self.tag_cfg()
        if weights is None:
            pretrained = self.pretrained_tag
        elif weights == RANDOM_INIT:
            pretrained = None
        else:
            path = resolve_weights_path(name, weights)
            if not path.is_file():
                raise EncoderError(f"encoder {name!r}: weights {str(path)!r} must be an open_clip "
                                   "checkpoint file")
            pretrained = str(path)
        with seeded_init():
            try:
                # The tag's preprocessing and activation are passed explicitly so that a local
                # checkpoint or a random init of this architecture is fed exactly like the tag.
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name,
                    pretrained=pretrained,
                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                    image_mean=tag_cfg.get("mean"),
                    image_std=tag_cfg.get("std"),
                    image_interpolation=tag_cfg.get("interpolation"),
                    image_resize_mode=tag_cfg.get("resize_mode"),
                )
            except RuntimeError as err:
                raise EncoderError(f"encoder {name!r}: open_clip could not load {self.model_name} with "
                                   f"pretrained={pretrained!r} (offline? pass weights=PATH or 'none'): "
                                   f"{err}") from err
        return OpenClipEncoder(model, preprocess, lambda: open_clip.get_tokenizer(self.model_name),
                               video_spec=video_spec, text_spec=text_spec, device=device, precision=precision,
                               batch_size=batch_size, compile=compile)


class OpenClipEncoder(Encoder):
    """An open_clip model used as a frozen image encoder and text encoder."""

    def __init__(self, model: nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 make_tokenizer: Callable[[], Callable[[list[str]], torch.Tensor]], *,
                 video_spec: EncoderSpec, text_spec: EncoderSpec, device: str | torch.device,
                 precision: Precision, batch_size: int | None, compile: bool) -> None:
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.video_spec, self.text_spec = video_spec, text_spec
        self.model = model.to(self.device).eval().requires_grad_(False)
        self._preprocess = preprocess
        self._make_tokenizer = make_tokenizer
        self._tokenizer: Callable[[list[str]], torch.Tensor] | None = None
        self._split: VisualSplit | None = None
        self._image_forward = torch.compile(self.model.encode_image) if compile else self.model.encode_image
        self._text_forward = torch.compile(self._text_tower) if compile else self._text_tower

    def tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        """open_clip's tokenizer for this model, loaded on first use (SigLIP's comes from the hub)."""
        if self._tokenizer is None:
            try:
                self._tokenizer = self._make_tokenizer()
            except OSError as err:
                raise EncoderError(
                    f"encoder {self.name!r}: cannot load tokenizer {self.text_spec.tokenizer!r}; it is "
                    f"downloaded from the Hugging Face hub, which is unreachable or disabled "
                    f"(HF_HUB_OFFLINE): {err}"
                ) from err
        return self._tokenizer

    def visual_split(self) -> VisualSplit:
        if self._split is None:
            self._split = split_visual(self.model.visual)
        return self._split

    def preprocess_video(self, frames: np.ndarray) -> torch.Tensor:
        pixels = torch.stack([self._preprocess(Image.fromarray(frame)) for frame in frames])  # (B, 3, S, S)
        return pixels.to(self.device)

    def forward_video(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._image_forward(pixels)  # (B, D)

    def _text_tower(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_intermediates(text=ids, text_indices=1, normalize=False,
                                               normalize_intermediates=True)
        hidden = out["text_intermediates"][-1]  # (B, L, W): last block, after ln_final
        projection = getattr(self.model, "text", self.model).text_projection
        if projection is None:
            tokens = hidden
        elif isinstance(projection, nn.Linear):
            tokens = projection(hidden)  # (B, L, D)
        else:
            tokens = hidden @ projection  # (B, L, D)
        return tokens, out["text_features"]  # (B, L, D), (B, D)

    def _encode_text_batch(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        tokenizer = self.tokenizer()
        ids = tokenizer(texts).to(self.device)  # (B, L)
        lengths = token_lengths(ids, eos_token_id(tokenizer))
        tokens, pooled = self._text_forward(ids)
        results = []
        for i, text in enumerate(texts):
            warn_if_truncated(self.text_spec, text, int(lengths[i]))
            results.append((tokens[i, : lengths[i]], pooled[i]))
        return results


def eos_token_id(tokenizer: Any) -> int:
    """End-of-text id of an open_clip tokenizer (SimpleTokenizer, or a wrapped HF tokenizer)."""
    if isinstance(tokenizer, open_clip.SimpleTokenizer):
        return tokenizer.eot_token_id
    eos = getattr(getattr(tokenizer, "tokenizer", None), "eos_token_id", None)
    if eos is None:
        raise EncoderError(f"cannot find the end-of-text token id of tokenizer {type(tokenizer).__name__}")
    return int(eos)


def token_lengths(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True token count per row of padded ids (B, L): up to and including the first end-of-text.

    A row without end-of-text was cut at the context length, so its length is L.
    """
    is_eos = ids == eos_id  # (B, L)
    first_eos = is_eos.int().argmax(dim=1)  # (B,)
    return torch.where(is_eos.any(dim=1), first_eos + 1, ids.shape[1]).cpu()


@register_encoder("clip_vit_b32")
def clip_vit_b32() -> OpenClipConfig:
    return OpenClipConfig(model_name="ViT-B-32", pretrained_tag="openai")


@register_encoder("clip_vit_l14")
def clip_vit_l14() -> OpenClipConfig:
    return OpenClipConfig(model_name="ViT-L-14", pretrained_tag="openai")


@register_encoder("siglip_so400m_384")
def siglip_so400m_384() -> OpenClipConfig:
    return OpenClipConfig(model_name="ViT-SO400M-14-SigLIP-384", pretrained_tag="webli")


@register_encoder("siglip2_so400m_384")
def siglip2_so400m_384() -> OpenClipConfig:
    return OpenClipConfig(model_name="ViT-SO400M-16-SigLIP2-384", pretrained_tag="webli")


@register_encoder("tiny_clip")
def tiny_clip() -> OpenClipConfig:
    """2-layer, 64-wide CLIP at 32x32 pixels (embed dim 32), random init with a fixed seed."""
    return OpenClipConfig(model_name="groundcache-tiny-clip", pretrained_tag=None)


@register_encoder("tiny_siglip")
def tiny_siglip() -> OpenClipConfig:
    """SigLIP-shaped timm-trunk tower in small (9 blocks, 96 wide, 160 px), random init with a fixed seed."""
    return OpenClipConfig(model_name="groundcache-tiny-timm-vit", pretrained_tag=None)
