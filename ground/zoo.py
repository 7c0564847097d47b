"""`make zoo`: train every registered model on the synthetic cache and write the model-zoo table.

The table (parameters, training time, training samples per CPU second at the QVHighlights shape, test
metrics; baselines beside the models) is written between markers into docs/models.md and
README.md, so it is never typed by hand. The speed column is `python -m ground.bench`'s
measurement (batch 32, T = 75, 2,816-d video, 32 x 512 text, float32, this process's threads),
batch over the process's CPU seconds per step (one thread by default: what a dedicated core gives)
on a 256-query cache of that shape written once under data/bench/.

The synthetic cache is the zoo's own (`ensure_zoo_cache`, extract/configs/synthetic_zoo.yaml): the
demo's 100 videos with the demo's train/val/test splits, plus 300 videos in the test split only.
Models train on the demo's 214 training queries and are scored on 1,321 test queries, so the
note under the table (`margin_note`) can tell a margin from sampling noise.

Highlight detection (HD) is reported beside moment retrieval (MR). The synthetic set has no
annotator saliency scores, so HD is scored against window membership: a clip whose centre lies
inside one of the query's windows is a highlight (`window_highlight_metrics`). A model without a
saliency output gets "no saliency" in those cells.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

from ground.bench import BASE_BATCH, Shape, ensure_cache, measure_model
from ground.data import GroundingDataModule, SplitTensors
from ground.metrics import highlight_average_precision
from ground.models import list_models, trainable_models
from ground.models.blocks import clips_in_windows
from ground.module import GroundingModule

REPO = Path(__file__).resolve().parents[1]
MR_COLUMNS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-R5@0.5", "MR-full-mIoU", "MR-full-mAP")
HD_COLUMNS = ("HD-window-mAP", "HD-window-Hit1")
COLUMNS = MR_COLUMNS + HD_COLUMNS
NO_SALIENCY = "no saliency"
"""The HD cells of a model whose `Predictions.saliency` is None."""
BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"


def _config(name: str) -> dict:
    return yaml.safe_load((REPO / "ground" / "configs" / "model" / f"{name}.yaml").read_text())


ZOO_EXTRACT = REPO / "extract" / "configs" / "synthetic_zoo.yaml"
ZOO_CACHE = REPO / "data" / "synthetic_zoo" / "cache.h5"
"""The zoo's set: the demo's 100 videos and splits, plus 300 test-only videos (1,321 test queries)."""


def ensure_zoo_cache() -> Path:
    """`ZOO_CACHE`, brought up to date by the public command (`python -m extract --config
    ZOO_EXTRACT`, which generates the videos first when they are missing). Extraction resumes, so
    a complete cache costs about ten seconds and an interrupted one is finished rather than read
    with videos missing. Runs as a subprocess: `ground` never imports `extract`.

    Raises:
        SystemExit: the extraction failed (its own output says why).
    """
    cmd = [sys.executable, "-m", "extract", "--config", str(ZOO_EXTRACT)]
    print(" ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise SystemExit(f"error: extracting {ZOO_CACHE} failed; see the lines above")
    return ZOO_CACHE


SPEED_SHAPE = Shape(queries=256)
"""The QVHighlights-shaped cache the samples/s column is measured on (the step time depends on
the batch's shape, not on the number of videos)."""


def run_model(name: str, data: GroundingDataModule, epochs: int, run_dir: Path, lr: float,
              speed: tuple[GroundingDataModule, SplitTensors] | None = None, seed: int = 0) -> dict:
    """Train and test `name` from `seed`; with `speed` (the bench's data module and split), also
    time its step."""
    L.seed_everything(seed, verbose=False)
    hparams = _config(name)["hparams"]
    module = GroundingModule(
        name=name, hparams=hparams, video_dim=data.video_dim, text_dim=data.text_dim, lr=lr
    )
    params = sum(p.numel() for p in module.net.parameters())
    train_sec = 0.0
    ckpt = None
    if name in trainable_models():
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(
            monitor="val/MR-full-R1@0.5", mode="max", dirpath=run_dir / name / f"seed{seed}", filename="best"
        )
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=False,
            callbacks=[checkpoint],
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
            check_val_every_n_epoch=2 if epochs >= 2 else 1,  # one epoch must still validate
        )
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=data)
        train_sec = time.perf_counter() - t0
        ckpt = checkpoint.best_model_path
    tester = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    # test() loads the best checkpoint into `module`, so the HD pass below scores the same weights.
    metrics = tester.test(module, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    samples_per_sec = None
    if speed is not None and name in trainable_models():
        timing = measure_model(name, *speed)
        # Per CPU second of this process: on a shared machine the wall rate measures the load.
        samples_per_sec = BASE_BATCH / timing.step_cpu_sec
    return {
        "model": name,
        "trainable": name in trainable_models(),
        "params": params,
        "train_sec": train_sec,
        "samples_per_sec": samples_per_sec,
        "epochs": epochs if name in trainable_models() else 0,
        "seeds": 1,
        **{k.removeprefix("test/"): float(v) for k, v in metrics.items()},
        **(window_highlight_metrics(module, data) or {}),
    }


@torch.no_grad()
def window_highlight_metrics(module: GroundingModule, data: GroundingDataModule) -> dict[str, float] | None:
    """Highlight detection on the test split against window membership, or None without saliency.

    A clip (feature) is a highlight when its centre lies inside one of the query's ground-truth
    windows. Per query, over its real clips: the official QVHighlights clip AP
    (`highlight_average_precision`) of the predicted saliency against those labels, and Hit1,
    whether the top-scored clip (the first of equal scores) is a highlight. Queries without a
    window are left out.

    Returns:
        ``HD-window-mAP`` and ``HD-window-Hit1`` in percent, averaged over queries (NaN when no
        test query has a window); None when the network predicts no saliency
        (``Predictions.saliency`` is None).
    """
    was_training = module.training
    module.eval()
    ap, hit = [], []
    for batch in data.test_dataloader():
        batch = data.transfer_batch_to_device(batch, module.device, 0)
        preds = module.predict_batch(batch)
        if preds.saliency is None:
            module.train(was_training)
            return None
        inside = clips_in_windows(batch["timestamps"], batch["windows"], batch["window_mask"])  # (B, T)
        for i in range(len(batch["qid"])):
            if not batch["window_mask"][i].any():
                continue
            n = int(batch["video_mask"][i].sum())
            scores = preds.saliency[i, :n].double().cpu().numpy()  # (n,)
            labels = inside[i, :n].double().cpu().numpy()  # (n,)
            ap.append(highlight_average_precision(labels, scores))
            hit.append(labels[int(np.argmax(scores))])
    module.train(was_training)
    if not ap:  # no query with a window: nothing to score, which is not "no saliency"
        return {"HD-window-mAP": float("nan"), "HD-window-Hit1": float("nan")}
    return {"HD-window-mAP": 100.0 * float(np.mean(ap)), "HD-window-Hit1": 100.0 * float(np.mean(hit))}


def over_seeds(rows: list[dict]) -> dict:
    """One model's rows, one per seed -> one row: the first seed's row with every metric column and
    the training time replaced by their mean over the seeds, each metric's standard deviation over
    the seeds (population) as ``<column> sd``, and ``seeds`` the count. The speed is the first's."""
    merged = dict(rows[0])
    for key in (*COLUMNS, "train_sec"):
        if key in rows[0]:
            values = np.array([r[key] for r in rows], dtype=float)
            merged[key] = float(values.mean())
            if key in COLUMNS:
                merged[f"{key} sd"] = float(values.std())
    merged["seeds"] = len(rows)
    return merged


def table(rows: list[dict], cache: Path, machine: str) -> str:
    seeds = max(r.get("seeds", 1) for r in rows)
    spread = ""
    if seeds > 1:
        spread = f" Cells are the mean ± standard deviation over {seeds} seeds (0..{seeds - 1})."
    lines = [
        f"Synthetic test split, cache `{cache.relative_to(REPO) if cache.is_relative_to(REPO) else cache}`, "
        f"{machine}. Produced by `make zoo`; do not edit by hand. MR: moment retrieval; HD: highlight "
        "detection against window membership (a clip inside a window is a highlight; the synthetic set "
        f"has no annotator saliency), `{NO_SALIENCY}` where the model predicts none.{spread}",
        "",
        "| model | params | train time | train samples per CPU s (QVHighlights shape) | "
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
            + " | ".join(_cell(r, c) for c in COLUMNS)
            + " |"
        )
    return "\n".join(lines)


def margin_note(rows: list[dict], test_queries: int) -> str:
    """One paragraph under the table: whether every trained model beats every baseline.

    On ``MR-full-R1@0.5``: the smallest margin of a trained model (its mean over seeds) over the
    best baseline, beside the largest binomial standard error of one R1@0.5 on `test_queries`
    queries (50 / sqrt(n) points, at 50 %), so a reader can tell a margin from sampling noise.
    Then every other MR column where a trained model does not beat the best baseline, or that
    there is none. Empty without both a trained model and a baseline.
    """
    models = [r for r in rows if r["trainable"]]
    baselines = [r for r in rows if not r["trainable"]]
    if not models or not baselines:
        return ""
    key = MR_COLUMNS[0]
    best = max(baselines, key=lambda r: r[key])
    worst = min(models, key=lambda r: r[key])
    margin = worst[key] - best[key]
    verdict = ("Every" if margin > 0 else "Not every") + " trained model beats every baseline"
    lines = [
        f"{verdict} on {key}: the smallest margin is {margin:+.1f} points ({worst['model']} "
        f"{worst[key]:.1f} against {best['model']} {best[key]:.1f}); on {test_queries} test queries the "
        f"standard error of one R1@0.5 is at most ±{50 / math.sqrt(max(test_queries, 1)):.1f} points."
    ]
    short = []
    for column in MR_COLUMNS[1:]:
        top = max(baselines, key=lambda r: r.get(column, float("-inf")))
        for r in models:
            if r.get(column, float("-inf")) <= top.get(column, float("-inf")):
                short.append(f"{r['model']} {column} {r[column]:.1f} ≤ {top['model']} {top[column]:.1f}")
    above = "every trained model is above every baseline too."
    lines.append("On the other MR columns: " + ("; ".join(short) + "." if short else above))
    return " ".join(lines)


def _cell(row: dict, column: str) -> str:
    if column in HD_COLUMNS and column not in row:
        return NO_SALIENCY
    cell = f"{row.get(column, float('nan')):.1f}"
    if f"{column} sd" in row and row.get("seeds", 1) > 1:
        cell += f" ± {row[f'{column} sd']:.1f}"
    return cell


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
    parser.add_argument(
        "--cache", type=Path, default=None,
        help=f"default: {ZOO_CACHE.relative_to(REPO)}, extracted (or completed) by {ZOO_EXTRACT.name}",
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "zoo")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--no-speed", action="store_true", help="leave the samples/s column empty")
    parser.add_argument(
        "--seeds", type=int, default=3, help="train and test every model from seeds 0..N-1 (default 3)"
    )
    parser.add_argument(
        "--jobs", type=int, default=default_jobs(),
        help="train the models in N processes at once (one torch thread each), then write one table "
        f"(default: this machine's cores, at most {MAX_JOBS}: {default_jobs()})",
    )
    parser.add_argument("--rows-out", type=Path, default=None, help="also write the rows (json) here")
    parser.add_argument(
        "--update", action="store_true",
        help="train only --models and keep the other rows of RUN_DIR/zoo.json (same cache, epochs and seeds)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.rows_out is not None and (args.rows_out.is_dir() or not _writable_parent(args.rows_out)):
        parser.error(f"--rows-out {args.rows_out}: cannot write a file there")
    if args.cache is None:
        args.cache = ensure_zoo_cache()
    if not args.cache.exists():
        raise SystemExit(f"error: {args.cache}: no such cache")

    data = GroundingDataModule(str(args.cache), batch_size=16)
    names = args.models or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; available: {', '.join(list_models())}")
    kept = kept_rows(args.run_dir / "zoo.json", names, args) if args.update else []
    if args.jobs > 1:
        rows = _rows_from_jobs(args, data, names)
    else:
        rows = _rows(args, data, names)
    rows = kept + [{**r, "cache": str(args.cache.resolve())} for r in rows]
    rows.sort(key=lambda r: (not r["trainable"], -r.get("MR-full-R1@0.5", 0.0)))
    if args.rows_out is not None:
        write_json_atomic(args.rows_out, rows)
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    text = table(rows, args.cache, machine)
    note = margin_note(rows, len(data.load("test")))
    text += f"\n\n{note}" if note else ""
    print(text)
    if not args.no_write:
        for path in (REPO / "docs" / "models.md", REPO / "README.md"):
            write_between_markers(path, text)
        write_json_atomic(args.run_dir / "zoo.json", rows)
    return 0


def _rows(args: argparse.Namespace, data: GroundingDataModule, names: list[str]) -> list[dict]:
    """Train and test `names` in this process, one after another: one row each (`over_seeds`)."""
    speed = None
    if not args.no_speed:
        speed_cache = ensure_cache(REPO / "data" / "bench", SPEED_SHAPE)
        speed_data = GroundingDataModule(str(speed_cache), batch_size=32)
        speed = (speed_data, speed_data.load("train"))
    rows = []
    for name in names:
        if name == "zeroshot" and data.video_dim != data.text_dim:
            continue
        print(f"== {name}", flush=True)
        per_seed = []
        for seed in range(args.seeds):
            timed = speed if seed == 0 else None  # the speed column is the first seed's
            per_seed.append(run_model(name, data, args.epochs, args.run_dir, args.lr, timed, seed=seed))
            print(json.dumps(per_seed[-1]), flush=True)
        rows.append(over_seeds(per_seed))
    return rows


MAX_JOBS = 4


def default_jobs() -> int:
    """The cores this process may run on, at most `MAX_JOBS`: one single-threaded job per core."""
    return max(1, min(MAX_JOBS, len(os.sched_getaffinity(0))))


def _writable_parent(path: Path) -> bool:
    """Whether `path`'s nearest existing ancestor is a writable folder (the rest can be made)."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK)


def write_json_atomic(path: Path, value: object) -> None:
    """Write `value` as JSON to a temporary file beside `path`, then rename it over `path`: a reader
    sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2))
    os.replace(partial, path)


