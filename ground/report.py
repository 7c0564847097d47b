"""`python -m ground report`: plots, baselines and a metrics table for one checkpoint on one split.

    python -m ground report --ckpt best.ckpt --data ground/configs/data/charades_sta.yaml --split test \
        --out report/
    python -m ground report --ckpt best.ckpt --cache data/synthetic/cache.h5 --split val --out report/

Writes into DIR: one PNG per analysis (`FIGURES`), `index.html` embedding them with a caption
each and the metrics table, and `metrics.json` (the model's metrics, the baselines', and what was
skipped and why). Metrics are `ground.metrics.retrieval_metrics` on the decoded top-k windows,
the numbers `python -m ground test` reports. Baselines (`random`, `centered`, `prior`, and
`zeroshot` when the video and text features share one space) run through `GroundingModule`
like the model, with their statistics taken from the data config's train split.

Cross-attention maps are captured with hooks on the network's `nn.MultiheadAttention` calls
whose keys are not their queries (cross- rather than self-attention): a pre-hook asks that call
for its head-averaged weights, a forward hook keeps them. A network without such calls gets a
note instead of the figure.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import math
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure
from torch import Tensor, nn

from ground.data import GroundingDataModule, SplitTensors
from ground.errors import GroundingInputError, check_trained_encoders
from ground.export import load_module
from ground.metrics import parse_length_buckets, retrieval_metrics, temporal_iou
from ground.module import GroundingModule

BASELINES = ("random", "centered", "prior", "zeroshot")
# Baselines that only make sense for some caches: a reason to skip them, or None to run.
BASELINE_REQUIREMENTS: dict[str, Callable[[GroundingDataModule], str | None]] = {
    "zeroshot": lambda data: (
        None
        if data.video_dim == data.text_dim
        else "needs video and text features of one joint space "
        f"(video dim {data.video_dim}, text dim {data.text_dim})"
    ),
}
TABLE_METRICS = (
    "MR-full-R1@0.3",
    "MR-full-R1@0.5",
    "MR-full-R1@0.7",
    "MR-full-R5@0.5",
    "MR-full-R5@0.7",
    "MR-full-mIoU",
    "MR-full-mAP",
)
FIGURES = (
    "dataset_statistics.png",
    "iou_histogram.png",
    "recall_vs_iou.png",
    "boundary_errors.png",
    "duration_scatter.png",
    "examples_best.png",
    "examples_worst.png",
    "cross_attention.png",
    "baselines.png",
)
IOU_GRID = np.linspace(0.0, 1.0, 101)  # thresholds of the recall curve


@dataclass(frozen=True)
class QueryResult:
    """One query's ground truth and decoded prediction."""

    qid: str
    vid: str
    text: str
    duration_sec: float
    gt_windows: np.ndarray  # (M, 2) seconds; M = 0 for an unlabelled query
    pred_windows: np.ndarray  # (K, 2) seconds, real predictions only, best first
    pred_scores: np.ndarray  # (K,)
    timestamps: np.ndarray  # (T, 2) seconds of the real clips
    saliency: np.ndarray | None  # (T,) or None without a saliency head

    @property
    def ious(self) -> np.ndarray:
        """(K,) IoU of each predicted window with its best-matching ground-truth window."""
        return temporal_iou(self.pred_windows, self.gt_windows).max(axis=1)

    @property
    def matched_gt(self) -> np.ndarray:
        """(2,) the ground-truth window the top-1 prediction overlaps most (the first on ties)."""
        return self.gt_windows[int(np.argmax(temporal_iou(self.pred_windows[:1], self.gt_windows)[0]))]


# ---------------------------------------------------------------------------------------------
# Running models


