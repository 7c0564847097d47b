"""`python -m ground.bench_accuracy` pieces on a tiny fake cache: official metrics, controls, tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_schema.fake import write_fake_cache
from ground import bench_accuracy as bench
from ground.cli import saliency_per_clip
from ground.data import GroundingDataModule
from ground.evaluate import evaluate_submission
from ground.module import GroundingModule
from ground.zoo import write_between_markers


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "cache.h5"
    write_fake_cache(
        path, n_videos=24, queries_per_video=1, duration_range_sec=(40.0, 60.0), video_dims=(16,),
        text_dim=8, stride_sec=2.0, splits=("train", "val"), seed=3,
    )  # fmt: skip
    return path


def _data(cache: Path) -> GroundingDataModule:
    return GroundingDataModule(str(cache), batch_size=4, train_split="train", val_split="val")


def _official(module: GroundingModule, data: GroundingDataModule, cache: Path) -> dict:
    """The same predictions scored through the submission-file path of `python -m ground eval`."""
    labels = bench.read_ground_truth(cache, "val")
    submission, gt = [], []
    module.eval()
    with torch.no_grad():
        for batch in data.val_dataloader():
            preds = module.predict_batch(batch)
            for i, qid in enumerate(batch["qid"]):
                real = torch.isfinite(preds.scores[i])
                w, s = preds.windows[i][real].tolist(), preds.scores[i][real].tolist()
                n = int(batch["video_mask"][i].sum())
                row = {
                    "qid": qid,
                    "pred_relevant_windows": [[a, b, c] for (a, b), c in zip(w, s, strict=True)],
                }
                if preds.saliency is not None:
                    row["pred_saliency_scores"] = saliency_per_clip(
                        preds.saliency[i, :n].tolist(), batch["timestamps"][i, :n].tolist(), clip_sec=2.0
                    )
                submission.append(row)
                label = labels[qid]
                clips = [int(c) for c in np.flatnonzero(label.saliency.any(axis=1))]
                gt.append(
                    {
                        "qid": qid, "vid": batch["vid"][i], "duration": float(batch["duration"][i]),
                        "relevant_windows": label.windows.tolist(), "relevant_clip_ids": clips,
                        "saliency_scores": label.saliency[clips].tolist(),
                    }
                )  # fmt: skip
    return evaluate_submission(submission, gt)["brief"]


@pytest.mark.parametrize("name", ["span", "prior"])
def test_evaluate_gives_the_official_numbers(cache: Path, name: str) -> None:
    data = _data(cache)
    torch.manual_seed(0)
    module = GroundingModule(
        name=name, hparams=bench._hparams(name), video_dim=data.video_dim, text_dim=data.text_dim
    )
    ours = bench.evaluate(module, data, bench.read_ground_truth(cache, "val"), "qvhighlights")
    official = _official(module, data, cache)
    for key in ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP"):
        assert ours[key] == pytest.approx(official[key], abs=1e-9), key
    if name == "span":  # span predicts saliency: the highlight metrics are there and official too
        for key in ("HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "HL-min-Fair-mAP"):
            assert ours[key] == pytest.approx(official[key], abs=1e-9), key
    else:
        assert not any(k.startswith("HL-") for k in ours)
    assert 0.0 <= ours["MR-full-mIoU"] <= 100.0


def test_ground_truth_is_the_annotation_not_the_clipped_training_copy(cache: Path) -> None:
    labels = bench.read_ground_truth(cache, "val")
    assert len(labels) == 12
    label = next(iter(labels.values()))
    assert label.windows.shape == (1, 2) and label.saliency.shape[1] == 3
    assert label.saliency.any()  # the clips of the window carry scores 1..4


def test_shuffled_videos_keep_positions_and_lose_the_match(cache: Path) -> None:
    split = _data(cache).load("train")
    shuffled = bench.shuffle_videos(split, seed=0)
    assert torch.equal(shuffled.windows, split.windows) and torch.equal(shuffled.duration, split.duration)
    assert torch.equal(bench.shuffle_videos(split, seed=0).video, shuffled.video)  # deterministic
    moved = 0
    for v in range(len(split.video_lengths)):
        n = int(split.video_lengths[v])
        # Each video's features now come from a video of the same length (possibly itself).
        same_length = torch.nonzero(split.video_lengths == n).flatten()
        assert any(torch.equal(shuffled.video[v, :n], split.video[u, :n]) for u in same_length)
        moved += not torch.equal(shuffled.video[v], split.video[v])
    assert moved > 0


def test_training_is_tracked_at_evenly_spaced_epochs(cache: Path) -> None:
    data = _data(cache)
    labels = bench.read_ground_truth(cache, "val")
    points = bench.train_and_track(
        "span", data, labels, "qvhighlights", minutes=None, max_epochs=2, evals=2, lr=1e-3, seed=0
    )
    assert [p.steps for p in points] == [3, 6]  # 12 training queries in batches of 4
    assert [round(p.epochs) for p in points] == [1, 2]
    assert points[0].train_sec < points[1].train_sec
    assert all("MR-full-R1@0.5" in p.metrics and p.trainable for p in points)


def test_linear_probe_reads_the_query_and_shuffling_kills_it(cache: Path) -> None:
    variant = bench.BenchVariant("train", "val", "qvhighlights", ("MR-full-R1@0.5",))
    result = bench.linear_probe(cache, variant, ridge=1.0)
    # The fake cache puts each query's concept inside its window: a probe finds it, shuffled can't.
    assert result.probe > result.chance + 30
    assert result.shuffled < result.probe - 30
    assert result.video_only < result.probe - 30  # one concept per video, at a random place
    assert 0 < result.chance < 100


def test_table_and_markers(tmp_path: Path) -> None:
    points = [
        bench.EvalPoint("span", True, 90.0, 300.0, 1.5, 100, {"MR-full-R1@0.5": 40.0, "MR-full-mAP": 30.25}),
        bench.EvalPoint("prior", False, 0.0, 0.0, 0.0, 0, {"MR-full-R1@0.5": 14.27}),
    ]
    text = bench.table(points, ["MR-full-R1@0.5", "MR-full-mAP"], "header")
    assert "| span | 1.5 | 5.0 | 1.50 | 40.0 | 30.2 |" in text
    assert "| prior (baseline) | - | - | - | 14.3 | - |" in text
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\n<!-- x:begin -->\nold\n<!-- x:end -->\ntail\n")
    write_between_markers(doc, text, begin="<!-- x:begin -->", end="<!-- x:end -->")
    content = doc.read_text()
    assert "old" not in content and text in content and content.endswith("tail\n")
    bench.plot(points, "MR-full-R1@0.5", tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_append_keeps_other_models_of_the_same_settings_only(tmp_path: Path) -> None:
    store = tmp_path / "runs" / "qvh.json"
    span = bench.EvalPoint("span", True, 60.0, 70.0, 1.0, 10, {"MR-full-R1@0.5": 40.0})
    prior = bench.EvalPoint("prior", False, 0.0, 0.0, 0.0, 0, {"MR-full-R1@0.5": 14.0})
    bench.record_points(store, "s1", "cmd a", [prior], append=False)
    points, commands = bench.record_points(store, "s1", "cmd b", [span], append=True)
    assert [p.model for p in points] == ["span", "prior"] and commands == ["cmd a", "cmd b"]
    newer = dataclasses.replace(span, train_sec=120.0)
    points, _ = bench.record_points(store, "s1", "cmd c", [newer], append=True)
    assert [(p.model, p.train_sec) for p in points] == [("span", 120.0), ("prior", 0.0)]
    with pytest.raises(bench.BenchError, match="other settings"):
        bench.record_points(store, "s2", "cmd d", [span], append=True)
    points, commands = bench.record_points(store, "s2", "cmd d", [span], append=False)
    assert [p.model for p in points] == ["span"] and commands == ["cmd d"]


def test_config_overrides_reach_the_trained_network(cache: Path) -> None:
    assert bench._hparams("regress", {"pooling": "mean"})["pooling"] == "mean"
    assert bench._hparams("regress")["pooling"] == "attention"
    data = _data(cache)
    labels = bench.read_ground_truth(cache, "val")
    points = bench.train_and_track("regress", data, labels, "qvhighlights", minutes=None, max_epochs=1,
                                   evals=1, lr=1e-3, hparams={"pooling": "mean", "num_layers": 1})
    assert len(points) == 1
    with pytest.raises(ValueError, match="pooling"):  # the override reaches the network's constructor
        bench.train_and_track("regress", data, labels, "qvhighlights", minutes=0.01, max_epochs=1, evals=1,
                              lr=1e-3, hparams={"pooling": "max"})
    with pytest.raises(SystemExit):
        bench.main(["--hparams", "[1, 2]", "--no-write"])


def test_unknown_model_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--models", "nosuch", "--no-write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuch" in err[0] and "span" in err[0]


def test_table_says_when_a_model_has_no_saliency() -> None:
    columns = bench.VARIANTS["qvhighlights"].columns
    assert [c for c in columns if c.startswith("HL-")] == [
        "HL-min-Fair-mAP",
        "HL-min-Good-mAP",
        "HL-min-VeryGood-mAP",
        "HL-min-VeryGood-Hit1",
    ]
    hd = {
        "HL-min-Fair-mAP": 90.0,
        "HL-min-Good-mAP": 80.0,
        "HL-min-VeryGood-mAP": 50.0,
        "HL-min-VeryGood-Hit1": 82.5,
    }
    points = [
        bench.EvalPoint("span", True, 60.0, 60.0, 1.0, 10, {"MR-full-R1@0.5": 40.0, **hd}),
        bench.EvalPoint("regress", True, 60.0, 60.0, 1.0, 10, {"MR-full-R1@0.5": 30.0}),
    ]
    text = bench.table(points, ["MR-full-R1@0.5", "MR-full-mAP", *hd], "header")
    assert "| span | 1.0 | 1.0 | 1.00 | 40.0 | - | 90.0 | 80.0 | 50.0 | 82.5 |" in text
    no = bench.NO_SALIENCY
    assert f"| regress | 1.0 | 1.0 | 1.00 | 30.0 | - | {no} | {no} | {no} | {no} |" in text


def test_step_timing_cycles_a_split_smaller_than_its_steps(cache: Path) -> None:
    """Fewer training batches than timed steps once ended in StopIteration (`--limit-videos 300`)."""
    data = _data(cache)
    assert len(data.train_dataloader()) < 11  # the timing takes 1 + 10 steps
    step_sec = bench.time_step_sec("span", data, lr=1e-3)
    assert 0.0 < step_sec < 60.0
