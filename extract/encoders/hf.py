"""Hugging Face transformers encoders: BERT / RoBERTa text towers and any vision backbone by id.

Text (``bert_base``, ``roberta_base``, ``tiny_bert``):

* tokens (L, D): ``last_hidden_state`` of the final layer, no projection, with the padding
  removed through the tokenizer's attention mask ([CLS]/<s> and [SEP]/</s> are kept).
* pooled (D,): the last hidden state of the first token ([CLS] / <s>). The model's
  ``pooler_output`` is not used: BERT's pooler is a tanh layer trained for next-sentence
  prediction and RoBERTa's is not trained at all.

``tiny_bert`` (2 layers, hidden 32, seeded random init) needs a tokenizer offline, so it uses a
character-level WordPiece vocabulary built in code with the ``tokenizers`` library (lower-cased
ASCII letters, digits and punctuation, each also as a ``##`` continuation; anything else is
[UNK]) and wrapped in ``PreTrainedTokenizerFast``: the same BERT normaliser, pre-tokeniser and
[CLS] ... [SEP] template as ``bert-base-uncased``, so it exercises the exact code path of the real
models.

Vision (``hf_vision:<model id>``, e.g. ``hf_vision:microsoft/swin-tiny-patch4-window7-224``): the
model's ``pooler_output`` (flattened when it is a 1x1 feature map), after the model's own
``AutoImageProcessor``.

Weights: None loads the hub id; a local directory (``save_pretrained`` layout) loads from there;
``"none"`` initialises randomly with a fixed seed. For ``bert_base`` / ``roberta_base`` the random
architecture is the library's default config of the model type (``BertConfig()`` equals
bert-base-uncased; ``RobertaConfig()`` has roberta-base's sizes but BERT's vocabulary size and
position count), since the hub config is not available offline. Their tokenizers and every
``hf_vision`` config/processor come from the hub: offline, that is a clear :class:`EncoderError`.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    RobertaConfig,
)

from cache_schema.spec import EncoderSpec
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

LIBRARY = f"transformers {transformers.__version__}"
CHAR_WORDPIECE = "groundcache char-level WordPiece"


def _hub_error(name: str, what: str, source: str, err: Exception) -> EncoderError:
    return EncoderError(f"encoder {name!r}: cannot load the {what} of {source!r}; it comes from the "
                        f"Hugging Face hub, which is unreachable or disabled (HF_HUB_OFFLINE), "
                        f"or the path lacks it: {err}")


def _weights_source(name: str, model_id: str, weights: str | None) -> str:
    """Where from_pretrained reads: the hub id, or a local save_pretrained directory."""
    if weights is None:
        return model_id
    path = resolve_weights_path(name, weights)
    if not path.is_dir():
        raise EncoderError(f"encoder {name!r}: weights {str(path)!r} must be a save_pretrained directory")
    return str(path)


def _weights_id(name: str, model_id: str, weights: str | None) -> str:
    if weights == RANDOM_INIT or (weights is None and not model_id):
        return RANDOM_INIT
    return f"hf:{model_id}" if weights is None else _weights_source(name, model_id, weights)


def char_wordpiece_tokenizer(max_tokens: int) -> PreTrainedTokenizerFast:
    """A BERT-style tokenizer whose WordPiece vocabulary is single characters (works offline)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = specials + list(chars) + ["##" + c for c in chars]
    ids = {token: i for i, token in enumerate(vocab)}
    backend = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_tokens)


