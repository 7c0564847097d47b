"""Building blocks shared by every grounding network in ``ground/models``.

Layers (projection, positional encodings, masked attention, feed-forward), the time geometry
of windows (temporal IoU, NMS, which clips fall inside a window), training targets (Gaussian
boundary targets, clips assigned to windows) and decoding (SQuAD-style span decoding, top-k
after NMS), plus the ``Predictions`` every network's ``decode`` returns.

Letters in shape comments: B batch, T clips, L tokens, D dim, W ground-truth windows,
K predicted windows, N / M arbitrary window counts. Masks are True where an entry is real.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


@dataclass(frozen=True)
class Predictions:
    """What ``decode`` returns for one batch.

    Every sample gets exactly ``K`` windows. When a sample has fewer than ``K`` distinct
    candidates (a one-clip video has a single possible span), the missing slots hold the
    sample's last real window with score ``-inf``; ``window_mask`` tells them apart.
    """

    windows: Tensor
    """(B, K, 2) [start_sec, end_sec] of each predicted window, best first."""
    scores: Tensor
    """(B, K) score of each window, sorted descending; ``-inf`` marks a filler slot."""
    saliency: Tensor | None = None
    """(B, T) per-clip highlight score (higher = more salient), or None without a saliency head."""
    presence: Tensor | None = None
    """(B,) probability that the queried event happens in the video at all, or None."""

    def __post_init__(self) -> None:
        if self.windows.ndim != 3 or self.windows.shape[-1] != 2:
            raise ValueError(f"Predictions.windows must be (B, K, 2), got {tuple(self.windows.shape)}")
        if self.scores.shape != self.windows.shape[:2]:
            raise ValueError(
                f"Predictions.scores must be (B, K) = {tuple(self.windows.shape[:2])}, "
                f"got {tuple(self.scores.shape)}"
            )
        batch_size = self.windows.shape[0]
        if self.saliency is not None and (self.saliency.ndim != 2 or self.saliency.shape[0] != batch_size):
            raise ValueError(
                f"Predictions.saliency must be (B={batch_size}, T), got {tuple(self.saliency.shape)}"
            )
        if self.presence is not None and self.presence.shape != (batch_size,):
            raise ValueError(
                f"Predictions.presence must be (B={batch_size},), got {tuple(self.presence.shape)}"
            )

    @property
    def window_mask(self) -> Tensor:
        """(B, K) True where a slot holds a real candidate rather than a filler."""
        return torch.isfinite(self.scores)


# ---------------------------------------------------------------------------------------------
# Masks


def check_nonempty(mask: Tensor, ids: Sequence[str], what: str) -> None:
    """Raise naming every sample whose mask has no real entry.

    Attention over an all-padding row and a softmax over no clips are both NaN, so this is
    checked once at the boundary rather than discovered as a NaN loss later.

    Args:
        mask: (B, N) True where an entry is real.
        ids: one id per sample (query ids), used in the message.
        what: what the entries are ("video clips", "text tokens", "ground-truth windows").
    """
    empty = (~mask.any(dim=-1)).nonzero(as_tuple=True)[0].tolist()
    if empty:
        names = ", ".join(str(ids[i]) for i in empty)
        raise ValueError(f"no real {what} for query {names}: every entry of the mask is False")


BATCH_KEYS = ("video", "video_mask", "timestamps", "duration", "text", "text_mask", "qid", "vid")
"""Keys of the batch dict (docs/architecture.md) that every network reads."""


def check_switch(model: str, key: str, value: object) -> None:
    """Refuse a constructor switch that is not a bool: a config's ``maybe`` or ``abc`` is truthy and
    would otherwise read as true.

    Raises:
        ValueError: ``"<model>: <key> must be true or false, got <value>"``.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{model}: {key} must be true or false, got {value!r}")


def check_loss_weight(model: str, key: str, value: object) -> None:
    """Refuse a loss weight that is not a finite real number >= 0 (a bool, a string, NaN, inf).

    Raises:
        ValueError: ``"<model>: <key> must be a number >= 0, got <value>"``.
    """
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and value >= 0):
        raise ValueError(f"{model}: {key} must be a number >= 0, got {value!r}")


