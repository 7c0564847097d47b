"""Each benchmark's real annotations -> a tiny imported cache -> one `python -m ground fit` step.

Checks that the adapters, the importer, the data configs under ground/configs/data/ (their split
names) and the trainer fit together on real annotation rows. Features are random with the right
shapes; six videos per split and four queries per video keep it fast.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cache_schema import validate
from extract import importers
from extract.datasets import Annotation, load_dataset, shared_data_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("qvhighlights", "charades_sta", "activitynet_captions", "tacos")
VIDEOS_PER_SPLIT = 6
QUERIES_PER_VIDEO = 4
CLIP_SEC = 2.0
VIDEO_DIM, TEXT_DIM = 24, 16


@pytest.fixture
def one_thread():
    """The machine is shared: one torch thread is plenty for a tiny model."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pick_rows(rows: tuple[Annotation, ...], splits: set[str]) -> list[Annotation]:
    """The first QUERIES_PER_VIDEO rows of the first VIDEOS_PER_SPLIT videos of each split, in file order."""
    chosen: dict[str, list[str]] = {split: [] for split in splits}
    taken: dict[tuple[str, str], int] = {}
    picked = []
    for row in rows:
        vids = chosen[row.split]
        if row.vid not in vids and len(vids) < VIDEOS_PER_SPLIT:
            vids.append(row.vid)
        key = (row.split, row.vid)
        if row.vid in vids and taken.get(key, 0) < QUERIES_PER_VIDEO:
            taken[key] = taken.get(key, 0) + 1
            picked.append(row)
    return picked


def write_features(rows: list[Annotation], root: Path) -> tuple[Path, Path]:
    """Random Moment-DETR-layout npz files: one per video (2-s clips) and one per query."""
    rng = np.random.default_rng(0)
    video_dir, text_dir = root / "clip_features", root / "clip_text_features"
    video_dir.mkdir(parents=True)
    text_dir.mkdir()
    for vid, duration in {row.vid: row.duration_sec for row in rows}.items():
        n_clips = math.ceil(duration / CLIP_SEC)
        np.savez(
            video_dir / f"{vid}.npz", features=rng.standard_normal((n_clips, VIDEO_DIM)).astype(np.float32)
        )
    for row in rows:
        tokens = rng.standard_normal((int(rng.integers(3, 12)), TEXT_DIM)).astype(np.float32)
        np.savez(text_dir / f"qid{row.qid}.npz", last_hidden_state=tokens)
    return video_dir, text_dir


@pytest.mark.parametrize("dataset", DATASETS)
def test_tiny_real_cache_trains(
    dataset: str, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (shared_data_dir() / dataset).is_dir():
        pytest.skip(
            f"real annotations of {dataset} not found under {shared_data_dir()} "
            "(set GROUNDCACHE_SHARED_DATA to the shared data folder)"
        )
    data_config = REPO_ROOT / "ground" / "configs" / "data" / f"{dataset}.yaml"
    config = yaml.safe_load(data_config.read_text())["data"]
    splits = {config["train_split"], config["val_split"], config["test_split"]}
    rows = pick_rows(load_dataset(dataset, split=sorted(splits)).rows, splits)
    assert {row.split for row in rows} == splits
    video_dir, text_dir = write_features(rows, tmp_path / "features")

    cache = tmp_path / dataset / "cache.h5"
    report = importers.import_features(
        rows,
        cache,
        dataset=dataset,
        video=importers.NpzVideoStreams([("clip", video_dir)], CLIP_SEC),
        text=importers.NpzText(text_dir, "clip_text"),
        workers=2,
    )
    assert report.ok, report.summary()
    assert report.queries_imported == len(rows)
    assert validate(cache) == []

    from ground.cli import main as ground_main

    monkeypatch.setattr(
        "sys.argv", ["python -m ground"]
    )  # LightningCLI warns when pytest's argv is there too

    code = ground_main(
        [
            "fit",
            "--config",
            str(data_config),
            "--data.cache",
            str(cache),
            "--model",
            str(REPO_ROOT / "ground" / "configs" / "model" / "span.yaml"),
            "--model.hparams.hidden_dim",
            "32",
            "--model.hparams.num_layers",
            "1",
            "--model.hparams.num_heads",
            "2",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.accelerator",
            "cpu",
            "--run_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0


EXTRACT_CONFIGS = sorted(p.stem for p in (REPO_ROOT / "extract" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", EXTRACT_CONFIGS)
def test_extract_config_writes_the_cache_its_data_config_reads(name: str) -> None:
    from extract.config import load_config
    from extract.datasets import list_datasets
    from extract.encoders import list_encoders

    config = load_config(REPO_ROOT / "extract" / "configs" / f"{name}.yaml")
    assert config.adapter in list_datasets()
    assert {c.name for c in [*config.video_encoders, *config.text_encoders]} <= set(list_encoders())
    data_path = REPO_ROOT / "ground" / "configs" / "data" / f"{name}.yaml"
    if name == "custom":  # the user's own videos: the data config is theirs to write
        return
    assert yaml.safe_load(data_path.read_text())["data"]["cache"] == config.output