# -- text ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFTextConfig:
    """A transformers text encoder.

    Attributes:
        model_id: Hub id loaded for ``weights=None``; empty for a config without released weights.
        config_cls: Config class of the random-init architecture (``weights="none"``).
        config_kwargs: Overrides of ``config_cls`` defaults for the random-init architecture.
        max_tokens: Tokenizer truncation length.
        bundled_tokenizer: Use :func:`char_wordpiece_tokenizer` instead of the hub tokenizer.
    """

    model_id: str
    config_cls: type[PretrainedConfig]
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 512
    bundled_tokenizer: bool = False

    def make_tokenizer(self, name: str, weights: str | None) -> PreTrainedTokenizerBase:
        if self.bundled_tokenizer:
            return char_wordpiece_tokenizer(self.max_tokens)
        source = (self.model_id if weights in (None, RANDOM_INIT)
                  else _weights_source(name, self.model_id, weights))
        try:
            return AutoTokenizer.from_pretrained(source)
        except OSError as err:
            raise _hub_error(name, "tokenizer", source, err) from err

    def model_config(self, name: str, weights: str | None) -> PretrainedConfig:
        if weights == RANDOM_INIT or not self.model_id:
            kwargs = dict(self.config_kwargs)
            if self.bundled_tokenizer:
                kwargs["vocab_size"] = len(char_wordpiece_tokenizer(self.max_tokens))
            return self.config_cls(**kwargs)
        source = _weights_source(name, self.model_id, weights)
        try:
            return AutoConfig.from_pretrained(source)
        except OSError as err:
            raise _hub_error(name, "config", source, err) from err

    def tokenizer_id(self) -> str:
        return CHAR_WORDPIECE if self.bundled_tokenizer else self.model_id

    def specs(self, name: str, *, weights: str | None, fps: float) -> tuple[None, EncoderSpec]:
        config = self.model_config(name, weights)
        return None, EncoderSpec(name=name, modality="text", dim=config.hidden_size, dtype=FEATURE_DTYPE,
                                 weights_id=_weights_id(name, self.model_id, weights), library=LIBRARY,
                                 normalized=False, tokenizer=self.tokenizer_id(), max_tokens=self.max_tokens)

    def build(self, name: str, *, weights: str | None, device: str | torch.device, precision: Precision,
              compile: bool, batch_size: int | None, fps: float) -> HFTextEncoder:
        _, text_spec = self.specs(name, weights=weights, fps=fps)
        if weights == RANDOM_INIT or not self.model_id:
            with seeded_init():
                model = AutoModel.from_config(self.model_config(name, weights))
        else:
            source = _weights_source(name, self.model_id, weights)
            try:
                model = AutoModel.from_pretrained(source, dtype=torch.float32)
            except OSError as err:
                raise _hub_error(name, "weights", source, err) from err
        return HFTextEncoder(model, lambda: self.make_tokenizer(name, weights), text_spec=text_spec,
                             device=device, precision=precision, batch_size=batch_size, compile=compile)


