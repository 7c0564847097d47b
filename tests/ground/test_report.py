"""`python -m ground report`: every figure a real PNG on the page, metrics as `test`, attention hooks."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch

from cache_schema.fake import write_fake_cache
from ground.data import GroundingDataModule
from ground.errors import EncoderMismatchError
from ground.export import load_module
from ground.models import build_model
from ground.module import GroundingModule
from ground.report import BASELINES, FIGURES, build_report, capture_cross_attention, load_data, report_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache, checkpoint): equal video and text dims so the zero-shot baseline runs too."""
    root = tmp_path_factory.mktemp("report")
    cache = root / "cache.h5"
    write_fake_cache(
        cache, n_videos=9, queries_per_video=2, video_dims=(16,), text_dim=16, duration_range_sec=(6.0, 24.0)
    )
    data = GroundingDataModule(str(cache), batch_size=4)
    module = GroundingModule(
        name="span", video_dim=16, text_dim=16, hparams={"hidden_dim": 32, "num_layers": 2, "num_heads": 2}
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(root / "span.ckpt")
    return cache, root / "span.ckpt"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_report_writes_every_figure_page_and_metrics(trained: tuple[Path, Path], tmp_path: Path) -> None:
    cache, ckpt = trained
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"cache: {cache}\ntrain_split: train\nval_split: val\nbatch_size: 4\n")
    out = tmp_path / "report"
    argv = [
        "--ckpt",
        str(ckpt),
        "--data",
        str(data_yaml),
        "--split",
        "test",
        "--out",
        str(out),
        "--examples",
        "2",
        "--attention-samples",
        "2",
    ]
    assert report_main(argv) == 0

    page = (out / "index.html").read_text()
    for name in FIGURES:
        width, height = _png_size(out / name)
        assert width >= 300 and height >= 200, name
        assert (out / name).stat().st_size > 5000, f"{name} looks empty"
        assert f'src="{name}"' in page, f"index.html does not embed {name}"

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["model"]["name"] == "span"
    assert sorted(metrics["baselines"]) == sorted(BASELINES) and metrics["skipped"] == {}
    assert sorted(metrics["figures"]) == sorted(FIGURES)
    # The report's model metrics are the ones `test` logs for the same checkpoint and split.
    module = load_module(ckpt)
    tested = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        module, datamodule=GroundingDataModule(str(cache), test_split="test"), verbose=False
    )[0]
    for key in ("MR-full-R1@0.5", "MR-full-R5@0.7", "MR-full-mIoU", "MR-full-mAP"):
        assert metrics["model"]["metrics"][key] == pytest.approx(tested[f"test/{key}"], abs=1e-3), key
    for name in BASELINES:
        assert 0.0 <= metrics["baselines"][name]["MR-full-R1@0.5"] <= 100.0
        assert f"{name} (baseline)" in page


def test_cross_attention_capture_leaves_outputs_unchanged(trained: tuple[Path, Path]) -> None:
    cache, _ = trained
    split = GroundingDataModule(str(cache)).load("val")
    batch = split.gather(torch.arange(len(split)))
    net = build_model("span", video_dim=16, text_dim=16, hidden_dim=32, num_layers=3, num_heads=4).eval()
    with torch.no_grad():
        plain = net(batch)
        with capture_cross_attention(net) as maps:
            hooked = net(batch)
        after = net(batch)
    assert len(maps) == 3  # one cross-attention call per layer; self-attention calls are not captured
    n_clips, n_tokens = batch["video"].shape[1], batch["text"].shape[1]
    for weights in maps:
        assert weights.shape == (len(split), n_clips, n_tokens)
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(split), n_clips))
        assert torch.all(weights.masked_select(~batch["text_mask"][:, None, :].expand_as(weights)) == 0)
    for key in plain:
        torch.testing.assert_close(hooked[key], plain[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(after[key], plain[key])
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules()), "hooks must be removed"


def test_zeroshot_skipped_with_reason_and_no_attention_model_noted(tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    write_fake_cache(cache, n_videos=6, queries_per_video=1, duration_range_sec=(6.0, 12.0))  # dims 32 / 16
    data = load_data(None, cache, batch_size=8)
    # A baseline as "the model": it has no cross-attention, so that figure is replaced by a note.
    module = GroundingModule(name="prior", video_dim=32, text_dim=16)
    module.net.fit_statistics(data.load("train"))
    record = build_report(
        module, data, "val", tmp_path / "r", baselines=["random", "zeroshot"], examples=1, attention_samples=1
    )
    assert "zeroshot" in record["skipped"] and "video dim 32, text dim 16" in record["skipped"]["zeroshot"]
    assert "cross_attention.png" not in record["figures"]
    assert any("no cross-attention figure" in note for note in record["notes"])
    assert "zeroshot" in (tmp_path / "r" / "index.html").read_text()


def test_bad_inputs_name_the_item(trained: tuple[Path, Path], tmp_path: Path) -> None:
    cache, ckpt = trained
    with pytest.raises(ValueError, match="give --cache"):
        load_data(None, None, batch_size=4)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"cache: {cache}\nbatchsize: 3\n")
    with pytest.raises(ValueError, match="bad.yaml.*batchsize"):
        load_data(bad, None, batch_size=4)
    other = tmp_path / "other.h5"
    write_fake_cache(other, n_videos=3, queries_per_video=1, video_dims=(8,), text_dim=16)
    with pytest.raises(EncoderMismatchError, match=r"fake_video0\(dim=16.*provides.*fake_video0\(dim=8"):
        report_main(["--ckpt", str(ckpt), "--cache", str(other), "--out", str(tmp_path / "r")])
