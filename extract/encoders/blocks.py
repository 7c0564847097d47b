"""A visual tower cut before its last K transformer blocks: the stem, the blocks, the head.

Caching the hidden states that enter block N-K (``stem``) lets a LoRA adapter train the last K
blocks from the cache, without decoding frames or running the early blocks again: the adapter
runs ``tail`` (blocks N-K..N-1, then whatever maps their output to the embedding: final norm,
attention pooling, projection). ``tail(stem(pixels, n - k), n - k)`` is the tower's own forward
pass, op for op, so at a zero LoRA update it reproduces the frozen features.

One class per tower layout, chosen by the tower's type (:func:`split_visual`):

* :class:`OpenClipViTSplit`: open_clip's own ``VisionTransformer`` (CLIP ViT-B/32, ViT-L/14,
  ``tiny_clip``): one class token first; pooling, ``ln_post`` and ``proj`` after the blocks.
* :class:`TimmViTSplit`: open_clip's ``TimmModel`` around a timm ``VisionTransformer`` (the SigLIP
  family, ``tiny_siglip``): class and/or register tokens first; ``norm``, the timm head (MAP
  attention pooling for SigLIP) and open_clip's projection after the blocks.

Token layout is the tower's own: ``prefix_tokens`` class/register tokens, then the patch grid in
row-major order. :func:`pool_patch_tokens` averages the grid over P x P cells (prefix tokens
kept); a pooled cache no longer reproduces the frozen path exactly, and records P to say so.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cache_schema.spec import BlockInputsSpec
from extract.encoders.registry import EncoderError


class VisualSplit(nn.Module):
    """A visual tower seen as ``stem -> blocks -> head``.

    Attributes:
        prefix_tokens: Class and register tokens before the patch grid.
        grid: Side of the square patch grid.
        width: Token width W.
    """

    prefix_tokens: int
    grid: int
    width: int

    @property
    def blocks(self) -> nn.Sequential | nn.ModuleList:
        """The tower's transformer blocks, in order (the tower's own container, so each
        parameter appears once in ``state_dict``)."""
        raise NotImplementedError

    @property
    def depth(self) -> int:
        """Number of transformer blocks N."""
        return len(self.blocks)

    def embed(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) preprocessed pixels -> (B, L, W) tokens entering block 0."""
        raise NotImplementedError

    def run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        """One block on batch-first tokens (B, L, W)."""
        return block(x)

    def head(self, x: Tensor) -> Tensor:
        """(B, L, W) output of the last block -> (B, D) embedding."""
        raise NotImplementedError

    def stem(self, pixels: Tensor, start: int) -> Tensor:
        """(B, 3, S, S) pixels -> (B, L, W) hidden states entering block ``start``."""
        x = self.embed(pixels)
        for block in self.blocks[:start]:
            x = self.run_block(block, x)
        return x

    def tail(self, x: Tensor, start: int) -> Tensor:
        """(B, L, W) hidden states entering block ``start`` -> (B, D) embedding."""
        for block in self.blocks[start:]:
            x = self.run_block(block, x)
        return self.head(x)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.tail(self.stem(pixels, 0), 0)

    def drop_stem(self, start: int) -> None:
        """Keep only blocks ``start``.. and the head, freeing the embedding and the early blocks.

        Afterwards the split only runs ``tail(x, 0)`` and its ``state_dict`` holds only the tail.
        """
        self._keep_blocks(start)
        self._drop_embedding()

    def _keep_blocks(self, start: int) -> None:
        raise NotImplementedError

    def _drop_embedding(self) -> None:
        raise NotImplementedError


class OpenClipViTSplit(VisualSplit):
    """open_clip's ``VisionTransformer`` (``model.visual`` of the CLIP configs)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.prefix_tokens = 1
        self.grid = int(visual.grid_size[0])
        self.width = int(visual.class_embedding.shape[-1])

    def embed(self, pixels: Tensor) -> Tensor:
        return self.visual._embeds(pixels)  # (B, 1 + grid^2, W)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def _keep_blocks(self, start: int) -> None:
        self.visual.transformer.resblocks = nn.ModuleList(list(self.visual.transformer.resblocks)[start:])

    def _drop_embedding(self) -> None:
        visual = self.visual
        visual.conv1 = nn.Identity()
        visual.ln_pre = nn.Identity()
        del visual.class_embedding, visual.positional_embedding

    def run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def head(self, x: Tensor) -> Tensor:
        pooled, _ = self.visual._pool(x)  # (B, W)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj  # (B, D)
        return pooled


class TimmViTSplit(VisualSplit):
    """open_clip's ``TimmModel`` around a timm ``VisionTransformer`` (SigLIP family)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        trunk = visual.trunk
        self.prefix_tokens = int(trunk.num_prefix_tokens)
        grid = trunk.patch_embed.grid_size
        if grid[0] != grid[1]:
            raise EncoderError(f"timm trunk {type(trunk).__name__}: non-square patch grid {grid}")
        self.grid = int(grid[0])
        self.width = int(trunk.embed_dim)

    @property
    def blocks(self) -> nn.Sequential:
        return self.visual.trunk.blocks

    def _keep_blocks(self, start: int) -> None:
        self.visual.trunk.blocks = nn.Sequential(*list(self.visual.trunk.blocks)[start:])

    def _drop_embedding(self) -> None:
        trunk = self.visual.trunk
        trunk.patch_embed = nn.Identity()
        trunk.norm_pre = nn.Identity()
        for name in ("cls_token", "reg_token", "pos_embed"):
            if getattr(trunk, name, None) is not None:
                delattr(trunk, name)
                setattr(trunk, name, None)

    def embed(self, pixels: Tensor) -> Tensor:
        trunk = self.visual.trunk
        x = trunk.patch_embed(pixels)
        x = trunk._pos_embed(x)
        x = trunk.patch_drop(x)
        return trunk.norm_pre(x)  # (B, prefix + grid^2, W)

    def head(self, x: Tensor) -> Tensor:
        trunk = self.visual.trunk
        x = trunk.forward_head(trunk.norm(x))  # (B, D or W)
        return self.visual.head(x)  # (B, D)


