"""Caches of generated features, for tests and benchmarks (no videos, no encoders).

Frames inside a query's window carry that query's "concept" vector on top of noise, and the
query's tokens carry it too, so a grounding model can learn the task from these features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cache_schema.spec import BlockInputsSpec, EncoderSpec, QueryItem, VideoItem
from cache_schema.store import CacheWriter


def fake_encoders(
    video_dims: Sequence[int] = (32,), text_dim: int = 16, stride_sec: float = 1.0, dtype: str = "float16"
) -> list[EncoderSpec]:
    specs = [
        EncoderSpec(
            name=f"fake_video{i}",
            modality="video",
            dim=d,
            dtype=dtype,
            weights_id="none",
            library="cache_schema.fake",
            stride_sec=stride_sec,
            frames_per_feature=1,
            input_size=0,
        )
        for i, d in enumerate(video_dims)
    ]
    specs.append(
        EncoderSpec(
            name="fake_text",
            modality="text",
            dim=text_dim,
            dtype=dtype,
            weights_id="none",
            library="cache_schema.fake",
            tokenizer="none",
            max_tokens=64,
        )
    )
    return specs


def write_fake_cache(
    path: str | os.PathLike,
    *,
    n_videos: int = 12,
    queries_per_video: int = 2,
    duration_range_sec: tuple[float, float] = (8.0, 40.0),
    video_dims: Sequence[int] = (32,),
    text_dim: int = 16,
    tokens_range: tuple[int, int] = (4, 12),
    stride_sec: float = 1.0,
    splits: Sequence[str] = ("train", "val", "test"),
    saliency: bool = True,
    signal: float = 2.0,
    seed: int = 0,
    dataset: str = "fake",
    dtype: str = "float16",
    compression: str | None = None,
    block_inputs: tuple[int, int] | None = None,
) -> CacheWriter:
    """Write a cache of `n_videos` videos with learnable features; returns the closed writer.

    Videos are assigned to splits round-robin so every split gets videos; durations are drawn
    from `duration_range_sec` and need not be multiples of the stride (the last window is cut).
    `block_inputs` (L tokens, W width) also writes random fp16 block inputs of that row shape for
    the first video encoder (for memory and speed measurements; no adapter can run on them).
    """
    rng = np.random.default_rng(seed)
    specs = fake_encoders(video_dims, text_dim, stride_sec, dtype)
    video_specs = [s for s in specs if s.modality == "video"]
    block_specs = []
    if block_inputs is not None:
        tokens, width = block_inputs
        block_specs = [
            BlockInputsSpec(
                encoder=video_specs[0].name,
                blocks=1,
                depth=1,
                tokens=tokens,
                width=width,
                prefix_tokens=0,
                grid=1,
            )
        ]
    # One random projection per encoder maps a query's concept into that encoder's space.
    concept_dim = 8
    proj = {s.name: rng.standard_normal((concept_dim, s.dim)) for s in specs}
    writer = CacheWriter(
        path,
        dataset=dataset,
        encoders=specs,
        mode="overwrite",
        compression=compression,
        block_inputs=block_specs or None,
    )
    for v in range(n_videos):
        vid = f"vid{v:05d}"
        duration = float(np.round(rng.uniform(*duration_range_sec), 2))
        n_feats = max(1, int(np.ceil(duration / stride_sec - 1e-6)))
        starts = np.arange(n_feats) * stride_sec
        ts = np.stack([starts, np.minimum(starts + stride_sec, duration)], axis=1)
        base = {s.name: rng.standard_normal((n_feats, s.dim)) for s in video_specs}
        queries = []
        for k in range(queries_per_video):
            concept = rng.standard_normal(concept_dim)
            length = max(1, int(rng.integers(1, max(2, n_feats // 2 + 1))))
            first = int(rng.integers(0, n_feats - length + 1))
            window = (float(ts[first, 0]), float(ts[first + length - 1, 1]))
            for s in video_specs:
                base[s.name][first : first + length] += signal * concept @ proj[s.name] / np.sqrt(concept_dim)
            n_tok = int(rng.integers(tokens_range[0], tokens_range[1] + 1))
            tokens = rng.standard_normal((n_tok, text_dim)) + signal * concept @ proj["fake_text"] / np.sqrt(
                concept_dim
            )
            sal = None
            if saliency:
                n_clips = int(np.ceil(duration / 2.0))
                sal = np.zeros((n_clips, 3), dtype=np.float32)
                clip_start = np.arange(n_clips) * 2.0
                inside = (clip_start + 1.0 >= window[0]) & (clip_start + 1.0 <= window[1])
                sal[inside] = rng.integers(1, 5, size=(int(inside.sum()), 3))
            queries.append(
                QueryItem(
                    qid=f"{vid}_q{k}",
                    vid=vid,
                    text=f"concept {v}-{k}",
                    split=splits[v % len(splits)],
                    windows=[window],
                    saliency=sal,
                    saliency_clip_sec=2.0 if saliency else None,
                    tokens={"fake_text": tokens},
                    pooled={"fake_text": tokens.mean(axis=0)},
                )
            )
        writer.add_video(
            VideoItem(
                vid=vid,
                duration_sec=duration,
                features=base,
                timestamps_sec={s.name: ts for s in video_specs},
                fps=25.0,
                n_frames=int(duration * 25),
                source=f"generated://{vid}",
                block_inputs={
                    b.encoder: rng.standard_normal((n_feats, *b.row_shape), dtype=np.float32).astype(
                        np.float16
                    )
                    for b in block_specs
                },
            )
        )
        writer.add_queries(queries)
    writer.close()
    return writer
