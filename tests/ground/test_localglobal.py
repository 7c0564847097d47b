"""Tests of `localglobal`: clip assignment, per-clip geometry, the loss and fusion decoder by hand,
TorchScript/ONNX export of the tensor path, overfitting, and one fit through the trainer.

The registry-wide contract (forward/backward, padding invariance, decode validity, bad batches)
is tested for every model in test_span.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_span import TEXT_DIM, VIDEO_DIM, assert_recall_at_1, make_batch, planted_batch, train_steps
from torch import Tensor, nn

from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.models.blocks import assign_clips
from ground.models.localglobal import GlobalContextBlock, LocalGlobalNet

CONFIG = Path(__file__).resolve().parents[2] / "ground" / "configs" / "model" / "localglobal.yaml"
TENSOR_KEYS = ("video", "video_mask", "timestamps", "duration", "text", "text_mask")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_localglobal(**overrides: object) -> LocalGlobalNet:
    torch.manual_seed(0)
    hparams = {"hidden_dim": 32, "num_layers": 2, "num_heads": 4, "dropout": 0.0} | overrides
    return LocalGlobalNet(video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **hparams)


class Localize(nn.Module):
    """The tensor-only path as a module of positional tensors, as an exporter wants it."""

    def __init__(self, net: LocalGlobalNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net.localize(*tensors)


def test_localglobal_rejects_inconsistent_hparams() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        LocalGlobalNet(video_dim=4, text_dim=4, hidden_dim=32, num_heads=32)  # 16 channels for 32 heads
    with pytest.raises(ValueError, match="odd"):
        LocalGlobalNet(video_dim=4, text_dim=4, kernel_size=4)
    with pytest.raises(ValueError, match="num_layers"):
        LocalGlobalNet(video_dim=4, text_dim=4, num_layers=0)
    with pytest.raises(ValueError, match="nms_iou_threshold"):
        LocalGlobalNet(video_dim=4, text_dim=4, nms_iou_threshold=1.5)


def test_global_block_attends_on_half_the_channels_only() -> None:
    torch.manual_seed(0)
    block = GlobalContextBlock(dim=8, num_heads=2, dropout=0.0).eval()
    x = torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, True, False, False]])
    out = block(x, mask)
    torch.testing.assert_close(out[..., 4:], x[..., 4:])  # the other half passes through
    changed = x.clone()
    changed[0, 3:, :] = 100.0  # padding clips take no part in the attention
    torch.testing.assert_close(block(changed, mask)[0, :3], out[0, :3])


def test_assign_clips_by_hand() -> None:
    """1-s clips, centres 0.5 .. 9.5 (the last two are padding)."""
    timestamps = torch.stack([torch.arange(10.0), torch.arange(10.0) + 1], dim=-1)[None]  # (1, 10, 2)
    mask = torch.arange(10)[None] < 8
    windows = torch.tensor([[[2.0, 5.0], [3.0, 4.0], [7.2, 7.4], [0.0, 0.0]]])
    window_mask = torch.tensor([[True, True, True, False]])
    positive, target = assign_clips(timestamps, mask, windows, window_mask, ["q0"])
    # Clips 2-4 lie in [2, 5]; clip 3 also in [3, 4] and takes the shorter one; the sub-clip window
    # [7.2, 7.4] holds no centre and claims its nearest clip, 7.
    assert positive[0].nonzero().flatten().tolist() == [2, 3, 4, 7]
    expected = torch.tensor([[2.0, 5.0], [3.0, 4.0], [2.0, 5.0], [7.2, 7.4]])
    torch.testing.assert_close(target[0, [2, 3, 4, 7]], expected)
    far = torch.tensor([[[9.0, 10.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # beyond the real clips
    first_only = torch.tensor([[True, False, False, False]])
    positive, _ = assign_clips(timestamps, mask, far, first_only, ["q0"])
    assert positive[0].nonzero().flatten().tolist() == [7]  # the nearest real clip, never padding
    with pytest.raises(ValueError, match="q7"):
        assign_clips(timestamps, mask, windows, torch.zeros(1, 4, dtype=torch.bool), ["q7"])


def test_localize_geometry_in_clip_units() -> None:
    """Heads that output zero: a zero-length boundary window and a one-clip segment at the clip."""
    model = tiny_localglobal().eval()
    for module in (model.boundary_head[-1], model.segment_head[-1]):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
    batch = make_batch([6, 4], stride_sec=0.5)
    with torch.no_grad():
        output = model(batch)
    centre = batch["timestamps"].mean(-1)  # (B, T)
    mask = batch["video_mask"]
    torch.testing.assert_close(output["boundary_windows_sec"][mask], torch.stack([centre, centre], -1)[mask])
    torch.testing.assert_close(output["segment_windows_sec"][mask], batch["timestamps"][mask])
    nn.init.constant_(model.boundary_head[-1].bias, math.log(3.0))  # (e^a - 1) = 2 clips = 1 s each side
    with torch.no_grad():
        output = model(batch)
    expected = torch.stack([centre - 1.0, centre + 1.0], -1)
    torch.testing.assert_close(output["boundary_windows_sec"][mask], expected[mask])
    assert torch.isneginf(output["confidence_logits"][~mask]).all()


def test_localglobal_loss_by_hand() -> None:
    model = tiny_localglobal()
    batch = make_batch([6])
    batch["windows"][0, 0] = torch.tensor([1.0, 4.0])  # clips 1, 2, 3 are positive
    batch["window_mask"][0, 1] = False
    exact = batch["windows"][0, 0].expand(1, 6, 2).clone()
    logits = torch.tensor([[-20.0, 20.0, 20.0, 20.0, -20.0, -20.0]])
    output = {
        "boundary_windows_sec": exact,
        "segment_windows_sec": exact.clone(),
        "confidence_logits": logits,
    }
    losses = model.loss(output, batch)
    for part in ("boundary", "segment", "confidence"):
        assert losses[part].item() == pytest.approx(0.0, abs=1e-6), part
    # Off by the window's own width on positive clip 2 only: EIoU = 1 + 3^2/6^2 + 0 there, 0 elsewhere.
    output["segment_windows_sec"][0, 2] = torch.tensor([4.0, 7.0])
    output["boundary_windows_sec"][0, 0] = torch.tensor([50.0, 60.0])  # clip 0 is no positive: ignored
    losses = model.loss(output, batch)
    assert losses["segment"].item() == pytest.approx((1 + 9 / 36) / 3, rel=1e-4)
    assert losses["boundary"].item() == pytest.approx(0.0, abs=1e-6)
    output["confidence_logits"] = torch.zeros(1, 6)
    losses = model.loss(output, batch)
    assert losses["confidence"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["segment"].item() + math.log(2), rel=1e-4)


def test_localglobal_decode_fuses_heads_ranks_by_confidence_and_suppresses() -> None:
    model = tiny_localglobal(nms_iou_threshold=0.5)
    batch = make_batch([4, 2])
    boundary = torch.tensor(
        [[[0.0, 2.0], [1.0, 3.0], [0.0, 2.2], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]
    )
    segment = torch.tensor(
        [[[0.0, 2.0], [1.0, 4.0], [0.2, 2.0], [3.0, 5.0]], [[-1.0, 1.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]]
    )
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0], [0.0, 3.0, float("-inf"), float("-inf")]])
    output = {"boundary_windows_sec": boundary, "segment_windows_sec": segment, "confidence_logits": logits}
    preds = model.decode(output, batch, k=4)
    # Query 0: fused windows [0, 2], [1, 3.5], [0.1, 2.1], [3, 4.5] (clipped to the 4-s video).
    # By confidence: clip 2; clip 1 (IoU 1.1 / 3.4 with clip 2: kept); clip 0 (IoU 1.9 / 2.1 with
    # clip 2: suppressed); clip 3 (IoU 0.5 / 3 with clip 1: kept). One filler slot remains.
    torch.testing.assert_close(preds.windows[0, :3], torch.tensor([[0.1, 2.1], [1.0, 3.5], [3.0, 4.0]]))
    torch.testing.assert_close(preds.scores[0, :3], torch.sigmoid(torch.tensor([2.0, 1.0, -1.0])))
    assert preds.window_mask[0].tolist() == [True, True, True, False]
    # Query 1: clip 1's inverted boundary window [1, 0] averages with [1, 2] to [1, 1] (ordered);
    # clip 0's [-0.5, 1] is clipped to [0, 1].
    torch.testing.assert_close(preds.windows[1, :2], torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(preds.saliency, torch.sigmoid(logits) * batch["video_mask"])
    assert preds.presence is None


def test_localize_traces_to_torchscript_for_any_length() -> None:
    model = tiny_localglobal().eval()
    traced_on = make_batch([7, 5], text_lengths=[3, 4])
    run_on = make_batch([12, 30, 4], text_lengths=[5, 2, 6], seed=1)
    with torch.no_grad():
        example = tuple(traced_on[key] for key in TENSOR_KEYS)
        traced = torch.jit.trace(Localize(model), example, check_trace=False)
        got = traced(*(run_on[key] for key in TENSOR_KEYS))
        expected = model.localize(*(run_on[key] for key in TENSOR_KEYS))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_localize_exports_to_onnx(tmp_path: Path) -> None:
    """At the export shapes. (Varying them needs the dynamo exporter: the TorchScript exporter
    bakes sequence lengths into nn.MultiheadAttention's reshapes, pytorch/pytorch#122321.)"""
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tiny_localglobal().eval()
    batch = make_batch([7, 5], text_lengths=[3, 4])
    inputs = tuple(batch[key] for key in TENSOR_KEYS)
    path = tmp_path / "localglobal.onnx"
    # Exported with autograd on: under no_grad, nn.MultiheadAttention takes a fused fast path that
    # has no ONNX symbolic.
    torch.onnx.export(
        Localize(model),
        inputs,
        str(path),
        input_names=list(TENSOR_KEYS),
        output_names=["boundary", "segment", "confidence"],
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {key: value.numpy() for key, value in zip(TENSOR_KEYS, inputs, strict=True)})
    with torch.no_grad():
        expected = model.localize(*inputs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), e, atol=1e-4, rtol=1e-4)


def test_localglobal_overfits_eight_samples() -> None:
    """Clips inside the ground-truth window carry a shared pattern; localglobal must find it."""
    batch = planted_batch()
    model = tiny_localglobal(hidden_dim=64)
    train_steps(model, batch, steps=150, lr=1e-3)
    assert_recall_at_1(model, batch)


def test_localglobal_fits_through_the_trainer(tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    write_fake_cache(cache, n_videos=6, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    args = [
        "fit",
        "--data.cache",
        str(cache),
        "--data.batch_size",
        "4",
        "--model",
        str(CONFIG),
        "--model.hparams.hidden_dim",
        "32",
        "--model.hparams.num_heads",
        "2",
        "--model.hparams.num_layers",
        "1",
        "--run_dir",
        str(tmp_path / "runs"),
        "--trainer.fast_dev_run",
        "true",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert ground_main(args) == 0
