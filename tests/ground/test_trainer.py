"""The model-agnostic trainer: data fast path, CLI fit/test/predict, resume, eval round trip, errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from cache_schema import CacheReader
from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.data import GroundingDataModule, SplitTensors
from ground.models import build_model
from ground.module import GroundingModule, NonFiniteLossError, adamw, sliding_window_decode

TINY = [
    "--model.hparams.hidden_dim",
    "32",
    "--model.hparams.num_layers",
    "1",
    "--model.hparams.num_heads",
    "2",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "cache.h5"
    write_fake_cache(path, n_videos=12, queries_per_video=2, duration_range_sec=(6.0, 30.0))
    return path


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # tiny models: threads only add contention


def _cli(cache: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data.cache",
        str(cache),
        "--data.batch_size",
        "8",
        "--model",
        "ground/configs/model/span.yaml",
        *TINY,
        "--run_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def test_split_tensors_match_cache(cache: Path) -> None:
    data = GroundingDataModule(str(cache))
    split = data.load("train")
    batch = split.gather(torch.arange(len(split)))
    reader = CacheReader(cache)
    for i, qid in enumerate(batch["qid"]):
        q = reader.query(qid)
        feats = reader.video_features(q.vid, "fake_video0")
        n = int(batch["video_mask"][i].sum())
        assert n == len(feats)
        np.testing.assert_allclose(batch["video"][i, :n].numpy(), feats.astype(np.float32))
        np.testing.assert_allclose(batch["windows"][i, 0].numpy(), q.windows[0], rtol=1e-6)
        assert int(batch["text_mask"][i].sum()) == len(q.tokens["fake_text"])
        # Saliency lands on the features whose centre lies in a labelled 2-s clip.
        assert batch["saliency_mask"][i, :n].all()


def test_crops_contain_the_target(cache: Path) -> None:
    split = GroundingDataModule(str(cache)).load("train")
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = split.gather(torch.arange(len(split)), max_clips=5, generator=gen)
        assert batch["video"].shape[1] == 5
        for i in range(len(batch["qid"])):
            n = int(batch["video_mask"][i].sum())
            ts = batch["timestamps"][i, :n]
            w = batch["windows"][i, 0]
            assert batch["window_mask"][i, 0]
            # The crop holds the window, or lies inside it when the window is longer than the crop.
            assert (ts[0, 0] <= w[0] + 1e-5 and w[1] <= ts[-1, 1] + 1e-5) or (
                w[0] >= ts[0, 0] - 1e-5 and w[1] <= ts[-1, 1] + 1e-5
            )
            assert torch.all(ts[1:, 0] > ts[:-1, 0])


def test_sliding_window_decode_matches_whole_video_bounds(cache: Path) -> None:
    split = GroundingDataModule(str(cache)).load("val")
    batch = split.gather(torch.arange(len(split)))
    net = build_model("span", video_dim=32, text_dim=16, hidden_dim=32, num_layers=1, num_heads=2).eval()
    with torch.no_grad():
        preds = sliding_window_decode(net, batch, k=5, window=6)
    assert preds.windows.shape == (len(split), 5, 2)
    for i in range(len(split)):
        real = preds.window_mask[i]
        assert real[0]
        w = preds.windows[i][real]
        assert torch.all(w[:, 0] <= w[:, 1]) and torch.all(w[:, 0] >= 0)
        assert torch.all(w[:, 1] <= batch["duration"][i] + 1e-4)
    assert preds.saliency is not None and preds.saliency.shape == batch["video_mask"].shape


def test_fast_dev_run_fit(cache: Path, tmp_path: Path) -> None:
    assert ground_main(["fit", *_cli(cache, tmp_path, "--trainer.fast_dev_run", "true")]) == 0


def test_fit_resume_predict_eval_round_trip(cache: Path, tmp_path: Path) -> None:
    args = _cli(
        cache, tmp_path, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "r")
    )
    assert ground_main(["fit", *args]) == 0
    last = next((tmp_path / "r").rglob("last.ckpt"))
    state = torch.load(last, map_location="cpu", weights_only=True)
    steps = state["global_step"]
    assert state["groundcache"]["encoders"]["text_encoder"]["name"] == "fake_text"
    # float32 on CPU: one fused AdamW kernel per step (ground.module.adamw), and it resumes below.
    assert all(g["fused"] for g in state["optimizer_states"][0]["param_groups"])
    # Resuming continues at the same step and trains the remaining epoch only.
    resume = _cli(
        cache,
        tmp_path,
        "--trainer.max_epochs",
        "3",
        "--trainer.default_root_dir",
        str(tmp_path / "r2"),
        "--ckpt_path",
        str(last),
    )
    assert ground_main(["fit", *resume]) == 0
    resumed = torch.load(next((tmp_path / "r2").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert (state["epoch"], resumed["epoch"]) == (1, 2)
    assert resumed["global_step"] == steps * 3 // 2  # one more epoch of the same size

    out = tmp_path / "pred.jsonl"
    assert ground_main(["predict", *_cli(cache, tmp_path, "--ckpt_path", str(last), "--out", str(out))]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    reader = CacheReader(cache)
    test_queries = reader.queries("test")
    assert [r["qid"] for r in rows] == [q.qid for q in test_queries]
    for row in rows:
        scores = [w[2] for w in row["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True)
        assert len(row["pred_saliency_scores"]) == int(
            np.ceil(reader.video_meta(row["vid"]).duration_sec / 2)
        )
    gt = tmp_path / "gt.jsonl"
    with gt.open("w") as f:
        for q in test_queries:
            duration = reader.video_meta(q.vid).duration_sec
            f.write(
                json.dumps(
                    {
                        "qid": q.qid,
                        "vid": q.vid,
                        "query": q.text,
                        "duration": duration,
                        "relevant_windows": [list(w) for w in q.windows],
                    }
                )
                + "\n"
            )
    metrics_path = tmp_path / "metrics.json"
    assert ground_main(["eval", "--submission", str(out), "--gt", str(gt), "--out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 <= metrics["brief"]["MR-full-R1@0.5"] <= 100.0


def test_nan_loss_names_the_queries(cache: Path) -> None:
    data = GroundingDataModule(str(cache), batch_size=4)
    module = GroundingModule(
        name="span", video_dim=32, text_dim=16, hparams={"hidden_dim": 32, "num_layers": 1, "num_heads": 2}
    )
    batch = next(iter(data.train_dataloader()))
    batch["video"][0, 0, 0] = float("nan")
    with pytest.raises((NonFiniteLossError, ValueError), match=batch["qid"][0].split("_")[0]):
        module.training_step(batch, 0)


def test_bad_config_errors(cache: Path) -> None:
    with pytest.raises(
        KeyError, match=r"video encoders \['clip'\] are not in the cache; it has \['fake_video0'\]"
    ):
        GroundingDataModule(str(cache), video_encoders=["clip"])
    with pytest.raises(KeyError, match="text encoder 'bert' is not in the cache"):
        GroundingDataModule(str(cache), text_encoder="bert")
    data = GroundingDataModule(str(cache), val_split="dev")
    with pytest.raises(Exception, match="split 'dev' has no queries"):
        data.val_dataloader()


def test_overfit_eight_samples(cache: Path) -> None:
    """The whole loop (data gather, module, optimiser, decode, metric) can fit 8 queries exactly."""
    data = GroundingDataModule(str(cache), batch_size=8, train_split="train", val_split="train")
    split = data.load("train")
    data.splits["train"] = SplitTensors(**{**split.__dict__})  # same tensors; keep all 8 queries
    assert len(split) == 8
    module = GroundingModule(
        name="span",
        video_dim=32,
        text_dim=16,
        lr=2e-3,
        warmup_fraction=0.0,
        hparams={"hidden_dim": 64, "num_layers": 2, "num_heads": 4, "dropout": 0.0},
    )
    trainer = L.Trainer(
        max_epochs=150,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=150,
    )
    trainer.fit(module, datamodule=data)
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert metrics["val/MR-full-R1@0.5"] == 100.0


def test_adamw_is_fused_unless_gradients_are_scaled() -> None:
    weight, bias = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.zeros(3))
    groups = [{"params": [weight], "weight_decay": 0.1}, {"params": [bias], "weight_decay": 0.0}]
    assert adamw(groups, 1e-3).defaults["fused"] is True
    # Lightning's mixed-precision plugin clips after unscaling, which a fused step does itself.
    assert not adamw([weight, bias], 1e-3, grad_scaling=True).defaults["fused"]
