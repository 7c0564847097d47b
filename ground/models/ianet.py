"""`ianet`: iterative alignment of clips and words with padded parallel co-attention and calibration.

After IA-Net, "Progressively Guide to Attend: An Iterative Alignment Framework for Temporal
Sentence Grounding" (/work/shared/design/ianet_iterative_alignment_paper.txt). Both modalities get
a positional encoding and a bidirectional GRU (sec. 3.1); a stack of interaction blocks each runs
an inter-modal co-attention, where ``num_pads`` learnable padding vectors per modality give a clip
or word somewhere to attend when nothing in the other modality matches, with ``num_maps``
attention maps averaged (eq. 1-6), then a calibration gate (eq. 7-12), then the same for
intra-modal attention (sec. 3.3-3.4). A cosine-similarity attention builds a video-aware sentence
feature for every clip, and multi-scale anchors at every clip get a confidence and two boundary
offsets (sec. 3.5). Training: BCE of the confidence against each anchor's IoU with the ground
truth (eq. 14) plus smooth L1 on the offsets of positive anchors (eq. 15-16). Inference: NMS, top-k.

Read top to bottom: blocks, the network, its loss, its decoder. Shapes: B batch, T clips,
L tokens, D hidden, P padding vectors, H attention maps, A anchors per clip, W ground-truth
windows, K predicted windows. Masks are True where real.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ground.models import register_model
from ground.models.blocks import (
    ClipEvidence,
    Predictions,
    Projection,
    check_batch,
    check_nonempty,
    nms_1d,
    sinusoidal_encoding,
    temporal_iou,
)


class SequenceEncoder(nn.Module):
    """Projection, sinusoidal positions and a bidirectional GRU over the real entries only.

    The GRU runs on a packed sequence, so the backward direction starts at each sample's last
    real entry rather than reading padding first; padding comes out as zeros.
    """

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.proj = Projection(in_dim, dim, dropout)
        self.gru = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, Din), positions (B, N), mask (B, N) right-padded -> (B, N, D)."""
        h = self.proj(x) + sinusoidal_encoding(positions, self.dim).to(x.dtype)  # (B, N, D)
        lengths = mask.sum(dim=1).cpu()  # pack_padded_sequence wants lengths on the CPU
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out  # (B, N, D)


