"""`make bench-accuracy`: accuracy against training minutes on a benchmark-shaped cache.

The cache comes from `python -m extract shaped` (real QVHighlights or Charades-STA annotations,
generated features that only the query unlocks; docs/accuracy_benchmark.md) and is made once under
data/bench_accuracy/. Every model is trained through the same `GroundingModule` /
`GroundingDataModule` as `python -m ground fit`, for a fixed budget of training minutes (time spent
evaluating is not counted), and evaluated on the evaluation split at a few points of that budget
with the official metrics: QVHighlights' moment and highlight metrics plus mIoU, or R@{1,5} x
IoU{0.5,0.7} and mIoU for Charades-STA. Baselines are evaluated once. A control row trains a model
on videos shuffled across queries, so it sees the text and the real window positions but no video
that matches its query: it must stay near the prior, or the benchmark could be solved by text
alone. The table goes between markers into docs/benchmarks.md, the plot to docs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from cache_schema import CacheReader
from ground.data import GroundingDataModule, SplitTensors
from ground.metrics import (
    qvhighlights_highlight_metrics,
    qvhighlights_moment_metrics,
    retrieval_metrics,
)
from ground.models import list_models, trainable_models
from ground.module import GroundingModule, adamw
from ground.zoo import write_between_markers

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "ground" / "configs" / "model"
BASELINES = ("prior", "centered", "random")
"""Baselines reported beside the models (zeroshot needs one joint video/text space, which the
shaped features deliberately do not have)."""
SHUFFLED = " (video shuffled)"
"""Suffix of a control row: the model trained and evaluated on videos shuffled across queries."""
Protocol = Literal["qvhighlights", "recall"]
OFFICIAL_CLIP_SEC = 2.0  # QVHighlights saliency is labelled per 2-s clip
NO_SALIENCY = "no saliency"
"""The highlight (HL-) cells of a model whose `Predictions.saliency` is None."""


class BenchError(RuntimeError):
    """The benchmark cannot run (no annotations, generation failed); the message says why."""


@dataclass(frozen=True)
class BenchVariant:
    """How one shaped benchmark is trained and scored.

    Attributes:
        train_split: split trained on.
        eval_split: split the metrics are reported on.
        protocol: "qvhighlights" (official MR + HD metrics, plus mIoU) or "recall" (R@k, mIoU).
        columns: metric keys of the table, in order; the first one is plotted.
    """

    train_split: str
    eval_split: str
    protocol: Protocol
    columns: tuple[str, ...]


VARIANTS: dict[str, BenchVariant] = {
    "qvhighlights": BenchVariant(
        "train",
        "val",
        "qvhighlights",
        (
            "MR-full-R1@0.5",
            "MR-full-R1@0.7",
            "MR-full-mAP",
            "MR-full-mIoU",
            "HL-min-Fair-mAP",
            "HL-min-Good-mAP",
            "HL-min-VeryGood-mAP",
            "HL-min-VeryGood-Hit1",
        ),
    ),
    # Charades-STA has no validation split: scored on test, as the published results are.
    "charades_sta": BenchVariant(
        "train",
        "test",
        "recall",
        ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-R5@0.5", "MR-full-R5@0.7", "MR-full-mIoU"),
    ),
}


@dataclass
class EvalPoint:
    """One evaluation of one model: metrics (percentages) after `train_sec` CPU seconds of training."""

    model: str
    trainable: bool
    train_sec: float
    wall_sec: float
    epochs: float
    steps: int
    metrics: dict[str, float]


# ---------------------------------------------------------------------------------------------
# The cache


def cache_path(variant: str, seed: int, limit_videos: int | None, root: Path = REPO / "data") -> Path:
    """The shaped cache of these arguments: data/bench_accuracy/<variant>_seed<s>[_first<n>].h5."""
    limit = f"_first{limit_videos}" if limit_videos else ""
    return root / "bench_accuracy" / f"{variant}_seed{seed}{limit}.h5"


def ensure_cache(variant: str, path: Path, seed: int, limit_videos: int | None) -> None:
    """Generate the shaped cache with `python -m extract shaped --reuse` (kept when up to date).

    `ground` does not import `extract`, so the generator runs as its own command.

    Raises:
        BenchError: the generator failed; the message carries its last error line.
    """
    command = [sys.executable, "-m", "extract", "shaped", "--variant", variant, "--out", str(path)]
    command += ["--seed", str(seed), "--reuse"]
    if limit_videos:
        command += ["--limit-videos", str(limit_videos)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BenchError(f"generating {path} failed (exit {done.returncode}): {last}")
    print(done.stdout.strip(), flush=True)


def shuffle_videos(split: SplitTensors, seed: int) -> SplitTensors:
    """The split with each video's features moved to another video of the same length.

    Windows, durations and timestamps stay, so a model still sees the real positions but no
    video content that matches its query. Videos are permuted within groups of equal length
    (QVHighlights: nearly all 75 clips); a video alone in its group keeps its features.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = split.video_lengths.cpu()
    order = torch.arange(len(lengths))
    for length in torch.unique(lengths):
        members = torch.nonzero(lengths == length).flatten()
        order[members] = members[torch.randperm(len(members), generator=gen)]
    return dataclasses.replace(split, video=split.video[order.to(split.video.device)])


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class GroundTruth:
    """One evaluated query's labels as the cache stores them (the real annotation).

    Attributes:
        windows: (M, 2) relevant windows in seconds.
        saliency: (int(duration / 2), A) annotator scores per 2-s clip, 0 outside the relevant
            clips, as the official evaluation reads them; None without saliency labels.
    """

    windows: np.ndarray
    saliency: np.ndarray | None


