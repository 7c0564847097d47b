"""`python -m ground.bench` (make bench-train) and the GPU-path pieces it uses.

Padding T to a bucket must not change what a network computes; the bf16 and compiled steps
must still train (the loss falls) on a small fake cache; `--model all` reports every trainable
model. Speed itself is a benchmark (docs/benchmarks.md), never asserted here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cache_schema.fake import write_fake_cache
from ground import bench
from ground.data import GroundingDataModule, pad_clips
from ground.models import trainable_models
from ground.models.span import SpanNet
from ground.module import scaled_lr
from tests.ground.test_span import make_batch, tiny_span

TINY = ["--queries", "24", "--clips", "8", "--video-dim", "16", "--text-dim", "16", "--tokens", "4",
        "--batch-size", "8", "--steps", "1", "--warmup", "0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fake_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[GroundingDataModule, object]:
    path = tmp_path_factory.mktemp("bench") / "cache.h5"
    write_fake_cache(path, n_videos=16, queries_per_video=1, video_dims=(24,), text_dim=24,
                     tokens_range=(3, 6), duration_range_sec=(8.0, 20.0), splits=("train",), seed=1)
    data = GroundingDataModule(str(path), batch_size=16, train_split="train")
    return data, data.load("train")


def test_pad_clips_pads_to_the_bucket_and_leaves_span_unchanged() -> None:
    batch = make_batch([6, 9, 4], seed=2)  # T = 9
    padded = pad_clips(batch, 8)  # T' = 16
    assert padded["video"].shape[1] == 16 and padded["saliency_mask"].shape == (3, 16)
    assert not padded["video_mask"][:, 9:].any() and (padded["timestamps"][:, 9:] == 0).all()
    assert pad_clips(padded, 8) is padded  # already a multiple: nothing to do
    model = tiny_span(presence_negative_fraction=1.0).train()  # dropout 0
    with torch.no_grad():
        plain, bucketed = model(batch), model(padded)
        loss, padded_loss = model.loss(plain, batch), model.loss(bucketed, padded)
    torch.testing.assert_close(bucketed["start_logits"][:, :9], plain["start_logits"], rtol=1e-5, atol=1e-5)
    assert torch.isinf(bucketed["start_logits"][:, 9:]).all()
    for key in ("loss", "start_end", "presence", "saliency"):
        torch.testing.assert_close(padded_loss[key], loss[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        pad_clips(batch, 0)


def test_scaled_lr_follows_the_square_root_rule() -> None:
    assert scaled_lr(3e-4, 32) == pytest.approx(3e-4)
    assert scaled_lr(3e-4, 128) == pytest.approx(6e-4)
    assert scaled_lr(1e-3, 8, base_batch_size=32) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="batch"):
        scaled_lr(3e-4, 0)


def _loss_falls(fake_split: tuple, precision: str, compile_net: bool, device: str = "cpu") -> None:
    data, split = fake_split
    split = split.to(device)
    torch.manual_seed(0)
    net = SpanNet(video_dim=data.video_dim, text_dim=data.text_dim, hidden_dim=32, num_layers=2,
                  num_heads=4, dropout=0.0).to(device).train()
    batch = pad_clips(split.gather(torch.arange(16)), 8)

    def loss_now() -> float:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return float(net.loss(net(batch), batch)["loss"])

    before = loss_now()
    step = bench.make_step(net, split, 16, lr=3e-3, precision=precision, compile_net=compile_net,
                           clip_bucket=8)
    for _ in range(40):
        step()
    after = loss_now()
    assert after < 0.7 * before, (before, after)


def test_bf16_autocast_step_trains(fake_split: tuple) -> None:
    _loss_falls(fake_split, "bf16", compile_net=False)


@pytest.mark.slow
def test_compiled_step_trains_on_cpu(fake_split: tuple) -> None:
    _loss_falls(fake_split, "32", compile_net=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_bf16_step_trains_on_the_gpu(fake_split: tuple) -> None:
    _loss_falls(fake_split, "bf16", compile_net=True, device="cuda")


def test_model_all_reports_every_trainable_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([*TINY, "--model", "all", "--eval-queries", "16", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| ")}
    for name in trainable_models():
        assert name in rows, out
        assert float(rows[name][4]) > 0  # samples/s
        assert f"{name}: validation over 16 queries" in out


def test_profile_names_the_parts_of_a_span_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([*TINY, "--model", "span", "--profile", "1", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    parts = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    for part in ("backward", "loss", "forward video_proj", "forward convs[*]", "forward layers[*]",
                 "forward layers[*] (call 2)", "optimizer, clipping, batch gather, rest"):
        assert part in parts, out


def test_an_unknown_model_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY, "--model", "nope", "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--model 'nope'" in capsys.readouterr().err


def test_zoo_table_has_a_samples_per_cpu_second_column() -> None:
    from ground.zoo import table

    rows = [
        {"model": "span", "trainable": True, "params": 6.5e6, "train_sec": 12.0, "epochs": 2,
         "samples_per_sec": 8.94, "MR-full-R1@0.5": 50.0},
        {"model": "prior", "trainable": False, "params": 0, "train_sec": 0.0, "epochs": 0,
         "samples_per_sec": None, "MR-full-R1@0.5": 10.0},
    ]
    lines = table(rows, Path("/tmp/cache.h5"), "test machine").splitlines()
    header = [cell.strip() for cell in lines[2].split("|")]
    column = header.index("train samples per CPU s (QVHighlights shape)")
    assert [line.split("|")[column].strip() for line in lines[4:]] == ["8.9", "-"]