def check_batch(model: str, batch: dict, video_dim: int, text_dim: int) -> None:
    """Refuse a batch a network cannot use, naming the network and the offending queries.

    Checks the keys, the feature dims the network was built for, that every sample has at
    least one real clip and token, and positive durations.
    """
    missing = [key for key in BATCH_KEYS if key not in batch]
    if missing:
        raise KeyError(f"{model}: batch is missing {missing}")
    qids = batch["qid"]
    video, text = batch["video"], batch["text"]
    if video.shape[-1] != video_dim or text.shape[-1] != text_dim:
        raise ValueError(
            f"{model}: built for video_dim={video_dim}, text_dim={text_dim}, got batch features "
            f"{video.shape[-1]} and {text.shape[-1]} (queries {list(qids)[:3]}...)"
        )
    check_nonempty(batch["video_mask"], qids, "video clips")
    check_nonempty(batch["text_mask"], qids, "text tokens")
    bad = (batch["duration"] <= 0).nonzero(as_tuple=True)[0].tolist()
    if bad:
        raise ValueError(f"{model}: non-positive duration for query {', '.join(str(qids[i]) for i in bad)}")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real entries of dim 1. x (B, N, D), mask (B, N) -> (B, D)."""
    weights = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over the real entries of dim 1. x (B, N, D), mask (B, N) -> (B, D)."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)


def log_softmax_masked(logits: Tensor, mask: Tensor) -> Tensor:
    """Log-softmax over the real entries of the last dim; padding gets 0 (not -inf).

    Zero rather than -inf on padding lets the result be multiplied by a target that is zero
    there without producing 0 * -inf = NaN.
    """
    log_p = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    return log_p.masked_fill(~mask, 0.0)


# ---------------------------------------------------------------------------------------------
# Layers


class Projection(nn.Module):
    """Linear map of input features to the hidden size, then LayerNorm and dropout.

    Frozen-encoder features differ in scale between encoders; the LayerNorm puts every
    modality on the same footing before they meet in attention.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        """Args:
        in_dim: input feature size (from the cache).
        out_dim: hidden size.
        dropout: dropout after the normalisation.
        """
        super().__init__()
        self.in_dim = in_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"Projection expects features of size {self.in_dim}, got {x.shape[-1]}")
        return self.dropout(self.norm(self.linear(x)))  # (..., out_dim)


def sinusoidal_encoding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Transformer sinusoidal encoding of real-valued positions.

    Channel ``i < dim/2`` is ``sin(p / base^(2i/dim))``, channel ``dim/2 + i`` the matching cosine.

    Args:
        positions: (...) float positions (need not be integers).
        dim: encoding size, even.
        base: longest wavelength is ``2 pi base``; positions up to about ``base`` stay distinct.

    Returns:
        (..., dim) encoding in the dtype of ``positions`` (float32 for integer input).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dim, got {dim}")
    positions = positions if positions.is_floating_point() else positions.float()
    half = dim // 2
    exponent = torch.arange(half, device=positions.device, dtype=positions.dtype) * (2.0 / dim)
    inv_freq = base ** (-exponent)  # (dim/2,)
    angles = positions.unsqueeze(-1) * inv_freq  # (..., dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., dim)