def read_ground_truth(cache: Path, split: str) -> dict[str, GroundTruth]:
    """Query id -> labels of every query of `split`, from the cache's query records."""
    out = {}
    with CacheReader(cache) as reader:
        for item in reader.queries(split):
            saliency = None
            if item.saliency is not None:
                labelled = int(reader.video_meta(item.vid).duration_sec / OFFICIAL_CLIP_SEC)
                saliency = np.nan_to_num(np.asarray(item.saliency, dtype=np.float64)[:labelled])
            out[item.qid] = GroundTruth(np.asarray(item.windows, dtype=np.float64).reshape(-1, 2), saliency)
    return out


@torch.no_grad()
def evaluate(
    module: GroundingModule, data: GroundingDataModule, labels: dict[str, GroundTruth], protocol: Protocol
) -> dict[str, float]:
    """Official metrics of `module` on the data module's validation split (the evaluation split).

    Args:
        module: the model; put in eval mode for the call and restored after.
        data: its data; `val_split` is scored, baselines estimate themselves on `train_split`.
        labels: `read_ground_truth` of the scored split.
        protocol: "qvhighlights" or "recall".

    Returns:
        Percentages: for "qvhighlights" the official keys `MR-full-R1@0.5`, `MR-full-R1@0.7`,
        `MR-full-mAP`, `HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}` (highlight keys only when the
        network predicts saliency) and `MR-full-mIoU`; for "recall" those of `retrieval_metrics`
        (R1/R5 at IoU 0.1/0.3/0.5/0.7, mIoU, mAP).
    """
    was_training = module.training
    module.eval()
    fit_statistics = getattr(module.net, "fit_statistics", None)
    if fit_statistics is not None:  # baselines estimate themselves from the training split
        fit_statistics(data.load(data.hparams.train_split))
    gts, windows, scores, saliency = [], [], [], []
    for batch in data.val_dataloader():
        batch = data.transfer_batch_to_device(batch, module.device, 0)
        preds = module.predict_batch(batch)
        for i, qid in enumerate(batch["qid"]):
            real = torch.isfinite(preds.scores[i])  # filler slots are scored -inf
            windows.append(preds.windows[i][real].double().cpu().numpy())  # (K, 2), best first
            scores.append(preds.scores[i][real].double().cpu().numpy())
            gts.append(labels[qid])
            if preds.saliency is not None:
                # One feature per 2-s clip on QVHighlights, so features are the official clips.
                n = int(batch["video_mask"][i].sum())
                saliency.append(preds.saliency[i, :n].double().cpu().numpy())
    if was_training:
        module.train()
    gt_windows = [gt.windows for gt in gts]
    generic = retrieval_metrics(windows, scores, gt_windows)
    if protocol == "recall":
        return generic
    moments = qvhighlights_moment_metrics(windows, scores, gt_windows, length_buckets=())
    out = {
        "MR-full-R1@0.5": moments["full"]["MR-R1"]["0.5"],
        "MR-full-R1@0.7": moments["full"]["MR-R1"]["0.7"],
        "MR-full-mAP": moments["full"]["MR-mAP"]["average"],
        "MR-full-mIoU": generic["MR-full-mIoU"],
    }
    if saliency:
        highlights = qvhighlights_highlight_metrics(saliency, [gt.saliency for gt in gts])
        for level, section in highlights.items():
            out[f"{level}-mAP"] = section["HL-mAP"]
            out[f"{level}-Hit1"] = section["HL-Hit1"]
    return out


