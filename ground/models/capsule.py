"""`capsule`: multi-scale temporal convolution and capsule dynamic routing between frames and words.

After "Video-Text Temporal Localization via Multi-Scale Convolution and Dynamic Routing"
(/work/shared/design/capsule_multiscale_routing_paper.txt). Frozen video and text features are
projected to one hidden size and the clips get sinusoidal positions (eq. 1-2); parallel 1D
convolutions with kernels {1, 3, 5} are fused by a 1x1 convolution with LayerNorm and a residual
(eq. 3-6); frames (parts) are routed to text tokens (wholes) by dynamic routing in ``num_capsules``
capsule subspaces (eq. 7-11); a context-aware cross-attention lets every frame read the query
tokens, enriched with the visual content routed to them, and then its neighbours; a two-layer MLP
scores every clip as the start and the end (eq. 13). Training minimises BCE against
Gaussian-smoothed boundaries, an in-batch InfoNCE between the ground-truth window and the query,
and, from ``diversity_start_epoch`` on, a capsule diversity penalty (eq. 16-19). Decoding is
argmax (best valid spans) or the soft expectation of the boundaries (eq. 14-15).

Read top to bottom: blocks, the network, its loss, its decoder. Shapes: B batch, T clips,
L tokens, D hidden, C capsules, E capsule dim, K predicted windows. Masks are True where real.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ground.models import register_model
from ground.models.blocks import (
    ClipEvidence,
    FeedForward,
    MaskedAttention,
    Predictions,
    Projection,
    check_batch,
    decode_spans,
    longest_window,
    masked_mean,
    nms_1d,
    sinusoidal_encoding,
)

DecodeMode = Literal["argmax", "soft"]


class MultiScaleTemporalEncoder(nn.Module):
    """Parallel 1D convolutions of several widths, fused by a 1x1 convolution (paper eq. 3-6).

    ``out = LayerNorm(Conv1x1([ReLU(Conv_k(x)) for k])) + x``. Padding clips are zeroed before the
    convolutions, so a real clip next to padding sees the zeros it would see past the end of an
    unpadded video; the output is zeroed there again.
    """

    def __init__(self, dim: int, branch_dim: int, kernel_sizes: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv1d(dim, branch_dim, k, padding=k // 2) for k in kernel_sizes)
        self.fuse = nn.Conv1d(branch_dim * len(kernel_sizes), dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, D), mask (B, T) -> (B, T, D), zero on padding."""
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        h = (x * keep).transpose(1, 2)  # (B, D, T)
        scales = torch.cat([F.relu(conv(h)) for conv in self.branches], dim=1)  # (B, S * branch_dim, T)
        fused = self.fuse(scales).transpose(1, 2)  # (B, T, D)
        return (self.dropout(self.norm(fused)) + x) * keep


def squash(s: Tensor) -> Tensor:
    """Capsule non-linearity ``|s|^2 / (1 + |s|^2) * s / |s|`` over the last dim (paper eq. 10)."""
    return squash_scale(s) * s


def squash_scale(s: Tensor) -> Tensor:
    """The factor ``|s| / (1 + |s|^2)`` that ``squash`` multiplies ``s`` by; (..., E) -> (..., 1)."""
    squared = (s * s).sum(dim=-1, keepdim=True)
    # The epsilon keeps the gradient of |s| finite at s = 0 (an all-zero vote).
    return squared.add(1e-12).sqrt() / (1.0 + squared)


