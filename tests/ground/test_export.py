"""`python -m ground export`: ONNX Runtime and TorchScript match PyTorch at two lengths, padding included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from torch import Tensor, nn

from cache_schema.fake import write_fake_cache
from ground.data import GroundingDataModule
from ground.errors import CheckpointError
from ground.export import (
    CHECK_SIZES,
    INPUT_NAMES,
    ExportError,
    example_inputs,
    export_main,
    export_module,
    load_module,
    max_opset,
    sidecar_path,
)
from ground.models import trainable_models
from ground.module import GroundingModule

REPO_ROOT = Path(__file__).resolve().parents[2]
SPAN_OUTPUTS = ["start_logits", "end_logits", "saliency", "presence_logit"]
# (B, T, L): two clip counts and token counts, neither the traced (2, 7, 5) pair for both axes.
SIZES = [(2, 7, 3), (4, 40, 9)]


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `span` checkpoint trained for two epochs on a fake cache, saved through Lightning."""
    root = tmp_path_factory.mktemp("export")
    write_fake_cache(root / "cache.h5", n_videos=6, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    data = GroundingDataModule(str(root / "cache.h5"), batch_size=4)
    module = GroundingModule(
        name="span",
        video_dim=data.video_dim,
        text_dim=data.text_dim,
        hparams={"hidden_dim": 32, "num_layers": 2, "num_heads": 2},
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
    return root / "span.ckpt"


def _pytorch(module: GroundingModule, inputs: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    batch = dict(zip(INPUT_NAMES, inputs, strict=True))
    ids = [f"q{i}" for i in range(len(inputs[0]))]
    with torch.no_grad():
        out = module.eval().net({**batch, "qid": ids, "vid": ids})
    return {k: v.numpy() for k, v in out.items()}


def _assert_matches(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    assert list(got) == list(expected)
    worst = 0.0
    for key, ref in expected.items():
        out = got[key]
        assert out.shape == ref.shape, key
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(out), finite, err_msg=f"{key}: padding differs")
        np.testing.assert_array_equal(out[~finite], ref[~finite])  # -inf on padding clips
        np.testing.assert_allclose(out[finite], ref[finite], atol=1e-4, rtol=1e-4, err_msg=key)
        worst = max(worst, float(np.abs(out[finite] - ref[finite]).max()))
    return worst


def test_onnx_runtime_matches_pytorch_at_two_lengths(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "span.onnx"
    assert export_main(["--ckpt", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    module = load_module(ckpt)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == SPAN_OUTPUTS
    inputs_used = [i.name for i in session.get_inputs()]
    assert inputs_used == ["video", "video_mask", "timestamps", "duration", "text", "text_mask"]
    for seed, size in enumerate(SIZES, start=10):
        inputs = example_inputs(module.hparams.video_dim, module.hparams.text_dim, *size, seed=seed)
        assert not inputs[1].all() and not inputs[5].all(), "the check must include padding"
        feed = {k: v.numpy() for k, v in zip(INPUT_NAMES, inputs, strict=True) if k in inputs_used}
        got = dict(zip(SPAN_OUTPUTS, session.run(None, feed), strict=True))
        _assert_matches(_pytorch(module, inputs), got)

    record = json.loads(sidecar_path(out).read_text())
    assert record["model"] == "span" and record["format"] == "onnx"
    assert [i["name"] for i in record["inputs"]] == inputs_used
    assert record["inputs"][0]["shape"] == ["B", "T", module.hparams.video_dim]
    assert [o["name"] for o in record["outputs"]] == SPAN_OUTPUTS
    assert record["outputs"][0]["shape"] == ["B", "T"] and record["outputs"][3]["shape"] == ["B"]
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert record["encoders"] == checkpoint["groundcache"]["encoders"]
    assert record["hyper_parameters"]["hparams"]["hidden_dim"] == 32
    assert all(c["max_abs_diff"] <= 1e-4 for c in record["verification"]["checks"])


def test_torchscript_matches_pytorch_at_two_lengths(ckpt: Path, tmp_path: Path) -> None:
    module = load_module(ckpt)
    out = tmp_path / "span.torchscript.pt"
    record = export_module(module, out, "torchscript")
    assert [i["name"] for i in record["inputs"]] == list(INPUT_NAMES)
    loaded = torch.jit.load(str(out))
    for seed, size in enumerate(SIZES, start=20):
        inputs = example_inputs(module.hparams.video_dim, module.hparams.text_dim, *size, seed=seed)
        with torch.no_grad():
            got = dict(zip(SPAN_OUTPUTS, (t.numpy() for t in loaded(*inputs)), strict=True))
        _assert_matches(_pytorch(module, inputs), got)


def test_baseline_has_nothing_to_export(tmp_path: Path) -> None:
    module = GroundingModule(name="random", video_dim=8, text_dim=8)
    with pytest.raises(ExportError, match="model 'random' has no network to export"):
        export_module(module, tmp_path / "random.onnx", "onnx")
    assert not (tmp_path / "random.onnx").exists()


class _FirstRowLength(nn.Module):
    """Scores clips through a layer sized by a Python int taken from the data: traces wrongly."""

    def __init__(self, video_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(video_dim, 1)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        n = int(batch["video_mask"][0].sum())  # a constant once traced
        scores = self.proj(batch["video"][:, :n]).squeeze(-1)  # (B, n)
        return {"scores": torch.nn.functional.pad(scores, (0, batch["video"].shape[1] - n))}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_network_whose_trace_does_not_generalise_is_refused(ckpt: Path, tmp_path: Path, fmt: str) -> None:
    module = load_module(ckpt)
    module.net = _FirstRowLength(module.hparams.video_dim)
    module.hparams.name = "first_row_length"
    out = tmp_path / f"model.{fmt}"
    with pytest.raises(ExportError, match=r"model 'first_row_length': the \w+ export (fails at|.*differs)"):
        export_module(module, out, fmt)
    assert not out.exists() and not sidecar_path(out).exists()


def test_bad_arguments(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset 14 or later"):
        export_module(load_module(ckpt), tmp_path / "m.onnx", "onnx", opset=11)
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        load_module(tmp_path / "missing.ckpt")
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["groundcache"]["encoders"] = None  # saved by a module that never saw a cache
    torch.save(checkpoint, tmp_path / "unrecorded.ckpt")
    with pytest.raises(CheckpointError, match=r"unrecorded\.ckpt: no encoder record .*an export must name"):
        load_module(tmp_path / "unrecorded.ckpt")


# Small networks of every trainable model, so the export of each is checked quickly.
SMALL = {
    "span": {"hidden_dim": 32, "num_layers": 1, "num_heads": 2},
    "regress": {"hidden_dim": 32, "num_heads": 2, "feedforward_dim": 64},
}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", [n for n in trainable_models() if n != "span"])  # span: above
def test_every_model_exports_or_says_why_not(name: str, fmt: str, tmp_path: Path) -> None:
    """Each model's own config (smaller where noted), checked against PyTorch at two sizes by
    `export_module`; a network with `export_refusal` is refused naming it, before any tracing."""
    config = yaml.safe_load((REPO_ROOT / "ground" / "configs" / "model" / f"{name}.yaml").read_text())
    hparams = {**(config["hparams"] or {}), **SMALL.get(name, {})}
    module = GroundingModule(name=name, hparams=hparams, video_dim=16, text_dim=12)
    out = tmp_path / f"{name}.{fmt}"
    refusal = getattr(module.net, "export_refusal", None)
    if refusal:
        with pytest.raises(ExportError, match=rf"^model '{name}' cannot be exported to {fmt}: .*packed"):
            export_module(module, out, fmt)
        assert not out.exists()
        return
    record = export_module(module, out, fmt)
    assert out.exists() and record["model"] == name
    assert [c["clips"] for c in record["verification"]["checks"]] == [c[1] for c in CHECK_SIZES]


def test_a_failed_export_leaves_the_file_at_out_alone(ckpt: Path, tmp_path: Path) -> None:
    """Verified under another name first: a failure must not delete an earlier export (or a
    mistyped checkpoint path) at --out."""
    module = load_module(ckpt)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    module.net = _FirstRowLength(module.hparams.video_dim)  # traced shapes do not generalise
    module.hparams.name = "first_row_length"
    with pytest.raises(ExportError):
        export_module(module, out, "onnx")
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_out_equal_to_the_checkpoint_and_a_low_opset_are_one_line_refusals(
    ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = ckpt.read_bytes()
    for argv in (
        ["--format", "torchscript", "--out", str(ckpt)],
        ["--format", "onnx", "--opset", "13"],
        ["--format", "onnx", "--opset", "99"],  # torch's exporter printed its IR, then a traceback
    ):
        with pytest.raises(SystemExit) as stopped:
            export_main(["--ckpt", str(ckpt), *argv])
        assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "is the checkpoint itself" in err and "opset 14 or later" in err and "Traceback" not in err
    assert f"--opset 99: this torch exports ONNX opsets 14 to {max_opset()}" in err
    assert len(err.splitlines()) < 20
    assert ckpt.read_bytes() == before
