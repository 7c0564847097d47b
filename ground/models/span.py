"""`span`: a per-clip start/end span extractor over a cross-modal transformer.

After GroundZero (docs in /work/shared/design/span_groundzero.txt): project frozen video and text
features to one hidden size, give every clip temporal context with a masked dilated conv stack
and a fractional positional encoding, let clips read the query through layers of
cross-attention (clips -> query tokens) and self-attention (clips -> clips), then score each
clip as the start and the end of the moment (BERT-SQuAD style). Two side heads: presence (is
the event in this video at all), trained against the query paired with another video of the
batch, and per-clip saliency (highlight detection). The saliency head reads the clip context
before the fusion layers, matched against the query, and is trained with margin ranking inside
each video plus a binary cross-entropy over every clip of the batch (docs/models.md, "Why span's
saliency lost to the probe").

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
    FeedForward,
    FractionalPositionalEncoding,
    MaskedAttention,
    Predictions,
    Projection,
    check_batch,
    check_switch,
    clip_window_bce,
    clips_in_windows,
    decode_spans,
    embed_scores,
    gaussian_boundary_targets,
    log_softmax_masked,
    longest_window,
    masked_max,
    masked_mean,
    probe_logits,
)


class DilatedConvBlock(nn.Module):
    """Pre-norm residual 1D convolution over time that keeps padding out of real clips.

    Padding clips are zeroed before the convolution, so a real clip next to padding sees the same
    zeros it would see beyond the end of an unpadded video; the output is zeroed there again.
    """

    def __init__(self, dim: int, dilation: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        padding = dilation * (kernel_size - 1) // 2  # "same" length, so clip t stays at index t
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation, padding=padding)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, D), mask (B, T) -> (B, T, D), zero on padding."""
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        h = self.norm(x) * keep
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        return (x + self.dropout(F.gelu(h))) * keep