@dataclass(frozen=True)
class ProbeResult:
    """Hit@1 (%) of the top-scored clip inside a ground-truth window, on the evaluation split."""

    probe: float
    """Linear probe reading the query."""
    shuffled: float
    """The same probe fitted and scored on videos shuffled across queries (text and positions only)."""
    video_only: float
    """The same probe with every query's text replaced by one constant vector (video only)."""
    chance: float
    """A random clip (mean fraction of a video's clips inside its windows)."""


def linear_probe(cache: Path, variant: BenchVariant, seed: int = 0, ridge: float = 10.0) -> ProbeResult:
    """Whether the query unlocks the video, checked in closed form (a minute of CPU, no training).

    A ridge regression W maps each clip feature v_t (centred per video) to the query's normalised
    pooled text p inside its windows and to 0 outside; a clip scores `(v_t W) . p`. Fitted on the
    training split, scored on the evaluation split, then again with videos shuffled across queries,
    and again with one constant vector for every query's text (what the video alone gives away).
    """
    with CacheReader(cache) as reader:
        video = next(iter(reader.video_encoders))
        text = next(iter(reader.text_encoders))
        train = reader.load_split(variant.train_split, [video], text)
        test = reader.load_split(variant.eval_split, [video], text)
    rng = np.random.default_rng(seed)

    def rows(a, order: np.ndarray | None, blind: bool = False):
        """Every (query, clip) pair as flat rows, so nothing is padded to the longest video."""
        lengths = a.video_lengths[a.video_index]  # (Q,) clips of each query's real video
        q = np.repeat(np.arange(len(lengths)), lengths)  # (N,) query of each row
        t = np.arange(len(q)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (N,) clip index
        vi = a.video_index if order is None else order[a.video_index]  # video whose features it sees
        means = a.video.sum(axis=1, dtype=np.float32) / a.video_lengths[:, None]  # (V, D), padding is 0
        x = a.video[vi[q], t].astype(np.float32) - means[vi[q]]  # (N, D)
        p = np.ones_like(a.pooled, dtype=np.float32) if blind else a.pooled.astype(np.float32)
        p /= np.linalg.norm(p, axis=1, keepdims=True)  # (Q, Dt)
        centre = a.timestamps_sec[a.video_index[q], t].mean(axis=1)  # (N,) in the real video
        real = np.arange(a.windows.shape[1])[None, :] < a.window_counts[q][:, None]  # (N, W)
        windows = a.windows[q]  # (N, W, 2)
        inside = (real & (centre[:, None] >= windows[:, :, 0]) & (centre[:, None] < windows[:, :, 1])).any(1)
        return q, t, x, p, inside

    def hit1(shuffle: bool, blind: bool = False) -> tuple[float, float]:
        q, _, x, p, inside = rows(train, rng.permutation(len(train.vids)) if shuffle else None, blind)
        y = inside[:, None] * p[q]  # (N, Dt): the query's text inside its windows, 0 outside
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1], dtype=np.float32), x.T @ y)
        q, t, x, p, inside = rows(test, rng.permutation(len(test.vids)) if shuffle else None, blind)
        scores = np.full((len(p), int(t.max()) + 1), -np.inf, dtype=np.float32)  # (Q, T)
        scores[q, t] = ((x @ w) * p[q]).sum(axis=1)
        hits = np.zeros(scores.shape, dtype=bool)
        hits[q, t] = inside
        top = scores.argmax(axis=1)
        chance = float(np.mean(np.bincount(q, weights=inside) / np.bincount(q)))
        return 100.0 * float(hits[np.arange(len(top)), top].mean()), 100.0 * chance

    probe, chance = hit1(shuffle=False)
    shuffled, _ = hit1(shuffle=True)
    video_only, _ = hit1(shuffle=False, blind=True)
    return ProbeResult(probe, shuffled, video_only, chance)