class FractionalPositionalEncoding(nn.Module):
    """Sinusoidal encoding of where a clip sits as a fraction of the video's duration.

    Index-based encodings tie a model to the lengths it saw in training; a fraction in [0, 1]
    means the same thing for a 10 s and a 2 h video, so any length works. The fraction of a
    clip is its window centre divided by the duration, so uneven strides are encoded honestly.
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        """Args:
        dim: encoding size, even.
        scale: fraction 1.0 is encoded as position ``scale``; the finest resolved step is about
            ``1 / scale`` of the video.
        """
        super().__init__()
        if dim % 2:
            raise ValueError(f"FractionalPositionalEncoding needs an even dim, got {dim}")
        self.dim = dim
        self.scale = scale

    def forward(self, timestamps: Tensor, duration: Tensor) -> Tensor:
        """timestamps (B, T, 2) seconds, duration (B,) seconds -> (B, T, dim)."""
        centre_sec = timestamps.mean(dim=-1)  # (B, T)
        fraction = centre_sec / duration.unsqueeze(-1)  # (B, T)
        return sinusoidal_encoding(fraction * self.scale, self.dim)  # (B, T, D)


def batch_first_attention(
    attn: nn.MultiheadAttention, query: Tensor, keys: Tensor, key_mask: Tensor
) -> Tensor:
    """``attn(query, keys, keys, key_padding_mask=~key_mask, need_weights=False)[0]``, on the same
    weights, without the module's transposes to and from (N, B, D).

    For a training step that is about a fifth less CPU time per attention, forward and backward
    (docs/benchmarks.md): `nn.MultiheadAttention` copies its inputs and outputs between the
    batch-first and sequence-first layouts, and packs the projections through more copies.

    Args:
        attn: a batch-first module with one embedding size for queries, keys and values, no
            ``bias_k``/``bias_v`` and no ``add_zero_attn``; its dropout applies in training mode.
        query: (B, N, D).
        keys: (B, M, D), keys and values both; ``query`` itself for self-attention (one packed
            projection then).
        key_mask: (B, M) True on real keys; every row needs at least one.

    Returns:
        (B, N, D) after the output projection. A module with forward hooks is called as itself,
        so hooks see every call.
    """
    if attn._forward_pre_hooks or attn._forward_hooks:  # observed (ground.report's attention maps)
        return attn(query, keys, keys, key_padding_mask=~key_mask, need_weights=False)[0]
    dim, heads = attn.embed_dim, attn.num_heads
    if keys is query:
        q, k, v = F.linear(query, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    else:
        w_q, w_kv = attn.in_proj_weight.split([dim, 2 * dim])
        b_q, b_kv = (None, None) if attn.in_proj_bias is None else attn.in_proj_bias.split([dim, 2 * dim])
        q = F.linear(query, w_q, b_q)
        k, v = F.linear(keys, w_kv, b_kv).chunk(2, dim=-1)

    def split_heads(x: Tensor) -> Tensor:  # (B, N, D) -> (B, H, N, D / H)
        return x.unflatten(-1, (heads, dim // heads)).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        split_heads(q), split_heads(k), split_heads(v), attn_mask=key_mask[:, None, None, :],
        dropout_p=attn.dropout if attn.training else 0.0,
    )  # (B, H, N, D / H)
    return attn.out_proj(out.transpose(1, 2).flatten(2))  # (B, N, D)


class MaskedAttention(nn.Module):
    """Pre-norm residual multi-head attention in which padded keys take no part.

    ``forward(x, mask)`` is self-attention over ``x``; ``forward(x, mask, context)`` is
    cross-attention from ``x`` to ``context`` (already normalised, e.g. by a ``Projection``).
    ``mask`` always describes the keys. Query rows that are padding still produce values; the
    caller keeps them out of every later key set and every output.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.1) -> None:
        """Args:
        dim: hidden size.
        num_heads: attention heads; must divide ``dim``.
        dropout: dropout on the attention weights and on the residual branch.
        """
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_mask: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, N, D), key_mask (B, M) True = real key, context (B, M, D) or None -> (B, N, D)."""
        h = self.norm(x)  # (B, N, D)
        keys = h if context is None else context  # (B, M, D)
        return x + self.dropout(batch_first_attention(self.attn, h, keys, key_mask))


class FeedForward(nn.Module):
    """Pre-norm residual two-layer MLP applied to each position on its own."""

    def __init__(self, dim: int, expansion: int = 4, dropout: float = 0.1) -> None:
        """Args:
        dim: hidden size.
        expansion: inner size is ``expansion * dim``.
        dropout: dropout inside the MLP and on the residual branch.
        """
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, expansion * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(expansion * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)  # (B, N, D)


def probe_logits(video: Tensor, tokens: Tensor, text_mask: Tensor, bilinear: Tensor,
                 linear: Tensor) -> Tensor:
    """The `probe`'s bilinear clip-query score ``t^T P v_t + u^T v_t`` on the cached features.

    Args:
        video: (B, T, Dv) clip features as cached.
        tokens: (B, L, Dt) token features as cached; ``t`` is the mean of the real ones, each
            L2-normalised.
        text_mask: (B, L) True on real tokens.
        bilinear: ``P`` (Dt, Dv).
        linear: ``u`` (Dv,).

    Returns:
        (B, T) scores, padding clips included (the caller masks them).
    """
    query = masked_mean(F.normalize(tokens, dim=-1), text_mask)  # (B, Dt) t
    weights = query.to(bilinear.dtype) @ bilinear + linear  # (B, Dv) t^T P + u^T
    return torch.einsum("btd,bd->bt", video.to(weights.dtype), weights)  # (B, T)


def embed_scores(embedding: nn.Linear, scores: Tensor, video_mask: Tensor) -> Tensor:
    """Per-clip scores as an input for a network: ``embedding`` (a ``Linear(1, D)``) of each detached
    score. scores (B, T) (may be ``-inf`` on padding), video_mask (B, T) -> (B, T, D), 0 on padding.

    Detached, so only the scores' own loss trains them, whatever reads the embedding.
    """
    evidence = scores.detach().masked_fill(~video_mask, 0.0).unsqueeze(-1)  # (B, T, 1)
    return embedding(evidence.to(embedding.weight.dtype)) * video_mask.unsqueeze(-1)


def clip_window_bce(scores: Tensor, inside: Tensor, scored: Tensor) -> Tensor:
    """Binary cross-entropy of every scored clip of the batch against "inside a ground-truth window".

    All clips of the batch share one mean, so a clip is judged on one logit scale with the clips
    of the other videos, not only ranked against the clips of its own video; it costs O(B T), no
    pairs.

    Args:
        scores: (B, T) saliency logits; entries outside ``scored`` are ignored (may be ``-inf``).
        inside: (B, T) bool, the clip's centre lies inside one of the query's windows.
        scored: (B, T) bool, the clips to score (the real ones).

    Returns:
        Scalar mean over the scored clips; 0 (still attached to ``scores``) when there are none.
    """
    if not scored.any():
        return torch.where(scored, scores, 0.0).sum() * 0.0
    return F.binary_cross_entropy_with_logits(scores[scored], inside[scored].to(scores.dtype))


class ClipEvidence(nn.Module):
    """The `probe`'s clip-query score on the cached features, as an input a network can read.

    ``e_t = t^T P v_t + u^T v_t + c`` (``probe_logits``): ``t`` the mean of the query's
    L2-normalised cached token features, ``v_t`` the clip's cached feature; ``P``, ``u``, ``c``
    start at zero. Trained by ``loss`` (cross-entropy of every real clip against "inside a
    ground-truth window"), and read by the network through ``embed`` (``embed_scores``: the score,
    detached, through a learned ``Linear(1, D)``), added to the clips. On the QVHighlights-shaped
    benchmark where the query's evidence lies is nearly linear in the frozen features; networks
    that had to find it through projections and attention took many epochs (docs/models.md, "What
    closed the gap").
    """

    def __init__(self, video_dim: int, text_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.bilinear = nn.Parameter(torch.zeros(text_dim, video_dim))  # P (Dt, Dv)
        self.linear = nn.Parameter(torch.zeros(video_dim))  # u (Dv,)
        self.bias = nn.Parameter(torch.zeros(()))  # c
        self.embedding = nn.Linear(1, hidden_dim)

    @classmethod
    def optional(cls, model: str, enabled: object, video_dim: int, text_dim: int, hidden_dim: int,
                 weight: object = 1.0) -> ClipEvidence | None:
        """The block a model's ``clip_evidence`` asks for, or None when it is false.

        Args:
            model: the model's name, for the error.
            enabled: the model's ``clip_evidence``; must be a bool (a config's ``maybe`` would
                otherwise read as true).
            weight: the model's ``evidence_weight`` for ``loss``; a number >= 0.

        Raises:
            ValueError naming the model and the value.
        """
        check_switch(model, "clip_evidence", enabled)
        check_loss_weight(model, "evidence_weight", weight)
        return cls(video_dim, text_dim, hidden_dim) if enabled else None

    def add_to(self, x: Tensor, video: Tensor, video_mask: Tensor, tokens: Tensor, text_mask: Tensor
               ) -> tuple[Tensor, Tensor]:
        """x (B, T, D) plus the embedded score, and the score: video (B, T, Dv) and tokens (B, L, Dt)
        as cached -> ((B, T, D), (B, T) logits, ``-inf`` on padding)."""
        scores = self(video, video_mask, tokens, text_mask)  # (B, T)
        return x + self.embed(scores, video_mask), scores

    def forward(self, video: Tensor, video_mask: Tensor, tokens: Tensor, text_mask: Tensor) -> Tensor:
        """video (B, T, Dv), tokens (B, L, Dt) as cached -> (B, T) logits, ``-inf`` on padding."""
        scores = probe_logits(video, tokens, text_mask, self.bilinear, self.linear) + self.bias  # (B, T)
        return scores.masked_fill(~video_mask, float("-inf"))

    def embed(self, scores: Tensor, video_mask: Tensor) -> Tensor:
        """scores (B, T) from ``forward`` -> (B, T, D) embedding of the detached score, 0 on padding."""
        return embed_scores(self.embedding, scores, video_mask)

    @staticmethod
    def loss(scores: Tensor, batch: dict) -> Tensor:
        """Mean binary cross-entropy of every real clip of the batch against "inside a window"."""
        inside = clips_in_windows(batch["timestamps"], batch["windows"], batch["window_mask"])  # (B, T)
        return clip_window_bce(scores, inside, batch["video_mask"])


# ---------------------------------------------------------------------------------------------
# Window geometry


def _check_windows(windows: Tensor, name: str) -> None:
    if windows.shape[-1] != 2:
        raise ValueError(f"{name} must have a last dim of 2 (start_sec, end_sec), got {tuple(windows.shape)}")
    bad = windows[..., 1] < windows[..., 0]
    if bad.any():
        first = windows[bad][0].tolist()
        raise ValueError(f"{name} holds a window {first} with end < start")


def temporal_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union between every window of ``a`` and every window of ``b``.

    Args:
        a: (..., N, 2) [start_sec, end_sec].
        b: (..., M, 2), leading dims broadcastable with ``a``'s.

    Returns:
        (..., N, M) IoU in [0, 1]; 0 where the union is empty (two zero-length windows).
    """
    _check_windows(a, "temporal_iou: a")
    _check_windows(b, "temporal_iou: b")
    a_start, a_end = a[..., :, None, 0], a[..., :, None, 1]  # (..., N, 1)
    b_start, b_end = b[..., None, :, 0], b[..., None, :, 1]  # (..., 1, M)
    inter = (torch.minimum(a_end, b_end) - torch.maximum(a_start, b_start)).clamp(min=0)  # (..., N, M)
    union = (a_end - a_start) + (b_end - b_start) - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def nms_1d(windows: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression of 1D windows.

    Windows are visited by score, ties in input order; a window is dropped when its IoU with an
    already kept one exceeds ``iou_threshold``. torchvision's NMS does the work on boxes of unit
    height (whose IoU equals the 1D IoU); it is handed rank scores so ties stay deterministic.

    Args:
        windows: (N, 2) [start_sec, end_sec].
        scores: (N,) higher is better.
        iou_threshold: suppression threshold in [0, 1].

    Returns:
        (N',) int64 indices into ``windows`` of the kept windows, best first.
    """
    _check_windows(windows, "nms_1d: windows")
    if windows.ndim != 2 or scores.shape != windows.shape[:1]:
        raise ValueError(
            f"nms_1d: windows must be (N, 2) and scores (N,), got {tuple(windows.shape)} "
            f"and {tuple(scores.shape)}"
        )
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"nms_1d: iou_threshold must be in [0, 1], got {iou_threshold}")
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,)
    zeros = torch.zeros_like(windows[:, 0])
    boxes = torch.stack([windows[:, 0], zeros, windows[:, 1], zeros + 1], dim=-1)[order]  # (N, 4)
    rank_scores = -torch.arange(len(order), device=windows.device, dtype=boxes.dtype)
    kept = torchvision.ops.nms(boxes, rank_scores, iou_threshold)
    return order[kept]


def clips_in_windows(timestamps: Tensor, windows: Tensor, window_mask: Tensor) -> Tensor:
    """Which clips have their centre inside any real window.

    Args:
        timestamps: (B, T, 2) clip windows in seconds.
        windows: (B, W, 2) ground-truth windows in seconds.
        window_mask: (B, W) True where a window is real.

    Returns:
        (B, T) bool.
    """
    centre_sec = timestamps.mean(dim=-1)[:, :, None]  # (B, T, 1)
    inside = (centre_sec >= windows[:, None, :, 0]) & (centre_sec <= windows[:, None, :, 1])  # (B, T, W)
    return (inside & window_mask[:, None, :]).any(dim=-1)


def assign_clips(timestamps: Tensor, mask: Tensor, windows: Tensor, window_mask: Tensor,
                 ids: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Which clips regress a ground-truth window, and which window each one regresses.

    A real clip is assigned when its centre lies inside a real window; every window also claims
    the real clip whose centre is nearest its own, so a window shorter than a clip still gets
    one. A clip claimed by several windows regresses the shortest (ties: the first).

    Args:
        timestamps: (B, T, 2) clip windows in seconds.
        mask: (B, T) True where a clip is real.
        windows: (B, W, 2) ground-truth windows in seconds.
        window_mask: (B, W) True where a window is real.
        ids: query ids, named when a query has no window.

    Returns:
        positive (B, T) bool, and target (B, T, 2) the assigned window in seconds (meaningful
        where ``positive``).
    """
    check_nonempty(window_mask, ids, "ground-truth windows")
    n_clips = timestamps.shape[1]
    centre_sec = timestamps.mean(dim=-1)  # (B, T)
    after_start = centre_sec[:, :, None] >= windows[:, None, :, 0]  # (B, T, W)
    inside = after_start & (centre_sec[:, :, None] <= windows[:, None, :, 1])
    distance = (centre_sec[:, :, None] - windows.mean(dim=-1)[:, None, :]).abs()  # (B, T, W)
    nearest = distance.masked_fill(~mask[:, :, None], float("inf")).argmin(dim=1)  # (B, W)
    claimed = nn.functional.one_hot(nearest, n_clips).transpose(1, 2).bool()  # (B, T, W)
    candidate = (inside | claimed) & window_mask[:, None, :] & mask[:, :, None]  # (B, T, W)
    length_sec = (windows[..., 1] - windows[..., 0])[:, None, :].expand_as(candidate)
    assigned = length_sec.masked_fill(~candidate, float("inf")).argmin(dim=-1)  # (B, T)
    target = windows.gather(1, assigned.unsqueeze(-1).expand(-1, -1, 2))  # (B, T, 2)
    return candidate.any(dim=-1), target


def longest_window(windows: Tensor, window_mask: Tensor, ids: Sequence[str]) -> Tensor:
    """The longest real window of each sample, the first one on equal length.

    Args:
        windows: (B, W, 2) seconds.
        window_mask: (B, W) True where a window is real.
        ids: query ids, named when a sample has no window.

    Returns:
        (B, 2) [start_sec, end_sec].
    """
    check_nonempty(window_mask, ids, "ground-truth windows")
    length_sec = (windows[..., 1] - windows[..., 0]).masked_fill(~window_mask, float("-inf"))  # (B, W)
    # argmax returns the first maximal index, which makes "first on equal length" hold.
    best = length_sec.argmax(dim=-1)  # (B,)
    return windows[torch.arange(len(best), device=windows.device), best]  # (B, 2)


# ---------------------------------------------------------------------------------------------
# Targets and decoding


def gaussian_boundary_targets(
    edges_sec: Tensor, boundary_sec: Tensor, sigma_sec: Tensor | float, mask: Tensor
) -> Tensor:
    """Soft label over clips for one boundary: a Gaussian of the clip edge's distance to it.

    For a start boundary pass each clip's start time as ``edges_sec``, for an end boundary its
    end time; the target then peaks on the clip whose decoded window edge lands closest to the
    ground truth. Computed as a softmax of ``-d^2 / 2 sigma^2`` so it sums to one over real clips
    even when every clip is far from the boundary.

    Args:
        edges_sec: (B, T) the clip edge compared with the boundary.
        boundary_sec: (B,) the ground-truth boundary.
        sigma_sec: (B,) or scalar width of the Gaussian in seconds, > 0.
        mask: (B, T) True where a clip is real; each row needs one.

    Returns:
        (B, T) non-negative, each row sums to 1, zero on padding.
    """
    sigma = torch.as_tensor(sigma_sec, dtype=edges_sec.dtype, device=edges_sec.device)
    if (sigma <= 0).any():
        raise ValueError(f"gaussian_boundary_targets: sigma_sec must be positive, got {sigma.tolist()}")
    if not mask.any(dim=-1).all():
        raise ValueError("gaussian_boundary_targets: a row of the mask has no real clip")
    sigma = sigma.reshape(-1, 1) if sigma.ndim else sigma
    logits = -((edges_sec - boundary_sec[:, None]) ** 2) / (2 * sigma**2)  # (B, T)
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def decode_spans(
    start_logits: Tensor,
    end_logits: Tensor,
    timestamps: Tensor,
    mask: Tensor,
    max_span_sec: Tensor,
    k: int,
    nms_iou_threshold: float | None,
) -> tuple[Tensor, Tensor]:
    """SQuAD-style decoding of per-clip start/end logits into the best ``k`` windows.

    A span (s, e) over real clips is valid when ``s <= e`` and its length
    ``timestamps[e, 1] - timestamps[s, 0]`` is at most ``max_span_sec`` (a single-clip span is
    always valid, so every video has an answer). Its score is ``log p_start(s) + log p_end(e)``
    with each softmax taken over the real clips. Spans are ranked by score, ties broken by
    earlier start, then shorter span. With ``nms_iou_threshold`` set, greedy NMS runs down that
    ranking before the top ``k`` are taken. The window of a span is
    ``[timestamps[s, 0], timestamps[e, 1]]``.

    Args:
        start_logits: (B, T); padding values are ignored.
        end_logits: (B, T).
        timestamps: (B, T, 2) clip windows in seconds.
        mask: (B, T) True where a clip is real.
        max_span_sec: (B,) longest allowed span per sample.
        k: windows to return per sample.
        nms_iou_threshold: NMS threshold, or None for no suppression.

    Returns:
        windows (B, k, 2) seconds and scores (B, k) sorted descending. Slots beyond a sample's
        number of candidates repeat its last window with score ``-inf``.
    """
    if k < 1:
        raise ValueError(f"decode_spans: k must be >= 1, got {k}")
    if not mask.any(dim=-1).all():
        raise ValueError("decode_spans: a row of the mask has no real clip")
    windows_out, scores_out = [], []
    for b in range(start_logits.shape[0]):
        real = mask[b].nonzero(as_tuple=True)[0]  # (n,)
        log_p_start = torch.log_softmax(start_logits[b, real].float(), dim=-1)  # (n,)
        log_p_end = torch.log_softmax(end_logits[b, real].float(), dim=-1)  # (n,)
        ts = timestamps[b, real]  # (n, 2)
        span_score = log_p_start[:, None] + log_p_end[None, :]  # (n, n) start x end
        length_sec = ts[None, :, 1] - ts[:, None, 0]  # (n, n)
        ordered = torch.ones_like(span_score, dtype=torch.bool).triu()
        single_clip = torch.eye(len(real), dtype=torch.bool, device=ts.device)
        # A small tolerance so a limit computed as a fraction of a duration equal to a clip-window
        # sum in float arithmetic does not exclude the whole video.
        short_enough = length_sec <= max_span_sec[b] + 1e-6
        valid = ordered & (short_enough | single_clip)
        # nonzero enumerates row-major (start ascending, then end ascending, i.e. shorter first);
        # a stable sort keeps that order among equal scores, which is the tie rule.
        s_idx, e_idx = valid.nonzero(as_tuple=True)  # (N,)
        cand_score = span_score[s_idx, e_idx]
        order = torch.sort(cand_score, descending=True, stable=True).indices
        cand_score = cand_score[order]  # (N,)
        cand_windows = torch.stack([ts[s_idx[order], 0], ts[e_idx[order], 1]], dim=-1)  # (N, 2)
        if nms_iou_threshold is not None:
            kept = _nms_first_k(cand_windows, cand_score, nms_iou_threshold, k)
            cand_windows, cand_score = cand_windows[kept], cand_score[kept]
        windows_out.append(_pad_to_k(cand_windows[:k], k, fill=cand_windows[min(k, len(cand_windows)) - 1]))
        scores_out.append(_pad_to_k(cand_score[:k], k, fill=cand_score.new_tensor(float("-inf"))))
    return torch.stack(windows_out), torch.stack(scores_out)  # (B, K, 2), (B, K)


def _nms_first_k(windows: Tensor, scores: Tensor, iou_threshold: float, k: int) -> Tensor:
    """NMS over a sorted candidate list, stopping once ``k`` windows survive.

    Greedy NMS on a prefix keeps exactly what it would keep of that prefix in the full list, so
    growing the prefix until ``k`` survive gives the full result without an O(N^2) pass over
    every span of a long video.
    """
    pool = min(len(windows), 16 * k)
    while True:
        kept = nms_1d(windows[:pool], scores[:pool], iou_threshold)
        if len(kept) >= k or pool == len(windows):
            return kept
        pool = min(len(windows), 2 * pool)


def top_k_windows(
    windows: Tensor, scores: Tensor, k: int, nms_iou_threshold: float | None
) -> tuple[Tensor, Tensor]:
    """The best ``k`` of one sample's candidate windows, after optional greedy NMS.

    Candidates are ranked by score, ties in input order. Slots beyond the surviving candidates
    repeat the last one with score ``-inf``, as ``Predictions`` documents.

    Args:
        windows: (N, 2) [start_sec, end_sec], N >= 1.
        scores: (N,) higher is better.
        k: windows to return, >= 1.
        nms_iou_threshold: NMS threshold, or None for no suppression.

    Returns:
        windows (k, 2) and scores (k,) sorted descending.
    """
    if k < 1:
        raise ValueError(f"top_k_windows: k must be >= 1, got {k}")
    if len(windows) == 0:
        raise ValueError("top_k_windows: no candidate windows")
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,)
    windows, scores = windows[order], scores[order]
    if nms_iou_threshold is not None:
        kept = _nms_first_k(windows, scores, nms_iou_threshold, k)
        windows, scores = windows[kept], scores[kept]
    windows, scores = windows[:k], scores[:k]
    return (
        _pad_to_k(windows, k, fill=windows[-1]),
        _pad_to_k(scores, k, fill=scores.new_tensor(float("-inf"))),
    )


def _pad_to_k(x: Tensor, k: int, fill: Tensor) -> Tensor:
    missing = k - x.shape[0]
    if missing <= 0:
        return x
    return torch.cat([x, fill.expand(missing, *x.shape[1:])], dim=0)


# ---------------------------------------------------------------------------------------------
# Window regression losses


def eiou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Extended-IoU loss of 1D windows: ``1 - IoU + centre term + width term``.

    The 1D form of EIoU (Zhang et al., "Focal and Efficient IOU Loss", 2022): with ``E`` the
    length of the smallest window enclosing both, the centre term is ``(c_pred - c_gt)^2 / E^2``
    and the width term ``(w_pred - w_gt)^2 / E^2``. Every term is a ratio of lengths, so the loss
    is the same in seconds, clips or fractions of a video; the two extra terms keep a gradient
    when the windows do not overlap (where ``1 - IoU`` is flat).

    ``pred`` need not be ordered: an inverted window overlaps nothing and its negative width is
    pushed up by the width term, so a head may regress the two edges independently.

    Args:
        pred: (..., 2) predicted [start, end].
        target: (..., 2) ground-truth [start, end], start <= end, broadcastable with ``pred``.
        eps: added to the union and to ``E^2`` so that two zero-length windows give a finite loss.

    Returns:
        (...) loss per window, >= 0; for coinciding windows of length ``w`` it is ``eps / (w + eps)``.
    """
    _check_windows(target, "eiou_loss: target")
    p_start, p_end = pred[..., 0], pred[..., 1]
    t_start, t_end = target[..., 0], target[..., 1]
    p_width, t_width = p_end - p_start, t_end - t_start
    inter = (torch.minimum(p_end, t_end) - torch.maximum(p_start, t_start)).clamp(min=0)
    union = p_width.clamp(min=0) + t_width - inter
    iou = inter / (union + eps)
    enclosing_sq = (torch.maximum(p_end, t_end) - torch.minimum(p_start, t_start)) ** 2 + eps
    centre_term = ((p_start + p_end) / 2 - (t_start + t_end) / 2) ** 2 / enclosing_sq
    width_term = (p_width - t_width) ** 2 / enclosing_sq
    return 1 - iou + centre_term + width_term