def kept_rows(stored: Path, names: list[str], args: argparse.Namespace) -> list[dict]:
    """``--update``: the rows of `stored` (a previous run's zoo.json) of every model not in `names`.

    Raises:
        SystemExit: no stored rows, or rows of another cache, epoch count or seed count (a table
            mixing them would compare unlike runs).
    """
    if not stored.exists():
        raise SystemExit(f"error: --update: {stored} does not exist; run `make zoo` once without it")
    try:
        rows = json.loads(stored.read_text())
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and {"model", "trainable", "epochs", "seeds"} <= r.keys() for r in rows
        ):
            raise ValueError("not a list of zoo rows")
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise SystemExit(f"error: --update: {stored} is not a zoo.json of `make zoo` ({err})") from err
    cache = str(args.cache.resolve())
    for r in rows:
        if r.get("cache", cache) != cache:
            raise SystemExit(f"error: --update: {stored} holds {r['model']} on {r['cache']}, not on {cache}")
        if r["trainable"] and (r["epochs"] != args.epochs or r["seeds"] != args.seeds):
            raise SystemExit(
                f"error: --update: {stored} holds {r['model']} at {r['epochs']} epochs and {r['seeds']} "
                f"seeds, not {args.epochs} and {args.seeds}"
            )
    return [r for r in rows if r["model"] not in names]


