"""`probe`: a per-clip bilinear logistic probe on the frozen features, the floor every model must beat.

Each clip gets the logit ``s = t^T W v + u^T v + c``: ``t`` is the mean of the query's
L2-normalised token features, ``v`` the clip's feature as cached. It is trained with binary
cross-entropy to say whether the clip lies inside a ground-truth window. There is no temporal
context and no interaction beyond the bilinear term, so what it reaches is what the frozen
features give almost for free; the trained networks must do better (docs/models.md).

Windows come from the clip probabilities: smoothed over a few neighbouring clips, thresholded at
a few levels between the video's lowest and highest value, each run of clips above a level a
candidate, scored by the mean probability inside minus the mean outside, then NMS and top-k.

Read top to bottom: the network, its loss, its decoder. Shapes: B batch, T clips, L tokens,
Dv / Dt video / text feature size, N candidate windows, K predicted windows. Masks are True
where real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ground.models import register_model
from ground.models.blocks import Predictions, assign_clips, check_batch, probe_logits, top_k_windows


def smooth_probabilities(prob: Tensor, width_clips: int) -> Tensor:
    """Moving average over ``width_clips`` neighbouring clips of one video.

    Near the ends the average is over the clips that exist, so an edge clip is not pulled down
    by clips beyond the video.

    Args:
        prob: (n,) probabilities of the real clips.
        width_clips: odd window width in clips; 1 returns ``prob`` unchanged.

    Returns:
        (n,) smoothed probabilities.
    """
    if width_clips == 1:
        return prob
    pooled = F.avg_pool1d(
        prob[None, None], width_clips, stride=1, padding=width_clips // 2, count_include_pad=False
    )
    return pooled[0, 0]  # (n,)


def runs_above(values: Tensor, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
    """First and last index of every maximal run of entries ``>= threshold``.

    Args:
        values: (n,).
        threshold: scalar.

    Returns:
        start (R,) and end (R,) int64 indices, inclusive, in time order.
    """
    above = (values >= threshold).to(torch.int8)  # (n,)
    edges = torch.diff(F.pad(above, (1, 1)))  # (n + 1,) +1 where a run starts, -1 after it ends
    starts = (edges == 1).nonzero(as_tuple=True)[0]
    ends = (edges == -1).nonzero(as_tuple=True)[0] - 1
    return starts, ends


def contrast_scores(prob: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Mean of ``prob`` inside each run minus its mean over the other clips (0 when none remain).

    Args:
        prob: (n,) per-clip probabilities.
        starts: (R,) first clip of each run.
        ends: (R,) last clip of each run, inclusive.

    Returns:
        (R,) scores in [-1, 1].
    """
    cumulative = F.pad(prob.cumsum(0), (1, 0))  # (n + 1,) cumulative[i] = sum of prob[:i]
    inside_sum = cumulative[ends + 1] - cumulative[starts]  # (R,)
    inside_n = (ends - starts + 1).to(prob.dtype)
    outside_n = len(prob) - inside_n
    outside_mean = torch.where(
        outside_n > 0, (cumulative[-1] - inside_sum) / outside_n.clamp(min=1), 0.0
    )
    return inside_sum / inside_n - outside_mean


