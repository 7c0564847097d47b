"""`extract.api.encode_frames` padding: offline passes of the full batch, live passes of a power of two."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record_encode_rows

from extract.api import FeatureExtractor, _pad_rows, encode_frames
from extract.encoders import build_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 64


@pytest.mark.parametrize(
    ("n_rows", "full_batch", "pow2"),
    [(1, 63, 0), (2, 62, 0), (3, 61, 1), (5, 59, 3), (33, 31, 31), (64, 0, 0), (65, 63, 0), (67, 61, 1)],
)
def test_pad_rows(n_rows: int, full_batch: int, pow2: int) -> None:
    assert _pad_rows(n_rows, BATCH, "full_batch") == full_batch
    assert _pad_rows(n_rows, BATCH, "pow2") == pow2


def test_pow2_padding_is_capped_at_the_batch_and_checked() -> None:
    assert _pad_rows(5, 6, "pow2") == 1  # the bucket of 5 is 8, capped at a batch of 6
    with pytest.raises(ValueError, match="padding must be one of"):
        _pad_rows(5, 6, "bucket")  # type: ignore[arg-type]


def _counting_encoder():
    """tiny_clip (random init, batch 64) whose forward passes' row counts are recorded."""
    encoder = build_encoder("tiny_clip", weights="none", batch_size=BATCH)
    return encoder, record_encode_rows(encoder)


def _frames(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 40, 48, 3), dtype=np.uint8)  # (N, H, W, 3)


def test_live_passes_compute_the_rows_they_need_and_equal_offline_up_to_rounding() -> None:
    encoder, rows = _counting_encoder()
    frames = _frames(3)
    offline = encode_frames(encoder, frames)  # (3, D)
    assert rows == [BATCH]
    for n, bucket in [(1, 1), (2, 2), (3, 4)]:
        rows.clear()
        live = encode_frames(encoder, frames[:n], padding="pow2")
        assert rows == [bucket]
        assert live.shape == (n, encoder.video_spec.dim) and live.dtype == np.float32
        # Float rounding only: a few 1e-7 for tiny_clip (docs/serving.md); the features are O(1).
        np.testing.assert_allclose(live, offline[:n], rtol=0, atol=1e-5)
    assert np.abs(offline).max() > 0.1  # the tolerance is small next to the values


def test_encode_decoded_frames_pads_live_passes_unless_told() -> None:
    encoder, rows = _counting_encoder()
    extractor = FeatureExtractor({"tiny_clip": encoder}, frame_size=None)
    frames = list(_frames(2))
    live = extractor.encode_decoded_frames(frames)["tiny_clip"]
    assert rows == [2]
    offline = extractor.encode_decoded_frames(frames, padding="full_batch")["tiny_clip"]
    assert rows == [2, BATCH]
    assert live.dtype == offline.dtype == np.float16  # the storage dtype
    # Up to one float16 step of the stored values.
    np.testing.assert_allclose(live.astype(np.float32), offline.astype(np.float32), rtol=2**-10, atol=1e-6)