def split_visual(visual: nn.Module) -> VisualSplit:
    """The split view of an open_clip visual tower, chosen by its layout.

    Raises:
        EncoderError: the tower is neither open_clip's ViT nor a timm ViT trunk (a CNN, say).
    """
    if hasattr(visual, "transformer") and hasattr(visual, "_embeds") and hasattr(visual, "_pool"):
        return OpenClipViTSplit(visual)
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "_pos_embed"):
        return TimmViTSplit(visual)
    raise EncoderError(
        f"visual tower {type(visual).__name__} has no transformer blocks groundcache can cut "
        "(supported: open_clip VisionTransformer, timm VisionTransformer trunks)"
    )


def check_blocks(name: str, blocks: int, depth: int) -> int:
    """Index of the first adapted block, N - K; raises naming the encoder, K and its depth N."""
    if not 1 <= blocks <= depth:
        raise EncoderError(
            f"encoder {name!r}: block_inputs K={blocks} must be between 1 and the encoder's depth {depth}"
        )
    return depth - blocks


def pooled_tokens(prefix_tokens: int, grid: int, pool: int) -> int:
    """Tokens per frame after :func:`pool_patch_tokens` with factor ``pool``."""
    side = math.ceil(grid / pool)
    return prefix_tokens + side * side


def pool_patch_tokens(x: Tensor, prefix_tokens: int, grid: int, pool: int) -> Tensor:
    """Average the patch grid over ``pool`` x ``pool`` cells, prefix tokens kept.

    Args:
        x: (B, prefix + grid^2, W) tokens.

    Returns:
        (B, prefix + ceil(grid / pool)^2, W); ``x`` itself when ``pool == 1``.
    """
    if pool == 1:
        return x
    b, _, w = x.shape
    prefix, patches = x[:, :prefix_tokens], x[:, prefix_tokens:]
    patches = patches.transpose(1, 2).reshape(b, w, grid, grid)  # (B, W, G, G)
    patches = F.avg_pool2d(patches, pool, ceil_mode=True)  # (B, W, G/P, G/P)
    return torch.cat([prefix, patches.flatten(2).transpose(1, 2)], dim=1)


def encode_with_block_inputs(
    encoder: object, frames: object, blocks: int, pool: int
) -> tuple[Tensor, Tensor]:
    """Features and block inputs of a batch of frames, from one pass through the tower.

    The features are ``tail(stem(pixels))``, the frozen path op for op; the block inputs are the
    stem's output, patch grid pooled by ``pool``.

    Args:
        encoder: An :class:`~extract.encoders.registry.Encoder` whose ``visual_split()`` works.
        frames: (N, H, W, 3) uint8.
        blocks: K, the number of last blocks whose input is returned.
        pool: Patch-grid pooling factor P (1: unpooled).

    Returns:
        features (N, D) float32 and block inputs (N, L, W) float32, on CPU.

    Raises:
        EncoderError: K is not in 1..depth, or the tower cannot be cut.
    """
    from extract.encoders.registry import check_frames  # registry imports nothing from here

    split = encoder.visual_split()
    start = check_blocks(encoder.name, blocks, split.depth)
    check_frames(encoder.video_spec, frames)
    features, hidden = [], []
    with encoder.inference():
        for first in range(0, frames.shape[0], encoder.batch_size):
            pixels = encoder.preprocess_video(frames[first : first + encoder.batch_size])
            x = split.stem(pixels, start)  # (B, L, W)
            features.append(split.tail(x, start).float().cpu())  # (B, D)
            hidden.append(pool_patch_tokens(x, split.prefix_tokens, split.grid, pool).float().cpu())
    return torch.cat(features), torch.cat(hidden)


def block_inputs_spec(encoder: object, blocks: int, pool: int) -> BlockInputsSpec:
    """The `BlockInputsSpec` an encoder's block inputs for K = ``blocks`` and P = ``pool`` get.

    Raises:
        EncoderError: K is not in 1..depth (naming both), or the tower cannot be cut.
    """
    split = encoder.visual_split()
    check_blocks(encoder.name, blocks, split.depth)
    if pool < 1:
        raise EncoderError(f"encoder {encoder.name!r}: block_pool must be >= 1, got {pool}")
    return BlockInputsSpec(
        encoder=encoder.video_spec.name,
        blocks=blocks,
        depth=split.depth,
        tokens=pooled_tokens(split.prefix_tokens, split.grid, pool),
        width=split.width,
        prefix_tokens=split.prefix_tokens,
        grid=split.grid,
        pool=pool,
        dtype=encoder.video_spec.dtype if encoder.video_spec.dtype != "bfloat16" else "float32",
    )
