"""The LoRA visual adapter (issue 14) on caches made in code: it reproduces the cache, and bad input is named.

The commands (`ground fit` with an adapter, and every consumer of its checkpoint) run as
subprocesses in tests/ground/test_lora_journey.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_schema import CacheReader, CacheWriter, QueryItem, VideoItem
from cache_schema.spec import MissingBlockInputsError
from extract.api import encode_frames_with_block_inputs, encode_texts
from extract.encoders import EncoderError, build_encoder
from extract.encoders.blocks import block_inputs_spec
from ground.adapter import VisualAdapter
from ground.data import GroundingDataModule
from ground.module import GroundingModule

FRAMES_PER_VIDEO = (4, 6, 5)


def write_block_cache(
    path: Path, encoder_name: str, blocks: int, pool: int = 1, *, with_blocks: bool = True
) -> Path:
    """Three videos of random frames with one query each, encoded by `encoder_name` (random init)."""
    encoder = build_encoder(encoder_name, weights="none", batch_size=4)
    spec = block_inputs_spec(encoder, blocks, pool)
    rng = np.random.default_rng(0)
    with CacheWriter(
        path,
        dataset="blocks",
        encoders=[encoder.video_spec, encoder.text_spec],
        mode="overwrite",
        block_inputs=[spec] if with_blocks else [],
    ) as writer:
        for i, n in enumerate(FRAMES_PER_VIDEO):
            frames = rng.integers(0, 256, size=(n, 40, 48, 3), dtype=np.uint8)
            features, hidden = encode_frames_with_block_inputs(encoder, frames, blocks, pool)
            starts = np.arange(n, dtype=np.float64)
            writer.add_video(
                VideoItem(
                    vid=f"v{i}",
                    duration_sec=float(n),
                    features={encoder_name: features},
                    timestamps_sec={encoder_name: np.stack([starts, starts + 1], axis=1)},
                    block_inputs={encoder_name: hidden} if with_blocks else {},
                )
            )
            [(tokens, pooled)] = encode_texts(encoder, [f"query {i}"])
            writer.add_queries(
                [
                    QueryItem(
                        qid=f"q{i}",
                        vid=f"v{i}",
                        text=f"query {i}",
                        split="train",
                        windows=[(0.0, 2.0)],
                        tokens={encoder_name: tokens},
                        pooled={encoder_name: pooled},
                    )
                ]
            )
    return path


@pytest.mark.parametrize(("encoder_name", "blocks"), [("tiny_clip", 1), ("tiny_clip", 2), ("tiny_siglip", 2)])
def test_a_zero_lora_update_reproduces_the_cached_features(
    tmp_path: Path, encoder_name: str, blocks: int
) -> None:
    cache = write_block_cache(tmp_path / "cache.h5", encoder_name, blocks)
    with CacheReader(cache) as reader:
        spec, block_spec = reader.video_encoders[encoder_name], reader.block_inputs[encoder_name]
        adapter = VisualAdapter(spec, block_spec, 0).eval()
        assert adapter.encoder == spec and block_spec.blocks == blocks
        lora = [n for n, p in adapter.named_parameters() if p.requires_grad]
        assert lora and all("lora_" in n for n in lora)
        for vid in reader.video_ids:
            cached = reader.video_features(vid, encoder_name).astype(np.float32)  # (T, D)
            with torch.no_grad():
                got = adapter(torch.from_numpy(reader.video_block_inputs(vid, encoder_name))).numpy()
            # The only difference is the fp16 storage of the block inputs and of the features.
            scale = float(np.abs(cached).max())
            np.testing.assert_allclose(got, cached, rtol=0, atol=5e-3 * scale)
            assert not np.allclose(got, 0)


def test_pooled_block_inputs_are_recorded_and_change_the_embeddings(tmp_path: Path) -> None:
    cache = write_block_cache(tmp_path / "cache.h5", "tiny_clip", 1, pool=2)
    with CacheReader(cache) as reader:
        block_spec = reader.block_inputs["tiny_clip"]
        # 4 x 4 patch grid averaged over 2 x 2 cells: 4 patch tokens after the class token.
        assert (block_spec.pool, block_spec.grid, block_spec.tokens) == (2, 4, 5)
        adapter = VisualAdapter(reader.video_encoders["tiny_clip"], block_spec, 0).eval()
        hidden = torch.from_numpy(reader.video_block_inputs("v0", "tiny_clip"))
        assert hidden.shape == (FRAMES_PER_VIDEO[0], 5, 64)
        with torch.no_grad():
            got = adapter(hidden).numpy()
        cached = reader.video_features("v0", "tiny_clip").astype(np.float32)
        assert np.abs(got - cached).max() > 1e-2 * np.abs(cached).max()


def test_the_module_replaces_only_the_adapted_columns(tmp_path: Path) -> None:
    cache = write_block_cache(tmp_path / "cache.h5", "tiny_clip", 1)
    data = GroundingDataModule(str(cache), block_inputs="tiny_clip", val_split="train", test_split="train")
    module = GroundingModule(
        "span",
        {"hidden_dim": 32, "num_layers": 1, "num_heads": 2, "conv_dilations": [1, 2]},
        video_dim=data.video_dim,
        text_dim=data.text_dim,
        adapter="lora",
        adapter_source=data.adapter_source,
    )
    batch = next(iter(data.train_dataloader()))
    assert batch["block_inputs"].shape[2:] == (17, 64)
    with torch.no_grad():
        adapted = module.video_input(batch)
    assert "block_inputs" not in adapted
    mask = batch["video_mask"]
    np.testing.assert_allclose(adapted["video"][mask].numpy(), batch["video"][mask].numpy(), atol=2e-2)
    assert torch.all(adapted["video"][~mask] == 0)
    # A LoRA update moves the embeddings, and the loss reaches the LoRA weights.
    for name, param in module.adapter.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    output = module.net(module.video_input(batch))
    module.net.loss(output, batch)["loss"].backward()
    grads = [p.grad for n, p in module.adapter.named_parameters() if "lora_" in n]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    frozen = [p for n, p in module.adapter.named_parameters() if "lora_" not in n]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)


def test_an_adapter_on_a_cache_without_block_inputs_names_cache_encoder_and_option(tmp_path: Path) -> None:
    cache = write_block_cache(tmp_path / "plain.h5", "tiny_clip", 1, with_blocks=False)
    with pytest.raises(MissingBlockInputsError) as caught:
        GroundingDataModule(str(cache), block_inputs="tiny_clip")
    message = str(caught.value)
    assert str(cache) in message and "'tiny_clip'" in message and "block_inputs: K" in message


def test_an_adapter_without_block_inputs_in_the_data_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--data.block_inputs ENCODER"):
        GroundingModule("span", video_dim=32, text_dim=32, adapter="lora")


def test_adapter_weights_other_than_the_cache_s_are_refused_naming_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = write_block_cache(tmp_path / "cache.h5", "tiny_clip", 1)
    other = tmp_path / "other_weights.bin"
    other.write_bytes(b"not used: the ids differ before anything is loaded")
    with CacheReader(cache) as reader:
        spec, block_spec = reader.video_encoders["tiny_clip"], reader.block_inputs["tiny_clip"]
    with pytest.raises(EncoderError) as caught:
        VisualAdapter(spec, block_spec, 0, weights=str(other))
    assert str(other) in str(caught.value) and "weights_id 'none'" in str(caught.value)
    # Random-init weights ('none', the cache's) are allowed, with a warning.
    with caplog.at_level(logging.WARNING):
        VisualAdapter(spec, block_spec, 0, weights="none")
    assert "random-init weights" in caplog.text


def test_block_inputs_without_an_adapter_name_the_missing_flag(tmp_path: Path) -> None:
    cache = write_block_cache(tmp_path / "cache.h5", "tiny_clip", 1)
    data = GroundingDataModule(str(cache), block_inputs="tiny_clip")
    with pytest.raises(ValueError, match=r"--data.block_inputs tiny_clip .* add --model.adapter lora"):
        GroundingModule("span", video_dim=32, text_dim=32, adapter_source=data.adapter_source)