# ---------------------------------------------------------------------------------------------
# Training for a budget


class TrainingClock(Callback):
    """Stops training after `budget_sec` CPU seconds and evaluates at the given marks.

    The clock is the process's CPU time (`time.process_time`, all threads), so a budget buys the
    same work on a busy shared machine as on an idle one; wall time is recorded beside it. Time
    spent evaluating is excluded, so the marks are seconds of training.

    Args:
        budget_sec: training seconds before stopping (None: no time limit).
        marks_sec: training seconds after which to evaluate (each at the first batch past it).
        on_mark: called as `on_mark(train_sec, wall_sec, epochs, steps)` at each mark and at the end.
    """

    def __init__(
        self,
        budget_sec: float | None,
        marks_sec: Sequence[float],
        on_mark: Callable[[float, float, float, int], None],
    ) -> None:
        self.budget_sec, self.marks_sec, self.on_mark = budget_sec, sorted(marks_sec), on_mark
        self.start = self.excluded = self.start_wall = self.excluded_wall = 0.0
        self.next_mark = 0
        self.last_step = -1

    def train_sec(self) -> float:
        """CPU seconds of training so far."""
        return time.process_time() - self.start - self.excluded

    def wall_sec(self) -> float:
        """Wall seconds of training so far."""
        return time.perf_counter() - self.start_wall - self.excluded_wall

    def _mark(self, trainer: L.Trainer) -> None:
        t0, t0_wall = time.process_time(), time.perf_counter()
        epochs = trainer.global_step / max(1, trainer.num_training_batches)  # one optimizer step per batch
        self.on_mark(self.train_sec(), self.wall_sec(), epochs, trainer.global_step)
        self.last_step = trainer.global_step
        self.excluded += time.process_time() - t0
        self.excluded_wall += time.perf_counter() - t0_wall

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.start_wall = time.process_time(), time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = self.train_sec()
        if self.next_mark < len(self.marks_sec) and now >= self.marks_sec[self.next_mark]:
            while self.next_mark < len(self.marks_sec) and now >= self.marks_sec[self.next_mark]:
                self.next_mark += 1
            self._mark(trainer)
        if self.budget_sec is not None and now >= self.budget_sec:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_step:
            self._mark(trainer)


def _hparams(name: str, overrides: dict | None = None) -> dict:
    """`name`'s config (ground/configs/model/<name>.yaml) with `overrides` on top."""
    return (yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["hparams"] or {}) | (overrides or {})


