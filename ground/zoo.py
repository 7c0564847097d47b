"""`make zoo`: train every registered model on the synthetic cache and write the model-zoo table.

The table (parameters, training time, training samples/s at the QVHighlights shape, test
metrics; baselines beside the models) is written between markers into docs/models.md and
README.md, so it is never typed by hand. The samples/s column is `python -m ground.bench`'s
measurement (batch 32, T = 75, 2,816-d video, 32 x 512 text, float32, this process's threads)
on a 256-query cache of that shape written once under data/bench/. The synthetic
cache comes from `make demo` (or `python -m extract --config extract/configs/synthetic.yaml`).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from ground.bench import Shape, ensure_cache, measure_model
from ground.data import GroundingDataModule, SplitTensors
from ground.models import list_models, trainable_models
from ground.module import GroundingModule

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-R5@0.5", "MR-full-mIoU", "MR-full-mAP")
BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"


def _config(name: str) -> dict:
    return yaml.safe_load((REPO / "ground" / "configs" / "model" / f"{name}.yaml").read_text())


SPEED_SHAPE = Shape(queries=256)
"""The QVHighlights-shaped cache the samples/s column is measured on (the step time depends on
the batch's shape, not on the number of videos)."""


def run_model(name: str, data: GroundingDataModule, epochs: int, run_dir: Path, lr: float,
              speed: tuple[GroundingDataModule, SplitTensors] | None = None) -> dict:
    """Train and test `name`; with `speed` (the bench's data module and split), also time its step."""
    L.seed_everything(0, verbose=False)
    hparams = _config(name)["hparams"]
    module = GroundingModule(
        name=name, hparams=hparams, video_dim=data.video_dim, text_dim=data.text_dim, lr=lr
    )
    params = sum(p.numel() for p in module.net.parameters())
    train_sec = 0.0
    ckpt = None
    if name in trainable_models():
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(
            monitor="val/MR-full-R1@0.5", mode="max", dirpath=run_dir / name, filename="best"
        )
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=False,
            callbacks=[checkpoint],
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            check_val_every_n_epoch=2,
        )
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=data)
        train_sec = time.perf_counter() - t0
        ckpt = checkpoint.best_model_path
    tester = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    metrics = tester.test(module, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    samples_per_sec = None
    if speed is not None and name in trainable_models():
        samples_per_sec = measure_model(name, *speed).samples_per_sec
    return {
        "model": name,
        "trainable": name in trainable_models(),
        "params": params,
        "train_sec": train_sec,
        "samples_per_sec": samples_per_sec,
        "epochs": epochs if name in trainable_models() else 0,
        **{k.removeprefix("test/"): float(v) for k, v in metrics.items()},
    }


def table(rows: list[dict], cache: Path, machine: str) -> str:
    lines = [
        f"Synthetic test split, cache `{cache.relative_to(REPO) if cache.is_relative_to(REPO) else cache}`, "
        f"{machine}. Produced by `make zoo`; do not edit by hand.",
        "",
        "| model | params | train time | train samples/s (QVHighlights shape) | "
        + " | ".join(COLUMNS)
        + " |",
        "|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        kind = "" if r["trainable"] else " (baseline)"
        time_cell = f"{r['train_sec']:.0f} s / {r['epochs']} ep" if r["trainable"] else "-"
        speed = r.get("samples_per_sec")
        speed_cell = f"{speed:.1f}" if speed is not None else "-"
        lines.append(
            f"| {r['model']}{kind} | {r['params'] / 1e6:.2f} M | {time_cell} | {speed_cell} | "
            + " | ".join(f"{r.get(c, float('nan')):.1f}" for c in COLUMNS)
            + " |"
        )
    return "\n".join(lines)


def write_between_markers(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between the `begin` and `end` markers of `path` (appended when absent)."""
    content = path.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in content:
        content = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, content, flags=re.S)
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    path.write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ground zoo", description=__doc__)
    parser.add_argument("--cache", type=Path, default=REPO / "data" / "synthetic" / "cache.h5")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "zoo")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--no-speed", action="store_true", help="leave the samples/s column empty")
    args = parser.parse_args(argv)
    if not args.cache.exists():
        raise SystemExit(f"{args.cache}: no cache; run `make demo` (or make extract DATASET=synthetic) first")

    data = GroundingDataModule(str(args.cache), batch_size=16)
    speed = None
    if not args.no_speed:
        speed_cache = ensure_cache(REPO / "data" / "bench", SPEED_SHAPE)
        speed_data = GroundingDataModule(str(speed_cache), batch_size=32)
        speed = (speed_data, speed_data.load("train"))
    names = args.models or list_models()
    rows = []
    for name in names:
        if name == "zeroshot" and data.video_dim != data.text_dim:
            continue
        print(f"== {name}", flush=True)
        rows.append(run_model(name, data, args.epochs, args.run_dir, args.lr, speed))
        print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: (not r["trainable"], -r.get("MR-full-R1@0.5", 0.0)))
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    text = table(rows, args.cache, machine)
    print(text)
    if not args.no_write:
        for path in (REPO / "docs" / "models.md", REPO / "README.md"):
            write_between_markers(path, text)
        (args.run_dir / "zoo.json").parent.mkdir(parents=True, exist_ok=True)
        (args.run_dir / "zoo.json").write_text(json.dumps(rows, indent=2))
    return 0
