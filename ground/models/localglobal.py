"""`localglobal`: local conv + global attention blocks, query-aware, with boundary and segment heads.

After the temporal-localization design (/work/shared/design/localglobal_temporal_localization.md,
itself after TCANet's local-global encoder and temporal boundary regressor), made query-aware
for grounding. Each layer lets the clips read the query tokens (masked cross-attention), then
runs a LocalTemporalBlock (1D conv + ReLU) beside a GlobalContextBlock (self-attention on half
the channels, the other half passing through), fuses the two with a 1x1 conv into a pre-norm
residual, and ends with a feed-forward. Three per-clip heads follow:

- boundary: the distances from the clip centre back to the start and on to the end;
- segment: the moment's centre (as an offset from the clip) and its duration;
- confidence: a logit that the clip lies inside a queried moment (also the saliency output).
With ``clip_evidence`` the `probe`'s clip-query score on the cached features (``blocks.ClipEvidence``)
is embedded into the clips before the first layer and added to the confidence logit.

Both regression heads are trained with EIoU on the clips assigned to a moment; at decoding each
clip proposes the average of its two heads' windows, scored by its confidence, merged by NMS.

Everything from the features to the per-clip windows is tensor-only (``localize``) with no
control flow on tensor values, so it traces to TorchScript and exports to ONNX; the batch checks
and ``decode`` stay in Python.

Read top to bottom: blocks, the network, its loss, its decoder. Shapes: B batch, T clips,
L tokens, D hidden, W ground-truth windows, K predicted windows. Masks are True where real.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ground.models import register_model
from ground.models.blocks import (
    ClipEvidence,
    FeedForward,
    FractionalPositionalEncoding,
    MaskedAttention,
    Predictions,
    Projection,
    assign_clips,
    batch_first_attention,
    check_batch,
    eiou_loss,
    nms_1d,
)

# exp() of a head output is capped here: e^10 clips is longer than any video, and the cap keeps
# a diverging head finite rather than inf.
MAX_LOG_CLIPS = 10.0


class LocalTemporalBlock(nn.Module):
    """1D convolution over time + ReLU: fine-grained motion around each clip.

    The caller zeroes padding clips first, so a real clip next to padding sees the same zeros it
    would see beyond the end of an unpadded video.
    """

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)  # "same" length

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> (B, T, D)."""
        return F.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)


class GlobalContextBlock(nn.Module):
    """Self-attention over the whole video on the first half of the channels.

    The second half passes through untouched: attending on half the channels halves the cost of
    the long-range branch, and the untouched half keeps the clip's own features for the fusion.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.half = dim // 2
        self.attn = nn.MultiheadAttention(self.half, num_heads, dropout=dropout, batch_first=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, D), mask (B, T) -> (B, T, D)."""
        attended, passed = x[..., : self.half], x[..., self.half :]  # (B, T, D/2) each
        attended = batch_first_attention(self.attn, attended, attended, mask)
        return torch.cat([attended, passed], dim=-1)