def time_step_sec(name: str, data: GroundingDataModule, lr: float, steps: int = 10,
                  hparams: dict | None = None) -> float:
    """CPU seconds per training step of a throwaway copy of `name` (its config with `hparams` on top),
    to lay the schedule over the budget."""
    module = GroundingModule(
        name=name, hparams=_hparams(name, hparams), video_dim=data.video_dim, text_dim=data.text_dim, lr=lr
    )
    optimizer = adamw(module.net.parameters(), lr)
    if len(data.train_dataloader()) == 0:
        raise BenchError(f"{name}: the training split has no batch to time")

    def batches():  # epochs again and again: a small slice has fewer batches than steps + 1
        while True:
            yield from data.train_dataloader()

    loader = batches()
    timed = []
    for step in range(steps + 1):
        batch = next(loader)
        t0 = time.process_time()
        loss = module.net.loss(module.net(batch), batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step pays for allocations
            timed.append(time.process_time() - t0)
    return float(np.median(timed))


def train_and_track(
    name: str,
    data: GroundingDataModule,
    labels: dict[str, GroundTruth],
    protocol: Protocol,
    *,
    minutes: float | None,
    max_epochs: int,
    evals: int,
    lr: float,
    seed: int = 0,
    label: str | None = None,
    hparams: dict | None = None,
) -> list[EvalPoint]:
    """Train `name` as `python -m ground fit` does, for `minutes` of training or `max_epochs` epochs.

    The module's learning-rate schedule (warm-up then cosine) spans the steps a short timing run
    predicts for the budget (or `max_epochs` without a budget); training stops at whichever of
    the budget, that step count or `max_epochs` comes first.

    Args:
        minutes: training-time budget (None: train `max_epochs` epochs).
        evals: evaluations spread evenly over the budget (over the epochs without a budget); the
            last one is at the end of training.
        label: model name in the rows (default: `name`).
        hparams: overrides of `name`'s config (ground/configs/model/<name>.yaml), e.g. an ablation.

    Returns:
        One EvalPoint per evaluation, in training order.
    """
    L.seed_everything(seed, verbose=False)
    steps_per_epoch = len(data.train_dataloader())
    max_steps = max_epochs * steps_per_epoch
    if minutes is not None:
        step_sec = time_step_sec(name, data, lr, hparams=hparams)
        max_steps = min(max_steps, max(1, int(minutes * 60 / step_sec)))
    L.seed_everything(seed, verbose=False)
    module = GroundingModule(
        name=name, hparams=_hparams(name, hparams), video_dim=data.video_dim, text_dim=data.text_dim, lr=lr
    )
    points: list[EvalPoint] = []

    def on_mark(train_sec: float, wall_sec: float, epochs: float, steps: int) -> None:
        metrics = evaluate(module, data, labels, protocol)
        points.append(EvalPoint(label or name, True, train_sec, wall_sec, epochs, steps, metrics))
        shown = ", ".join(
            f"{k} {v:.1f}"
            for k, v in metrics.items()
            if k in ("MR-full-R1@0.5", "MR-full-mIoU", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1")
        )
        print(
            f"  {label or name}: {train_sec / 60:.1f} CPU min ({wall_sec / 60:.1f} wall), "
            f"{epochs:.2f} epochs, {steps} steps: {shown}",
            flush=True,
        )

    if minutes is not None:
        marks = [minutes * 60 * (i + 1) / evals for i in range(evals - 1)]
        clock = TrainingClock(minutes * 60, marks, on_mark)
    else:
        clock = TrainingClock(None, [], on_mark)
    callbacks: list[Callback] = [clock]
    if minutes is None and evals > 1:
        callbacks.append(_EpochMarks(max_epochs, evals, clock))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        accelerator="auto",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    return points


class _EpochMarks(Callback):
    """Without a time budget, evaluate after evenly spaced epochs (the clock takes the last one)."""

    def __init__(self, max_epochs: int, evals: int, clock: TrainingClock) -> None:
        self.epochs = {max(1, round(max_epochs * (i + 1) / evals)) for i in range(evals - 1)} - {max_epochs}
        self.clock = clock

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 in self.epochs:
            self.clock._mark(trainer)


def evaluate_baseline(
    name: str, data: GroundingDataModule, labels: dict[str, GroundTruth], protocol: Protocol
) -> EvalPoint:
    """Evaluate a baseline (no training) as `python -m ground test` builds it."""
    module = GroundingModule(
        name=name, hparams=_hparams(name), video_dim=data.video_dim, text_dim=data.text_dim
    )
    return EvalPoint(name, False, 0.0, 0.0, 0.0, 0, evaluate(module, data, labels, protocol))


# ---------------------------------------------------------------------------------------------
# Reporting


def table(points: Sequence[EvalPoint], columns: Sequence[str], header: str) -> str:
    """Markdown table, one row per evaluation: model, training CPU and wall minutes, epochs, the columns.

    A highlight (HL-) column of a model without saliency output reads `no saliency`; any other
    missing value reads `-`.
    """
    lines = [
        header,
        "",
        "| model | train CPU min | wall min | epochs | " + " | ".join(columns) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(columns),
    ]
    for p in points:
        kind = "" if p.trainable else " (baseline)"
        when = (
            (f"{p.train_sec / 60:.1f}", f"{p.wall_sec / 60:.1f}", f"{p.epochs:.2f}")
            if p.trainable
            else ("-", "-", "-")
        )
        cells = [_cell(p.metrics, c) for c in columns]
        lines.append(f"| {p.model}{kind} | " + " | ".join([*when, *cells]) + " |")
    return "\n".join(lines)


def _cell(metrics: dict[str, float], column: str) -> str:
    if column in metrics:
        return f"{metrics[column]:.1f}"
    # `evaluate` scores highlights for every network that predicts saliency, so a missing HL key
    # on the QVHighlights protocol means the network has no saliency output.
    if column.startswith("HL-") and not any(k.startswith("HL-") for k in metrics):
        return NO_SALIENCY
    return "-"


def plot(points: Sequence[EvalPoint], metric: str, path: Path, title: str) -> None:
    """Line per trained model of `metric` against training minutes; baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    trained = [p for p in points if p.trainable]
    end_min = max([p.train_sec / 60 for p in trained] or [1.0])
    for model in dict.fromkeys(p.model for p in trained):
        mine = [p for p in trained if p.model == model]
        ax.plot([p.train_sec / 60 for p in mine], [p.metrics[metric] for p in mine], marker="o", label=model)
    for p in points:
        if not p.trainable:
            ax.hlines(p.metrics[metric], 0, end_min, linestyles="dashed", colors="grey")
            ax.annotate(p.model, (end_min, p.metrics[metric]), fontsize=8, color="grey")
    ax.set_xlabel("training CPU minutes")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ground.bench_accuracy", description=__doc__)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="qvhighlights")
    parser.add_argument(
        "--models", nargs="*", default=None, help="default: every trainable model + baselines"
    )
    parser.add_argument(
        "--controls", nargs="*", default=["span"], help="models also trained on shuffled videos"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="training CPU minutes per model")
    parser.add_argument("--max-epochs", type=int, default=100, help="stop earlier when these are done")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per trained model")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--lr", type=float, default=3e-4, help="GroundingModule's default")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated features and of training")
    parser.add_argument("--limit-videos", type=int, default=None, help="first N videos of each split")
    parser.add_argument("--no-write", action="store_true", help="print the table, write no docs")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="only the closed-form linear-probe check of the cache, no training",
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the stored rows of other models (same settings)"
    )
    parser.add_argument(
        "--hparams", type=json.loads, default=None, metavar="JSON",
        help='overrides of every trained model\'s config, e.g. \'{"pooling": "mean"}\' (an ablation)',
    )
    args = parser.parse_args(argv)
    if args.hparams is not None and not isinstance(args.hparams, dict):
        parser.error(f"--hparams must be a JSON object, got {args.hparams!r}")
    unknown = [m for m in [*(args.models or []), *args.controls] if m not in list_models()]
    if unknown:
        print(f"error: unknown models {unknown}; available: {', '.join(list_models())}", file=sys.stderr)
        return 2
    variant = VARIANTS[args.variant]
    cache = cache_path(args.variant, args.seed, args.limit_videos)
    try:
        ensure_cache(args.variant, cache, args.seed, args.limit_videos)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.probe:
        result = linear_probe(cache, variant, args.seed)
        print(
            f"{cache.relative_to(REPO)}, {variant.eval_split}: Hit@1 of the top clip, linear probe "
            f"{result.probe:.1f}, same probe on shuffled videos {result.shuffled:.1f}, "
            f"without the query (video only) {result.video_only:.1f}, random clip {result.chance:.1f}"
        )
        return 0
    torch.set_num_threads(args.threads)
    names = args.models if args.models is not None else [*trainable_models(), *BASELINES]
    data = GroundingDataModule(
        str(cache),
        train_split=variant.train_split,
        val_split=variant.eval_split,
        test_split=variant.eval_split,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if "zeroshot" in names and data.video_dim != data.text_dim:
        print(
            f"error: zeroshot needs one joint video/text space; {cache} has video dim {data.video_dim} "
            f"and text dim {data.text_dim} by design (docs/accuracy_benchmark.md)",
            file=sys.stderr,
        )
        return 2
    labels = read_ground_truth(cache, variant.eval_split)
    points: list[EvalPoint] = []
    for name in names:
        print(f"== {name}", flush=True)
        if name in trainable_models():
            points += train_and_track(
                name, data, labels, variant.protocol, minutes=args.minutes, max_epochs=args.max_epochs,
                evals=args.evals, lr=args.lr, seed=args.seed, hparams=args.hparams,
            )  # fmt: skip
        else:
            points.append(evaluate_baseline(name, data, labels, variant.protocol))
            print(json.dumps(points[-1].metrics), flush=True)
    for name in args.controls:
        print(f"== {name}{SHUFFLED}", flush=True)
        shuffled = GroundingDataModule(**data.hparams)
        for split in (variant.train_split, variant.eval_split):
            shuffled.splits[split] = shuffle_videos(data.load(split), args.seed)
        points += train_and_track(
            name, shuffled, labels, variant.protocol, minutes=args.minutes, max_epochs=args.max_epochs,
            evals=args.evals, lr=args.lr, seed=args.seed, label=name + SHUFFLED, hparams=args.hparams,
        )  # fmt: skip

    with CacheReader(cache) as reader:
        counts = reader.splits()
    settings = (
        f"`{args.variant}`-shaped cache `{cache.relative_to(REPO)}` ({counts[variant.train_split]} training, "
        f"{counts[variant.eval_split]} {variant.eval_split} queries), {platform.machine()} CPU, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, {args.minutes:g} training CPU "
        f"minutes per model, lr {args.lr:g}, batch {args.batch_size}"
        + (f", config overrides {json.dumps(args.hparams)}" if args.hparams else "")
    )
    command = "python -m ground.bench_accuracy " + " ".join(sys.argv[1:] if argv is None else argv)
    store = REPO / "runs" / "bench_accuracy" / f"{args.variant}.json"
    if args.no_write:
        print(table(points, variant.columns, settings))
        return 0
    try:
        points, commands = record_points(store, settings, command, points, append=args.append)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    header = f"{settings}. Produced by " + ", ".join(f"`{c}`" for c in commands) + "; do not edit by hand."
    text = table(points, variant.columns, header)
    print(text)
    begin, end = (
        f"<!-- bench-accuracy:{args.variant}:begin -->",
        f"<!-- bench-accuracy:{args.variant}:end -->",
    )
    write_between_markers(REPO / "docs" / "benchmarks.md", text, begin=begin, end=end)
    plot(
        points,
        variant.columns[0],
        REPO / "docs" / f"bench_accuracy_{args.variant}.png",
        settings.split(" (")[0],
    )
    return 0


def record_points(
    store: Path, settings: str, command: str, points: list[EvalPoint], *, append: bool
) -> tuple[list[EvalPoint], list[str]]:
    """Save `points` in `store` and return every point to report, with the commands that made them.

    Without `append` the store is replaced. With it, the stored points of models not in `points`
    are kept, so models can be measured by separate commands (in parallel on a shared machine);
    the store is locked while it is read and rewritten.

    Raises:
        BenchError: `append` to a store measured with other settings (cache, budget, machine, lr).
    """
    store.parent.mkdir(parents=True, exist_ok=True)
    with store.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        commands = [command]
        if append and store.exists():
            old = json.loads(store.read_text())
            if old["settings"] != settings:
                raise BenchError(
                    f"{store} holds points measured with other settings ({old['settings']}); "
                    "run without --append to replace them"
                )
            ours = {p.model for p in points}
            kept = [EvalPoint(**p) for p in old["points"] if p["model"] not in ours]
            points = sorted(kept + points, key=lambda p: not p.trainable)  # baselines last
            commands = [*old["commands"], command]
        record = {
            "settings": settings,
            "commands": commands,
            "points": [dataclasses.asdict(p) for p in points],
        }
        tmp = store.with_name(store.name + ".partial")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, store)
    return points, commands


if __name__ == "__main__":
    raise SystemExit(main())