class HFTextEncoder(Encoder):
    """A transformers encoder model used for per-token and [CLS] sentence features."""

    def __init__(self, model: nn.Module, make_tokenizer: Callable[[], PreTrainedTokenizerBase], *,
                 text_spec: EncoderSpec, device: str | torch.device, precision: Precision,
                 batch_size: int | None, compile: bool) -> None:
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.text_spec = text_spec
        self.model = model.to(self.device).eval().requires_grad_(False)
        self._forward = torch.compile(self.model) if compile else self.model
        self._make_tokenizer = make_tokenizer
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, loaded on first use (the hub ones are unavailable offline)."""
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer

    def _encode_text_batch(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = self.tokenizer()(texts, padding=True, truncation=True, max_length=self.text_spec.max_tokens,
                                 return_tensors="pt")
        mask = batch["attention_mask"].bool()  # (B, L)
        hidden = self._forward(**batch.to(self.device)).last_hidden_state  # (B, L, D)
        results = []
        for i, text in enumerate(texts):
            real = mask[i].to(self.device)
            warn_if_truncated(self.text_spec, text, int(real.sum()))
            results.append((hidden[i][real], hidden[i, 0]))  # (L_i, D), (D,): [CLS] is the first token
        return results


@register_encoder("bert_base")
def bert_base() -> HFTextConfig:
    return HFTextConfig(model_id="bert-base-uncased", config_cls=BertConfig)


@register_encoder("roberta_base")
def roberta_base() -> HFTextConfig:
    return HFTextConfig(model_id="FacebookAI/roberta-base", config_cls=RobertaConfig)


@register_encoder("tiny_bert")
def tiny_bert() -> HFTextConfig:
    """2-layer BERT, hidden 32, seeded random init, with the in-code character WordPiece tokenizer."""
    return HFTextConfig(model_id="", config_cls=BertConfig, max_tokens=128, bundled_tokenizer=True,
                        config_kwargs=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=128))


# -- vision ----------------------------------------------------------------------------------------


def _pooled_dim(config: PretrainedConfig) -> int:
    # Transformer backbones expose hidden_size; CNN backbones (ConvNeXt, ResNet) the stage widths.
    hidden_sizes = getattr(config, "hidden_sizes", None)
    return int(hidden_sizes[-1]) if hidden_sizes else int(config.hidden_size)


def _input_size(name: str, config: PretrainedConfig) -> int | None:
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise EncoderError(f"encoder {name!r}: non-square input {size} is not supported")
        size = size[0]
    return None if size is None else int(size)


@dataclass(frozen=True)
class HFVisionConfig:
    """A transformers vision backbone by hub id; features are its ``pooler_output``."""

    model_id: str

    def _source(self, name: str, weights: str | None) -> str:
        # Random init still needs the architecture and preprocessing: both come from the hub id.
        if weights in (None, RANDOM_INIT):
            return self.model_id
        return _weights_source(name, self.model_id, weights)

    def model_config(self, name: str, weights: str | None) -> PretrainedConfig:
        source = self._source(name, weights)
        try:
            return AutoConfig.from_pretrained(source)
        except OSError as err:
            raise _hub_error(name, "config", source, err) from err

    def specs(self, name: str, *, weights: str | None, fps: float) -> tuple[EncoderSpec, None]:
        config = self.model_config(name, weights)
        return EncoderSpec(name=name, modality="video", dim=_pooled_dim(config), dtype=FEATURE_DTYPE,
                           weights_id=_weights_id(name, self.model_id, weights), library=LIBRARY,
                           normalized=False, stride_sec=stride_from_fps(name, fps), frames_per_feature=1,
                           input_size=_input_size(name, config)), None

    def build(self, name: str, *, weights: str | None, device: str | torch.device, precision: Precision,
              compile: bool, batch_size: int | None, fps: float) -> HFVisionEncoder:
        video_spec, _ = self.specs(name, weights=weights, fps=fps)
        source = self._source(name, weights)
        try:
            processor = AutoImageProcessor.from_pretrained(source)
            if weights == RANDOM_INIT:
                with seeded_init():
                    model = AutoModel.from_config(self.model_config(name, weights))
            else:
                model = AutoModel.from_pretrained(source, dtype=torch.float32)
        except OSError as err:
            raise _hub_error(name, "image processor or weights", source, err) from err
        return HFVisionEncoder(model, processor, video_spec=video_spec, device=device, precision=precision,
                               batch_size=batch_size, compile=compile)


class HFVisionEncoder(Encoder):
    """A transformers vision model used as a frozen per-frame encoder."""

    def __init__(self, model: nn.Module, processor: Callable[..., Any], *, video_spec: EncoderSpec,
                 device: str | torch.device, precision: Precision, batch_size: int | None,
                 compile: bool) -> None:
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.video_spec = video_spec
        self.model = model.to(self.device).eval().requires_grad_(False)
        self._forward = torch.compile(self.model) if compile else self.model
        self._processor = processor

    def preprocess_video(self, frames: np.ndarray) -> torch.Tensor:
        pixels = self._processor(images=list(frames), return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
        return pixels.to(self.device)

    def forward_video(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self._forward(pixel_values=pixels).pooler_output
        if pooled is None:
            raise EncoderError(f"encoder {self.name!r}: the model returns no pooler_output")
        if pooled.ndim == 4 and pooled.shape[2:] == (1, 1):
            pooled = pooled.flatten(1)  # CNN backbones pool to (B, D, 1, 1)
        return pooled  # (B, D)


@register_encoder("hf_vision", parametric=True)
def hf_vision(model_id: str) -> HFVisionConfig:
    """Any transformers vision backbone by hub id: ``hf_vision:microsoft/swin-tiny-patch4-window7-224``."""
    return HFVisionConfig(model_id=model_id)
