"""Baselines that need no gradient training, run through the same `python -m ground test`.

Each is a registered network with the usual interface. Those that use training-set statistics
implement `fit_statistics(train)`, which `GroundingModule` calls once before evaluating (see
docs/adding_a_model.md); they have no trainable parameters and are not meant for `fit`.

- `random`: K windows with uniform random boundaries (seeded per query id, reproducible).
- `centered`: one window of the training median length, centred in the video.
- `prior`: the K most frequent training windows on a grid of normalized (start, end) positions.
- `zeroshot`: cosine similarity between the pooled text and each frame embedding (same
  CLIP/SigLIP model for both), thresholded and grouped into windows scored by mean similarity.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from ground.models import register_model
from ground.models.blocks import Predictions


def _pad(windows: list[Tensor], scores: list[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Stack per-sample candidate lists into (B, K, 2) / (B, K), filler slots scored -inf."""
    out_w, out_s = [], []
    for w, s in zip(windows, scores, strict=True):
        order = torch.sort(s, descending=True, stable=True).indices[:k]
        w, s = w[order], s[order]
        missing = k - len(w)
        if missing > 0:
            w = torch.cat([w, w[-1:].expand(missing, 2)])
            s = torch.cat([s, s.new_full((missing,), float("-inf"))])
        out_w.append(w)
        out_s.append(s)
    return torch.stack(out_w), torch.stack(out_s)