class LocalGlobalBlock(nn.Module):
    """Local and global branches side by side, fused by a 1x1 conv into a pre-norm residual."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.local = LocalTemporalBlock(dim, kernel_size)
        self.glob = GlobalContextBlock(dim, num_heads, dropout)
        self.fuse = nn.Conv1d(2 * dim, dim, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, D), mask (B, T) -> (B, T, D), zero on padding."""
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        h = self.norm(x) * keep
        both = torch.cat([self.local(h), self.glob(h, mask)], dim=-1)  # (B, T, 2D)
        fused = self.fuse(both.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        return (x + self.dropout(fused)) * keep


class QueryLocalGlobalLayer(nn.Module):
    """Clips read the query (cross-attention), then local/global temporal context, then an MLP."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = MaskedAttention(dim, num_heads, dropout)
        self.local_global = LocalGlobalBlock(dim, num_heads, kernel_size, dropout)
        self.ffn = FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """x (B, T, D), text (B, L, D) -> (B, T, D), zero on padding."""
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        x = self.cross_attn(x, text_mask, context=text) * keep  # (B, T, D)
        x = self.local_global(x, mask)
        return self.ffn(x) * keep


def head(dim: int, out: int) -> nn.Sequential:
    """Per-clip two-layer MLP."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


@register_model("localglobal")
class LocalGlobalNet(nn.Module):
    """Query-aware local/global temporal encoder with boundary and segment regression heads.

    Per-clip geometry, in units of the video's mean clip length ``u``: the boundary head's two
    outputs ``a`` give distances ``(e^a - 1) u`` from the clip centre back to the start and on to
    the end (down to -1 clip, so the clip nearest a window shorter than one clip can still point
    at it); the segment head's ``(m, s)`` give a duration ``w = e^s u`` and a centre
    ``clip_centre + m (w + u)`` (the offset unit ``w + u`` bounds every assigned clip's target
    offset to about [-1/2, 1/2]).

    Decoding: each real clip proposes the edge-wise average of its boundary and segment windows
    (ordered, clipped to [0, duration]), scored by the sigmoid of its confidence logit (a
    probability); greedy NMS keeps the top ``k``. ``Predictions.saliency`` is that per-clip
    probability, 0 on padding. No presence.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
        num_heads: int = 8,
        kernel_size: int = 3,
        dropout: float = 0.1,
        position_scale: float = 1000.0,
        nms_iou_threshold: float | None = 0.7,
        boundary_weight: float = 1.0,
        segment_weight: float = 1.0,
        confidence_weight: float = 1.0,
        clip_evidence: bool = True,
    ) -> None:
        """Build the network.

        Args:
            video_dim: size of the video features (from the cache).
            text_dim: size of the text token features (from the cache).
            hidden_dim: width D of every layer; the global branch attends on D/2 channels.
            num_layers: query + local/global + feed-forward layers (the depth).
            num_heads: heads of the cross-attention (on D) and of the global branch (on D/2);
                must divide ``hidden_dim / 2``.
            kernel_size: odd kernel size of the local branch's convolution.
            dropout: dropout in projections, attention, fusion and feed-forward.
            position_scale: fractional position 1.0 (the video's end) is encoded as this sinusoid position.
            nms_iou_threshold: IoU above which a lower-scored proposal is suppressed, or None.
            boundary_weight: weight of the boundary head's EIoU loss.
            segment_weight: weight of the segment head's EIoU loss.
            confidence_weight: weight of the per-clip confidence binary cross-entropy.
            clip_evidence: the `probe`'s clip-query score on the cached features
                (``blocks.ClipEvidence``), detached and embedded, is added to the clips before the
                first layer, and the score itself to the confidence logit, so the confidence
                cross-entropy trains it (docs/models.md, localglobal).
        """
        super().__init__()
        if hidden_dim % 2 or (hidden_dim // 2) % num_heads:
            raise ValueError(
                f"localglobal: hidden_dim {hidden_dim} must be even and hidden_dim / 2 divisible by "
                f"num_heads {num_heads}"
            )
        if kernel_size % 2 == 0:
            raise ValueError(f"localglobal: kernel_size must be odd, got {kernel_size}")
        if num_layers < 1:
            raise ValueError(f"localglobal: num_layers must be >= 1, got {num_layers}")
        if nms_iou_threshold is not None and not 0.0 <= nms_iou_threshold <= 1.0:
            raise ValueError(
                f"localglobal: nms_iou_threshold must be in [0, 1] or None, got {nms_iou_threshold}"
            )
        self.video_dim = video_dim
        self.text_dim = text_dim
        self.nms_iou_threshold = nms_iou_threshold
        self.boundary_weight = boundary_weight
        self.segment_weight = segment_weight
        self.confidence_weight = confidence_weight

        self.video_proj = Projection(video_dim, hidden_dim, dropout)
        self.text_proj = Projection(text_dim, hidden_dim, dropout)
        self.position = FractionalPositionalEncoding(hidden_dim, scale=position_scale)
        self.layers = nn.ModuleList(
            QueryLocalGlobalLayer(hidden_dim, num_heads, kernel_size, dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_dim)
        self.boundary_head = head(hidden_dim, 2)
        self.segment_head = head(hidden_dim, 2)
        self.confidence_head = head(hidden_dim, 1)
        self.evidence = ClipEvidence.optional("localglobal", clip_evidence, video_dim, text_dim, hidden_dim)
        # Start from windows about two clips long rather than zero-length ones.
        nn.init.constant_(self.boundary_head[-1].bias, math.log(2.0))

    # ---- network -----------------------------------------------------------------------------

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Per-clip windows from both heads and the confidence logit.

        Returns:
            ``boundary_windows_sec`` and ``segment_windows_sec`` (B, T, 2) [start, end] seconds
            (the boundary head's may be inverted early in training), ``confidence_logits`` (B, T)
            with ``-inf`` on padding.
        """
        self._check_batch(batch)
        boundary, segment, confidence = self.localize(
            batch["video"], batch["video_mask"], batch["timestamps"], batch["duration"],
            batch["text"], batch["text_mask"],
        )
        return {
            "boundary_windows_sec": boundary,
            "segment_windows_sec": segment,
            "confidence_logits": confidence,
        }

    def localize(self, video: Tensor, video_mask: Tensor, timestamps: Tensor, duration: Tensor,
                 text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The tensor-only network, fit for TorchScript tracing and ONNX export.

        Args:
            video: (B, T, Dv) clip features.
            video_mask: (B, T) True where a clip is real.
            timestamps: (B, T, 2) clip [start, end) seconds.
            duration: (B,) video duration in seconds.
            text: (B, L, Dt) query token features.
            text_mask: (B, L) True where a token is real.

        Returns:
            boundary windows (B, T, 2) s, segment windows (B, T, 2) s, confidence logits (B, T).
        """
        keep = video_mask.unsqueeze(-1)  # (B, T, 1)
        x = self.video_proj(video) * keep  # (B, T, D)
        x = x + self.position(timestamps, duration).to(x.dtype)
        evidence = None
        if self.evidence is not None:  # a constructor choice: fixed when traced
            x, evidence = self.evidence.add_to(x, video, video_mask, text, text_mask)  # (B, T, D), (B, T)
        tokens = self.text_proj(text)  # (B, L, D)
        for layer in self.layers:
            x = layer(x, video_mask, tokens, text_mask)  # (B, T, D)
        x = self.final_norm(x)

        # Geometry in float32: exp() of a half-precision head output overflows early.
        centre_sec = timestamps.float().mean(dim=-1)  # (B, T)
        real = video_mask.float()
        clip_lengths_sec = (timestamps[..., 1] - timestamps[..., 0]).float() * real  # (B, T)
        unit_sec = (clip_lengths_sec.sum(dim=1) / real.sum(dim=1).clamp(min=1.0)).unsqueeze(-1)  # (B, 1)

        boundary_raw = self.boundary_head(x).float()  # (B, T, 2)
        distance_sec = (boundary_raw.clamp(max=MAX_LOG_CLIPS).exp() - 1) * unit_sec.unsqueeze(-1)  # (B, T, 2)
        boundary = torch.stack([centre_sec - distance_sec[..., 0], centre_sec + distance_sec[..., 1]], dim=-1)

        segment_raw = self.segment_head(x).float()  # (B, T, 2)
        width_sec = segment_raw[..., 1].clamp(max=MAX_LOG_CLIPS).exp() * unit_sec  # (B, T)
        seg_centre_sec = centre_sec + segment_raw[..., 0] * (width_sec + unit_sec)  # (B, T)
        segment = torch.stack([seg_centre_sec - width_sec / 2, seg_centre_sec + width_sec / 2], dim=-1)

        confidence = self.confidence_head(x).squeeze(-1)  # (B, T)
        if evidence is not None:
            confidence = confidence + evidence.masked_fill(~video_mask, 0.0).to(confidence.dtype)
        confidence = confidence.masked_fill(~video_mask, float("-inf"))
        return boundary, segment, confidence

    def _check_batch(self, batch: dict) -> None:
        check_batch("localglobal", batch, self.video_dim, self.text_dim)

    # ---- loss --------------------------------------------------------------------------------

    def loss(self, output: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """EIoU of both heads on the assigned clips, plus confidence BCE on every real clip.

        Returns:
            ``loss`` (weighted total), ``boundary``, ``segment``, ``confidence``.
        """
        mask = batch["video_mask"]
        positive, target_sec = assign_clips(batch["timestamps"], mask, batch["windows"], batch["window_mask"],
                                            batch["qid"])
        target = target_sec[positive].float()  # (P, 2)
        boundary = eiou_loss(output["boundary_windows_sec"][positive], target).mean()
        segment = eiou_loss(output["segment_windows_sec"][positive], target).mean()
        logits = output["confidence_logits"][mask]  # (N,) real clips only: padding is -inf
        confidence = F.binary_cross_entropy_with_logits(logits, positive[mask].to(logits.dtype))
        total = (self.boundary_weight * boundary + self.segment_weight * segment
                 + self.confidence_weight * confidence)
        return {"loss": total, "boundary": boundary, "segment": segment, "confidence": confidence}

    # ---- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        """Top-``k`` fused per-clip proposals by confidence after NMS, with per-clip saliency."""
        if k < 1:
            raise ValueError(f"localglobal: k must be >= 1, got {k}")
        mask = batch["video_mask"]
        fused = (output["boundary_windows_sec"] + output["segment_windows_sec"]) / 2  # (B, T, 2)
        fused = torch.stack([fused.amin(dim=-1), fused.amax(dim=-1)], dim=-1)
        duration = batch["duration"].float()[:, None, None]  # (B, 1, 1)
        fused = torch.minimum(fused.clamp(min=0.0), duration)
        probability = torch.sigmoid(output["confidence_logits"].float()) * mask  # (B, T), 0 on padding

        windows_out, scores_out = [], []
        for b in range(fused.shape[0]):
            real = mask[b].nonzero(as_tuple=True)[0]  # (n,)
            cand, cand_score = fused[b, real], probability[b, real]
            order = torch.sort(cand_score, descending=True, stable=True).indices  # ties: earlier clip first
            cand, cand_score = cand[order], cand_score[order]
            if self.nms_iou_threshold is not None:
                kept = nms_1d(cand, cand_score, self.nms_iou_threshold)
                cand, cand_score = cand[kept], cand_score[kept]
            cand, cand_score = cand[:k], cand_score[:k]
            missing = k - len(cand)
            if missing:
                cand = torch.cat([cand, cand[-1:].expand(missing, 2)])
                cand_score = torch.cat([cand_score, cand_score.new_full((missing,), float("-inf"))])
            windows_out.append(cand)
            scores_out.append(cand_score)
        return Predictions(
            windows=torch.stack(windows_out), scores=torch.stack(scores_out), saliency=probability
        )