def predict_split(module: GroundingModule, split: SplitTensors, batch_size: int) -> list[QueryResult]:
    """Decode every query of `split` with `module.predict_batch` (sliding windows included)."""
    module.eval()
    results = []
    with torch.no_grad():
        for lo in range(0, len(split), batch_size):
            idx = torch.arange(lo, min(lo + batch_size, len(split)))
            batch = split.gather(idx)
            preds = module.predict_batch(batch)
            for i, q in enumerate(idx.tolist()):
                n = int(batch["video_mask"][i].sum())
                real = preds.window_mask[i]
                saliency = None if preds.saliency is None else preds.saliency[i, :n].float().cpu().numpy()
                results.append(
                    QueryResult(
                        qid=batch["qid"][i],
                        vid=batch["vid"][i],
                        text=split.texts[q],
                        duration_sec=float(batch["duration"][i]),
                        gt_windows=batch["gt_windows"][i][batch["window_mask"][i]].cpu().numpy(),
                        pred_windows=preds.windows[i][real].double().cpu().numpy(),
                        pred_scores=preds.scores[i][real].double().cpu().numpy(),
                        timestamps=batch["timestamps"][i, :n].double().cpu().numpy(),
                        saliency=saliency,
                    )
                )
    return results


def score(results: Sequence[QueryResult], length_buckets: str | None = None) -> dict[str, float]:
    """`retrieval_metrics` over the labelled queries of `results`."""
    labelled = [r for r in results if len(r.gt_windows)]
    return retrieval_metrics(
        [r.pred_windows for r in labelled],
        [r.pred_scores for r in labelled],
        [r.gt_windows for r in labelled],
        length_buckets=parse_length_buckets(length_buckets) if length_buckets else (),
    )


def run_baselines(
    names: Sequence[str],
    data: GroundingDataModule,
    split: SplitTensors,
    model: GroundingModule,
    batch_size: int,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Metrics of each baseline on `split`, and the reason for each one skipped.

    Each baseline is a `GroundingModule` with the model's top_k and sliding-window settings;
    baselines with training statistics get the data config's train split, as `test` does.
    """
    metrics, skipped = {}, {}
    for name in names:
        requirement = BASELINE_REQUIREMENTS.get(name)
        reason = requirement(data) if requirement else None
        if reason:
            skipped[name] = reason
            continue
        baseline = GroundingModule(
            name=name,
            video_dim=data.video_dim,
            text_dim=data.text_dim,
            top_k=model.hparams.top_k,
            eval_max_clips=model.hparams.eval_max_clips,
        )
        fit_statistics = getattr(baseline.net, "fit_statistics", None)
        if fit_statistics is not None:
            fit_statistics(data.load(data.hparams.train_split))
        metrics[name] = score(predict_split(baseline, split, batch_size), model.hparams.length_buckets)
    return metrics, skipped


@contextlib.contextmanager
def capture_cross_attention(net: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the head-averaged weights of every cross-attention call while the block runs.

    Yields a list that fills, in call order, with one (B, N, M) tensor per `nn.MultiheadAttention`
    call whose key is not its query (N queries attending over M keys; padded keys get weight 0).
    The calls are asked for their weights through a forward pre-hook, so the network's code is
    unchanged; the attention output is the same math (torch's non-fused path).
    """
    captured: list[Tensor] = []
    pending: list[bool] = []  # per call in flight: is it cross-attention?

    def before(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        cross = key is not query
        pending.append(cross)
        if not cross:
            return args, kwargs
        # need_weights / attn_mask / average_attn_weights given by position move to keywords.
        positional = dict(zip(("need_weights", "attn_mask", "average_attn_weights"), args[4:7], strict=False))
        return args[:4], {**positional, **kwargs, "need_weights": True, "average_attn_weights": True}

    def after(module: nn.Module, args: tuple, output: tuple[Tensor, Tensor | None]) -> None:
        if pending.pop():
            captured.append(output[1].detach())

    handles = []
    for module in net.modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot state, no display backend)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=100)


