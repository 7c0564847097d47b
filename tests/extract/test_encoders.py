"""Encoder registry tests, parametrized over every registered encoder (all offline, random init)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from cache_schema.spec import EncoderSpec
from extract.encoders import EncoderError, build_encoder, encoder_specs, list_encoders
from extract.encoders.c3d import C3D
from extract.encoders.open_clip_family import OpenClipConfig, OpenClipEncoder
from extract.encoders.registry import check_frames, get_encoder_config, is_parametric

SPEC_ONLY = {"clip_vit_b32", "clip_vit_l14", "siglip_so400m_384", "siglip2_so400m_384", "bert_base",
             "roberta_base"}
"""Too slow to initialise on a shared CPU within the test budget: only their specs are checked.
Any encoder not listed here (so every new one, by default) is also built and run; the slow
tests below build clip_vit_b32."""
HUB_TOKENIZER = {"siglip_so400m_384", "siglip2_so400m_384", "bert_base", "roberta_base"}
"""Text encoders whose tokenizer only exists on the hub: offline, encode_text must say so."""
OPEN_CLIP_NAMES = {"clip_vit_b32", "clip_vit_l14", "siglip_so400m_384", "siglip2_so400m_384", "tiny_clip"}
TEXTS = ["A man slices an onion.", "hi", "the dog jumps over a fence in the park"]


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT saved in the save_pretrained layout: the offline stand-in for a hub id."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("tiny_vit")
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _family(display_name: str) -> str:
    return display_name.split(":")[0]


FAMILIES = [_family(n) for n in list_encoders()]


@pytest.fixture(scope="module")
def offline_args(tiny_vit_dir: Path) -> dict[str, tuple[str, str]]:
    """Registry family -> (name, weights) that builds it offline."""
    args = {f: (f, "none") for f in FAMILIES if not is_parametric(f)}
    args["hf_vision"] = ("hf_vision:test-org/tiny-vit", str(tiny_vit_dir))
    return args


_BUILT: dict[str, object] = {}


def _build(family: str, offline_args: dict[str, tuple[str, str]]):
    """Build each encoder once per module (construction dominates the test time)."""
    if family not in _BUILT:
        if family not in offline_args:
            pytest.fail(f"parametric encoder {family!r} needs an offline argument in offline_args")
        name, weights = offline_args[family]
        _BUILT[family] = build_encoder(name, weights=weights)
    return _BUILT[family]


def _frames(spec: EncoderSpec, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, 40, 48, 3) if spec.frames_per_feature == 1 else (n, spec.frames_per_feature, 40, 48, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_specs_are_complete_offline(family: str, offline_args: dict[str, tuple[str, str]]) -> None:
    name, weights = offline_args[family]
    video, text = encoder_specs(name, weights=weights, fps=2.0)
    assert video is not None or text is not None
    for spec in (video, text):
        if spec is None:
            continue
        assert EncoderSpec.from_dict(spec.to_dict()) == spec
        assert spec.dtype == "float16" and spec.dim > 0 and spec.library and spec.weights_id
        assert spec.name == (family if not is_parametric(family) else "hf_vision--test-org--tiny-vit")
    if video is not None:
        assert video.modality == "video" and video.stride_sec == pytest.approx(0.5)
        assert video.frames_per_feature >= 1 and video.input_size > 0
    if text is not None:
        assert text.modality == "text" and text.tokenizer and text.max_tokens > 0
    if family in OPEN_CLIP_NAMES:
        cfg = open_clip.get_model_config(get_encoder_config(family)[1].model_name)
        assert video.dim == text.dim == cfg["embed_dim"]
        assert video.input_size == cfg["vision_cfg"]["image_size"]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in SPEC_ONLY])
def test_every_cheap_encoder_builds_and_encodes_offline(family: str,
                                                        offline_args: dict[str, tuple[str, str]]) -> None:
    enc = _build(family, offline_args)
    if enc.video_spec is not None:
        n = 1 if enc.video_spec.frames_per_feature > 1 else 3
        features = enc.encode_video(_frames(enc.video_spec, n))
        assert features.shape == (n, enc.video_spec.dim)
        assert features.dtype == torch.float32 and features.device.type == "cpu"
        assert torch.isfinite(features).all()
        # The spec name read back from a cache rebuilds the same encoder.
        assert encoder_specs(enc.video_spec.name, weights=offline_args[family][1])[0] == enc.video_spec
    if enc.text_spec is not None:
        if family in HUB_TOKENIZER:
            with pytest.raises(EncoderError, match="tokenizer"):
                enc.encode_text(TEXTS)
            return
        out = enc.encode_text(TEXTS)
        assert len(out) == len(TEXTS)
        lengths = [tokens.shape[0] for tokens, _ in out]
        for tokens, pooled in out:
            assert tokens.shape[1] == pooled.shape[0] == enc.text_spec.dim
            assert tokens.dtype == pooled.dtype == torch.float32
        assert lengths[1] < lengths[0] < lengths[2], "padding must be removed per text"


def test_clip_tokens_stop_at_eot_and_pool_at_it(offline_args: dict[str, tuple[str, str]]) -> None:
    enc = _build("tiny_clip", offline_args)
    tokenizer = enc.tokenizer()
    for text, (tokens, pooled) in zip(TEXTS, enc.encode_text(TEXTS), strict=True):
        assert tokens.shape[0] == len(tokenizer.encode(text)) + 2  # <start_of_text> ... <end_of_text>
        # CLIP pools the projected EOT token: the last kept token is exactly the pooled embedding.
        torch.testing.assert_close(tokens[-1], pooled, rtol=1e-5, atol=1e-5)


def test_bert_tokens_follow_attention_mask_and_pool_cls(offline_args: dict[str, tuple[str, str]]) -> None:
    enc = _build("tiny_bert", offline_args)
    for text, (tokens, pooled) in zip(TEXTS, enc.encode_text(TEXTS), strict=True):
        ids = enc.tokenizer()(text)["input_ids"]
        assert tokens.shape[0] == len(ids) == len(text.replace(" ", "")) + 2  # one WordPiece per character
        torch.testing.assert_close(tokens[0], pooled)


def test_long_text_is_truncated_and_reported(offline_args: dict[str, tuple[str, str]],
                                             caplog: pytest.LogCaptureFixture) -> None:
    enc = _build("tiny_clip", offline_args)
    with caplog.at_level(logging.WARNING):
        [(tokens, _)] = enc.encode_text(["onion " * 200])
    assert tokens.shape[0] == enc.text_spec.max_tokens == 77
    assert "truncated" in caplog.text


def test_tiny_clip_is_deterministic_across_builds() -> None:
    frames = _frames(encoder_specs("tiny_clip")[0], 4)
    torch.manual_seed(123)  # the global RNG state must not matter
    a = build_encoder("tiny_clip")
    torch.manual_seed(456)
    b = build_encoder("tiny_clip", weights="none")
    assert torch.equal(a.encode_video(frames), b.encode_video(frames))
    (ta, pa), (tb, pb) = a.encode_text(TEXTS[:1])[0], b.encode_text(TEXTS[:1])[0]
    assert torch.equal(ta, tb) and torch.equal(pa, pb)


def test_batching_and_bf16_do_not_change_features() -> None:
    frames = _frames(encoder_specs("tiny_clip")[0], 7)
    reference = build_encoder("tiny_clip", batch_size=64).encode_video(frames)
    torch.testing.assert_close(build_encoder("tiny_clip", batch_size=3).encode_video(frames), reference)
    bf16 = build_encoder("tiny_clip", precision="bf16").encode_video(frames)
    assert bf16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(bf16, reference).min() > 0.98


def test_siglip_style_model_encodes_video_and_explains_missing_tokenizer(tmp_path: Path) -> None:
    # A tiny copy of the SO400M SigLIP config (timm vision tower, bidirectional text tower pooled
    # at the last position, hub tokenizer), run through the same open_clip family code.
    cfg = open_clip.get_model_config("ViT-SO400M-14-SigLIP-384")
    cfg["embed_dim"] = 192
    cfg["vision_cfg"].update(image_size=224, timm_model_name="vit_tiny_patch16_224")
    cfg["text_cfg"].update(width=32, heads=2, layers=1, mlp_ratio=2.0)
    (tmp_path / "test-tiny-siglip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "test-tiny-siglip.json")
    config = OpenClipConfig(model_name="test-tiny-siglip", pretrained_tag=None)
    enc = config.build("tiny_siglip", weights="none", device="cpu", precision="fp32", compile=False,
                       batch_size=None, fps=1.0)
    assert isinstance(enc, OpenClipEncoder)
    assert enc.encode_video(_frames(enc.video_spec, 2)).shape == (2, 192)
    assert enc.text_spec.tokenizer == "timm/ViT-B-16-SigLIP" and enc.text_spec.max_tokens == 64
    with pytest.raises(EncoderError, match="tokenizer 'timm/ViT-B-16-SigLIP'.*hub"):
        enc.encode_text(["a dog"])


# -- bad input -------------------------------------------------------------------------------------


def test_unknown_name_lists_available_names() -> None:
    with pytest.raises(EncoderError) as info:
        build_encoder("clip_vit_b99")
    for name in list_encoders():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["hf_vision", "tiny_clip:extra"])
def test_parametric_argument_is_checked(name: str) -> None:
    with pytest.raises(EncoderError, match="argument"):
        build_encoder(name, weights="none")


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((2, 40, 48), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((2, 40, 48, 4), np.uint8), r"\(N, H, W, 3\)"),
        (np.zeros((2, 40, 48, 3), np.float32), "uint8"),
        (np.zeros((0, 40, 48, 3), np.uint8), "empty"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_frames_are_rejected(frames: np.ndarray, match: str,
                                 offline_args: dict[str, tuple[str, str]]) -> None:
    with pytest.raises(EncoderError, match=match):
        _build("tiny_clip", offline_args).encode_video(frames)


def test_clip_encoder_needs_clips() -> None:
    spec, _ = encoder_specs("c3d", weights="none")
    check_frames(spec, np.zeros((1, 16, 8, 8, 3), np.uint8))
    with pytest.raises(EncoderError, match=r"c3d.*\(N, 16, H, W, 3\)"):
        check_frames(spec, np.zeros((16, 8, 8, 3), np.uint8))
    with pytest.raises(EncoderError, match=r"\(N, 16, H, W, 3\)"):
        check_frames(spec, np.zeros((1, 8, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("texts, match",
                         [([], "empty"), (["ok", "  "], "text 1"), ("a string", "one string")])
def test_bad_texts_are_rejected(texts: list[str], match: str,
                                offline_args: dict[str, tuple[str, str]]) -> None:
    with pytest.raises(EncoderError, match=match):
        _build("tiny_clip", offline_args).encode_text(texts)


def test_missing_tower_is_an_error(offline_args: dict[str, tuple[str, str]]) -> None:
    with pytest.raises(EncoderError, match="no video tower"):
        _build("tiny_bert", offline_args).encode_video(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(EncoderError, match="no text tower"):
        _build("c3d", offline_args).encode_text(["a dog"])


def test_c3d_weights_are_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="c3d.pickle"):
        build_encoder("c3d")
    with pytest.raises(EncoderError, match="missing.pickle"):
        build_encoder("c3d", weights=str(tmp_path / "missing.pickle"))
    wrong = tmp_path / "wrong.pickle"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(EncoderError, match="wrong.pickle.*does not match"):
        build_encoder("c3d", weights=str(wrong))


def test_c3d_module_names_match_the_sports1m_checkpoint() -> None:
    # The keys and shapes of c3d.pickle (DavideA/c3d-pytorch); built on the meta device, no memory.
    convs = {"conv1": (64, 3), "conv2": (128, 64), "conv3a": (256, 128), "conv3b": (256, 256),
             "conv4a": (512, 256), "conv4b": (512, 512), "conv5a": (512, 512), "conv5b": (512, 512)}
    expected = {f"{k}.weight": (*io, 3, 3, 3) for k, io in convs.items()}
    expected |= {f"{k}.bias": (io[0],) for k, io in convs.items()}
    expected |= {"fc6.weight": (4096, 8192), "fc6.bias": (4096,), "fc7.weight": (4096, 4096),
                 "fc7.bias": (4096,), "fc8.weight": (487, 4096), "fc8.bias": (487,)}
    with torch.device("meta"):
        state = C3D().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


# -- slow: real-size models --------------------------------------------------------------------------


@pytest.mark.slow
def test_c3d_loads_a_state_dict_strictly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = C3D().state_dict()
    path = tmp_path / "c3d.pickle"
    torch.save(state, path)
    enc = build_encoder("c3d", weights=str(path))
    assert enc.video_spec.weights_id == str(path.resolve())
    for key, value in enc.model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.slow
def test_clip_vit_b32_random_init_matches_its_spec() -> None:
    enc = build_encoder("clip_vit_b32", weights="none")
    spec = enc.video_spec
    assert enc.encode_video(_frames(spec, 2)).shape == (2, spec.dim)
    [(tokens, pooled)] = enc.encode_text(TEXTS[:1])
    assert tokens.shape == (len(enc.tokenizer().encode(TEXTS[0])) + 2, enc.text_spec.dim)
    torch.testing.assert_close(tokens[-1], pooled, rtol=1e-4, atol=1e-4)


def test_torch_compile_matches_eager():
    """The compile option, exercised on CPU (inductor): the same features as the eager model."""
    frames = np.random.default_rng(0).integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)
    eager = build_encoder("tiny_clip", weights="none", batch_size=4).encode_video(frames)
    compiled = build_encoder("tiny_clip", weights="none", batch_size=4, compile=True)
    torch.testing.assert_close(compiled.encode_video(frames), eager, rtol=1e-4, atol=1e-5)
