"""``make bench-extract``: the looped benchmark video, FLOP counting, MFU and the command itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_video import frame_ids, index_frames

from extract import bench
from extract.bench import Row, forward_row, looped_video, markdown, peak_tflops
from extract.encoders import build_encoder
from extract.video import feature_windows, nearest_frame_indices, probe_video, sample_video, write_video


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of 25 fps frames whose colour encodes their index, losslessly encoded."""
    return write_video(tmp_path_factory.mktemp("bench") / "src.mp4", index_frames(50), 25, lossless=True)


def test_looped_video_repeats_the_stream_with_continuous_timestamps(source, tmp_path):
    path = looped_video(source, tmp_path, minutes=0.1)  # 6 s: three copies of the 2 s source
    info = probe_video(path)
    assert info.n_frames == 150
    np.testing.assert_allclose(info.frame_timestamps_sec, np.arange(150) / 25, atol=1e-6)
    sampled = sample_video(path, 1.0, backend="pyav")  # one frame per second, nearest the centre
    nearest = nearest_frame_indices(info.frame_timestamps_sec, feature_windows(6.0, 1.0).mean(axis=1))
    assert frame_ids(sampled.frames).tolist() == (nearest % 50).tolist()  # the source's frames, in order
    assert looped_video(source, tmp_path, minutes=0.1) == path  # cached: not written twice
    assert not list(tmp_path.glob("*.partial.mp4"))


def test_looped_video_rejects_a_file_without_video(tmp_path):
    import av

    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), mode="w") as out:
        stream = out.add_stream("aac", rate=16000)
        silence = np.zeros((1, 1024), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises((ValueError, IndexError)):
        looped_video(audio, tmp_path, minutes=0.1)
    assert not (tmp_path / "audio_loop_0.1min.mp4").exists()


def test_forward_row_counts_flops_per_frame_independent_of_batch():
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 40, 48, 3), dtype=np.uint8)
    rows = []
    for batch_size in (2, 4):
        encoder = build_encoder("tiny_clip", weights="none", batch_size=batch_size)
        rows.append(forward_row(encoder, frames, passes=2))
    for row, batch_size in zip(rows, (2, 4), strict=True):
        assert row.stage == "tiny_clip" and row.method == "forward only"
        assert row.frames == 2 * batch_size
        assert row.seconds > 0
    assert rows[0].flops_per_frame > 0
    assert rows[0].flops_per_frame == pytest.approx(rows[1].flops_per_frame, rel=1e-6)


def test_forward_row_pads_a_short_video_to_one_batch():
    frames = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    encoder = build_encoder("tiny_clip", weights="none", batch_size=8)
    row = forward_row(encoder, frames, passes=1)
    assert row.frames == 8


def test_flops_of_a_linear_layer_match_the_formula():
    """The counter the MFU rests on: 2 * in * out FLOPs per row of a matmul."""
    encoder = build_encoder("tiny_clip", weights="none", batch_size=1)
    layer = torch.nn.Linear(64, 32)
    encoder.forward_video = layer  # the counter wraps whatever forward_video is
    assert bench.forward_flops(encoder, torch.zeros(3, 64)) == 2 * 3 * 64 * 32


def test_attention_projections_are_counted():
    """ViT-B-32 at 224 px: 12 blocks of 50 tokens at width 768 (+ patch embedding) ~ 8.7 GFLOP."""
    encoder = build_encoder("clip_vit_b32", weights="none", batch_size=1)
    with encoder.inference():
        pixels = encoder.preprocess_video(np.zeros((1, 224, 224, 3), dtype=np.uint8))
    width, tokens, blocks = 768, 50, 12
    per_block = 2 * tokens * (12 * width * width) + 2 * 2 * tokens * tokens * width  # linears + attention
    expected = blocks * per_block + 2 * 49 * (3 * 32 * 32) * width
    assert bench.forward_flops(encoder, pixels) == pytest.approx(expected, rel=0.01)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_peak_is_known_only_for_listed_gpus_in_bf16(monkeypatch):
    assert peak_tflops(torch.device("cpu"), "bf16") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_tflops(torch.device("cuda"), "bf16") == 989.4
    assert peak_tflops(torch.device("cuda"), "fp32") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_tflops(torch.device("cuda"), "bf16") == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert peak_tflops(torch.device("cuda"), "bf16") is None


def test_markdown_reports_ratio_throughput_and_mfu():
    rows = [
        Row("decode", "PyAV sequential", 10, 2.0),
        Row("enc", "forward only", 100, 1.0, flops_per_frame=5e9),
        Row("enc", "encoder only", 50, 1.0, flops_per_frame=5e9),
        Row("enc", "end to end (2 decode workers)", 40, 1.0, flops_per_frame=5e9),
    ]
    table = markdown(rows, peak=1.0).splitlines()
    assert table[2] == "| decode | PyAV sequential | 10 | 2.00 | 5.0 |  |  |  |  |"
    assert table[4] == "| enc | encoder only | 50 | 1.00 | 50.0 | 100% | 5.00 | 0.25 | 25.0% |"
    assert table[5] == "| enc | end to end (2 decode workers) | 40 | 1.00 | 40.0 | 80% | 5.00 | 0.2 | 20.0% |"
    assert "%" not in markdown(rows).splitlines()[3].split("|")[-2]  # no peak: no MFU


def test_bench_command_runs_end_to_end(source, tmp_path, capsys):
    assert bench.main(["--source", str(source), "--minutes", "0.05", "--encoders", "tiny_clip",
                       "--copies", "2", "--num-workers", "1", "--batch-size", "4",
                       "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "encoders on cpu (fp32, peak unknown TFLOP/s)" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    methods = [line.split(" | ")[1] for line in table[1:]]
    assert methods[-3:] == ["forward only", "encoder only", "end to end (1 auto decode workers)"]
    assert "PyAV sequential" in methods
    end_to_end = table[-1].split(" | ")
    assert end_to_end[2] == "8"  # 3 s asked for: 2 loops of the 2 s source, 2 copies, 1 fps


def test_bench_command_rejects_a_missing_source(tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--source", str(tmp_path / "missing.mp4"), "--out", str(tmp_path)])
    assert exc.value.code == 2