class Calibration(nn.Module):
    """Gate that merges features with their attended features (eq. 7-12).

    ``R = tanh(W x + U m + b)``, ``Z = sigmoid(W' x + U' m + b')``, ``out = Z * x + (1 - Z) * R``;
    each pair ``W x + U m`` is one linear map of the concatenation ``[x, m]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fusion = nn.Linear(2 * dim, dim)
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor, attended: Tensor) -> Tensor:
        """x (B, N, D), attended (B, N, D) -> (B, N, D)."""
        both = torch.cat([x, attended], dim=-1)  # (B, N, 2D)
        fused = torch.tanh(self.fusion(both))
        gate = torch.sigmoid(self.gate(both))
        return gate * x + (1 - gate) * fused


def averaged_attention_logits(queries: Tensor, keys: Tensor, num_maps: int) -> Tensor:
    """Scaled dot products of ``num_maps`` head slices: (B, N, D), (B, M, D) -> (B, H, N, M)."""
    (b, n, d), m = queries.shape, keys.shape[1]
    head_dim = d // num_maps
    q = queries.view(b, n, num_maps, head_dim).transpose(1, 2)  # (B, H, N, D/H)
    k = keys.view(b, m, num_maps, head_dim).transpose(1, 2)  # (B, H, M, D/H)
    return q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # (B, H, N, M)


class InterModalInteraction(nn.Module):
    """Parallel co-attention between clips and words with learnable paddings, then calibration.

    ``V~ = [V; pads_v]``, ``Q~ = [Q; pads_q]``; per map h the logits ``Lin_h(V~) Lin_h(Q~)^T /
    sqrt(D/H)`` are normalised over the words for ``A_V`` and over the clips for ``A_Q`` (eq. 2-3),
    the H maps are averaged (eq. 4) and ``M_V = A_V Q~``, ``M_Q = A_Q V~`` (eq. 5-6) for the real
    rows. The paddings are always attendable, so a background clip can put its weight on them.
    """

    def __init__(self, dim: int, num_maps: int, num_pads: int, dropout: float) -> None:
        super().__init__()
        self.num_maps = num_maps
        self.video_pads = nn.Parameter(torch.randn(num_pads, dim) * dim**-0.5)
        self.text_pads = nn.Parameter(torch.randn(num_pads, dim) * dim**-0.5)
        self.video_key = nn.Linear(dim, dim)
        self.text_key = nn.Linear(dim, dim)
        self.video_gate = Calibration(dim)
        self.text_gate = Calibration(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, video: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor
                ) -> tuple[Tensor, Tensor]:
        """video (B, T, D), text (B, L, D) -> calibrated video (B, T, D), text (B, L, D)."""
        (b, t, _), n_tokens = video.shape, text.shape[1]
        pads_mask = video_mask.new_ones(b, len(self.video_pads))  # (B, P)
        video_all = torch.cat([video, self.video_pads.expand(b, -1, -1)], dim=1)  # (B, T+P, D)
        text_all = torch.cat([text, self.text_pads.expand(b, -1, -1)], dim=1)  # (B, L+P, D)
        video_all_mask = torch.cat([video_mask, pads_mask], dim=1)  # (B, T+P)
        text_all_mask = torch.cat([text_mask, pads_mask], dim=1)  # (B, L+P)
        logits = averaged_attention_logits(self.video_key(video_all), self.text_key(text_all), self.num_maps)
        to_text = logits.masked_fill(~text_all_mask[:, None, None, :], float("-inf"))  # (B, H, T+P, L+P)
        to_video = logits.masked_fill(~video_all_mask[:, None, :, None], float("-inf"))
        attn_video = torch.softmax(to_text, dim=-1).mean(dim=1)  # A_V (B, T+P, L+P)
        attn_text = torch.softmax(to_video, dim=-2).mean(dim=1).transpose(1, 2)  # A_Q (B, L+P, T+P)
        attended_video = (attn_video @ text_all)[:, :t]  # M_V (B, T, D)
        attended_text = (attn_text @ video_all)[:, :n_tokens]  # M_Q (B, L, D)
        video = self.video_gate(video, self.dropout(attended_video)) * video_mask.unsqueeze(-1)
        text = self.text_gate(text, self.dropout(attended_text)) * text_mask.unsqueeze(-1)
        return video, text


class IntraModalInteraction(nn.Module):
    """Parallel self-attention within one modality (H maps averaged, no paddings), then calibration."""

    def __init__(self, dim: int, num_maps: int, dropout: float) -> None:
        super().__init__()
        self.num_maps = num_maps
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.gate = Calibration(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, D), mask (B, N) -> (B, N, D), zero on padding."""
        logits = averaged_attention_logits(self.query(x), self.key(x), self.num_maps)  # (B, H, N, N)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(logits, dim=-1).mean(dim=1)  # (B, N, N)
        return self.gate(x, self.dropout(attn @ x)) * mask.unsqueeze(-1)


class InteractionBlock(nn.Module):
    """One improved interaction block (IIB, eq. 13): inter-modal, then intra-modal per modality."""

    def __init__(self, dim: int, num_maps: int, num_pads: int, dropout: float) -> None:
        super().__init__()
        self.inter = InterModalInteraction(dim, num_maps, num_pads, dropout)
        self.intra_video = IntraModalInteraction(dim, num_maps, dropout)
        self.intra_text = IntraModalInteraction(dim, num_maps, dropout)

    def forward(self, video: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor
                ) -> tuple[Tensor, Tensor]:
        """video (B, T, D), text (B, L, D) -> (B, T, D), (B, L, D)."""
        video, text = self.inter(video, video_mask, text, text_mask)
        return self.intra_video(video, video_mask), self.intra_text(text, text_mask)


