"""`make demo`: synthetic videos -> tiny_clip cache -> train `span` -> test metrics beside baselines.

Every step is the public command a user would run; the extract steps run as subprocesses
(`ground` never imports `extract`), training and testing run in-process through Lightning.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
from rich.console import Console
from rich.table import Table

from ground.data import GroundingDataModule
from ground.module import GroundingModule

REPO = Path(__file__).resolve().parents[1]
SHOWN = (
    "MR-full-R1@0.3",
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
    "MR-full-R5@0.5",
    "MR-full-mIoU",
    "MR-full-mAP",
)
BASELINES = ("random", "centered", "prior", "zeroshot")
DEMO_SPAN = {"hidden_dim": 128, "num_layers": 2, "num_heads": 4, "dropout": 0.1}
"""The demo's `span` arguments: smaller than ground/configs/model/span.yaml, so 30 CPU epochs take minutes."""


def _run(console: Console, title: str, cmd: list[str]) -> None:
    console.rule(f"[bold]{title}")
    console.print(" ".join(cmd), style="dim")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo: step '{title}' failed with exit code {result.returncode}")


def _test(module: GroundingModule, data: GroundingDataModule, ckpt: str | None = None) -> dict[str, float]:
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    results = trainer.test(module, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    return {k.removeprefix("test/"): float(v) for k, v in results.items()}


def train_span(
    data: GroundingDataModule, run_dir: Path, *, epochs: int, seed: int = 0
) -> tuple[GroundingModule, Path]:
    """Train the demo's `span` (`DEMO_SPAN`) on `data`; validation every second epoch picks the best.

    The same seed on the same cache gives the same weights: seeded sampling and dropout,
    deterministic kernels, and the one-thread policy (`ground.threads`).

    Returns:
        The trained module and its best checkpoint, `run_dir/checkpoints/best.ckpt`.

    Raises:
        ValueError: `epochs` < 2, so no validation ran and no checkpoint was written.
    """
    if epochs < 2:
        raise ValueError(f"demo: --epochs must be >= 2 (validation runs every second epoch), got {epochs}")
    L.seed_everything(seed, verbose=False)
    model = GroundingModule(
        name="span", video_dim=data.video_dim, text_dim=data.text_dim, lr=1e-3, hparams=DEMO_SPAN
    )
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        monitor="val/MR-full-R1@0.5", mode="max", dirpath=Path(run_dir) / "checkpoints", filename="best"
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        default_root_dir=run_dir,
        gradient_clip_val=1.0,
        callbacks=[checkpoint],
        logger=L.pytorch.loggers.CSVLogger(run_dir, name="logs"),
        enable_model_summary=False,
        log_every_n_steps=5,
        check_val_every_n_epoch=2,
        deterministic=True,
    )
    trainer.fit(model, datamodule=data)
    return model, Path(checkpoint.best_model_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ground demo", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "synthetic")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the dataset itself is fixed)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs must be >= 2 (validation runs every second epoch), got {args.epochs}")
    # The extract steps run from the repository root; the user's relative paths mean their own folder.
    data_dir, run_dir = args.data_dir.resolve(), args.run_dir.resolve()
    console = Console(width=110)
    # Lightning prints its hardware banner for every Trainer; the demo builds several.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    t0 = time.perf_counter()

    if not (data_dir / "annotations.jsonl").exists():
        _run(
            console,
            "1/4 generate the synthetic dataset",
            [sys.executable, "-m", "extract", "synthetic", "--out", str(data_dir)],
        )
    cache = data_dir / "cache.h5"
    # The config's paths are data/synthetic/...; --data-dir moves all three, or the demo would
    # extract the default folder and then train on a cache it never wrote.
    _run(
        console,
        "2/4 extract tiny_clip features (resumes; skips finished videos)",
        [
            sys.executable,
            "-m",
            "extract",
            "--config",
            str(REPO / "extract" / "configs" / "synthetic.yaml"),
            "--annotations",
            str(data_dir / "annotations.jsonl"),
            "--video_root",
            str(data_dir),
            "--output",
            str(cache),
        ],
    )
    _run(console, "   validate the cache", [sys.executable, "-m", "cache_schema", "validate", str(cache)])

    console.rule("[bold]3/4 train span")
    data = GroundingDataModule(str(cache), batch_size=16)
    model, best_ckpt = train_span(data, run_dir, epochs=args.epochs, seed=args.seed)

    console.rule("[bold]4/4 test split: span vs baselines")
    rows = {"span (trained)": _test(model, data, ckpt=str(best_ckpt))}
    for name in BASELINES:
        if name == "zeroshot" and data.video_dim != data.text_dim:
            continue
        baseline = GroundingModule(name=name, video_dim=data.video_dim, text_dim=data.text_dim)
        rows[f"{name} (baseline)"] = _test(baseline, data)
    table = Table(
        "model",
        *(k.removeprefix("MR-full-") for k in SHOWN),
        title=f"synthetic test split ({len(data.load('test'))} queries), metrics in %",
    )
    for name, metrics in rows.items():
        table.add_row(name, *(f"{metrics[k]:.1f}" for k in SHOWN))
    console.print(table)
    best = max((name for name in rows if name != "span (trained)"), key=lambda n: rows[n]["MR-full-R1@0.5"])
    margin = rows["span (trained)"]["MR-full-R1@0.5"] - rows[best]["MR-full-R1@0.5"]
    console.print(f"span R1@0.5 is {margin:+.1f} points over the best baseline, {best}")
    console.print(f"best checkpoint: {best_ckpt}")
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