def plot_dataset_statistics(split: SplitTensors, name: str, path: Path) -> str:
    video_index = split.video_index.cpu().numpy()
    videos = np.unique(video_index)
    duration_sec = split.duration.cpu().numpy()
    counts = split.window_counts.cpu().numpy()
    real = np.arange(split.windows.shape[1])[None, :] < counts[:, None]  # (Q, W)
    windows = split.windows.cpu().numpy()
    lengths_sec = (windows[..., 1] - windows[..., 0])[real]
    window_duration = np.broadcast_to(duration_sec[video_index][:, None], real.shape)[real]
    centres = windows.mean(axis=-1)[real] / window_duration
    per_video = np.bincount(video_index, weights=counts, minlength=len(duration_sec))[videos].astype(int)
    tokens = split.token_lengths.cpu().numpy()

    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    panels = [
        (duration_sec[videos], "video duration (s)", f"{len(videos)} videos", 30),
        (lengths_sec, "ground-truth window length (s)", f"{len(lengths_sec)} windows", 30),
        (
            tokens,
            "query length (text-encoder tokens)",
            f"{len(tokens)} queries",
            np.arange(tokens.max() + 2) - 0.5,
        ),
        (per_video, "ground-truth windows per video", "videos", np.arange(per_video.max() + 2) - 0.5),
        (
            lengths_sec / window_duration,
            "coverage = window length / duration",
            "windows",
            np.linspace(0, 1, 21),
        ),
        (centres, "window centre / duration", "windows", np.linspace(0, 1, 21)),
    ]
    for ax, (values, xlabel, ylabel, bins) in zip(axes, panels, strict=True):
        ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"mean {np.mean(values):.2f}, median {np.median(values):.2f}", fontsize=9)
    fig.suptitle(f"split {name!r}: dataset statistics")
    _save(fig, path)
    return (
        "Dataset statistics of the split: video durations, ground-truth window lengths, query lengths in "
        "text-encoder tokens, windows per video, coverage (window length / video duration; high coverage "
        "makes chance overlap easy) and where windows sit in their videos (a peak is a bias a prior baseline "
        "exploits)."
    )


