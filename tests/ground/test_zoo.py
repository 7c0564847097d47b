"""`make zoo` reports highlight detection beside moment retrieval (issue 18, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cache_schema.fake import write_fake_cache
from ground import zoo
from ground.data import GroundingDataModule
from ground.models.blocks import Predictions, clips_in_windows
from ground.module import GroundingModule


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> GroundingDataModule:
    path = tmp_path_factory.mktemp("zoo") / "cache.h5"
    write_fake_cache(path, n_videos=12, queries_per_video=1, duration_range_sec=(20.0, 30.0), seed=5)
    data = GroundingDataModule(str(path), batch_size=4)
    data.setup("test")
    return data


def _module(name: str, data: GroundingDataModule, **overrides: object) -> GroundingModule:
    torch.manual_seed(0)
    hparams = zoo._config(name)["hparams"] | overrides
    return GroundingModule(name=name, hparams=hparams, video_dim=data.video_dim, text_dim=data.text_dim)


def _saliency_from_windows(module: GroundingModule, sign: float) -> None:
    """Make the module predict saliency +-1 inside the windows (its own windows, not a model's)."""
    real_predict = module.predict_batch

    def predict(batch: dict) -> Predictions:
        preds = real_predict(batch)
        inside = clips_in_windows(batch["timestamps"], batch["windows"], batch["window_mask"]).float()
        # A tiny rising term breaks the ties among clips of the same side in time order.
        order = torch.arange(inside.shape[1], dtype=torch.float32) * 1e-3
        return Predictions(
            preds.windows, preds.scores, saliency=sign * inside + order, presence=preds.presence
        )

    module.predict_batch = predict  # type: ignore[method-assign]


def test_window_highlights_score_a_perfect_and_an_inverted_saliency(data: GroundingDataModule) -> None:
    module = _module("span", data)
    _saliency_from_windows(module, sign=1.0)
    perfect = zoo.window_highlight_metrics(module, data)
    assert perfect == {"HD-window-mAP": 100.0, "HD-window-Hit1": 100.0}
    _saliency_from_windows(module, sign=-1.0)
    inverted = zoo.window_highlight_metrics(module, data)
    assert inverted is not None
    assert inverted["HD-window-Hit1"] == 0.0  # the top clip is always outside every window
    assert inverted["HD-window-mAP"] < 60.0


def test_a_model_without_saliency_says_so(data: GroundingDataModule) -> None:
    assert zoo.window_highlight_metrics(_module("regress", data, clip_evidence=False), data) is None
    scored = zoo.window_highlight_metrics(_module("span", data), data)
    assert scored is not None and 0.0 <= scored["HD-window-mAP"] <= 100.0
    rows = [
        {"model": "span", "trainable": True, "params": 2e6, "train_sec": 10.0, "epochs": 2,
         "samples_per_sec": 12.34, "MR-full-R1@0.5": 50.0, "HD-window-mAP": 61.25, "HD-window-Hit1": 75.0},
        {"model": "regress", "trainable": True, "params": 1e6, "train_sec": 5.0, "epochs": 2,
         "MR-full-R1@0.5": 40.0},
    ]  # fmt: skip
    text = zoo.table(rows, Path("cache.h5"), "test machine")
    assert "HD-window-mAP | HD-window-Hit1 |" in text
    assert "| span | 2.00 M | 10 s / 2 ep | 12.3 | 50.0 |" in text and "| 61.2 | 75.0 |" in text
    assert "| regress | 1.00 M | 5 s / 2 ep | - | 40.0 |" in text  # no speed measured: "-"
    assert text.splitlines()[-1].endswith(f"| {zoo.NO_SALIENCY} | {zoo.NO_SALIENCY} |")


def test_seeds_are_reported_as_mean_and_spread() -> None:
    base = {"model": "m", "trainable": True, "params": 10, "epochs": 2, "samples_per_sec": 5.0, "seeds": 1}
    rows = [base | {"train_sec": 10.0, "MR-full-R1@0.5": 50.0, "HD-window-mAP": 20.0},
            base | {"train_sec": 30.0, "MR-full-R1@0.5": 60.0, "HD-window-mAP": 20.0,
                    "samples_per_sec": None}]
    merged = zoo.over_seeds(rows)
    assert merged["MR-full-R1@0.5"] == 55.0 and merged["MR-full-R1@0.5 sd"] == 5.0
    assert merged["train_sec"] == 20.0 and merged["samples_per_sec"] == 5.0 and merged["seeds"] == 2
    text = zoo.table([merged], Path("cache.h5"), "machine")
    assert "| 55.0 ± 5.0 |" in text and "| 20.0 ± 0.0 |" in text and "over 2 seeds" in text
    assert "±" not in zoo.table([rows[0]], Path("cache.h5"), "machine")


def test_the_margin_note_names_the_smallest_margin_and_every_shortfall() -> None:
    def row(model: str, trainable: bool, r05: float, r07: float) -> dict:
        mr = dict.fromkeys(zoo.MR_COLUMNS, 30.0) | {"MR-full-R1@0.5": r05, "MR-full-R1@0.7": r07}
        return {"model": model, "trainable": trainable} | mr

    rows = [row("span", True, 60.0, 40.0), row("regress", True, 33.0, 16.0),
            row("zeroshot", False, 23.0, 19.0), row("random", False, 10.0, 2.0)]  # fmt: skip
    note = zoo.margin_note(rows, test_queries=1321)
    assert note.startswith("Every trained model beats every baseline on MR-full-R1@0.5: the smallest "
                           "margin is +10.0 points (regress 33.0 against zeroshot 23.0)")
    assert "on 1321 test queries the standard error of one R1@0.5 is at most ±1.4 points" in note
    # Equal to the best baseline is not above it: every model ties zeroshot's 30.0 on the others.
    assert "regress MR-full-R1@0.7 16.0 ≤ zeroshot 19.0" in note and "span MR-full-mIoU 30.0 ≤" in note
    rows[1]["MR-full-R1@0.5"] = 20.0
    assert zoo.margin_note(rows, 1321).startswith("Not every trained model beats every baseline")
    assert zoo.margin_note(rows[:2], 1321) == ""  # no baseline: nothing to say


def test_jobs_get_about_equal_costs_and_every_model_once(data: GroundingDataModule) -> None:
    cost = {"ianet": 10.0, "capsule": 6.0, "localglobal": 3.0, "regress": 1.0, "span": 1.0, "prior": 0.0}
    groups = zoo.split_for_jobs(list(cost), 2, cost)
    assert groups == [["ianet", "span"], ["capsule", "localglobal", "regress", "prior"]]
    assert zoo.split_for_jobs(["probe"], 3, {"probe": 1.0}) == [["probe"]]  # no empty jobs
    measured = zoo.step_costs(["span", "random"], data)
    assert measured["span"] > 0.0 and measured["random"] == 0.0


def test_zoo_in_two_jobs_writes_one_table_of_every_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache.h5"
    write_fake_cache(cache, n_videos=12, queries_per_video=1, duration_range_sec=(20.0, 30.0), seed=5)
    rows_out = tmp_path / "rows.json"
    code = zoo.main([
        "--cache", str(cache), "--models", "probe", "span", "random", "prior", "--epochs", "1",
        "--jobs", "2", "--seeds", "1", "--no-speed", "--no-write", "--run-dir", str(tmp_path / "runs"),
        "--rows-out", str(rows_out),
    ])
    assert code == 0
    rows = json.loads(rows_out.read_text())
    assert sorted(r["model"] for r in rows) == ["prior", "probe", "random", "span"]
    out = capsys.readouterr().out
    assert "| span |" in out and "| probe |" in out and "| prior (baseline) |" in out


def test_update_retrains_only_the_named_models_and_keeps_the_other_rows(tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    write_fake_cache(cache, n_videos=12, queries_per_video=1, duration_range_sec=(20.0, 30.0), seed=5)
    run_dir = tmp_path / "runs"
    common = ["--cache", str(cache), "--epochs", "1", "--seeds", "1", "--jobs", "1", "--no-speed",
              "--no-write", "--run-dir", str(run_dir), "--rows-out", str(run_dir / "zoo.json")]  # fmt: skip
    assert zoo.main([*common, "--models", "probe", "random"]) == 0
    first = {r["model"]: r for r in json.loads((run_dir / "zoo.json").read_text())}
    assert zoo.main([*common, "--models", "probe", "--update", "--lr", "0.01"]) == 0
    second = {r["model"]: r for r in json.loads((run_dir / "zoo.json").read_text())}
    assert second.keys() == {"probe", "random"}
    assert second["random"] == first["random"]  # kept as stored
    assert second["probe"]["train_sec"] != first["probe"]["train_sec"]  # trained again
    with pytest.raises(SystemExit, match="at 1 epochs and 1 seeds, not 1 and 2"):
        zoo.main([*common[:4], "--seeds", "2", *common[6:], "--models", "random", "--update"])
    with pytest.raises(SystemExit, match="does not exist"):
        zoo.main([*common[:-4], "--run-dir", str(tmp_path / "empty"), "--models", "probe", "--update"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--epochs", "0"], "--epochs must be >= 1"), (["--lr", "-1"], "--lr must be > 0"),
     (["--rows-out", "{tmp}/a_file/rows.json"], "a_file/rows.json: cannot write a file there")],
)  # fmt: skip
def test_bad_zoo_options_are_usage_errors_before_any_training(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a_file").write_text("")  # a file where --rows-out needs a folder
    with pytest.raises(SystemExit) as stopped:
        zoo.main(["--cache", str(tmp_path / "none.h5"), *[a.format(tmp=tmp_path) for a in argv]])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("stored", ['[{"model": "span"', '{"a": 1}', '[{"model": "span"}]'])
def test_update_refuses_a_zoo_json_it_cannot_read(stored: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache.h5"
    write_fake_cache(cache, n_videos=12, queries_per_video=1, duration_range_sec=(20.0, 30.0), seed=5)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "zoo.json").write_text(stored)
    with pytest.raises(SystemExit, match="is not a zoo.json of `make zoo`"):
        zoo.main(["--cache", str(cache), "--run-dir", str(tmp_path / "runs"), "--models", "random",
                  "--update", "--no-write", "--no-speed", "--jobs", "1"])  # fmt: skip