class _Baseline(nn.Module):
    """Shared plumbing: no loss (nothing to train) and video/text dims kept for checks."""

    trainable = False

    def __init__(self, video_dim: int, text_dim: int) -> None:
        super().__init__()
        self.video_dim, self.text_dim = video_dim, text_dim

    def forward(self, batch: dict) -> dict[str, Tensor]:
        return {}

    def loss(self, output: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        raise RuntimeError(
            f"{type(self).__name__} is a baseline: evaluate it with `python -m ground test`, "
            "there is nothing to fit"
        )


@register_model("random")
class RandomBaseline(_Baseline):
    """Uniformly random windows; the generator is seeded by each query id, so results repeat.

    Args:
        video_dim: unused (from the cache).
        text_dim: unused (from the cache).
        seed: added to every query's seed.
    """

    def __init__(self, video_dim: int, text_dim: int, seed: int = 0) -> None:
        super().__init__(video_dim, text_dim)
        self.seed = seed

    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        windows, scores = [], []
        for i, qid in enumerate(batch["qid"]):
            gen = torch.Generator().manual_seed(zlib.crc32(str(qid).encode()) + self.seed)
            bounds = torch.rand(k, 2, generator=gen, dtype=torch.float64).sort(dim=1).values  # (K, 2)
            windows.append((bounds * float(batch["duration"][i])).float())
            scores.append(torch.linspace(1.0, 0.0, k))
        w, s = _pad(windows, scores, k)
        return Predictions(windows=w.to(batch["video"].device), scores=s.to(batch["video"].device))


@register_model("centered")
class CenteredBaseline(_Baseline):
    """One window of the training median length (seconds), centred in each video.

    Args:
        video_dim: unused (from the cache).
        text_dim: unused (from the cache).
    """

    def __init__(self, video_dim: int, text_dim: int) -> None:
        super().__init__(video_dim, text_dim)
        self.register_buffer("median_sec", torch.tensor(float("nan")))

    def fit_statistics(self, train) -> None:
        real = torch.arange(train.windows.shape[1])[None, :] < train.window_counts.cpu()[:, None]
        lengths = (train.windows[..., 1] - train.windows[..., 0]).cpu()[real]
        self.median_sec.fill_(float(lengths.median()))

    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        if torch.isnan(self.median_sec):
            raise RuntimeError("centered: fit_statistics(train split) was not called")
        duration = batch["duration"]  # (B,)
        length = torch.minimum(self.median_sec.expand_as(duration), duration)
        start = (duration - length) / 2
        window = torch.stack([start, start + length], dim=-1)  # (B, 2)
        windows = [window[i : i + 1] for i in range(len(duration))]
        scores = [torch.ones(1, device=duration.device) for _ in windows]
        w, s = _pad(windows, scores, k)
        return Predictions(windows=w, scores=s)


@register_model("prior")
class PriorBaseline(_Baseline):
    """The K most frequent training windows, as normalized (start, end) on a grid of `bins`.

    Args:
        video_dim: unused (from the cache).
        text_dim: unused (from the cache).
        bins: grid cells per unit of normalized time.
    """

    def __init__(self, video_dim: int, text_dim: int, bins: int = 20) -> None:
        super().__init__(video_dim, text_dim)
        self.bins = bins
        self.register_buffer("counts", torch.zeros(bins, bins))

    def fit_statistics(self, train) -> None:
        vi = train.video_index.cpu()
        real = torch.arange(train.windows.shape[1])[None, :] < train.window_counts.cpu()[:, None]
        norm = (train.windows.cpu() / train.duration.cpu()[vi][:, None, None]).clamp(0, 1)[real]  # (N, 2)
        # Snap outward to the grid: start cell by floor, end cell by ceil, so a window on grid
        # points (0.0, 0.5) maps back to exactly (0.0, 0.5).
        start = (norm[:, 0] * self.bins).floor().long().clamp(0, self.bins - 1)
        end = ((norm[:, 1] * self.bins).ceil().long() - 1).clamp(0, self.bins - 1)
        end = torch.maximum(end, start)
        self.counts.zero_()
        self.counts.index_put_((start, end), torch.ones(len(start)), accumulate=True)

    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        if self.counts.sum() == 0:
            raise RuntimeError("prior: fit_statistics(train split) was not called")
        flat = self.counts.flatten()
        top = torch.sort(flat, descending=True, stable=True).indices[:k]
        top = top[flat[top] > 0]
        # Cell (i, j) decodes to [i / bins, (j + 1) / bins]: the grid window that contains its members.
        start = (top // self.bins).float() / self.bins
        end = (top % self.bins + 1).float() / self.bins
        norm = torch.stack([start, end], dim=-1)  # (K', 2)
        duration = batch["duration"]
        windows = [norm.to(duration.device) * duration[i] for i in range(len(duration))]
        scores = [flat[top].to(duration.device) / flat.sum() for _ in windows]
        w, s = _pad(windows, scores, k)
        return Predictions(windows=w, scores=s)


@register_model("zeroshot")
class ZeroShotBaseline(_Baseline):
    """Frames whose cosine similarity to the pooled query passes a threshold, grouped into windows.

    The video and text features must come from the same CLIP/SigLIP model (one joint space):
    the cache's single video encoder and its text encoder.

    Args:
        video_dim: must equal text_dim.
        text_dim: must equal video_dim.
        threshold_std: a frame is selected when its similarity is above mean + threshold_std * std
            of its video's similarities.
    """

    def __init__(self, video_dim: int, text_dim: int, threshold_std: float = 0.5) -> None:
        super().__init__(video_dim, text_dim)
        self.threshold_std = threshold_std

    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        if batch["video"].shape[-1] != batch["text_pooled"].shape[-1]:
            raise ValueError(
                f"zeroshot needs video and text features of one joint space, got video dim "
                f"{batch['video'].shape[-1]} and text dim {batch['text_pooled'].shape[-1]} (queries "
                f"{list(batch['qid'])[:3]}); choose one CLIP/SigLIP video encoder and its text tower"
            )
        video = nn.functional.normalize(batch["video"].float(), dim=-1)  # (B, T, D)
        text = nn.functional.normalize(batch["text_pooled"].float(), dim=-1)  # (B, D)
        sim = torch.einsum("btd,bd->bt", video, text)  # (B, T)
        mask = batch["video_mask"]
        windows, scores = [], []
        for b in range(len(sim)):
            n = int(mask[b].sum())
            s = sim[b, :n]
            ts = batch["timestamps"][b, :n]
            threshold = s.mean() + self.threshold_std * (s.std() if n > 1 else 0.0)
            above = (s >= threshold).tolist()
            runs, start = [], None
            for t, flag in enumerate([*above, False]):
                if flag and start is None:
                    start = t
                elif not flag and start is not None:
                    runs.append((start, t - 1))
                    start = None
            if not runs:  # every frame below: the single best frame
                best = int(s.argmax())
                runs = [(best, best)]
            windows.append(torch.stack([torch.stack([ts[a, 0], ts[e, 1]]) for a, e in runs]))
            scores.append(torch.stack([s[a : e + 1].mean() for a, e in runs]))
        w, sc = _pad(windows, scores, k)
        return Predictions(windows=w, scores=sc, saliency=sim.masked_fill(~mask, float("-inf")))
