"""`regress`: one (start, end) regressed per query from a video+text transformer, EIoU + L1 loss.

After the BRAC Charades notebook (/work/shared/design/regress_charades_notebook.txt): project
frozen video and text features to one hidden size, concatenate them along the sequence with
sinusoidal positions, fuse them with a transformer encoder whose attention ignores padding, mean
pool the video positions, and regress two sigmoid values ordered by min/max into a normalized
window (``pooling: mean``). Trained with EIoU (1 - IoU + centre term + width term) plus L1.

Two changes for real-shaped data (docs/models.md, regress): each frame also gets the `probe`'s
clip-query score (``clip_evidence``), and by default (``pooling: attention``) the frames are
pooled by their probability of lying inside the moment, and the regressor corrects the window
those probabilities describe rather than reading the edges from a mean. Those probabilities also
get their own clip cross-entropy (``inside_weight``): through the window alone they learned too
slowly for a small training set.

Normalized coordinates are fractions of the *observed span*: from the start of the first real
clip to the end of the last one. For a whole video that is [0, duration] (the notebook's
normalisation); for a training crop it is the crop, so the target is always something the model
can see. Windows in seconds are ``span_start + fraction * span_length``.

Read top to bottom: the network, its loss, its decoder. Shapes: B batch, T clips, L tokens,
D hidden, V top-k variants, K predicted windows. Masks are True where real.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ground.models import register_model
from ground.models.blocks import (
    ClipEvidence,
    Predictions,
    Projection,
    check_batch,
    clip_window_bce,
    clips_in_windows,
    eiou_loss,
    longest_window,
    masked_mean,
    sinusoidal_encoding,
    temporal_iou,
)

VIDEO, TEXT = 0, 1  # rows of the modality embedding
# Divisor floor for the span's length: sliding-window decoding pads a sample whose video has ended
# with one placeholder clip of zero length (its output is discarded), which must not yield NaN.
MIN_SPAN_SEC = 1e-3
# exp() of the half-width correction is capped here (e^5 ~ 150 times): it keeps a diverging head finite.
MAX_LOG_SCALE = 5.0
# Two decoded windows whose edges differ by no more than this many seconds are one window.
SAME_WINDOW_SEC = 1e-3


def observed_span(timestamps: Tensor, mask: Tensor) -> Tensor:
    """[start of the first real clip, end of the last real clip] in seconds.

    Args:
        timestamps: (B, T, 2) clip windows in seconds.
        mask: (B, T) True where a clip is real; each row needs one.

    Returns:
        (B, 2).
    """
    first = timestamps[..., 0].masked_fill(~mask, float("inf")).amin(dim=1)  # (B,)
    last = timestamps[..., 1].masked_fill(~mask, float("-inf")).amax(dim=1)  # (B,)
    return torch.stack([first, last], dim=-1)


def span_length(span_sec: Tensor) -> Tensor:
    """(B, 2) span -> (B, 1) its length in seconds, floored at ``MIN_SPAN_SEC``."""
    return (span_sec[:, 1:] - span_sec[:, :1]).clamp(min=MIN_SPAN_SEC)


@register_model("regress")
class RegressNet(nn.Module):
    """Direct window regression over a concatenated video+text transformer encoder.

    Decoding: the regressed window is the top-1 answer with score 1. To give R@5 and mAP a
    ranked list, ``decode`` adds deterministic variants of it: each (shift, scale) pair of
    ``topk_shifts`` x ``topk_scales`` moves the centre by ``shift * width`` and multiplies the
    width by ``scale``, clipped to the observed span. A variant's score is its IoU with the
    regressed window, so scores are in [0, 1] and say how far the hedge strays from the model's
    answer; equal scores keep grid order (shifts outer, scales inner), and a variant equal to an
    earlier one is dropped. With ``clip_evidence`` the saliency is the `probe`'s clip-query
    score (``blocks.ClipEvidence``); without it there is none. No presence.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 8,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        position_scale: float = 1000.0,
        eiou_weight: float = 1.0,
        l1_weight: float = 1.0,
        topk_shifts: tuple[float, ...] = (0.0, -0.25, 0.25, -0.5, 0.5),
        topk_scales: tuple[float, ...] = (1.0, 0.75, 1.25, 0.5, 1.5),
        clip_evidence: bool = True,
        evidence_weight: float = 1.0,
        pooling: str = "attention",
        inside_weight: float = 0.0,
    ) -> None:
        """Build the network.

        Args:
            video_dim: size of the video features (from the cache).
            text_dim: size of the text token features (from the cache).
            hidden_dim: width D of the projections and the transformer.
            num_layers: transformer encoder layers.
            num_heads: attention heads; must divide ``hidden_dim``.
            feedforward_dim: inner size of each transformer layer's feed-forward block.
            dropout: dropout in projections, transformer and regression MLP.
            position_scale: a clip at fraction 1.0 of the observed span gets sinusoid position this.
            eiou_weight: weight of the EIoU loss.
            l1_weight: weight of the L1 loss on the normalized (start, end).
            topk_shifts: centre shifts of the top-k variants, in widths of the regressed window;
                must start with 0 so the regressed window itself is the first candidate.
            topk_scales: width factors of the top-k variants, > 0; must start with 1.
            clip_evidence: add the `probe`'s clip-query score on the cached features
                (``blocks.ClipEvidence``), detached and embedded, to the frames before the
                encoder, and train it with its own clip cross-entropy; it is also the saliency
                output (docs/models.md, regress).
            evidence_weight: weight of that score's clip cross-entropy in the loss.
            pooling: how the encoded frames become the window. ``mean`` (the notebook's): the
                regressor reads their mean and outputs the two edges. ``attention``: each real
                frame's ``sigmoid`` of a learned logit (plus the clip evidence's logit with
                ``clip_evidence``), normalised over the frames, weighs the frames; the regressor
                reads their weighted mean and the weights' mean and spread of position, and
                outputs a correction of the window that mean and spread describe.
            inside_weight: with ``pooling: attention``, weight of a clip cross-entropy between
                the pooling's inside-the-moment logits and the clips inside the target window
                (0: the weights learn only through the regressed window, as before). It tells the
                pooling where the moment lies at every clip, not only through the window's EIoU
                + L1 (docs/models.md, regress).
        """
        super().__init__()
        if hidden_dim % num_heads or hidden_dim % 2:
            raise ValueError(
                f"regress: hidden_dim {hidden_dim} must be even and divisible by num_heads {num_heads}"
            )
        if not topk_shifts or topk_shifts[0] != 0.0:
            raise ValueError(f"regress: topk_shifts must start with 0.0, got {topk_shifts}")
        if not topk_scales or topk_scales[0] != 1.0 or min(topk_scales) <= 0:
            raise ValueError(f"regress: topk_scales must start with 1.0 and be positive, got {topk_scales}")
        if num_layers < 1 or feedforward_dim < 1:
            raise ValueError(
                "regress: num_layers and feedforward_dim must be >= 1, "
                f"got {num_layers} and {feedforward_dim}"
            )
        if eiou_weight < 0 or l1_weight < 0 or eiou_weight + l1_weight == 0:
            raise ValueError(
                f"regress: loss weights must be >= 0 and not both 0, got {eiou_weight} and {l1_weight}"
            )
        self.video_dim = video_dim
        self.text_dim = text_dim
        self.position_scale = position_scale
        self.eiou_weight = eiou_weight
        self.l1_weight = l1_weight
        grid = list(itertools.product(topk_shifts, topk_scales))  # shifts outer: the tie order
        self.register_buffer("variant_grid", torch.tensor(grid, dtype=torch.float32), persistent=False)

        self.video_proj = Projection(video_dim, hidden_dim, dropout)
        self.text_proj = Projection(text_dim, hidden_dim, dropout)
        # Without it the encoder could only tell a frame from a token by their feature statistics.
        self.modality = nn.Embedding(2, hidden_dim)
        layer = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, feedforward_dim, dropout, batch_first=True, norm_first=True
        )
        # Nested tensors would drop the padded positions; the plain path keeps shapes the same.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(hidden_dim), enable_nested_tensor=False
        )
        if pooling not in ("mean", "attention"):
            raise ValueError(f"regress: pooling must be 'mean' or 'attention', got {pooling!r}")
        self.attention = nn.Linear(hidden_dim, 1) if pooling == "attention" else None
        pooled_dim = hidden_dim + (2 if pooling == "attention" else 0)  # + position mean and spread
        self.head = nn.Sequential(
            nn.Linear(pooled_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim // 2, 2),
        )
        if self.attention is not None:  # start from the window the weights describe
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        self.evidence_weight = evidence_weight
        self.inside_weight = inside_weight
        self.evidence = ClipEvidence.optional("regress", clip_evidence, video_dim, text_dim, hidden_dim,
                                              evidence_weight)

    # ---- network -----------------------------------------------------------------------------

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Regress one normalized window per query.

        Returns:
            ``window_norm`` (B, 2) ordered (start, end) in [0, 1] of the observed span,
            ``span_sec`` (B, 2) that span in seconds, with ``pooling: attention``
            ``inside_logits`` (B, T) the pooling's logits (padding included; the loss masks it),
            and with ``clip_evidence`` ``saliency`` (B, T) the evidence logits, ``-inf`` on padding.
        """
        self._check_batch(batch)
        video_mask, text_mask, timestamps = batch["video_mask"], batch["text_mask"], batch["timestamps"]
        span_sec = observed_span(timestamps, video_mask)  # (B, 2)
        frames = self.video_proj(batch["video"])  # (B, T, D)
        tokens = self.text_proj(batch["text"])  # (B, L, D)
        dim = frames.shape[-1]

        # Frames are placed by where they sit in the span (so any length and stride mean the same),
        # tokens by their index; both with the transformer sinusoids.
        centre_sec = timestamps.mean(dim=-1)  # (B, T)
        fraction = (centre_sec - span_sec[:, :1]) / span_length(span_sec)  # (B, T)
        frame_pos = sinusoidal_encoding(fraction * self.position_scale, dim)  # (B, T, D)
        token_index = torch.arange(tokens.shape[1], device=tokens.device, dtype=frames.dtype)
        token_pos = sinusoidal_encoding(token_index, dim)  # (L, D)
        frames = frames + frame_pos.to(frames.dtype) + self.modality.weight[VIDEO]
        evidence = None
        if self.evidence is not None:
            frames, evidence = self.evidence.add_to(
                frames, batch["video"], video_mask, batch["text"], text_mask
            )  # (B, T, D), (B, T)
        tokens = tokens + token_pos.to(tokens.dtype) + self.modality.weight[TEXT]

        sequence = torch.cat([frames, tokens], dim=1)  # (B, T + L, D)
        padding = ~torch.cat([video_mask, text_mask], dim=1)  # (B, T + L) True = ignore
        fused = self.encoder(sequence, src_key_padding_mask=padding)  # (B, T + L, D)
        encoded = fused[:, : frames.shape[1]]  # (B, T, D)
        if self.attention is None:
            raw = torch.sigmoid(self.head(masked_mean(encoded, video_mask)))  # (B, 2)
            # min/max rather than a sort: both edges get a gradient and start <= end always holds.
            window_norm = torch.stack([raw.amin(dim=-1), raw.amax(dim=-1)], dim=-1)  # (B, 2)
        else:
            window_norm, inside_logits = self._attended_window(encoded, video_mask, fraction, evidence)
        output = {"window_norm": window_norm, "span_sec": span_sec}
        if self.attention is not None:
            output["inside_logits"] = inside_logits
        if evidence is not None:
            output["saliency"] = evidence
        return output

    def _attended_window(self, encoded: Tensor, video_mask: Tensor, fraction: Tensor,
                         evidence: Tensor | None) -> tuple[Tensor, Tensor]:
        """``pooling: attention``: (B, T, D) frames, (B, T) mask, positions in [0, 1] and evidence
        logits (or None) -> (B, 2) window in [0, 1] of the observed span, and (B, T) the frames'
        inside-the-moment logits.

        Each frame's probability of lying inside the moment, normalised over the frames, makes
        weights whose mean of position is the moment's centre and whose spread is its width over
        sqrt(12) (a uniform window). The head reads the weighted frames with that mean and spread
        and outputs a correction: centre ``mean + d_c``, half-width ``sqrt(3) spread e^{d_w}``.
        """
        logits = self.attention(encoded).squeeze(-1)  # (B, T)
        if evidence is not None:
            logits = logits + evidence.detach().masked_fill(~video_mask, 0.0).to(logits.dtype)
        inside = torch.sigmoid(logits) * video_mask  # (B, T)
        weights = inside / inside.sum(dim=1, keepdim=True).clamp(min=1e-6)  # (B, T)
        where = fraction.masked_fill(~video_mask, 0.0).to(weights.dtype)  # (B, T)
        mean = (weights * where).sum(dim=1, keepdim=True)  # (B, 1)
        spread = ((weights * (where - mean) ** 2).sum(dim=1, keepdim=True) + 1e-6).sqrt()  # (B, 1)
        pooled = torch.cat([(weights.unsqueeze(-1) * encoded).sum(dim=1), mean, spread], dim=-1)  # (B, D + 2)
        correction = self.head(pooled)  # (B, 2)
        centre = mean + correction[:, :1]
        half = math.sqrt(3.0) * spread * correction[:, 1:].clamp(max=MAX_LOG_SCALE).exp()
        return torch.cat([centre - half, centre + half], dim=-1).clamp(0.0, 1.0), logits

    def _check_batch(self, batch: dict) -> None:
        check_batch("regress", batch, self.video_dim, self.text_dim)

    # ---- loss --------------------------------------------------------------------------------

    def loss(self, output: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """EIoU + L1 between the regressed window and the query's longest ground-truth window.

        The target is normalized to the observed span and clamped to [0, 1]: the part of a window
        beyond the clips (a video whose last clip ends before its duration) cannot be seen.

        With ``clip_evidence`` the evidence's clip cross-entropy (``evidence``) is added, times
        ``evidence_weight``; with attention pooling and ``inside_weight`` > 0, the pooling logits'
        clip cross-entropy against the clips inside that same longest window (``inside``), times
        ``inside_weight``.

        Returns:
            ``loss`` (weighted total), ``eiou``, ``l1``, ``iou`` (mean IoU, for logging only), with
            ``clip_evidence`` ``evidence``, and with ``inside_weight`` ``inside``.
        """
        gt_sec = longest_window(batch["windows"], batch["window_mask"], batch["qid"])  # (B, 2)
        span_sec = output["span_sec"]
        pred = output["window_norm"]  # (B, 2)
        gt_norm = ((gt_sec - span_sec[:, :1]) / span_length(span_sec)).clamp(0.0, 1.0)
        gt_norm = gt_norm.to(pred.dtype)
        eiou = eiou_loss(pred, gt_norm).mean()
        l1 = F.l1_loss(pred, gt_norm)
        iou = temporal_iou(pred.detach()[:, None], gt_norm[:, None])[:, 0, 0].mean()
        total = self.eiou_weight * eiou + self.l1_weight * l1
        parts = {"eiou": eiou, "l1": l1, "iou": iou}
        if self.inside_weight and "inside_logits" in output:
            one = torch.ones_like(gt_sec[:, :1], dtype=torch.bool)  # (B, 1)
            inside = clips_in_windows(batch["timestamps"], gt_sec[:, None], one)  # (B, T)
            parts["inside"] = clip_window_bce(output["inside_logits"], inside, batch["video_mask"])
            total = total + self.inside_weight * parts["inside"]
        if "saliency" in output:
            parts["evidence"] = ClipEvidence.loss(output["saliency"], batch)
            total = total + self.evidence_weight * parts["evidence"]
        return {"loss": total, **parts}

    # ---- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        """The regressed window first (score 1), then its shifted/scaled variants by IoU with it."""
        if k < 1:
            raise ValueError(f"regress: k must be >= 1, got {k}")
        window = output["window_norm"].float()  # (B, 2)
        span_sec = output["span_sec"].float()  # (B, 2)
        centre = window.mean(dim=-1, keepdim=True)  # (B, 1)
        width = (window[:, 1] - window[:, 0]).unsqueeze(-1)  # (B, 1)
        shift, scale = self.variant_grid[:, 0], self.variant_grid[:, 1]  # (V,)
        variant_centre = centre + shift * width  # (B, V)
        half = scale * width / 2  # (B, V)
        variants = torch.stack([variant_centre - half, variant_centre + half], dim=-1).clamp(0.0, 1.0)
        scores = temporal_iou(variants, window[:, None])[..., 0]  # (B, V)
        # Every video shares this [0, 1] coordinate; seconds come from each one's observed span.
        length_sec = span_length(span_sec).unsqueeze(-1)  # (B, 1, 1)
        variants_sec = span_sec[:, None, :1] + variants * length_sec  # (B, V, 2)
        variants_sec = torch.minimum(variants_sec.clamp(min=0.0), batch["duration"].float()[:, None, None])

        windows_out, scores_out = [], []
        for b in range(window.shape[0]):
            order = torch.sort(scores[b], descending=True, stable=True).indices  # (V,)
            cand, cand_score = variants_sec[b, order], scores[b, order]
            # The regressed window scores IoU 1 with itself, except a zero-length one (IoU 0 with
            # everything) which the stable sort still keeps first; give it the documented score 1.
            cand_score[0] = 1.0
            # Equal within SAME_WINDOW_SEC: clipping and float rounding make variants that differ
            # by 1e-7 s, which would otherwise fill the top-k with one window twice.
            same = (cand[:, None] - cand[None]).abs().amax(dim=-1) <= SAME_WINDOW_SEC  # (V, V)
            distinct = [0] + [i for i in range(1, len(cand)) if not same[i, :i].any()]
            cand, cand_score = cand[distinct][:k], cand_score[distinct][:k]
            missing = k - len(cand)
            if missing:
                cand = torch.cat([cand, cand[-1:].expand(missing, 2)])
                cand_score = torch.cat([cand_score, cand_score.new_full((missing,), float("-inf"))])
            windows_out.append(cand)
            scores_out.append(cand_score)
        return Predictions(windows=torch.stack(windows_out), scores=torch.stack(scores_out),
                           saliency=output.get("saliency"))
