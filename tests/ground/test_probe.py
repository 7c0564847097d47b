"""Tests of `probe`: its logit and loss by hand, its decoder's rules, fitting eight samples
perfectly, and the fit -> test -> predict -> eval -> export commands and the Python API on a
trained checkpoint.

The registry-wide contract (forward/backward, padding invariance, decode validity, bad batches)
is tested for every model in test_span.py.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_span import TEXT_DIM, VIDEO_DIM, make_batch, planted_batch, train_steps

from cache_schema import CacheReader
from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.export import export_module
from ground.models.blocks import temporal_iou
from ground.models.probe import ProbeNet, contrast_scores, runs_above, smooth_probabilities
from ground.module import GroundingModule
from ground.predict import Grounder

CONFIG = Path(__file__).resolve().parents[2] / "ground" / "configs" / "model" / "probe.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_probe(**overrides: object) -> ProbeNet:
    torch.manual_seed(0)
    return ProbeNet(video_dim=VIDEO_DIM, text_dim=TEXT_DIM, **overrides)


def logits_of(probabilities: list[float]) -> torch.Tensor:
    """(1, T) logits whose sigmoid is ``probabilities``."""
    p = torch.tensor([probabilities], dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def test_probe_rejects_bad_hparams() -> None:
    with pytest.raises(ValueError, match="smooth_clips"):
        ProbeNet(video_dim=4, text_dim=4, smooth_clips=2)
    with pytest.raises(ValueError, match="thresholds"):
        ProbeNet(video_dim=4, text_dim=4, thresholds=(0.0, 0.5))
    with pytest.raises(ValueError, match="thresholds"):
        ProbeNet(video_dim=4, text_dim=4, thresholds=())
    with pytest.raises(ValueError, match="nms_iou_threshold"):
        ProbeNet(video_dim=4, text_dim=4, nms_iou_threshold=1.5)


def test_probe_logit_is_the_bilinear_form_on_the_mean_normalised_tokens() -> None:
    model = ProbeNet(video_dim=3, text_dim=2)
    with torch.no_grad():
        model.bilinear.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]]))  # W (Dt=2, Dv=3)
        model.linear.copy_(torch.tensor([0.5, 0.0, -0.5]))  # u
        model.bias.fill_(0.25)  # c
    batch = {
        "video": torch.tensor([[[1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [9.0, 9.0, 9.0]]]),  # last is padding
        "video_mask": torch.tensor([[True, True, False]]),
        "timestamps": torch.tensor([[[0.0, 1.0], [1.0, 2.0], [0.0, 0.0]]]),
        "duration": torch.tensor([2.0]),
        # Tokens (3, 0) and (0, 5) normalise to (1, 0) and (0, 1): t = (0.5, 0.5). The padding
        # token would move t if it counted.
        "text": torch.tensor([[[3.0, 0.0], [0.0, 5.0], [7.0, 0.0]]]),
        "text_mask": torch.tensor([[True, True, False]]),
        "qid": ["q0"],
        "vid": ["v0"],
    }
    logits = model(batch)["logits"]
    # t^T W = (0.5, -0.5, 1.0); plus u = (1.0, -0.5, 0.5). Clip (1, 2, 3): 1 - 1 + 1.5 + 0.25.
    # Clip (0, 1, 0): -0.5 + 0.25.
    torch.testing.assert_close(logits[0, :2], torch.tensor([1.75, -0.25]))
    assert torch.isneginf(logits[0, 2])


def test_probe_loss_is_bce_on_clips_inside_windows() -> None:
    model = tiny_probe()
    batch = make_batch([4])
    batch["windows"][0, 0] = torch.tensor([1.0, 3.0])  # clips 1 and 2 (centres 1.5, 2.5) inside
    p = [0.2, 0.75, 0.5, 0.1]
    losses = model.loss({"logits": logits_of(p)}, batch)
    expected = -(math.log(0.8) + math.log(0.75) + math.log(0.5) + math.log(0.9)) / 4
    assert losses["bce"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["clip_accuracy"].item() == pytest.approx(3 / 4)  # clip 2 sits on 0.5: wrong side
    # A window shorter than a clip still marks its nearest clip: [3.2, 3.4] -> clip 3.
    batch["windows"][0, 0] = torch.tensor([3.2, 3.4])
    expected = -(math.log(0.8) + math.log(0.25) + math.log(0.5) + math.log(0.1)) / 4
    assert model.loss({"logits": logits_of(p)}, batch)["bce"].item() == pytest.approx(expected, rel=1e-5)
    batch["window_mask"][:] = False
    with pytest.raises(ValueError, match="q0"):
        model.loss({"logits": logits_of(p)}, batch)


def test_smoothing_runs_and_contrast_by_hand() -> None:
    p = torch.tensor([0.0, 0.3, 0.9, 0.6, 0.0])
    # Width 3; the ends average the two clips that exist.
    torch.testing.assert_close(smooth_probabilities(p, 3), torch.tensor([0.15, 0.4, 0.6, 0.5, 0.3]))
    torch.testing.assert_close(smooth_probabilities(p, 1), p)
    starts, ends = runs_above(torch.tensor([0.9, 0.1, 0.5, 0.6, 0.2, 0.7]), 0.5)
    assert starts.tolist() == [0, 2, 5] and ends.tolist() == [0, 3, 5]
    # [2, 3]: 0.75 inside, (0 + 0.3 + 0) / 3 = 0.1 outside. The whole video: nothing outside.
    scores = contrast_scores(p, torch.tensor([2, 0]), torch.tensor([3, 4]))
    torch.testing.assert_close(scores, torch.tensor([0.65, 0.36]))


def test_probe_decode_by_hand() -> None:
    model = tiny_probe(smooth_clips=1, thresholds=(0.3, 0.5, 0.7))
    batch = make_batch([6])
    p = [0.1, 0.9, 0.9, 0.1, 0.6, 0.1]
    preds = model.decode({"logits": logits_of(p)}, batch, k=3)
    # Levels 0.1 + f * 0.8 = 0.34, 0.5, 0.66: runs [1, 2] and [4, 4], then [1, 2] again (dropped).
    # [1, 2]: 0.9 - (0.1 + 0.1 + 0.6 + 0.1) / 4 = 0.675; [4, 4]: 0.6 - 2.1 / 5 = 0.18.
    torch.testing.assert_close(preds.windows[0], torch.tensor([[1.0, 3.0], [4.0, 5.0], [4.0, 5.0]]))
    torch.testing.assert_close(preds.scores[0, :2], torch.tensor([0.675, 0.18]))
    assert preds.window_mask[0].tolist() == [True, True, False]
    torch.testing.assert_close(preds.saliency, torch.tensor([p]))
    assert preds.presence is None
    # Level f = 1 is the maximum itself: the most probable run, never nothing.
    top = tiny_probe(smooth_clips=1, thresholds=(1.0,)).decode({"logits": logits_of(p)}, batch, k=2)
    assert top.windows[0, 0].tolist() == [1.0, 3.0] and top.window_mask[0].tolist() == [True, False]


def test_probe_decode_suppresses_overlapping_runs() -> None:
    batch = make_batch([12])
    p = [0.1, 0.5] + [0.9] * 8 + [0.5, 0.1]
    logits = logits_of(p)
    # Level 0.34 gives clips [1, 10] (score 8.2 / 10 - 0.1 = 0.72), level 0.66 clips [2, 9]
    # (0.9 - 0.3 = 0.6); their windows [1, 11] and [2, 10] overlap with IoU 0.8.
    kept = tiny_probe(smooth_clips=1, nms_iou_threshold=0.7).decode({"logits": logits}, batch, k=3)
    assert kept.windows[0, 0].tolist() == [1.0, 11.0] and kept.window_mask[0].tolist() == [True, False, False]
    both = tiny_probe(smooth_clips=1, nms_iou_threshold=None).decode({"logits": logits}, batch, k=3)
    torch.testing.assert_close(both.windows[0, :2], torch.tensor([[1.0, 11.0], [2.0, 10.0]]))
    torch.testing.assert_close(both.scores[0, :2], torch.tensor([0.72, 0.6]))


def test_probe_decode_of_a_flat_video_is_the_whole_video() -> None:
    batch = make_batch([1, 5], stride_sec=0.5)
    logits = torch.zeros(2, 5).masked_fill(~batch["video_mask"], float("-inf"))
    preds = tiny_probe().decode({"logits": logits}, batch, k=2)
    torch.testing.assert_close(preds.windows[:, 0], torch.tensor([[0.0, 0.5], [0.0, 2.5]]))
    assert preds.window_mask.tolist() == [[True, False], [True, False]]
    assert preds.saliency[0, 1:].tolist() == [0.0] * 4  # padding clips: probability 0


def test_probe_decode_names_a_query_with_non_finite_logits() -> None:
    batch = make_batch([3, 4])
    logits = torch.zeros(2, 4).masked_fill(~batch["video_mask"], float("-inf"))
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="q1"):
        tiny_probe().decode({"logits": logits}, batch, k=2)


def test_probe_fits_eight_samples_perfectly() -> None:
    """Every clip on the right side of 0.5, and every top-1 window exactly the ground truth."""
    batch = planted_batch()
    model = tiny_probe()
    train_steps(model, batch, steps=200, lr=1e-2)
    with torch.no_grad():
        output = model(batch)
        losses = model.loss(output, batch)
        preds = model.decode(output, batch, k=1)
    assert losses["clip_accuracy"].item() == 1.0, f"bce {losses['bce'].item():.4f}"
    iou = temporal_iou(preds.windows, batch["windows"][:, :1])[:, 0, 0]  # (B,)
    assert iou.tolist() == [1.0] * 8, f"top-1 IoU per sample {iou.tolist()}"


@pytest.fixture(scope="module")
def fake_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "cache.h5"
    write_fake_cache(path, n_videos=8, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    return path


def _cli(cache: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--data.cache",
        str(cache),
        "--data.batch_size",
        "4",
        "--model",
        str(CONFIG),
        "--run_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _gt_file(cache: Path, split: str, path: Path) -> Path:
    reader = CacheReader(cache)
    with path.open("w") as f:
        for q in reader.queries(split):
            row = {
                "qid": q.qid,
                "vid": q.vid,
                "query": q.text,
                "duration": reader.video_meta(q.vid).duration_sec,
                "relevant_windows": [list(w) for w in q.windows],
            }
            f.write(json.dumps(row) + "\n")
    return path


def test_probe_through_the_commands_and_the_python_api(fake_cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs"
    assert ground_main(["fit", *_cli(fake_cache, run_dir, "--trainer.max_epochs", "3")]) == 0
    best = next(run_dir.rglob("best-*.ckpt"))

    assert ground_main(["test", *_cli(fake_cache, tmp_path / "test_runs", "--ckpt_path", str(best))]) == 0
    metrics_csv = next((tmp_path / "test_runs").rglob("metrics.csv"))
    logged = [row for row in csv.DictReader(metrics_csv.open()) if row.get("test/MR-full-R1@0.5")]
    assert len(logged) == 1 and 0.0 <= float(logged[0]["test/MR-full-R1@0.5"]) <= 100.0

    out = tmp_path / "pred.jsonl"
    predict = _cli(fake_cache, run_dir, "--ckpt_path", str(best), "--out", str(out))
    assert ground_main(["predict", *predict]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    reader = CacheReader(fake_cache)
    assert [r["qid"] for r in rows] == [q.qid for q in reader.queries("test")]
    for row in rows:
        duration = reader.video_meta(row["vid"]).duration_sec
        windows = row["pred_relevant_windows"]
        assert windows and all(0.0 <= s <= e <= duration + 1e-4 for s, e, _ in windows), row["qid"]
        scores = [score for _, _, score in windows]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= x <= 1.0 for x in scores)
        saliency = row["pred_saliency_scores"]  # clip probabilities, averaged into 2-s clips
        assert len(saliency) == int(np.ceil(duration / 2)) and all(0.0 <= x <= 1.0 for x in saliency)

    metrics_path = tmp_path / "metrics.json"
    gt = _gt_file(fake_cache, "test", tmp_path / "gt.jsonl")
    assert ground_main(["eval", "--submission", str(out), "--gt", str(gt), "--out", str(metrics_path)]) == 0
    brief = json.loads(metrics_path.read_text())["brief"]
    assert 0.0 <= brief["MR-full-R1@0.5"] <= 100.0 and 0.0 <= brief["MR-full-mAP"] <= 100.0

    # Export checks its own output against PyTorch at two lengths (padding included) and raises
    # ExportError when they differ.
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    module = GroundingModule(
        name="probe", hparams=hparams["hparams"], video_dim=hparams["video_dim"], text_dim=hparams["text_dim"]
    )
    module.load_state_dict(checkpoint["state_dict"])
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt")):
        record = export_module(module.eval(), tmp_path / f"probe.{suffix}", fmt)
        assert [o["name"] for o in record["outputs"]] == ["logits"], fmt

    # The Python API on a cached video and a cached sentence (no encoder runs).
    grounder = Grounder(module.net, checkpoint["groundcache"]["encoders"], cache=fake_cache)
    query = reader.queries("test")[0]
    (result,) = grounder.ground(query.vid, [query.text], top_k=3)
    assert result.windows and all(0.0 <= s <= e <= result.duration_sec for s, e, _ in result.windows)
    assert result.presence is None and result.found
    assert result.saliency and all(0.0 <= score <= 1.0 for _, score in result.saliency)