def anchor_windows(timestamps: Tensor, video_mask: Tensor, widths_clips: Tensor) -> Tensor:
    """Candidate windows of several widths centred on every clip, clipped to the real clips.

    The anchor of width w at clip t covers clips ``t - (w - 1) // 2 .. t + w // 2`` cut to the
    sample's real clips; its window runs from the first clip's start to the last clip's end, so
    it lies inside the video whatever the stride.

    Args:
        timestamps: (B, T, 2) clip windows in seconds.
        video_mask: (B, T) right-padded.
        widths_clips: (B, A) anchor widths in clips, >= 1.

    Returns:
        (B, T, A, 2) [start_sec, end_sec]; zero on padding clips.
    """
    b, t = video_mask.shape
    last = (video_mask.sum(dim=1) - 1)[:, None, None]  # (B, 1, 1) index of the last real clip
    centre = torch.arange(t, device=video_mask.device)[None, :, None]  # (1, T, 1)
    first_clip = (centre - (widths_clips[:, None, :] - 1) // 2).clamp(min=0)  # (B, T, A)
    last_clip = torch.minimum(centre + widths_clips[:, None, :] // 2, last)
    first_clip = torch.minimum(first_clip, last)  # padding centres: keep the index valid
    n_anchors = widths_clips.shape[1]
    starts = timestamps[..., 0].gather(1, first_clip.reshape(b, -1)).view(b, t, n_anchors)
    ends = timestamps[..., 1].gather(1, last_clip.reshape(b, -1)).view(b, t, n_anchors)
    return torch.stack([starts, ends], dim=-1) * video_mask[:, :, None, None]  # (B, T, A, 2)


@register_model("ianet")
class IANet(nn.Module):
    """Iterative Alignment Network with multi-scale anchors at every clip.

    Anchors: widths ``anchor_clips`` (in clips) and ``anchor_fractions`` of the number of real
    clips, centred on every clip. Each anchor gets a confidence logit and offsets of its start and
    end in units of its own length, so the same head serves every video length. Decoding applies
    the offsets, clips to ``[0, duration]``, ranks by confidence, runs NMS and keeps the top k;
    scores are confidence probabilities (sigmoid). With ``clip_evidence`` the saliency is the
    `probe`'s clip-query score (``blocks.ClipEvidence``); without it there is none. No presence.
    """

    export_refusal = (
        "its GRUs run on packed sequences (pack_padded_sequence), whose per-sample lengths a trace "
        "records as constants, so the export would only run at the traced lengths; serve the "
        "checkpoint with `python -m ground serve` or `python -m ground predict` instead"
    )
    """Why `python -m ground export` refuses this network (`ground.export.export_module`)."""

    def __init__(
        self,
        video_dim: int,
        text_dim: int,
        hidden_dim: int = 512,
        num_blocks: int = 3,
        num_maps: int = 4,
        num_pads: int = 3,
        dropout: float = 0.1,
        cosine_temperature: float = 0.1,
        anchor_clips: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128),
        anchor_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        positive_iou: float = 0.45,
        boundary_weight: float = 1.0,
        nms_iou_threshold: float = 0.5,
        clip_evidence: bool = True,
        evidence_weight: float = 1.0,
    ) -> None:
        """Build the network.

        Args:
            video_dim: size of the video features (from the cache).
            text_dim: size of the text token features (from the cache).
            hidden_dim: width D of the encoders' output and of every block; even, divisible by num_maps.
            num_blocks: stacked interaction blocks (the paper's l = 3).
            num_maps: parallel attention maps H averaged in every co-attention (the paper's 4).
            num_pads: learnable padding vectors K per modality (the paper's 3).
            dropout: dropout in the projections and on the attended features.
            cosine_temperature: temperature of the softmax over the clip-word cosine similarities.
            anchor_clips: anchor widths in clips.
            anchor_fractions: anchor widths as fractions of the number of real clips, in (0, 1].
            positive_iou: anchors whose IoU with the ground truth exceeds this get offset targets (lambda).
            boundary_weight: weight alpha of the smooth-L1 boundary loss.
            nms_iou_threshold: IoU above which a lower-ranked decoded window is suppressed.
            clip_evidence: add the `probe`'s clip-query score on the cached features
                (``blocks.ClipEvidence``), detached and embedded, to the encoded clips before the
                interaction blocks, and train it with its own clip cross-entropy; it is also the
                saliency output (docs/models.md, ianet).
            evidence_weight: weight of that score's clip cross-entropy in the loss.
        """
        super().__init__()
        if hidden_dim % 2 or hidden_dim % num_maps:
            raise ValueError(
                f"ianet: hidden_dim {hidden_dim} must be even and divisible by num_maps {num_maps}"
            )
        if num_blocks < 1 or num_pads < 1:
            raise ValueError(f"ianet: num_blocks and num_pads must be >= 1, got {num_blocks} and {num_pads}")
        if not anchor_clips and not anchor_fractions:
            raise ValueError("ianet: anchor_clips and anchor_fractions are both empty")
        if any(w < 1 for w in anchor_clips):
            raise ValueError(f"ianet: anchor_clips must be >= 1, got {anchor_clips}")
        if any(not 0.0 < f <= 1.0 for f in anchor_fractions):
            raise ValueError(f"ianet: anchor_fractions must be in (0, 1], got {anchor_fractions}")
        if cosine_temperature <= 0:
            raise ValueError(f"ianet: cosine_temperature must be positive, got {cosine_temperature}")
        if not 0.0 <= positive_iou < 1.0 or not 0.0 <= nms_iou_threshold <= 1.0:
            raise ValueError(
                f"ianet: positive_iou must be in [0, 1) and nms_iou_threshold in [0, 1], got {positive_iou} "
                f"and {nms_iou_threshold}"
            )
        self.video_dim = video_dim
        self.text_dim = text_dim
        self.cosine_temperature = cosine_temperature
        self.anchor_fractions = tuple(float(f) for f in anchor_fractions)
        self.positive_iou = positive_iou
        self.boundary_weight = boundary_weight
        self.nms_iou_threshold = nms_iou_threshold
        self.register_buffer("anchor_clips", torch.tensor(anchor_clips, dtype=torch.long), persistent=False)
        n_anchors = len(anchor_clips) + len(anchor_fractions)

        self.video_encoder = SequenceEncoder(video_dim, hidden_dim, dropout)
        self.text_encoder = SequenceEncoder(text_dim, hidden_dim, dropout)
        self.blocks = nn.ModuleList(
            InteractionBlock(hidden_dim, num_maps, num_pads, dropout) for _ in range(num_blocks)
        )
        self.confidence_head = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, n_anchors),
        )
        self.offset_head = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, 2 * n_anchors),
        )
        self.evidence_weight = evidence_weight
        self.evidence = ClipEvidence.optional("ianet", clip_evidence, video_dim, text_dim, hidden_dim,
                                              evidence_weight)

    # ---- network -----------------------------------------------------------------------------

    def anchor_widths(self, video_mask: Tensor) -> Tensor:
        """(B, T) mask -> (B, A) anchor widths in clips: the fixed ones, then the fractional ones."""
        n_clips = video_mask.sum(dim=1, keepdim=True)  # (B, 1)
        fixed = self.anchor_clips[None, :].expand(len(n_clips), -1)  # (B, A1)
        fractions = torch.tensor(self.anchor_fractions, device=video_mask.device)[None, :]  # (1, A2)
        relative = (fractions * n_clips).round().long().clamp(min=1)  # (B, A2)
        return torch.cat([fixed, relative], dim=1)  # (B, A)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Anchor windows with their confidence logits and boundary offsets.

        Returns:
            ``anchors`` (B, T, A, 2) seconds; ``confidence_logits`` (B, T, A), ``-inf`` on padding;
            ``offsets`` (B, T, A, 2) start/end shifts in anchor lengths, zero on padding; with
            ``clip_evidence`` ``saliency`` (B, T) the evidence logits, ``-inf`` on padding.
        """
        self._check_batch(batch)
        video_mask, text_mask = batch["video_mask"], batch["text_mask"]
        centre_sec = batch["timestamps"].mean(dim=-1)  # (B, T)
        token_index = torch.arange(text_mask.shape[1], device=text_mask.device).expand_as(text_mask)
        video = self.video_encoder(batch["video"], centre_sec, video_mask)  # (B, T, D)
        text = self.text_encoder(batch["text"], token_index, text_mask)  # (B, L, D)
        evidence = None
        if self.evidence is not None:
            video, evidence = self.evidence.add_to(
                video, batch["video"], video_mask, batch["text"], text_mask
            )  # (B, T, D), (B, T)
        for block in self.blocks:
            video, text = block(video, video_mask, text, text_mask)

        # Video-aware sentence feature: each clip attends to the words by cosine similarity.
        cosine = F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).transpose(1, 2)  # (B, T, L)
        cosine = cosine.masked_fill(~text_mask[:, None, :], float("-inf"))
        sentence = torch.softmax(cosine / self.cosine_temperature, dim=-1) @ text  # (B, T, D)
        fused = torch.cat([video, sentence], dim=-1)  # (B, T, 2D)

        b, t = video_mask.shape
        keep = video_mask.unsqueeze(-1)  # (B, T, 1)
        confidence = self.confidence_head(fused).masked_fill(~keep, float("-inf"))  # (B, T, A)
        offsets = self.offset_head(fused).view(b, t, -1, 2) * keep.unsqueeze(-1)  # (B, T, A, 2)
        anchors = anchor_windows(batch["timestamps"], video_mask, self.anchor_widths(video_mask))
        output = {"anchors": anchors, "confidence_logits": confidence, "offsets": offsets}
        if evidence is not None:
            output["saliency"] = evidence
        return output

    def _check_batch(self, batch: dict) -> None:
        check_batch("ianet", batch, self.video_dim, self.text_dim)
        qids = batch["qid"]
        for key in ("video_mask", "text_mask"):
            mask = batch[key]
            # The GRU packing and the anchors read the first mask.sum() entries as the real ones.
            prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < mask.sum(1, keepdim=True)
            bad = (prefix != mask).any(dim=1).nonzero(as_tuple=True)[0].tolist()
            if bad:
                names = ", ".join(qids[i] for i in bad)
                raise ValueError(f"ianet: {key} is not right-padded (real entries first) for query {names}")

    # ---- loss --------------------------------------------------------------------------------

    def loss(self, output: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """IoU-aligned BCE over every anchor plus ``boundary_weight`` times smooth L1 (eq. 14-16).

        Each anchor is compared with the ground-truth window it overlaps most. The BCE target is
        that IoU itself (eq. 14), averaged over the real anchors of each query, then over queries.
        Offsets are trained on the positives: anchors with IoU above ``positive_iou``, and each
        query's best anchor, so a query whose windows no anchor matches well still trains the
        regressor; the smooth L1 of the start and end offsets is averaged over all positives.

        With ``clip_evidence`` the evidence's clip cross-entropy (``evidence``) is added, times
        ``evidence_weight``.

        Returns:
            ``loss`` (weighted total), ``alignment`` (the BCE), ``boundary`` (the smooth L1), and
            with ``clip_evidence`` ``evidence``.
        """
        windows, window_mask = batch["windows"], batch["window_mask"]
        check_nonempty(window_mask, batch["qid"], "ground-truth windows")
        b, t, a, _ = output["anchors"].shape
        anchors = output["anchors"].reshape(b, t * a, 2)  # (B, N, 2)
        anchor_mask = batch["video_mask"][:, :, None].expand(b, t, a).reshape(b, t * a)  # (B, N)
        iou = temporal_iou(anchors, windows).masked_fill(~window_mask[:, None, :], -1.0)  # (B, N, W)
        best_iou, best_window = iou.max(dim=-1)  # (B, N)
        logits = output["confidence_logits"].reshape(b, t * a)
        target = best_iou.clamp(min=0.0).to(logits.dtype)
        # Padding logits are -inf; BCE of -inf against a 0 target is NaN, so zero them first.
        logits = torch.where(anchor_mask, logits, 0.0)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, N)
        alignment = ((bce * anchor_mask).sum(-1) / anchor_mask.sum(-1)).mean()

        best_anchor = best_iou.masked_fill(~anchor_mask, -2.0).argmax(dim=-1)  # (B,)
        positive = (best_iou > self.positive_iou) & anchor_mask
        positive[torch.arange(b, device=positive.device), best_anchor] = True
        matched = windows.gather(1, best_window[..., None].expand(b, t * a, 2))  # (B, N, 2)
        length_sec = (anchors[..., 1] - anchors[..., 0]).clamp(min=1e-6)[..., None]  # (B, N, 1)
        offsets = output["offsets"].reshape(b, t * a, 2)
        target_offsets = ((matched - anchors) / length_sec).to(offsets.dtype)  # (B, N, 2)
        smooth_l1 = F.smooth_l1_loss(offsets, target_offsets, reduction="none").sum(-1)  # (B, N)
        boundary = (smooth_l1 * positive).sum() / positive.sum()
        total = alignment + self.boundary_weight * boundary
        parts = {"alignment": alignment, "boundary": boundary}
        if "saliency" in output:
            parts["evidence"] = ClipEvidence.loss(output["saliency"], batch)
            total = total + self.evidence_weight * parts["evidence"]
        return {"loss": total, **parts}

    # ---- decoding ----------------------------------------------------------------------------

    def refined_windows(self, output: dict[str, Tensor], duration: Tensor) -> Tensor:
        """Anchors moved by their offsets and clipped to ``[0, duration]``; (B, T, A, 2) seconds.

        An offset pair can move the end before the start; the window then runs from the earlier to
        the later of the two.
        """
        anchors = output["anchors"].float()
        length_sec = (anchors[..., 1] - anchors[..., 0])[..., None]  # (B, T, A, 1)
        moved = anchors + output["offsets"].float() * length_sec
        limit = duration.float()[:, None, None, None]
        moved = torch.minimum(moved.clamp(min=0.0), limit)
        return torch.stack([moved.amin(dim=-1), moved.amax(dim=-1)], dim=-1)

    @torch.no_grad()
    def decode(self, output: dict[str, Tensor], batch: dict, k: int) -> Predictions:
        """Top-``k`` refined anchors per query by confidence after NMS (see the class docstring)."""
        if k < 1:
            raise ValueError(f"ianet: k must be >= 1, got {k}")
        windows = self.refined_windows(output, batch["duration"]).flatten(1, 2)  # (B, N, 2)
        scores = torch.sigmoid(output["confidence_logits"].float()).flatten(1)  # (B, N), 0 on padding
        anchor_mask = batch["video_mask"][:, :, None].expand_as(output["confidence_logits"]).flatten(1)
        windows_out, scores_out = [], []
        for b in range(len(windows)):
            real = anchor_mask[b].nonzero(as_tuple=True)[0]
            kept = nms_top_k(windows[b, real], scores[b, real], self.nms_iou_threshold, k)
            windows_b, scores_b = windows[b, real][kept], scores[b, real][kept]
            missing = k - len(kept)
            windows_out.append(torch.cat([windows_b, windows_b[-1:].expand(missing, 2)]))
            scores_out.append(torch.cat([scores_b, scores_b.new_full((missing,), float("-inf"))]))
        return Predictions(windows=torch.stack(windows_out), scores=torch.stack(scores_out),
                           saliency=output.get("saliency"))


def nms_top_k(windows: Tensor, scores: Tensor, iou_threshold: float, k: int) -> Tensor:
    """Indices of the first ``k`` windows greedy NMS keeps, best first.

    A long video has tens of thousands of anchors; NMS on the best-scored prefix keeps exactly
    what it would keep of that prefix in the full list, so the prefix grows until ``k`` survive.
    """
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,)
    pool = min(len(order), 16 * k)
    while True:
        kept = nms_1d(windows[order[:pool]], scores[order[:pool]], iou_threshold)
        if len(kept) >= k or pool == len(order):
            return order[:pool][kept[:k]]
        pool = min(len(order), 2 * pool)
