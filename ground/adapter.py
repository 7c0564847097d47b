"""A LoRA-adapted copy of a video encoder's last K blocks, trained from the cache's block inputs.

A cache extracted with ``block_inputs: K`` holds, for every feature, the hidden states that enter
the encoder's block N-K (docs/adapter.md). `VisualAdapter` rebuilds the last K blocks and the
head (final norm, attention pooling, projection) from the weights the cache was made with
(`extract.api.build_visual_tail`), wraps their attention modules and MLP linears with peft LoRA,
and maps block inputs (N, L, W) to embeddings (N, D). At a zero LoRA update (peft's initial
state) those are the cached frozen features.

The adapter is not part of any network: `ground.module.GroundingModule` calls
`VisualAdapter.video_input` on every batch, which replaces the adapted encoder's columns of
``batch["video"]`` by the adapter's embeddings, and hands the batch to whichever network it
trains. Checkpoints store only the LoRA weights (`lora_state_keys`); the frozen blocks are rebuilt
from ``weights_id`` when a checkpoint is loaded.

LoRA targets, per block: an ``nn.MultiheadAttention`` as a whole (open_clip's CLIP blocks call
its fused kernel, so a LoRA on ``attn.out_proj`` alone would never run; peft's
``MultiheadAttention`` layer adapts the in- and out-projections), and every other ``nn.Linear``
(timm's ``attn.qkv``/``attn.proj``, the MLP's two linears).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cache_schema.spec import BlockInputsSpec, EncoderSpec

log = logging.getLogger(__name__)

AdapterKind = Literal["lora"]
ADAPTERS: tuple[AdapterKind, ...] = ("lora",)


def lora_targets(blocks: nn.Module, prefix: str) -> list[str]:
    """Qualified names of the modules LoRA wraps inside ``blocks`` (named under ``prefix``).

    Every ``nn.MultiheadAttention`` as a whole, and every ``nn.Linear`` that is not inside one.
    """
    attention = [n for n, m in blocks.named_modules() if isinstance(m, nn.MultiheadAttention)]
    linears = [
        n
        for n, m in blocks.named_modules()
        if isinstance(m, nn.Linear) and not any(n.startswith(a + ".") for a in attention)
    ]
    return [f"{prefix}.{n}" for n in attention + linears]


class VisualAdapter(nn.Module):
    """Cached block inputs -> LoRA-adapted per-frame embeddings of one video encoder.

    Args:
        encoder: the adapted video encoder's spec, as the cache recorded it.
        block_inputs: the cache's block-input spec of that encoder (K, depth, tokens, pooling).
        column: first column of this encoder's features in the concatenated ``batch["video"]``.
        rank: LoRA rank r.
        alpha: LoRA alpha (the update is scaled by alpha / r).
        dropout: dropout on the LoRA branch's input.
        checkpointing: recompute each block's activations in the backward pass instead of
            keeping them (less memory, about one more forward pass of time).
        weights: encoder weights; None rebuilds the cache's ``weights_id`` (anything else must
            have the same id).

    Raises:
        EncoderError: the weights differ from the cache's ``weights_id`` (both named), or the
            rebuilt encoder does not match the cache's spec.
    """

    def __init__(
        self,
        encoder: EncoderSpec,
        block_inputs: BlockInputsSpec,
        column: int,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        checkpointing: bool = False,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        # The encoder libraries and peft load only when a model has an adapter.
        from peft import LoraConfig, inject_adapter_in_model

        from extract.api import build_visual_tail

        if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
            raise ValueError(
                f"adapter: rank must be >= 1, alpha > 0 and dropout in [0, 1); got {rank}, {alpha}, {dropout}"
            )
        self.encoder, self.spec, self.column = encoder, block_inputs, column
        self.checkpointing = checkpointing
        tail = build_visual_tail(encoder, block_inputs, weights=weights)
        prefix = next(n for n, m in tail.named_modules() if m is tail.blocks[0]).rsplit(".", 1)[0]
        targets = [t for i, b in enumerate(tail.blocks) for t in lora_targets(b, f"{prefix}.{i}")]
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        # peft swaps the targets inside each block in place, so `tail.blocks` stays valid.
        self.tail = inject_adapter_in_model(config, tail)
        for name, param in self.tail.named_parameters():
            param.requires_grad_("lora_" in name)
        # The encoder was built in eval mode; the adapter follows its module's mode from here on.
        self.tail.train()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def forward(self, hidden: Tensor) -> Tensor:
        """(N, L, W) block inputs -> (N, D) embeddings (float32)."""
        x = hidden.float()
        for block in self.tail.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(self.tail.run_block, block, x, use_reentrant=False)
            else:
                x = self.tail.run_block(block, x)
        return self.tail.head(x).float()

    def video_input(self, batch: dict) -> dict:
        """The batch with this encoder's feature columns replaced by the adapter's embeddings.

        Args:
            batch: a batch carrying ``block_inputs`` (B, T, L, W) beside ``video`` (B, T, Dv) and
                ``video_mask`` (B, T).

        Returns:
            A new dict without ``block_inputs``, whose ``video`` columns
            ``[column, column + D)`` are the adapter's embeddings on real clips (padding keeps 0).
        """
        hidden, mask, video = batch["block_inputs"], batch["video_mask"], batch["video"]
        embedded = self(hidden[mask])  # (N, D), N real clips
        adapted = torch.zeros(*mask.shape, self.dim, dtype=video.dtype, device=video.device)  # (B, T, D)
        adapted[mask] = embedded.to(video.dtype)
        c0, c1 = self.column, self.column + self.dim
        out = {k: v for k, v in batch.items() if k != "block_inputs"}
        out["video"] = torch.cat([video[..., :c0], adapted, video[..., c1:]], dim=-1)  # (B, T, Dv)
        return out

    def merge(self) -> None:
        """Fold the LoRA update into the blocks' weights (answering: one matmul per layer)."""
        from peft.tuners.lora import LoraLayer

        for module in self.tail.modules():
            if isinstance(module, LoraLayer) and not module.merged:
                module.merge()


def lora_state_keys(adapter: VisualAdapter, prefix: str) -> set[str]:
    """``state_dict`` keys (under ``prefix``) of the adapter's trainable LoRA weights."""
    return {f"{prefix}{name}" for name, param in adapter.named_parameters() if param.requires_grad}