def plot_iou_histogram(ious: np.ndarray, path: Path) -> str:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.hist(ious, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    for value, label, style in ((np.mean(ious), "mean", "-"), (np.median(ious), "median", "--")):
        ax.axvline(value, color="black", linestyle=style, label=f"{label} {value:.3f}")
    ax.set_xlabel("IoU of the top-1 prediction with its best ground-truth window")
    ax.set_ylabel("queries")
    ax.legend()
    _save(fig, path)
    return (
        f"IoU of each query's top-1 window with its best-matching ground-truth window ({len(ious)} queries; "
        f"mean {np.mean(ious):.3f}, median {np.median(ious):.3f}, std {np.std(ious):.3f})."
    )


def recall_curve(results: Sequence[QueryResult], k: int) -> np.ndarray:
    """(len(IOU_GRID),) fraction of queries whose top-k windows reach each IoU threshold."""
    best = np.array([r.ious[:k].max() for r in results])  # (Q,)
    return (best[None, :] >= IOU_GRID[:, None] - 1e-12).mean(axis=1)


def plot_recall_vs_iou(results: Sequence[QueryResult], path: Path) -> str:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for k in (1, 5):
        ax.plot(IOU_GRID, 100 * recall_curve(results, k), label=f"R@{k}")
    for t in (0.3, 0.5, 0.7):
        ax.axvline(t, color="grey", linewidth=0.5)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("recall (%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.legend()
    _save(fig, path)
    return (
        "Recall against the IoU threshold: R@1 (top-1 window reaches the threshold) and R@5 (any of the "
        "top-5 does), for thresholds 0 to 1. The usual R@k at 0.3 / 0.5 / 0.7 are read off the grey lines."
    )


def plot_boundary_errors(results: Sequence[QueryResult], path: Path) -> str:
    matched = np.stack([r.matched_gt for r in results])  # (Q, 2)
    top1 = np.stack([r.pred_windows[0] for r in results])  # (Q, 2)
    errors = top1 - matched  # (Q, 2) seconds, positive = later than the ground truth
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    for ax, column, label in zip(fig.subplots(1, 2), (0, 1), ("start", "end"), strict=True):
        e = errors[:, column]
        ax.hist(e, bins=30, color="tab:orange", edgecolor="white")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"predicted {label} - true {label} (s)")
        ax.set_ylabel("queries")
        ax.set_title(f"mean {e.mean():+.2f} s, mean |error| {np.abs(e).mean():.2f} s", fontsize=9)
    _save(fig, path)
    return (
        "Signed boundary errors of the top-1 window against the ground-truth window it overlaps most, in "
        "seconds (positive: later than the truth). A shifted peak is a systematic bias, the spread the "
        "precision."
    )


def plot_duration_scatter(results: Sequence[QueryResult], ious: np.ndarray, path: Path) -> str:
    matched = np.stack([r.matched_gt for r in results])
    top1 = np.stack([r.pred_windows[0] for r in results])
    true_sec, pred_sec = matched[:, 1] - matched[:, 0], top1[:, 1] - top1[:, 0]
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    points = ax.scatter(true_sec, pred_sec, c=ious, cmap="viridis", vmin=0, vmax=1, s=18)
    top = max(true_sec.max(), pred_sec.max()) * 1.05
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("true window length (s)")
    ax.set_ylabel("predicted top-1 window length (s)")
    fig.colorbar(points, ax=ax, label="top-1 IoU")
    _save(fig, path)
    return (
        "Predicted (top-1) against true window length, coloured by IoU: points on the diagonal have the "
        "right length whatever their position; a flat cloud means the model predicts one length for all."
    )


def _timeline(ax, r: QueryResult, iou: float, k: int) -> None:
    levels = min(k, len(r.pred_windows))
    for m, (s, e) in enumerate(r.gt_windows):
        ax.broken_barh(
            [(s, e - s)], (levels + 0.1, 0.8), color="tab:green", label="ground truth" if m == 0 else None
        )
    for rank in range(levels):
        s, e = r.pred_windows[rank]
        y = levels - 1 - rank
        ax.broken_barh(
            [(s, e - s)], (y + 0.1, 0.8), color="tab:blue", alpha=1.0 - 0.6 * rank / max(1, levels)
        )
        ax.text(e, y + 0.5, f" #{rank + 1} IoU {r.ious[rank]:.2f}", va="center", fontsize=7)
    if r.saliency is not None and np.isfinite(r.saliency).any():
        sal = r.saliency.copy()
        finite = np.isfinite(sal)
        low, high = sal[finite].min(), sal[finite].max()
        scaled = (sal - low) / (high - low) if high > low else np.full_like(sal, 0.5)
        ax.plot(
            r.timestamps.mean(axis=1), scaled * (levels + 0.9), color="grey", linewidth=0.8, label="saliency"
        )
    ax.set_xlim(0, r.duration_sec)
    ax.set_ylim(0, levels + 1)
    ax.set_yticks(
        [levels + 0.5, *(levels - 0.5 - np.arange(levels))], ["GT", *(f"#{i + 1}" for i in range(levels))]
    )
    title = f"{r.qid} ({r.vid}, {r.duration_sec:.1f} s), top-1 IoU {iou:.2f}: {r.text}"
    ax.set_title(textwrap.shorten(title, 140), fontsize=8, loc="left")


def plot_examples(
    results: Sequence[QueryResult], ious: np.ndarray, order: np.ndarray, k: int, label: str, path: Path
) -> str:
    fig = Figure(figsize=(12, 0.6 * (k + 1) * len(order) + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(order), 1))
    for ax, i in zip(axes, order, strict=True):
        _timeline(ax, results[i], ious[i], k)
    axes[-1].set_xlabel("time (s)")
    axes[0].legend(loc="upper right", fontsize=7)
    _save(fig, path)
    return (
        f"The {len(order)} {label} queries by top-1 IoU: ground-truth windows (green) and the top-{k} "
        "predicted windows (blue, best on top) over the video's time axis, with the model's per-clip "
        "saliency (grey) when it has one."
    )


def plot_cross_attention(maps: list[Tensor], batch: dict, results: Sequence[QueryResult], path: Path) -> str:
    rows, cols = len(batch["qid"]), len(maps)
    fig = Figure(figsize=(3.2 * cols + 1, 3.0 * rows + 0.5), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for b in range(rows):
        n_clips = int(batch["video_mask"][b].sum())
        n_tokens = int(batch["text_mask"][b].sum())
        ts = batch["timestamps"][b, :n_clips].double().numpy()
        centres = ts.mean(axis=1)
        # Cell edges halfway between clip centres, so uneven strides are drawn at their real times.
        edges = np.concatenate([[ts[0, 0]], (centres[1:] + centres[:-1]) / 2, [ts[-1, 1]]])
        for layer, weights in enumerate(maps):
            ax = axes[b, layer]
            w = weights[b, :n_clips, :n_tokens].float().numpy()  # (T, L)
            mesh = ax.pcolormesh(np.arange(n_tokens + 1) - 0.5, edges, w, cmap="magma", shading="flat")
            for s, e in results[b].gt_windows:
                ax.axhline(s, color="tab:green", linestyle="--", linewidth=1)
                ax.axhline(e, color="tab:green", linestyle="--", linewidth=1)
            ax.set_ylim(edges[-1], edges[0])
            ax.set_xlabel("query token")
            if layer == 0:
                ax.set_ylabel(textwrap.shorten(f"{batch['qid'][b]}: time (s)", 40))
            ax.set_title(f"cross-attention call {layer + 1}", fontsize=8)
            fig.colorbar(mesh, ax=ax)
        axes[b, 0].annotate(
            textwrap.shorten(results[b].text, 60), (0, 1.12), xycoords="axes fraction", fontsize=8
        )
    _save(fig, path)
    return (
        "Cross-attention of video clips (rows, in seconds) over query tokens (columns), averaged over "
        "heads, for each cross-attention call of the network in order (one per layer), for queries from "
        "the best, middle and worst of the IoU ranking. Dashed green lines: ground-truth window."
    )


def plot_baselines(rows: dict[str, dict[str, float]], path: Path) -> str:
    shown = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-R5@0.5", "MR-full-mIoU")
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for j, (name, metrics) in enumerate(rows.items()):
        ax.bar(np.arange(len(shown)) + j * width, [metrics[m] for m in shown], width, label=name)
    ax.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, [m.removeprefix("MR-full-") for m in shown])
    ax.set_ylabel("%")
    ax.legend()
    _save(fig, path)
    return "The model beside the baselines on the main metrics (percent); the full table is below."


# ---------------------------------------------------------------------------------------------
# The report


def _check_compatible(module: GroundingModule, data: GroundingDataModule, ckpt: Path) -> None:
    """Raise EncoderMismatchError (both encoder sets with dims) unless `data` holds the trained features."""
    hp = module.hparams
    trained_dims = (hp.video_dim, hp.text_dim)
    check_trained_encoders(ckpt, module.encoder_record, trained_dims, data.cache, data.encoder_record())


def _spread(n: int, count: int) -> list[int]:
    """`count` evenly spaced positions in range(n), first and last included."""
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(count, n))})