class CapsuleRouting(nn.Module):
    """Dynamic routing of frames (parts) to text tokens (wholes) in ``num_capsules`` subspaces.

    Per capsule c, frame i votes ``u_i = W_r v_i + b_r`` (eq. 7) and token j is mapped into the same
    space as ``q_j``. Each iteration: couplings ``c_ij = softmax_j(b_ij)`` over the real tokens
    (eq. 8), ``s_j = sum_i c_ij u_i / m`` over the real frames (eq. 9), ``v_j = squash(s_j)``
    (eq. 10), then the agreement update (eq. 11). Two changes to the paper's equations, both
    needed for any video length and for the routing to localise anything:

    - eq. 11 adds ``v_j . q_j`` to ``b_ij`` for every frame i alike; with votes that do not depend
      on j the couplings would then be the same for every frame and could never say which frames
      match which word. The update is spread over the frames instead:
      ``b_ij += |s_j| / (1 + |s_j|^2) * (u_i . q_j) / sqrt(E)``, whose coupling-weighted mean over
      the frames, ``sum_i c_ij (...) / m``, is exactly ``(v_j . q_j) / sqrt(E)``.
    - ``s_j`` is divided by ``m = T_real / L_real``, the mean coupling mass a token receives, so its
      norm (and with it the squash) does not grow with the number of clips.
    """

    def __init__(self, dim: int, num_capsules: int, capsule_dim: int, iterations: int) -> None:
        super().__init__()
        self.num_capsules = num_capsules
        self.capsule_dim = capsule_dim
        self.iterations = iterations
        self.vote = nn.Linear(dim, num_capsules * capsule_dim)
        self.token = nn.Linear(dim, num_capsules * capsule_dim)

    def forward(self, frames: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Route frames (B, T, D) to tokens (B, L, D).

        Returns:
            coupling (B, T, L, C) (zero on padding frames and tokens), capsules ``v`` (B, L, C, E)
            and each frame's final agreement with the tokens it routes to (B, T, C).
        """
        (b, t, _), n_tokens = frames.shape, text.shape[1]
        u = self.vote(frames).view(b, t, self.num_capsules, self.capsule_dim)  # (B, T, C, E)
        q = self.token(text).view(b, n_tokens, self.num_capsules, self.capsule_dim)  # (B, L, C, E)
        match = torch.einsum("btce,blce->btlc", u, q) / math.sqrt(self.capsule_dim)  # (B, T, L, C)
        token_pad = ~text_mask[:, None, :, None]  # (B, 1, L, 1)
        frame_keep = video_mask[:, :, None, None].to(u.dtype)  # (B, T, 1, 1)
        mass = (video_mask.sum(1) / text_mask.sum(1)).to(u.dtype)[:, None, None, None]  # (B, 1, 1, 1)
        logits = torch.zeros_like(match)  # (B, T, L, C) routing logits b_ij
        for step in range(self.iterations):
            coupling = torch.softmax(logits.masked_fill(token_pad, float("-inf")), dim=2) * frame_keep
            s = torch.einsum("btlc,btce->blce", coupling, u) / mass  # (B, L, C, E)
            scale = squash_scale(s)  # (B, L, C, 1)
            if step < self.iterations - 1:
                logits = logits + match * scale.squeeze(-1)[:, None]  # (B, T, L, C)
        capsules = scale * s  # squash(s): (B, L, C, E)
        agreement = (coupling * match * scale.squeeze(-1)[:, None]).sum(dim=2)  # (B, T, C)
        return coupling, capsules, agreement


class ContextAwareCrossAttention(nn.Module):
    """Frames read the query tokens (each enriched with its capsules), then their neighbours."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.cross_attn = MaskedAttention(dim, num_heads, dropout)
        self.self_attn = MaskedAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dropout=dropout)

    def forward(self, frames: Tensor, video_mask: Tensor, context: Tensor, text_mask: Tensor) -> Tensor:
        """frames (B, T, D), context (B, L, D), already normalised -> (B, T, D)."""
        frames = self.cross_attn(frames, text_mask, context=context)  # (B, T, D)
        frames = self.self_attn(frames, video_mask)  # (B, T, D)
        return self.ffn(frames)