def split_for_jobs(names: list[str], jobs: int, cost: dict[str, float]) -> list[list[str]]:
    """`names` in at most `jobs` groups of about equal training cost: the costliest first, each
    onto the least loaded group (`step_costs` measures them). Empty groups are left out."""
    groups: list[list[str]] = [[] for _ in range(jobs)]
    load = [0.0] * jobs
    for name in sorted(names, key=lambda n: -cost[n]):
        least = load.index(min(load))
        groups[least].append(name)
        load[least] += cost[name]
    return [g for g in groups if g]


def step_costs(names: list[str], data: GroundingDataModule) -> dict[str, float]:
    """CPU seconds of one training step of each model on `data`'s training split at the zoo's
    batch (3 steps after 1 warm-up, `ground.bench.measure_model`); 0 for a baseline."""
    split = data.load("train")
    return {
        name: measure_model(name, data, split, batch_size=16, steps=3, warmup=1).step_cpu_sec
        if name in trainable_models() else 0.0
        for name in names
    }


def _rows_from_jobs(args: argparse.Namespace, data: GroundingDataModule, names: list[str]) -> list[dict]:
    """Run `python -m ground zoo` on each group of `split_for_jobs` at once (each writes its rows
    with ``--rows-out`` and nothing else), wait for all, and return their rows.

    Raises:
        SystemExit: a job failed (its output says why); the others still ran to the end.
    """
    if not args.no_speed:  # written once here, not by two jobs at the same time
        ensure_cache(REPO / "data" / "bench", SPEED_SHAPE)
    out_dir = args.run_dir / "jobs"
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, group in enumerate(split_for_jobs(names, args.jobs, step_costs(names, data))):
        rows_out = (out_dir / f"rows{i}.json").resolve()
        rows_out.unlink(missing_ok=True)
        cmd = [  # absolute paths: the jobs run in the repository, the caller may be elsewhere
            sys.executable, "-m", "ground", "zoo", "--cache", str(args.cache.resolve()),
            "--epochs", str(args.epochs), "--lr", str(args.lr), "--seeds", str(args.seeds),
            "--run-dir", str(args.run_dir.resolve()), "--jobs", "1",
            "--no-write", "--rows-out", str(rows_out), "--models", *group,
            *(["--no-speed"] if args.no_speed else []),
        ]
        print(f"job {i}: {' '.join(group)}", flush=True)
        procs.append((group, rows_out, subprocess.Popen(cmd, cwd=REPO)))
    rows, failed = [], []
    for group, rows_out, proc in procs:
        if proc.wait() != 0 or not rows_out.exists():
            failed.append(" ".join(group))
        else:
            rows.extend(json.loads(rows_out.read_text()))
    if failed:
        raise SystemExit(f"error: zoo jobs failed for models: {'; '.join(failed)}; see their output above")
    return rows