def _json_ready(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def build_report(
    module: GroundingModule,
    data: GroundingDataModule,
    split_name: str,
    out_dir: str | Path,
    *,
    ckpt: str | Path = "(in memory)",
    baselines: Sequence[str] = BASELINES,
    examples: int = 4,
    attention_samples: int = 3,
    timeline_k: int = 3,
    batch_size: int = 32,
) -> dict:
    """Write the figures, `index.html` and `metrics.json` into `out_dir`; returns the metrics record.

    Args:
        module: the trained model.
        data: the data module whose cache holds `split_name` (and the train split, for baselines).
        split_name: split to report on.
        out_dir: output directory (created).
        ckpt: checkpoint path, shown on the page.
        baselines: baseline names to run beside the model.
        examples: queries in each of the best and worst example figures.
        attention_samples: queries in the cross-attention figure.
        timeline_k: predicted windows drawn per example.
        batch_size: queries per forward pass.

    Raises:
        ValueError: when the checkpoint does not fit the cache, or the split has no labelled query.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(ckpt)
    _check_compatible(module, data, ckpt)
    split = data.load(split_name)
    results_all = predict_split(module, split, batch_size)
    results = [r for r in results_all if len(r.gt_windows)]
    unlabelled = [r.qid for r in results_all if not len(r.gt_windows)]
    if not results:
        raise GroundingInputError(
            f"{data.cache}: split {split_name!r} has no query with a ground-truth window to report on"
        )
    ious = np.array([r.ious[0] for r in results])  # (Q,)
    order = np.argsort(-ious, kind="stable")  # best first, ties in split order
    model_metrics = score(results, module.hparams.length_buckets)
    baseline_metrics, skipped = run_baselines(baselines, data, split, module, batch_size)
    notes = [f"baseline {name!r} skipped: {reason}" for name, reason in skipped.items()]
    if unlabelled:
        notes.append(
            f"{len(unlabelled)} queries have no ground-truth window and are not scored "
            f"(e.g. {unlabelled[:5]})"
        )

    captions: dict[str, str] = {}
    captions["dataset_statistics.png"] = plot_dataset_statistics(
        split, split_name, out / "dataset_statistics.png"
    )
    captions["iou_histogram.png"] = plot_iou_histogram(ious, out / "iou_histogram.png")
    captions["recall_vs_iou.png"] = plot_recall_vs_iou(results, out / "recall_vs_iou.png")
    captions["boundary_errors.png"] = plot_boundary_errors(results, out / "boundary_errors.png")
    captions["duration_scatter.png"] = plot_duration_scatter(results, ious, out / "duration_scatter.png")
    n_examples = min(examples, len(results))
    captions["examples_best.png"] = plot_examples(
        results, ious, order[:n_examples], timeline_k, "best", out / "examples_best.png"
    )
    captions["examples_worst.png"] = plot_examples(
        results, ious, order[::-1][:n_examples], timeline_k, "worst", out / "examples_worst.png"
    )
    # Attention for queries spread over the IoU ranking: best, middle, worst.
    picked = [int(order[p]) for p in _spread(len(order), attention_samples)]
    position = {r.qid: q for q, r in enumerate(results_all)}
    batch = split.gather(torch.tensor([position[results[i].qid] for i in picked]))
    module.net.eval()
    with torch.no_grad(), capture_cross_attention(module.net) as maps:
        module.net(module.video_input(batch))
    if maps:
        captions["cross_attention.png"] = plot_cross_attention(
            maps, batch, [results[i] for i in picked], out / "cross_attention.png"
        )
    else:
        notes.append(
            f"no cross-attention figure: model {module.hparams.name!r} makes no nn.MultiheadAttention call "
            "from clips to query tokens"
        )
    table = {
        f"{module.hparams.name} (model)": model_metrics,
        **{f"{n} (baseline)": m for n, m in baseline_metrics.items()},
    }
    captions["baselines.png"] = plot_baselines(table, out / "baselines.png")

    record = {
        "checkpoint": str(ckpt),
        "cache": str(data.cache),
        "split": split_name,
        "num_queries": len(results),
        "unlabelled_queries": len(unlabelled),
        "model": {"name": module.hparams.name, "metrics": _json_ready(model_metrics)},
        "baselines": {name: _json_ready(m) for name, m in baseline_metrics.items()},
        "skipped": skipped,
        "top1_iou": {"mean": float(ious.mean()), "median": float(np.median(ious)), "std": float(ious.std())},
        "figures": captions,
        "notes": notes,
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "index.html").write_text(_html(record, table))
    return record


def _html(record: dict, table: dict[str, dict[str, float]]) -> str:
    e = html.escape
    header = "".join(f"<th>{e(m.removeprefix('MR-full-'))}</th>" for m in TABLE_METRICS)
    rows = "".join(
        f"<tr><td>{e(name)}</td>" + "".join(f"<td>{metrics[m]:.2f}</td>" for m in TABLE_METRICS) + "</tr>"
        for name, metrics in table.items()
    )
    figures = "".join(
        f'<figure><img src="{e(file)}" alt="{e(file)}"><figcaption>{e(caption)}</figcaption></figure>'
        for file, caption in record["figures"].items()
    )
    notes = "".join(f"<li>{e(note)}</li>" for note in record["notes"]) or "<li>none</li>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>groundcache report: {e(record["model"]["name"])}</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 2em auto; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child {{ text-align: left; }} img {{ max-width: 100%; }} figure {{ margin: 2em 0; }}
figcaption {{ color: #333; font-size: 0.9em; }}
</style></head><body>
<h1>{e(record["model"]["name"])} on split {e(record["split"])}</h1>
<p>checkpoint <code>{e(record["checkpoint"])}</code>, cache <code>{e(record["cache"])}</code>,
{record["num_queries"]} labelled queries.
Metrics in percent (retrieval_metrics, as <code>python -m ground test</code>).</p>
<table><tr><th>model</th>{header}</tr>{rows}</table>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Figures</h2>{figures}
</body></html>
"""


def load_data(
    data_config: str | Path | None,
    cache: str | Path | None,
    batch_size: int,
    block_inputs: str | None = None,
) -> GroundingDataModule:
    """A data module from a data YAML, a cache path, or both (cache wins).

    ``block_inputs`` (the encoder a checkpoint's visual adapter adapts) makes batches carry that
    encoder's block inputs.

    The YAML is a full config whose `data` section holds GroundingDataModule arguments
    (ground/configs/data/*.yaml), or those arguments alone.

    Raises:
        GroundingInputError: (a ValueError) naming the file when the YAML is not a mapping of known
            arguments.
    """
    config: dict = {}
    if data_config is not None:
        loaded = yaml.safe_load(Path(data_config).read_text())
        if isinstance(loaded, dict) and isinstance(loaded.get("data"), dict):  # a full config's data section
            loaded = loaded["data"]
        if isinstance(loaded, dict) and "init_args" in loaded:  # LightningCLI's class_path form
            loaded = loaded["init_args"]
        if not isinstance(loaded, dict):
            raise GroundingInputError(f"{data_config}: expected a mapping of GroundingDataModule arguments")
        config = dict(loaded)
    if cache is not None:
        config["cache"] = str(cache)
    if "cache" not in config:
        raise GroundingInputError("give --cache, or --data with a `cache:` entry")
    config["eval_batch_size"] = batch_size
    if block_inputs is not None:
        config["block_inputs"] = block_inputs
    try:
        return GroundingDataModule(**config)
    except TypeError as err:
        raise GroundingInputError(f"{data_config}: {err}") from err


def report_main(argv: list[str] | None = None) -> int:
    """`python -m ground report`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ground report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="GroundingModule checkpoint (.ckpt)")
    parser.add_argument("--data", type=Path, default=None, help="data YAML (ground/configs/data/*.yaml)")
    parser.add_argument("--cache", type=Path, default=None, help="cache path (overrides the YAML's)")
    parser.add_argument("--split", default="val", help="split to report on (default val)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--baselines", default=",".join(BASELINES), help="comma-separated baselines ('' for none)"
    )
    parser.add_argument("--examples", type=int, default=4, help="queries in each best/worst figure")
    parser.add_argument("--attention-samples", type=int, default=3, help="queries in the attention figure")
    parser.add_argument("--timeline-k", type=int, default=3, help="predicted windows drawn per example")
    parser.add_argument("--batch-size", type=int, default=32, help="queries per forward pass")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for flag in ("examples", "attention_samples", "timeline_k", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    module = load_module(args.ckpt)
    adapted = None if module.adapter is None else module.adapter.encoder.name
    data = load_data(args.data, args.cache, args.batch_size, block_inputs=adapted)
    names = [n.strip() for n in args.baselines.split(",") if n.strip()]
    record = build_report(
        module,
        data,
        args.split,
        args.out,
        ckpt=args.ckpt,
        baselines=names,
        examples=args.examples,
        attention_samples=args.attention_samples,
        timeline_k=args.timeline_k,
        batch_size=args.batch_size,
    )
    metrics = record["model"]["metrics"]
    print(
        f"wrote {args.out / 'index.html'}: {record['num_queries']} queries, "
        f"R1@0.5 {metrics['MR-full-R1@0.5']:.2f}, "
        f"mIoU {metrics['MR-full-mIoU']:.2f}; {len(record['figures'])} figures"
    )
    for note in record["notes"]:
        print(f"  note: {note}")
    return 0