@register_model("capsule")
class CapsuleNet(nn.Module):
    """Multi-scale convolution + capsule routing grounding network with a start/end head.

    Decoding (``decode_mode``): ``"argmax"`` ranks valid spans (start <= end, within the span limit)
    by ``log p_start + log p_end`` with softmaxes over the real clips (``blocks.decode_spans``);
    ``"soft"`` puts first the window between the expected start and end times under those two
    softmaxes, scored like the best span, followed by the best spans that overlap it by at most
    ``nms_iou_threshold``. Scores are span log-probabilities. No saliency or presence head.

    The diversity term is switched on by ``set_epoch``, which the trainer calls at each epoch start.
    """

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        hidden_dim: int = 384,
        kernel_sizes: tuple[int, ...] = (1, 3, 5),
        branch_dim: int = 96,
        num_capsules: int = 8,
        capsule_dim: int = 96,
        routing_iterations: int = 3,
        num_layers: int = 1,
        num_heads: int = 8,
        dropout: float = 0.15,
        boundary_sigma_fraction: float = 0.1,
        alignment_temperature: float = 0.07,
        localization_weight: float = 1.0,
        alignment_weight: float = 0.5,
        diversity_weight: float = 0.1,
        diversity_start_epoch: int = 10,
        decode_mode: DecodeMode = "soft",
        max_span_fraction: float = 1.0,
        nms_iou_threshold: float | None = 0.7,
        clip_evidence: bool = True,
        evidence_weight: float = 1.0,
    ) -> None:
        """Build the network.

        Args:
            video_dim: size of the video features (from the cache).
            text_dim: size of the text token features (from the cache).
            hidden_dim: width D of the shared space (the paper's 384).
            kernel_sizes: odd kernel sizes of the parallel temporal convolutions.
            branch_dim: output channels of each convolution branch.
            num_capsules: capsule subspaces C the routing runs in.
            capsule_dim: size E of each capsule.
            routing_iterations: dynamic routing iterations R, >= 1.
            num_layers: context-aware cross-attention layers after the routing.
            num_heads: attention heads; must divide ``hidden_dim``.
            dropout: dropout in projections, encoder, attention and the head.
            boundary_sigma_fraction: width of the Gaussian boundary targets as a fraction of the
                video duration (the paper's sigma = 0.1 on normalised time).
            alignment_temperature: InfoNCE temperature tau.
            localization_weight: weight of the boundary BCE (lambda_loc).
            alignment_weight: weight of the InfoNCE alignment loss (lambda_align).
            diversity_weight: weight of the capsule diversity loss (lambda_div) once switched on.
            diversity_start_epoch: first epoch (0-based) whose loss includes the diversity term.
            decode_mode: ``"soft"`` (expected boundaries first) or ``"argmax"`` (best spans only).
            max_span_fraction: longest decoded span as a fraction of the video duration, in (0, 1].
            nms_iou_threshold: IoU above which a lower-ranked decoded window is suppressed, or None.
            clip_evidence: add the `probe`'s clip-query score on the cached features
                (``blocks.ClipEvidence``) to the clips before the multi-scale encoder; it is
                also the saliency output.
            evidence_weight: weight of that score's clip cross-entropy in the loss.
        """
        super().__init__()
        if hidden_dim % num_heads or hidden_dim % 2:
            raise ValueError(
                f"capsule: hidden_dim {hidden_dim} must be even and divisible by num_heads {num_heads}"
            )
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"capsule: kernel_sizes must be odd and positive, got {kernel_sizes}")
        if routing_iterations < 1:
            raise ValueError(f"capsule: routing_iterations must be >= 1, got {routing_iterations}")
        if branch_dim < 1 or capsule_dim < 1:
            raise ValueError(
                f"capsule: branch_dim and capsule_dim must be >= 1, got {branch_dim} and {capsule_dim}"
            )
        if boundary_sigma_fraction <= 0:
            raise ValueError(
                f"capsule: boundary_sigma_fraction must be positive, got {boundary_sigma_fraction}"
            )
        if alignment_temperature <= 0:
            raise ValueError(f"capsule: alignment_temperature must be positive, got {alignment_temperature}")
        if decode_mode not in ("argmax", "soft"):
            raise ValueError(f"capsule: decode_mode must be 'argmax' or 'soft', got {decode_mode!r}")
        if not 0.0 < max_span_fraction <= 1.0:
            raise ValueError(f"capsule: max_span_fraction must be in (0, 1], got {max_span_fraction}")
        self.video_dim = video_dim
        self.text_dim = text_dim
        self.hidden_dim = hidden_dim
        self.boundary_sigma_fraction = boundary_sigma_fraction
        self.alignment_temperature = alignment_temperature
        self.localization_weight = localization_weight
        self.alignment_weight = alignment_weight
        self.diversity_weight = diversity_weight
        self.diversity_start_epoch = diversity_start_epoch
        self.decode_mode = decode_mode
        self.max_span_fraction = max_span_fraction
        self.nms_iou_threshold = nms_iou_threshold
        self.epoch = 0

        self.video_proj = Projection(video_dim, hidden_dim, dropout)
        self.text_proj = Projection(text_dim, hidden_dim, dropout)
        self.encoder = MultiScaleTemporalEncoder(hidden_dim, branch_dim, tuple(kernel_sizes), dropout)
        self.routing = CapsuleRouting(hidden_dim, num_capsules, capsule_dim, routing_iterations)
        capsules_flat = num_capsules * capsule_dim
        self.routed_proj = nn.Linear(capsules_flat + num_capsules, hidden_dim)
        self.context_proj = nn.Linear(capsules_flat, hidden_dim)
        self.context_norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            ContextAwareCrossAttention(hidden_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.head = nn.Sequential(
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 2),
        )
        self.align_video = nn.Linear(hidden_dim, hidden_dim)
        self.align_text = nn.Linear(hidden_dim, hidden_dim)
        self.evidence_weight = evidence_weight
        self.evidence = ClipEvidence.optional("capsule", clip_evidence, video_dim, text_dim, hidden_dim,
                                              evidence_weight)

    def set_epoch(self, epoch: int) -> None:
        """Tell the network the current (0-based) training epoch; it gates the diversity loss."""
        self.epoch = int(epoch)

    # ---- network -----------------------------------------------------------------------------

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Per-clip start/end logits plus what the alignment and diversity losses need.

        Returns:
            ``start_logits``, ``end_logits`` (B, T) with ``-inf`` on padding; ``clip_embedding``
            (B, T, D) unit vectors of the encoded clips for the alignment loss (zero on padding);
            ``query_embedding`` (B, D) unit vector of the query; ``capsules`` (B, L, C, E).
        """
        self._check_batch(batch)
        video_mask, text_mask = batch["video_mask"], batch["text_mask"]
        keep = video_mask.unsqueeze(-1)  # (B, T, 1)
        centre_sec = batch["timestamps"].mean(dim=-1)  # (B, T)
        x = self.video_proj(batch["video"])  # (B, T, D)
        x = (x + sinusoidal_encoding(centre_sec, self.hidden_dim).to(x.dtype)) * keep
        evidence = None
        if self.evidence is not None:
            x, evidence = self.evidence.add_to(x, batch["video"], video_mask, batch["text"], text_mask)
        x = self.encoder(x, video_mask)  # (B, T, D)
        text = self.text_proj(batch["text"])  # (B, L, D)

        coupling, capsules, agreement = self.routing(x, video_mask, text, text_mask)
        b, t = video_mask.shape
        read_back = torch.einsum("btlc,blce->btce", coupling, capsules).reshape(b, t, -1)  # (B, T, C*E)
        routed = self.routed_proj(torch.cat([read_back, agreement], dim=-1))  # (B, T, D)
        frames = (x + self.dropout(routed)) * keep  # (B, T, D)
        context = self.context_norm(text + self.context_proj(capsules.flatten(2)))  # (B, L, D)
        for layer in self.layers:
            frames = layer(frames, video_mask, context, text_mask)  # (B, T, D)

        logits = self.head(frames).masked_fill(~keep, float("-inf"))  # (B, T, 2)
        output = {
            "start_logits": logits[..., 0],
            "end_logits": logits[..., 1],
            "clip_embedding": F.normalize(self.align_video(x), dim=-1) * keep,
            "query_embedding": F.normalize(self.align_text(masked_mean(text, text_mask)), dim=-1),
            "capsules": capsules,
        }
        if evidence is not None:
            output["saliency"] = evidence
        return output

    def _check_batch(self, batch: dict) -> None:
        check_batch("capsule", batch, self.video_dim, self.text_dim)

    # ---- loss --------------------------------------------------------------------------------

    def loss(self, output: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """``lambda_loc * L_loc + lambda_align * L_align + lambda_div * L_div`` (paper eq. 16).

        Targets come from each query's longest ground-truth window (the first of equal length).
        The diversity term counts from epoch ``diversity_start_epoch`` on; before that its weight
        is zero (it is still returned for logging). Parts are returned unweighted.

        Returns:
            ``loss`` (weighted total), ``localization``, ``alignment``, ``diversity``.
        """
        gt = longest_window(batch["windows"], batch["window_mask"], batch["qid"])  # (B, 2)
        localization = self._localization_loss(output, batch, gt)
        alignment = self._alignment_loss(output, batch, gt)
        diversity = self._diversity_loss(output["capsules"], batch["text_mask"])
        diversity_weight = self.diversity_weight if self.epoch >= self.diversity_start_epoch else 0.0
        total = (self.localization_weight * localization + self.alignment_weight * alignment
                 + diversity_weight * diversity)
        parts = {"localization": localization, "alignment": alignment, "diversity": diversity}
        if "saliency" in output:
            parts["evidence"] = ClipEvidence.loss(output["saliency"], batch)
            total = total + self.evidence_weight * parts["evidence"]
        return {"loss": total, **parts}

    def _localization_loss(self, output: dict[str, Tensor], batch: dict, gt: Tensor) -> Tensor:
        """Per-clip BCE of start and end against Gaussians of the boundary (paper eq. 17).

        The target of a clip is ``exp(-d^2 / 2 sigma^2)`` with d the distance in seconds between its
        start (or end) time and the ground-truth start (or end), and ``sigma`` the fraction
        ``boundary_sigma_fraction`` of the duration; it is 1 on a clip edge that hits the boundary.
        Averaged over the real clips of each query, summed over start and end, averaged over queries.
        """
        mask, timestamps = batch["video_mask"], batch["timestamps"]
        sigma_sec = (self.boundary_sigma_fraction * batch["duration"])[:, None]  # (B, 1)
        total = 0.0
        for logits, edges_sec, boundary_sec in (
            (output["start_logits"], timestamps[..., 0], gt[:, :1]),
            (output["end_logits"], timestamps[..., 1], gt[:, 1:]),
        ):
            target = torch.exp(-((edges_sec - boundary_sec) ** 2) / (2 * sigma_sec**2)).to(logits.dtype)
            # Padding logits are -inf; BCE of -inf against a 0 target is NaN, so zero them first.
            bce = F.binary_cross_entropy_with_logits(torch.where(mask, logits, 0.0), target, reduction="none")
            total = total + (bce * mask).sum(-1) / mask.sum(-1)  # (B,)
        return total.mean()

    def _alignment_loss(self, output: dict[str, Tensor], batch: dict, gt: Tensor) -> Tensor:
        """In-batch InfoNCE between each query and the ground-truth window of every video (eq. 18).

        The window's embedding is the mean of its clips' embeddings weighted by how many seconds of
        each clip lie inside the window (the clip nearest to the window's centre for a window that
        covers no clip time). Another query of the same video is no negative: its window may show
        the same moment, so those pairs are left out of the softmax.
        """
        timestamps, mask = batch["timestamps"], batch["video_mask"]
        start_sec, end_sec = timestamps[..., 0], timestamps[..., 1]  # (B, T)
        overlap_sec = torch.minimum(end_sec, gt[:, 1:]) - torch.maximum(start_sec, gt[:, :1])
        weight = overlap_sec.clamp(min=0) * mask  # (B, T)
        centre_gap = (timestamps.mean(-1) - gt.mean(-1, keepdim=True)).abs().masked_fill(~mask, float("inf"))
        nearest = F.one_hot(centre_gap.argmin(-1), mask.shape[1]).to(weight.dtype)  # (B, T)
        weight = torch.where(weight.sum(-1, keepdim=True) > 0, weight, nearest)
        window = torch.einsum("bt,btd->bd", weight / weight.sum(-1, keepdim=True), output["clip_embedding"])
        window = F.normalize(window, dim=-1)  # (B, D)
        logits = output["query_embedding"] @ window.T / self.alignment_temperature  # (B queries, B windows)
        video_code = {vid: code for code, vid in enumerate(dict.fromkeys(batch["vid"]))}
        codes = torch.tensor([video_code[vid] for vid in batch["vid"]], device=logits.device)  # (B,)
        own = torch.eye(len(codes), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill((codes[:, None] == codes[None, :]) & ~own, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(codes), device=logits.device))

    @staticmethod
    def _diversity_loss(capsules: Tensor, text_mask: Tensor) -> Tensor:
        """``sum_{c != c'} |v_c . v_c'|`` over each token's capsules (eq. 19), mean over real tokens."""
        gram = torch.einsum("blce,blke->blck", capsules, capsules).abs()  # (B, L, C, C)
        off_diagonal = gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)  # (B, L)
        per_query = (off_diagonal * text_mask).sum(-1) / text_mask.sum(-1)  # (B,)
        return per_query.mean()

    # ---- decoding ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        """Top-``k`` windows per query by ``decode_mode`` (see the class docstring)."""
        mask, timestamps = batch["video_mask"], batch["timestamps"]
        limit_sec = batch["duration"].to(torch.float32) * self.max_span_fraction  # (B,)
        if self.decode_mode == "argmax":
            windows, scores = decode_spans(output["start_logits"], output["end_logits"], timestamps, mask,
                                           limit_sec, k, self.nms_iou_threshold)
            return Predictions(windows=windows, scores=scores, saliency=output.get("saliency"))
        # Soft expectation: the expected window first, then spans that do not repeat it. Twice k
        # spans leave room for the ones the expected window suppresses.
        spans, span_scores = decode_spans(output["start_logits"], output["end_logits"], timestamps, mask,
                                          limit_sec, 2 * k, self.nms_iou_threshold)  # (B, 2k, 2), (B, 2k)
        expected = self.expected_windows(output, batch)  # (B, 2)
        threshold = 1.0 if self.nms_iou_threshold is None else self.nms_iou_threshold
        windows_out, scores_out = [], []
        for b in range(len(expected)):
            real = torch.isfinite(span_scores[b])
            candidates = torch.cat([expected[b : b + 1], spans[b][real]])  # (N, 2)
            cand_scores = torch.cat([span_scores[b, :1], span_scores[b][real]])  # (N,)
            # The expected window carries the best span's score and comes first in input order;
            # nms_1d breaks ties by input order, so it stays first.
            kept = nms_1d(candidates, cand_scores, threshold)[:k]
            windows_b, scores_b = candidates[kept], cand_scores[kept]
            missing = k - len(kept)
            windows_out.append(torch.cat([windows_b, windows_b[-1:].expand(missing, 2)]))
            scores_out.append(torch.cat([scores_b, scores_b.new_full((missing,), float("-inf"))]))
        return Predictions(windows=torch.stack(windows_out), scores=torch.stack(scores_out),
                           saliency=output.get("saliency"))

    @staticmethod
    def expected_windows(output: dict[str, Tensor], batch: dict) -> Tensor:
        """Expected start and end times under the softmaxes of the start/end logits (paper eq. 15).

        ``start = sum_t p_start(t) * start_sec(t)``, ``end = sum_t p_end(t) * end_sec(t)`` over the
        real clips. The two expectations come from independent distributions and can cross; the
        window then runs from the earlier to the later of the two.

        Returns:
            (B, 2) [start_sec, end_sec], inside the span of the real clips.
        """
        timestamps = batch["timestamps"].to(torch.float32)
        p_start = torch.softmax(output["start_logits"].float(), dim=-1)  # (B, T), 0 on padding (-inf)
        p_end = torch.softmax(output["end_logits"].float(), dim=-1)
        start_sec = (p_start * timestamps[..., 0]).sum(-1)  # (B,)
        end_sec = (p_end * timestamps[..., 1]).sum(-1)
        return torch.stack([torch.minimum(start_sec, end_sec), torch.maximum(start_sec, end_sec)], dim=-1)