class FusionLayer(nn.Module):
    """Clips attend to the query tokens, then to each other, then a feed-forward."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = MaskedAttention(dim, num_heads, dropout)
        self.self_attn = MaskedAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dropout=dropout)

    def forward(self, frames: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """frames (B, T, D), text (B, L, D) -> (B, T, D)."""
        frames = self.cross_attn(frames, text_mask, context=text)  # (B, T, D)
        frames = self.self_attn(frames, video_mask)  # (B, T, D)
        return self.ffn(frames)


class QuerySaliencyHead(nn.Module):
    """Per-clip saliency: each clip's context feature against a direction chosen by the query,
    plus, optionally, the `probe`'s bilinear term on the frozen features.

    ``s_t = c_t . (W q + b) / sqrt(D) + [t^T P v_t + u^T v_t]``, with ``c_t`` the clip's context
    (projection and conv stack, before positions and fusion), ``q`` the mean of the projected
    query tokens, ``t`` the mean of the query's L2-normalised token features as cached and ``v_t``
    the clip's feature as cached. The first term is a bilinear read-out one conv stack away from
    the frozen features: the fused features after the span-oriented layers learned saliency more
    slowly. The second is exactly the `probe`'s model (``P``, ``u`` start at zero), so the head can
    reach whatever a linear read-out of the frozen features gives (docs/models.md, "Why span's
    saliency lost to the probe").
    """

    def __init__(self, dim: int, video_dim: int | None = None, text_dim: int | None = None,
                 context: bool = True) -> None:
        """Args:
        dim: hidden size D of the context and the projected query.
        video_dim, text_dim: sizes of the cached features for the probe term, or both None
            for no probe term.
        context: include the context term (at least one of the two terms is required).
        """
        super().__init__()
        if not context and (video_dim is None or text_dim is None):
            raise ValueError("span: the saliency head needs the context term, the probe term or both")
        self.query = nn.Linear(dim, dim) if context else None
        self.probe = video_dim is not None and text_dim is not None
        if self.probe:
            self.bilinear = nn.Parameter(torch.zeros(text_dim, video_dim))  # P (Dt, Dv)
            self.linear = nn.Parameter(torch.zeros(video_dim))  # u (Dv,)

    def forward(self, context: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor,
                video: Tensor | None = None, tokens: Tensor | None = None) -> Tensor:
        """context (B, T, D), text (B, L, D) projected tokens, video (B, T, Dv) and tokens
        (B, L, Dt) as cached (needed with the probe term) -> (B, T) scores, ``-inf`` on padding."""
        scores = context.new_zeros(context.shape[:2])  # (B, T)
        if self.query is not None:
            direction = self.query(masked_mean(text, text_mask))  # (B, D)
            scores = scores + torch.einsum("btd,bd->bt", context, direction) / context.shape[-1] ** 0.5
        if self.probe:
            scores = scores + probe_logits(video, tokens, text_mask, self.bilinear, self.linear)
        return scores.masked_fill(~video_mask, float("-inf"))


@register_model("span")
class SpanNet(nn.Module):
    """Span extraction grounding network with presence and saliency heads.

    Decoding: a span's score is ``log p_start + log p_end`` (softmaxes over the real clips);
    ``Predictions.saliency`` is the raw saliency score (higher = more salient, ``-inf`` on
    padding) and ``Predictions.presence`` the sigmoid of the presence logit.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        conv_dilations: tuple[int, ...] = (1, 2, 4, 8),
        conv_kernel_size: int = 5,
        dropout: float = 0.0,
        position_scale: float = 1000.0,
        boundary_sigma_clips: float = 1.0,
        max_span_sec: float | None = None,
        max_span_fraction: float = 1.0,
        nms_iou_threshold: float | None = 0.7,
        start_end_weight: float = 1.0,
        presence_weight: float = 1.0,
        saliency_weight: float = 1.0,
        saliency_margin: float = 0.2,
        presence_negative_fraction: float = 0.25,
        saliency_probe: bool = True,
        saliency_context: bool = False,
        saliency_to_fusion: bool = True,
    ) -> None:
        """Build the network.

        Args:
            video_dim: size of the video features (from the cache).
            text_dim: size of the text token features (from the cache).
            hidden_dim: width D of every layer.
            num_layers: cross-attention + self-attention + feed-forward layers.
            num_heads: attention heads; must divide ``hidden_dim``.
            conv_dilations: dilation of each residual conv block, in order.
            conv_kernel_size: odd kernel size of the conv blocks (5 with dilations 1-8 sees 61 clips).
            dropout: dropout in projections, attention, feed-forward and conv blocks.
            position_scale: fractional position 1.0 is encoded as this sinusoid position.
            boundary_sigma_clips: width of the Gaussian start/end targets, in mean clip lengths.
            max_span_sec: longest decoded span in seconds, or None for no limit in seconds.
            max_span_fraction: longest decoded span as a fraction of the video duration, in (0, 1].
            nms_iou_threshold: IoU above which a lower-ranked decoded span is suppressed, or None.
            start_end_weight: weight of the start/end cross-entropy in the total loss.
            presence_weight: weight of the presence binary cross-entropy.
            saliency_weight: weight of the saliency loss (ranking hinges plus clip cross-entropy).
            saliency_margin: margin of the saliency hinge losses.
            presence_negative_fraction: fraction of each training batch, in (0, 1], whose query is
                also paired with another video for a presence negative (1.0: every query). Each
                negative costs a second pass through the fusion layers; see docs/benchmarks.md.
            saliency_probe: add the `probe`'s bilinear term on the cached features to the
                saliency head (``QuerySaliencyHead``).
            saliency_context: also give the saliency head its term on the clip context (it
                overfitted small training sets; docs/models.md).
            saliency_to_fusion: give the fusion layers each clip's saliency score (detached, so
                only the saliency losses train it) as a learned embedding added to the clip.
        """
        super().__init__()
        if hidden_dim % num_heads or hidden_dim % 2:
            raise ValueError(
                f"span: hidden_dim {hidden_dim} must be even and divisible by num_heads {num_heads}"
            )
        if conv_kernel_size % 2 == 0:
            raise ValueError(f"span: conv_kernel_size must be odd got {conv_kernel_size}")
        if not 0.0 < max_span_fraction <= 1.0:
            raise ValueError(f"span: max_span_fraction must be in (0, 1], got {max_span_fraction}")
        if max_span_sec is not None and max_span_sec <= 0:
            raise ValueError(f"span: max_span_sec must be positive or None, got {max_span_sec}")
        check_switch("span", "saliency_probe", saliency_probe)
        check_switch("span", "saliency_context", saliency_context)
        check_switch("span", "saliency_to_fusion", saliency_to_fusion)
        if not 0.0 < presence_negative_fraction <= 1.0:
            raise ValueError(
                f"span: presence_negative_fraction must be in (0, 1], got {presence_negative_fraction}"
            )
        whole = [isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in conv_dilations]
        if not whole or not all(whole):
            raise ValueError(f"span: conv_dilations must be whole numbers >= 1, got {conv_dilations}")
        if boundary_sigma_clips <= 0:
            raise ValueError(f"span: boundary_sigma_clips must be positive, got {boundary_sigma_clips}")
        self.video_dim = video_dim
        self.text_dim = text_dim
        self.boundary_sigma_clips = boundary_sigma_clips
        self.max_span_sec = max_span_sec
        self.max_span_fraction = max_span_fraction
        self.nms_iou_threshold = nms_iou_threshold
        self.start_end_weight = start_end_weight
        self.presence_weight = presence_weight
        self.saliency_weight = saliency_weight
        self.saliency_margin = saliency_margin
        self.presence_negative_fraction = presence_negative_fraction

        self.video_proj = Projection(video_dim, hidden_dim, dropout)
        self.text_proj = Projection(text_dim, hidden_dim, dropout)
        self.convs = nn.ModuleList(
            DilatedConvBlock(hidden_dim, d, conv_kernel_size, dropout) for d in conv_dilations
        )
        self.position = FractionalPositionalEncoding(hidden_dim, scale=position_scale)
        self.layers = nn.ModuleList(FusionLayer(hidden_dim, num_heads, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden_dim)
        self.span_head = nn.Linear(hidden_dim, 2)
        self.saliency_head = QuerySaliencyHead(
            hidden_dim, *((video_dim, text_dim) if saliency_probe else (None, None)), context=saliency_context
        )
        self.saliency_embed = nn.Linear(1, hidden_dim) if saliency_to_fusion else None
        self.presence_head = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1)
        )

    # ---- network -----------------------------------------------------------------------------

    def encode_video(self, video: Tensor, video_mask: Tensor, timestamps: Tensor,
                     duration: Tensor) -> tuple[Tensor, Tensor]:
        """The video branch, which does not see the query. video (B, T, Dv).

        Returns:
            The clip context (B, T, D) (projection and conv stack: the video alone, zero on
            padding; the saliency head reads it), and the clips (B, T, D) with positions added.
        """
        x = self.video_proj(video) * video_mask.unsqueeze(-1)  # (B, T, D)
        for conv in self.convs:
            x = conv(x, video_mask)  # (B, T, D)
        return x, x + self.position(timestamps, duration).to(x.dtype)

    def attend(self, clips: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor,
               saliency: Tensor | None = None) -> Tensor:
        """Clips read the projected query. clips (B, T, D), text (B, L, D) projected, saliency
        (B, T) the head's scores (``-inf`` on padding; read only with ``saliency_to_fusion``)
        -> (B, T, D)."""
        if self.saliency_embed is not None:
            clips = clips + embed_scores(self.saliency_embed, saliency, video_mask)  # (B, T, D)
        for layer in self.layers:
            clips = layer(clips, video_mask, text, text_mask)  # (B, T, D)
        return self.final_norm(clips)

    def fuse(self, video: Tensor, video_mask: Tensor, timestamps: Tensor, duration: Tensor,
             text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Saliency and query-aware clip features. video (B, T, Dv), text (B, L, Dt) as cached.

        Returns:
            The clip context (B, T, D) (`encode_video`), the saliency scores (B, T) (``-inf`` on
            padding), and the fused features (B, T, D) after positions and the fusion layers.
        """
        context, clips = self.encode_video(video, video_mask, timestamps, duration)  # (B, T, D) each
        projected = self.text_proj(text)  # (B, L, D)
        saliency = self.saliency_head(context, video_mask, projected, text_mask, video, text)  # (B, T)
        return context, saliency, self.attend(clips, video_mask, projected, text_mask, saliency)

    def presence_logit(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        """frames (B, T, D) -> (B,) logit that the query's event is in the video."""
        # Mean pooling sees how much of the video matches, max pooling whether any clip does.
        pooled = torch.cat([masked_mean(frames, video_mask), masked_max(frames, video_mask)], dim=-1)
        return self.presence_head(pooled).squeeze(-1)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Per-clip start/end/saliency scores and the presence logit.

        In training mode the first ``ceil(presence_negative_fraction * B)`` queries are also
        paired with the previous video of the batch (a roll by one along B) for the presence
        negatives; pairs that happen to share a video id are flagged in ``negative_valid`` and
        left out of the loss. The video branch does not see the query, so the negatives reuse
        the rolled clip features and only the fusion layers run again, on those M queries.

        Returns:
            ``start_logits``, ``end_logits``, ``saliency`` (B, T) with ``-inf`` on padding,
            ``presence_logit`` (B,), and in training ``presence_logit_negative`` (M,) and
            ``negative_valid`` (M,) bool.
        """
        self._check_batch(batch)
        video, tokens = batch["video"], batch["text"]
        video_mask, text_mask = batch["video_mask"], batch["text_mask"]
        context, clips = self.encode_video(video, video_mask, batch["timestamps"],
                                           batch["duration"])  # (B, T, D) each
        text = self.text_proj(tokens)  # (B, L, D)
        saliency = self.saliency_head(context, video_mask, text, text_mask, video, tokens)  # (B, T)
        frames = self.attend(clips, video_mask, text, text_mask, saliency)  # (B, T, D)
        padding = ~video_mask.unsqueeze(-1)  # (B, T, 1)
        span_logits = self.span_head(frames).masked_fill(padding, float("-inf"))  # (B, T, 2)
        output = {
            "start_logits": span_logits[..., 0],
            "end_logits": span_logits[..., 1],
            "saliency": saliency,
            "presence_logit": self.presence_logit(frames, video_mask),
        }
        if self.training:
            n_neg = math.ceil(self.presence_negative_fraction * len(clips))
            # Query i is paired with video i - 1 (a roll by one along B), gathered for the M
            # negatives only rather than rolling the whole batch.
            prev = (torch.arange(n_neg, device=clips.device) - 1) % len(clips)  # (M,)
            rolled_mask = video_mask.index_select(0, prev)  # (M, T)
            negative_saliency = None
            if self.saliency_embed is not None:  # the rolled video's clips against this query
                # Only read through `embed_scores`, which detaches it: no graph needed.
                with torch.no_grad():
                    negative_saliency = self.saliency_head(
                        context.index_select(0, prev), rolled_mask, text[:n_neg], text_mask[:n_neg],
                        video.index_select(0, prev), tokens[:n_neg])  # (M, T)
            negative_frames = self.attend(clips.index_select(0, prev), rolled_mask, text[:n_neg],
                                          text_mask[:n_neg], negative_saliency)  # (M, T, D)
            vids = list(batch["vid"])
            rolled_vids = vids[-1:] + vids[:-1]
            output["presence_logit_negative"] = self.presence_logit(negative_frames, rolled_mask)  # (M,)
            # Compared on the host; the copy to the device does not wait for queued device work.
            valid = torch.tensor([v != r for v, r in zip(vids[:n_neg], rolled_vids[:n_neg], strict=True)])
            output["negative_valid"] = valid.to(video_mask.device, non_blocking=True)  # (M,)
        return output

    def _check_batch(self, batch: dict) -> None:
        check_batch("span", batch, self.video_dim, self.text_dim)

    # ---- loss --------------------------------------------------------------------------------

    def loss(self, output: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """Weighted sum of the start/end, presence and saliency losses.

        The start/end target is built from each query's longest ground-truth window (the first
        of equal length); the parts are returned unweighted for logging.

        Returns:
            ``loss`` (weighted total), ``start_end``, ``presence``, ``saliency``.
        """
        start_end = self._start_end_loss(output, batch)
        presence = self._presence_loss(output)
        saliency = self._saliency_loss(output["saliency"], batch)
        total = (self.start_end_weight * start_end + self.presence_weight * presence
                 + self.saliency_weight * saliency)
        return {"loss": total, "start_end": start_end, "presence": presence, "saliency": saliency}

    def _start_end_loss(self, output: dict[str, Tensor], batch: dict) -> Tensor:
        """Cross-entropy of the start and end logits against Gaussian-smoothed boundary targets."""
        mask, timestamps = batch["video_mask"], batch["timestamps"]
        gt = longest_window(batch["windows"], batch["window_mask"], batch["qid"])  # (B, 2)
        clip_sec = timestamps[..., 1] - timestamps[..., 0]  # (B, T)
        sigma_sec = self.boundary_sigma_clips * (clip_sec * mask).sum(-1) / mask.sum(-1)  # (B,)
        dtype = output["start_logits"].dtype
        start_target = gaussian_boundary_targets(timestamps[..., 0], gt[:, 0], sigma_sec, mask)  # (B, T)
        end_target = gaussian_boundary_targets(timestamps[..., 1], gt[:, 1], sigma_sec, mask)  # (B, T)
        start_target, end_target = start_target.to(dtype), end_target.to(dtype)
        start_ce = -(start_target * log_softmax_masked(output["start_logits"], mask)).sum(-1)  # (B,)
        end_ce = -(end_target * log_softmax_masked(output["end_logits"], mask)).sum(-1)  # (B,)
        return ((start_ce + end_ce) / 2).mean()

    def _presence_loss(self, output: dict[str, Tensor]) -> Tensor:
        """Binary cross-entropy: the query's own video is a positive, a rolled-in video a negative.

        With negatives for M of the B queries, each negative weighs B / M, so the two classes
        keep the weight they had with a negative per query (M = B is the plain mean over the B
        positives and the valid negatives). Masked, not boolean-indexed, so it needs no host sync.
        """
        logits = output["presence_logit"]  # (B,)
        positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
        if "presence_logit_negative" not in output:
            return positive.mean()
        negative_logits = output["presence_logit_negative"]  # (M,)
        valid = output["negative_valid"].to(negative_logits.dtype)  # (M,)
        negative = F.binary_cross_entropy_with_logits(
            negative_logits, torch.zeros_like(negative_logits), reduction="none"
        )  # (M,)
        weight = len(logits) / len(negative_logits)
        return (positive.sum() + weight * (negative * valid).sum()) / (len(logits) + weight * valid.sum())

    def _saliency_loss(self, scores: Tensor, batch: dict) -> Tensor:
        """Clip cross-entropy over the batch plus margin ranking inside labelled videos.

        ``clip_window_bce`` (every query) plus two hinge terms on videos whose saliency is
        labelled, each averaged over its pairs: (1) of two labelled clips of one video, the
        higher-labelled one should score ``margin`` above the other; (2) a labelled clip inside a
        ground-truth window should score ``margin`` above every real clip outside all windows.
        """
        video_mask = batch["video_mask"]
        inside = clips_in_windows(batch["timestamps"], batch["windows"], batch["window_mask"])  # (B, T)
        loss = clip_window_bce(scores, inside, video_mask)  # every query has a window (_start_end_loss)
        scores = torch.where(video_mask, scores, 0.0)  # (B, T) no -inf, so differences stay finite
        labelled = batch["saliency_mask"] & video_mask  # (B, T)
        has_labels = labelled.any(dim=-1)  # (B,)
        if not has_labels.any():
            return loss
        label = batch["saliency"]  # (B, T)
        hinge = F.relu(self.saliency_margin - (scores[:, :, None] - scores[:, None, :]))  # (B, T, T) i over j
        ranked = (label[:, :, None] > label[:, None, :]) & labelled[:, :, None] & labelled[:, None, :]
        positive = labelled & inside
        negative = video_mask & ~inside & has_labels[:, None]
        contrast = positive[:, :, None] & negative[:, None, :]  # (B, T, T)
        for pairs in (ranked, contrast):
            if pairs.any():
                loss = loss + hinge[pairs].mean()
        return loss

    # ---- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        """Top-``k`` windows per query, with saliency and presence probability.

        The span limit per sample is ``max_span_fraction * duration``, further capped by
        ``max_span_sec`` when set; see ``blocks.decode_spans`` for validity and tie rules.
        """
        duration = batch["duration"].to(torch.float32)  # (B,)
        limit_sec = duration * self.max_span_fraction
        if self.max_span_sec is not None:
            limit_sec = limit_sec.clamp(max=self.max_span_sec)
        windows, scores = decode_spans(output["start_logits"], output["end_logits"], batch["timestamps"],
                                       batch["video_mask"], limit_sec, k, self.nms_iou_threshold)
        return Predictions(
            windows=windows,
            scores=scores,
            saliency=output["saliency"],
            presence=torch.sigmoid(output["presence_logit"]),
        )
