"""Every stopping rule either gets a learning-rate schedule that spans the run or one clear error.

Rules: max_epochs, max_steps, max_time and EarlyStopping, each alone and beside an epoch limit;
the data configs' recipes end; `python -m ground` passes its arguments to LightningCLI one way.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from cache_schema.fake import write_fake_cache
from ground.cli import main as ground_main
from ground.data import GroundingDataModule
from ground.module import GroundingModule, StoppingRuleError, check_stopping_rule, warmup_cosine
from ground.threads import ENV_VAR, ThreadSettingError, apply_thread_policy, torch_threads

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_CONFIGS = sorted((REPO_ROOT / "ground" / "configs" / "data").glob("*.yaml"))
TRAIN_QUERIES = 8  # write_fake_cache(n_videos=12, queries_per_video=2): 4 videos in train
BATCH = 4
STEPS_PER_EPOCH = TRAIN_QUERIES // BATCH


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stopping") / "cache.h5"
    write_fake_cache(path, n_videos=12, queries_per_video=2, duration_range_sec=(6.0, 20.0))
    assert len(GroundingDataModule(str(path)).load("train")) == TRAIN_QUERIES
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention
    yield
    torch.set_num_threads(threads)


def _fit(cache: Path, root: Path, *extra: str) -> dict:
    """Fit a tiny span with `extra` trainer flags; returns its last checkpoint."""
    args = [
        "fit",
        "--data.cache",
        str(cache),
        "--data.batch_size",
        str(BATCH),
        "--model",
        "ground/configs/model/span.yaml",
        "--model.hparams.hidden_dim",
        "16",
        "--model.hparams.num_layers",
        "1",
        "--model.hparams.num_heads",
        "2",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]
    assert ground_main(args) == 0
    return torch.load(next(root.rglob("last.ckpt")), map_location="cpu", weights_only=True)


def _final_lr_factor(checkpoint: dict) -> float:
    scheduler = checkpoint["lr_schedulers"][0]
    return scheduler["_last_lr"][0] / scheduler["base_lrs"][0]


def test_warmup_cosine_reaches_the_floor_at_the_last_step() -> None:
    assert warmup_cosine(0, total_steps=100, warmup_steps=10, min_lr_ratio=0.01) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.01) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine(99, 100, 10, 0.01) > 0.01
    assert warmup_cosine(100, 100, 10, 0.01) == pytest.approx(0.01)
    assert warmup_cosine(150, 100, 10, 0.01) == pytest.approx(0.01)


@pytest.mark.parametrize(("max_epochs", "max_steps"), [(None, -1), (-1, -1), (None, None), (-1, None)])
def test_no_epoch_or_step_limit_is_refused(max_epochs: int | None, max_steps: int | None) -> None:
    with pytest.raises(StoppingRuleError, match=r"--trainer\.max_epochs N or --trainer\.max_steps N"):
        check_stopping_rule(max_epochs, max_steps)


@pytest.mark.parametrize(("max_epochs", "max_steps"), [(3, -1), (None, 5), (-1, 5), (0, -1)])
def test_an_epoch_or_step_limit_is_enough(max_epochs: int | None, max_steps: int) -> None:
    check_stopping_rule(max_epochs, max_steps)


def test_max_epochs_schedule_spans_the_run(cache: Path, tmp_path: Path) -> None:
    ckpt = _fit(cache, tmp_path, "--trainer.max_epochs", "3")
    assert ckpt["global_step"] == 3 * STEPS_PER_EPOCH
    assert ckpt["groundcache"]["lr_schedule"]["total_steps"] == 3 * STEPS_PER_EPOCH
    assert _final_lr_factor(ckpt) == pytest.approx(0.01)  # min_lr_ratio, reached at the last step


def test_max_steps_alone_spans_the_run(cache: Path, tmp_path: Path) -> None:
    ckpt = _fit(cache, tmp_path, "--trainer.max_steps", "5")
    assert ckpt["global_step"] == 5
    assert ckpt["groundcache"]["lr_schedule"]["total_steps"] == 5
    assert _final_lr_factor(ckpt) == pytest.approx(0.01)


def test_max_steps_before_max_epochs_spans_the_steps(cache: Path, tmp_path: Path) -> None:
    ckpt = _fit(cache, tmp_path, "--trainer.max_epochs", "10", "--trainer.max_steps", "3")
    assert ckpt["groundcache"]["lr_schedule"]["total_steps"] == ckpt["global_step"] == 3


def test_max_time_stops_a_run_whose_schedule_spans_its_epochs(cache: Path, tmp_path: Path) -> None:
    # A zero time budget stops the run at once, whatever the machine's speed (no checkpoint is
    # written, so the schedule is read from the Trainer itself).
    data = GroundingDataModule(str(cache), batch_size=BATCH)
    module = GroundingModule(
        name="span",
        video_dim=data.video_dim,
        text_dim=data.text_dim,
        hparams={"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
    )
    trainer = L.Trainer(
        max_epochs=50,
        max_time="00:00:00:00",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step <= 1 and trainer.should_stop
    assert module.lr_schedule["total_steps"] == 50 * STEPS_PER_EPOCH
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    # Warmup is 5 % of the 100 scheduled steps: the run stopped in it, at 1/5 of the peak rate.
    assert scheduler.get_last_lr()[0] / module.hparams.lr == pytest.approx(1 / 5)


def test_early_stopping_stops_a_run_whose_schedule_spans_its_epochs(cache: Path, tmp_path: Path) -> None:
    # A divergence threshold above any recall stops at the first validation, deterministically.
    ckpt = _fit(
        cache,
        tmp_path,
        "--trainer.max_epochs",
        "50",
        "--trainer.callbacks+=EarlyStopping",
        "--trainer.callbacks.monitor=val/MR-full-R1@0.5",
        "--trainer.callbacks.mode=max",
        "--trainer.callbacks.divergence_threshold=1000",
    )
    assert ckpt["global_step"] == STEPS_PER_EPOCH
    assert ckpt["groundcache"]["lr_schedule"]["total_steps"] == 50 * STEPS_PER_EPOCH


@pytest.mark.parametrize(
    "extra",
    [
        ("--trainer.max_time", "00:00:05:00"),
        ("--trainer.max_epochs", "-1", "--trainer.max_time", "00:00:05:00"),
        ("--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/MR-full-R1@0.5"),
        (),
    ],
    ids=["max_time", "max_epochs=-1 and max_time", "early_stopping", "nothing"],
)
def test_a_rule_without_a_step_count_names_the_flag_to_add(
    cache: Path, tmp_path: Path, extra: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = r"fit needs --trainer\.max_epochs N or --trainer\.max_steps N"
    with pytest.raises(AssertionError):  # _fit asserts exit 0; the CLI boundary returns 2
        _fit(cache, tmp_path, *extra)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(flags, errors[0]), errors
    assert not list(tmp_path.rglob("*.ckpt"))  # refused before training
    with pytest.raises(StoppingRuleError, match=flags):
        check_stopping_rule(None if "-1" not in extra else -1, -1)


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=[p.stem for p in DATA_CONFIGS])
def test_every_data_config_sets_a_recipe_that_ends(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert set(config) == {"data", "model", "trainer"}, path
    data_args = set(inspect.signature(GroundingDataModule).parameters)
    assert set(config["data"]) <= data_args, set(config["data"]) - data_args
    assert isinstance(config["trainer"]["max_epochs"], int) and config["trainer"]["max_epochs"] > 0
    assert config["model"]["lr"] > 0 and config["data"]["batch_size"] > 0
    check_stopping_rule(config["trainer"]["max_epochs"], -1)


def test_synthetic_recipe_ends_at_its_epochs(cache: Path, tmp_path: Path) -> None:
    recipe = yaml.safe_load((REPO_ROOT / "ground" / "configs" / "data" / "synthetic.yaml").read_text())
    epochs, batch = recipe["trainer"]["max_epochs"], recipe["data"]["batch_size"]
    ckpt = _fit(
        cache,
        tmp_path,
        "--config",
        "ground/configs/data/synthetic.yaml",
        "--data.cache",
        str(cache),
        "--trainer.check_val_every_n_epoch",
        str(epochs),
    )
    steps = epochs * math.ceil(TRAIN_QUERIES / batch)
    assert ckpt["epoch"] == epochs - 1
    assert ckpt["global_step"] == ckpt["groundcache"]["lr_schedule"]["total_steps"] == steps
    assert ckpt["hyper_parameters"]["lr"] == recipe["model"]["lr"]
    assert _final_lr_factor(ckpt) == pytest.approx(0.01)


def test_python_m_ground_fit_prints_no_lightningcli_args_warning(cache: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", ENV_VAR: "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ground",
            "fit",
            "--data",  # the README's form; the full data config is read as --config
            "ground/configs/data/synthetic.yaml",
            "--data.cache",
            str(cache),
            "--model",
            "ground/configs/model/span.yaml",
            "--model.hparams.hidden_dim",
            "16",
            "--model.hparams.num_layers",
            "1",
            "--model.hparams.num_heads",
            "2",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--run_dir",
            str(tmp_path / "runs"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "best checkpoint:" in result.stdout
    assert "LightningCLI's args parameter" not in output
    assert "`max_epochs` was not set" not in output


def test_thread_policy_defaults_to_one_and_reads_the_variable() -> None:
    assert torch_threads({}) == 1
    assert torch_threads({ENV_VAR: " 3 "}) == 3
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ThreadSettingError, match=rf"{ENV_VAR}='{bad}'"):
            torch_threads({ENV_VAR: bad})
    assert apply_thread_policy({ENV_VAR: "2"}) == 2
    assert torch.get_num_threads() == 2


def test_report_reads_the_data_section_of_a_data_config(cache: Path) -> None:
    from ground.report import load_data

    data = load_data(REPO_ROOT / "ground" / "configs" / "data" / "charades_sta.yaml", cache, batch_size=4)
    assert data.hparams.val_split == "test"  # Charades-STA's config: no val split
    assert data.hparams.length_buckets == "short=0:6,middle=6:9,long=9:86400"
    assert data.cache == cache


def test_data_flag_takes_a_full_data_config_first(tmp_path: Path) -> None:
    from ground.cli import full_data_configs_first

    full = tmp_path / "full.yaml"
    full.write_text("data:\n  cache: c.h5\ntrainer:\n  max_epochs: 7\n", encoding="utf-8")
    plain = tmp_path / "plain.yaml"
    plain.write_text("cache: c.h5\n", encoding="utf-8")
    argv = ["fit", "--trainer.max_epochs", "2", "--data", str(full), "--model", "m.yaml"]
    # Moved first, so the earlier --trainer.max_epochs 2 still overrides the recipe's 7.
    assert full_data_configs_first(argv) == [
        "fit",
        "--config",
        str(full),
        "--trainer.max_epochs",
        "2",
        "--model",
        "m.yaml",
    ]
    assert full_data_configs_first(["fit", f"--data={full}"]) == ["fit", "--config", str(full)]
    assert full_data_configs_first(["fit", "--data", str(plain)]) == ["fit", "--data", str(plain)]
    assert full_data_configs_first(["fit", "--data.cache", "x.h5"]) == ["fit", "--data.cache", "x.h5"]