@register_model("probe")
class ProbeNet(nn.Module):
    """Per-clip bilinear logistic probe with thresholded-run decoding.

    Decoding: see the module docstring. ``scores`` are mean probability inside a window minus
    mean outside, in [-1, 1]; ``Predictions.saliency`` is each clip's probability (0 on
    padding). No presence.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        smooth_clips: int = 3,
        thresholds: tuple[float, ...] = (0.3, 0.5, 0.7),
        nms_iou_threshold: float | None = 0.7,
        init_std: float = 0.02,
    ) -> None:
        """Build the probe.

        Args:
            video_dim: size Dv of the clip features (from the cache).
            text_dim: size Dt of the token features (from the cache).
            smooth_clips: odd width, in clips, of the moving average applied before thresholding.
            thresholds: levels in (0, 1] as fractions of each video's range of smoothed
                probabilities: level ``f`` is ``min + f * (max - min)``, so every video yields
                at least one run (the one through its most probable clip).
            nms_iou_threshold: IoU above which a lower-scored candidate is suppressed, or None.
            init_std: standard deviation of the normal initialisation of ``W`` and ``u``.
        """
        super().__init__()
        if smooth_clips < 1 or smooth_clips % 2 == 0:
            raise ValueError(f"probe: smooth_clips must be odd and >= 1, got {smooth_clips}")
        if not thresholds or not all(0.0 < f <= 1.0 for f in thresholds):
            raise ValueError(f"probe: thresholds must be non-empty, each in (0, 1], got {thresholds}")
        if nms_iou_threshold is not None and not 0.0 <= nms_iou_threshold <= 1.0:
            raise ValueError(f"probe: nms_iou_threshold must be in [0, 1] or None, got {nms_iou_threshold}")
        if init_std < 0:
            raise ValueError(f"probe: init_std must be >= 0, got {init_std}")
        self.video_dim = video_dim
        self.text_dim = text_dim
        self.smooth_clips = smooth_clips
        self.thresholds = tuple(thresholds)
        self.nms_iou_threshold = nms_iou_threshold
        self.bilinear = nn.Parameter(torch.randn(text_dim, video_dim) * init_std)  # W (Dt, Dv)
        self.linear = nn.Parameter(torch.randn(video_dim) * init_std)  # u (Dv,)
        self.bias = nn.Parameter(torch.zeros(()))  # c

    # ---- network -----------------------------------------------------------------------------

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Per-clip logits ``t^T W v + u^T v + c``.

        Returns:
            ``logits`` (B, T), ``-inf`` on padding.
        """
        check_batch("probe", batch, self.video_dim, self.text_dim)
        video_mask = batch["video_mask"]
        logits = probe_logits(batch["video"], batch["text"], batch["text_mask"], self.bilinear,
                              self.linear) + self.bias  # (B, T)
        return {"logits": logits.masked_fill(~video_mask, float("-inf"))}

    # ---- loss --------------------------------------------------------------------------------

    def loss(self, output: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """Binary cross-entropy of every real clip against "inside a ground-truth window".

        A clip is positive when its centre lies inside any of the query's windows; a window
        that holds no clip centre (shorter than a clip) makes its nearest clip positive
        (``blocks.assign_clips``). Every real clip of the batch weighs the same.

        Returns:
            ``loss`` (the cross-entropy), ``bce`` (the same, for logging) and ``clip_accuracy``
            (fraction of real clips on the right side of probability 0.5, for logging only).
        """
        mask = batch["video_mask"]
        positive, _ = assign_clips(batch["timestamps"], mask, batch["windows"], batch["window_mask"],
                                   batch["qid"])  # (B, T)
        logits = output["logits"][mask]  # (N,) real clips only: padding is -inf
        labels = positive[mask].to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits.detach() > 0) == positive[mask]).float().mean()
        return {"loss": bce, "bce": bce, "clip_accuracy": accuracy}

    # ---- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        """Runs of smoothed probabilities above each threshold, scored by contrast, NMS, top-``k``.

        Candidates are listed threshold by threshold (in the configured order), runs in time
        order, a run found again at a later level dropped; equal scores keep that order. A
        window spans from its first clip's start to its last clip's end
        (``batch["timestamps"]``), capped at the duration.
        """
        if k < 1:
            raise ValueError(f"probe: k must be >= 1, got {k}")
        mask, timestamps = batch["video_mask"], batch["timestamps"]
        prob = torch.sigmoid(output["logits"].float())  # (B, T), 0 on padding
        windows_out, scores_out = [], []
        for b in range(prob.shape[0]):
            real = mask[b].nonzero(as_tuple=True)[0]  # (n,)
            p = prob[b, real]  # (n,)
            if not torch.isfinite(p).all():
                raise ValueError(f"probe: non-finite clip logits for query {batch['qid'][b]}")
            smooth = smooth_probabilities(p, self.smooth_clips)  # (n,)
            low, high = smooth.min(), smooth.max()
            starts, ends = [], []
            for fraction in self.thresholds:
                # Capped at the maximum: rounding must not lift the level f = 1 above every clip.
                level = torch.minimum(low + fraction * (high - low), high)
                s, e = runs_above(smooth, level)
                starts.append(s)
                ends.append(e)
            start_idx, end_idx = torch.cat(starts), torch.cat(ends)  # (N,)
            # A run found at several levels is one candidate, kept at its first listing.
            first = dict.fromkeys(zip(start_idx.tolist(), end_idx.tolist(), strict=True))
            start_idx, end_idx = torch.tensor(list(first), dtype=torch.long, device=p.device).T  # (N,)
            ts = timestamps[b, real].float()  # (n, 2)
            duration_sec = batch["duration"][b].float()
            cand = torch.stack([ts[start_idx, 0], ts[end_idx, 1]], dim=-1)  # (N, 2)
            cand = cand.clamp(max=duration_sec)
            windows, scores = top_k_windows(cand, contrast_scores(p, start_idx, end_idx), k,
                                            self.nms_iou_threshold)
            windows_out.append(windows)
            scores_out.append(scores)
        return Predictions(
            windows=torch.stack(windows_out), scores=torch.stack(scores_out), saliency=prob
        )
