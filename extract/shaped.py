"""Benchmark-shaped caches: real annotations, generated features that only the query can unlock.

``python -m extract shaped --variant qvhighlights --out data/bench_accuracy/qvhighlights.h5``
reads the real annotations of a benchmark through its dataset adapter (every query, the real
splits, windows, durations and, for QVHighlights, the annotators' saliency) and writes a cache
whose features are generated so that grounding a query needs both the query and the video. The
model, in the word space of ``word_dim`` dims (docs/accuracy_benchmark.md has the full account):

* **Words.** Each word (lower-cased, ``[a-z0-9']+``) has a fixed vector ``w`` ~ N(0, I / word_dim)
  drawn from a generator seeded by (seed, hash of the word), so the same word always has the same
  vector and nothing depends on the vocabulary seen.
* **Text tokens** (the text encoder stand-in, ``word_dim`` dims): token i is
  ``w_i + context_mix * (w_{i-1} + w_{i+1}) / 2`` (missing neighbours count as 0); the pooled
  feature is the mean token.
* **Meaning** of a query: ``m_q`` = the normalised mean of its content words' vectors (all its
  words when every word is a stop word).
* **Events.** An event is a meaning with a strength per clip ``s_t`` = (fraction of the clip
  inside the event's windows) x (``0.4 + 0.6 * mean annotator score / 4`` where saliency is
  annotated, else 1). A video holds one event per real query of that video, and ``distractors``
  more: meanings of other queries of the same split, each with that other query's own windows
  and saliency (positions in normalised time), so distractors have the real position, length and
  strength distribution and only their meaning tells them apart.
* **Video features** (``video_dim`` dims, one per ``stride_sec`` clip):
  ``v_t = phi(signal * sum_e s_t^e m_e + background * b + noise * n_t)`` with ``b`` a unit
  vector per video, ``n_t`` ~ N(0, I / word_dim) and ``phi(x) = W2 gelu(W1 (A x) + b1)`` a fixed
  random map (A: word_dim -> video_dim, W1: -> hidden_dim, W2: -> video_dim), so the video and
  text spaces differ and the model has to learn the map between them.
* **Fillers** (``filler`` = 1): every clip's meaning part is levelled to norm 1 by meanings of
  other queries over random segments (``_level_meanings``), so a clip inside an event carries no
  more energy than one outside and the video alone does not show where events are.

Every random draw comes from ``numpy.random.default_rng`` seeded by (seed, a stable hash of the
word or video id), so the same annotations and parameters give the same feature bytes, and a
video's features do not depend on which other videos are generated except through the choice of
its distractors among its split's queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache_schema.spec import EncoderSpec, QueryItem, SchemaError, VideoItem
from cache_schema.store import CacheWriter
from extract.datasets import Annotation, AnnotationError, load_dataset

STOP_WORDS = frozenset(
    "a an the and or but of to in on at by for with from into onto over under up down out off "
    "is are was were be been being am has have had do does did it its it's this that these those "
    "there here then than as while when where who whom which what his her their our your my "
    "he she they we you i me him them us".split()
)
"""Words left out of a query's meaning (they still get text tokens)."""

_WORD = re.compile(r"[a-z0-9']+")
CHUNK_VIDEOS = 256
"""Videos whose features are computed together (and whose queries are committed together)."""


@dataclass(frozen=True)
class ShapedVariant:
    """One benchmark the generator imitates.

    Attributes:
        name: variant name on the command line.
        dataset: dataset adapter that reads the annotations (``python -m extract.datasets info``).
        adapter_variant: the adapter's variant (which copy of a file), None for its default.
        stride_sec: seconds per generated video feature.
        splits: splits generated, in the order written.
    """

    name: str
    dataset: str
    adapter_variant: str | None
    stride_sec: float
    splits: tuple[str, ...]


VARIANTS: dict[str, ShapedVariant] = {
    v.name: v
    for v in (
        # 2-s clips as the official features; test comes from the labelled test file.
        ShapedVariant("qvhighlights", "qvhighlights", "test_with_gt", 2.0, ("train", "val", "test")),
        # Videos of ~30 s: 1-s clips keep about 30 features per video.
        ShapedVariant("charades_sta", "charades_sta", None, 1.0, ("train", "test")),
    )
}


@dataclass(frozen=True)
class GeneratorParams:
    """Everything that shapes the generated features; recorded beside the cache.

    Attributes:
        seed: seed of every random draw.
        word_dim: dims of word vectors, meanings and text tokens.
        video_dim: dims of the video features.
        hidden_dim: hidden width of the fixed map phi.
        signal: scale of each event's meaning in a clip at full strength.
        background: norm of the per-video background vector.
        noise: expected norm of the per-clip noise.
        distractors: events of other queries' meanings added to every video.
        context_mix: weight of the neighbouring words in a text token.
        filler: weight of the filler meanings that give every clip the same meaning energy
            (1: every clip's meaning part has norm 1, so the video alone does not show where
            events are; 0: no fillers, the first generator's features).
    """

    seed: int = 0
    word_dim: int = 384
    video_dim: int = 512
    hidden_dim: int = 512
    signal: float = 1.0
    background: float = 1.0
    noise: float = 1.0
    distractors: int = 2
    context_mix: float = 0.5
    filler: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _stable_hash(text: str) -> int:
    """64-bit hash of a string that, unlike ``hash()``, is the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of a query: ``"A man's dog."`` -> ``["a", "man's", "dog"]``."""
    return _WORD.findall(text.lower())


class WordSpace:
    """Fixed word vectors, text tokens and meanings of the generator (word_dim dims)."""

    def __init__(self, params: GeneratorParams) -> None:
        self.params = params
        self._vectors: dict[str, np.ndarray] = {}

    def vector(self, word: str) -> np.ndarray:
        """(word_dim,) float64 vector of a word, N(0, I / word_dim)."""
        if word not in self._vectors:
            rng = np.random.default_rng([self.params.seed, 1, _stable_hash(word)])
            self._vectors[word] = rng.standard_normal(self.params.word_dim) / np.sqrt(self.params.word_dim)
        return self._vectors[word]

    def tokens(self, query: str, where: str) -> np.ndarray:
        """(L, word_dim) token features of a query, L = its number of words.

        Raises:
            AnnotationError: naming ``where`` when the query has no word.
        """
        w = np.stack([self.vector(x) for x in _words_of(query, where)])  # (L, D)
        padded = np.pad(w, ((1, 1), (0, 0)))
        return w + self.params.context_mix * (padded[:-2] + padded[2:]) / 2

    def meaning(self, query: str, where: str) -> np.ndarray:
        """(word_dim,) unit vector: normalised mean of the query's content-word vectors.

        Raises:
            AnnotationError: naming ``where`` when the query has no word.
        """
        ws = _words_of(query, where)
        content = [x for x in ws if x not in STOP_WORDS] or ws
        m = np.mean([self.vector(x) for x in content], axis=0)
        return m / np.linalg.norm(m)


def _words_of(query: str, where: str) -> list[str]:
    ws = words(query)
    if not ws:
        raise AnnotationError(f"{where}: query {query!r} has no word to make text features from")
    return ws


class FeatureMap:
    """The fixed non-linear map phi from the word space to the video space."""

    def __init__(self, params: GeneratorParams) -> None:
        rng = np.random.default_rng([params.seed, 2])
        # Entries N(0, 1) for A keep the pre-activations of order |x|, where GELU is non-linear.
        a = rng.standard_normal((params.word_dim, params.video_dim))
        w1 = rng.standard_normal((params.video_dim, params.hidden_dim)) / np.sqrt(params.video_dim)
        # W1 (A x) = (A^T W1)^T x: one product instead of two, computed once in float64.
        self.a_w1 = (a @ w1).astype(np.float32)  # (word_dim, H)
        self.b1 = (0.5 * rng.standard_normal(params.hidden_dim)).astype(np.float32)
        self.w2 = (
            rng.standard_normal((params.hidden_dim, params.video_dim)) / np.sqrt(params.hidden_dim)
        ).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, word_dim) float32 latent clips -> (N, video_dim) float32 features."""
        h = x @ self.a_w1 + self.b1  # (N, H)
        gelu = 0.5 * h * (1 + np.tanh(np.float32(np.sqrt(2 / np.pi)) * (h + np.float32(0.044715) * h**3)))
        return gelu @ self.w2


def clip_grid(duration_sec: float, stride_sec: float) -> np.ndarray:
    """(T, 2) [start, end) seconds of the clips of a video; the last one is cut at the duration."""
    n = max(1, int(np.ceil(duration_sec / stride_sec - 1e-6)))
    starts = np.arange(n) * stride_sec
    return np.stack([starts, np.minimum(starts + stride_sec, duration_sec)], axis=1)


def event_strength(row: Annotation, clips_sec: np.ndarray, duration_sec: float) -> np.ndarray:
    """(T,) strength of ``row``'s event in the clips ``clips_sec`` of a video of ``duration_sec``.

    The row's windows and saliency are placed in normalised time, so a row of another video
    (a distractor) keeps its relative position and length. Strength = fraction of the clip inside
    the windows x (0.4 + 0.6 * mean annotator score / 4) where saliency is annotated.
    """
    scale = duration_sec / row.duration_sec
    windows = np.asarray(row.windows, dtype=np.float64).reshape(-1, 2) * scale  # (W, 2)
    lo = np.maximum(clips_sec[:, None, 0], windows[None, :, 0])
    hi = np.minimum(clips_sec[:, None, 1], windows[None, :, 1])
    length = clips_sec[:, 1] - clips_sec[:, 0]
    covered = np.clip(np.clip(hi - lo, 0, None).sum(axis=1) / length, 0, 1)  # (T,)
    if row.saliency is None:
        return covered
    mean_score = row.saliency.mean(axis=1)  # (C,)
    centres = clips_sec.mean(axis=1) / scale
    clip = np.minimum((centres / row.saliency_clip_sec).astype(np.int64), len(mean_score) - 1)
    return covered * (0.4 + 0.6 * mean_score[clip] / 4.0)


def latent_clips(
    own: Sequence[Annotation],
    pool: Sequence[Annotation],
    stride_sec: float,
    space: WordSpace,
    params: GeneratorParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Clips and latent vectors of one video (the rows ``own`` share it) before the map phi.

    Distractors are drawn from ``pool`` (rows of other videos) by a generator seeded by the
    video id.

    Returns:
        (T, 2) clip [start, end) seconds and (T, word_dim) float32 latent clips.

    Raises:
        AnnotationError: the video has no duration (naming the row's file and line).
    """
    vid, duration = own[0].vid, own[0].duration_sec
    if duration is None:
        raise AnnotationError(f"{own[0].source}: video {vid} has no duration to generate clips for")
    rng = np.random.default_rng([params.seed, 3, _stable_hash(vid)])
    clips = clip_grid(duration, stride_sec)  # (T, 2)
    others: list[Annotation] = []
    while len(others) < params.distractors:
        pick = pool[int(rng.integers(len(pool)))]
        if pick.vid != vid:
            others.append(pick)
    background = rng.standard_normal(params.word_dim)
    x = params.background * background / np.linalg.norm(background)  # (D,)
    x = x + params.noise * rng.standard_normal((len(clips), params.word_dim)) / np.sqrt(params.word_dim)
    meanings = np.zeros_like(x)  # (T, D) sum over events of strength x meaning
    for event in [*own, *others]:
        if event.windows:
            strength = event_strength(event, clips, duration)  # (T,)
            meanings += strength[:, None] * space.meaning(event.query, event.source)[None, :]
    if params.filler > 0:
        meanings = _level_meanings(meanings, pool, vid, rng, space, params.filler)
    x = x + params.signal * meanings
    return clips, x.astype(np.float32)


FILLER_SEGMENTS = 8
"""A video's filler meanings change at about this many random cuts."""


def _level_meanings(
    meanings: np.ndarray,
    pool: Sequence[Annotation],
    vid: str,
    rng: np.random.Generator,
    space: WordSpace,
    weight: float,
) -> np.ndarray:
    """Give every clip's meaning part the norm 1: events capped at 1, fillers completing the rest.

    Without this, a clip inside an event carries more energy than one outside, and the video
    alone shows where events are (a linear probe without the query found 71 % of the windows).
    Fillers are meanings of other queries of the split (so they have the real word statistics),
    each over a random segment of the video, orthogonalised against the clip's events and scaled
    to ``sqrt(1 - |events|^2)``: with ``weight`` 1 every clip's meaning has norm 1 exactly.

    Args:
        meanings: (T, D) per clip, the strength-weighted sum of its events' meanings.
        pool: rows of the split; fillers come from those of other videos than ``vid``.
        rng: the video's generator (drawn from after everything else, so ``weight`` 0 keeps the
            first generator's bytes).
        weight: scale of the fillers.

    Returns:
        (T, D) the levelled meanings.
    """
    norm = np.linalg.norm(meanings, axis=1, keepdims=True)  # (T, 1)
    meanings = meanings / np.maximum(norm, 1.0)  # overlapping events: capped at norm 1
    norm = np.minimum(norm, 1.0)
    direction = np.divide(meanings, norm, out=np.zeros_like(meanings), where=norm > 0)  # (T, D)
    t_clips = len(meanings)
    others = [row for row in pool if row.vid != vid]
    cuts = np.sort(rng.choice(np.arange(1, t_clips), size=min(t_clips - 1, FILLER_SEGMENTS), replace=False))
    filler = np.zeros_like(meanings)
    for segment in np.split(np.arange(t_clips), cuts):
        row = others[int(rng.integers(len(others)))]
        filler[segment] = space.meaning(row.query, row.source)[None, :]
    filler -= (filler * direction).sum(axis=1, keepdims=True) * direction  # orthogonal to the events
    filler /= np.maximum(np.linalg.norm(filler, axis=1, keepdims=True), 1e-12)
    return meanings + weight * np.sqrt(np.clip(1.0 - norm**2, 0.0, None)) * filler


@dataclass
class GenerationSummary:
    """What a generation wrote: counts per split and the dropped annotation rows."""

    videos: dict[str, int]
    queries: dict[str, int]
    adapter_report: str
    seconds: float


def generate(
    variant: str,
    out: str | os.PathLike,
    params: GeneratorParams = GeneratorParams(),
    *,
    annotations: str | os.PathLike | None = None,
    limit_videos: int | None = None,
    log=print,
) -> GenerationSummary:
    """Write the shaped cache of ``variant`` to ``out`` (.h5 or .zarr) and its parameters beside it.

    The cache is written under a temporary name and renamed into place, then
    ``<out>.params.json`` is written the same way: a cache without that file (an interrupted run)
    is incomplete. See :func:`read_params`.

    Args:
        variant: a key of ``VARIANTS``.
        out: cache path.
        params: generator parameters.
        annotations: annotation folder of the adapter (default: the shared data folder).
        limit_videos: keep the first N videos of each split (file order), e.g. for tests.
        log: called with progress lines.

    Raises:
        KeyError: unknown variant (the message lists the known ones).
        FileNotFoundError, AnnotationError: the annotations cannot be read (naming the file/line).
    """
    if variant not in VARIANTS:
        raise KeyError(f"unknown shaped variant {variant!r}; available: {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    t0 = time.perf_counter()
    result = load_dataset(spec.dataset, annotations, variant=spec.adapter_variant, split=spec.splits)
    by_split = result.by_split()
    space, phi = WordSpace(params), FeatureMap(params)
    encoders = [
        EncoderSpec(
            name="shaped_video", modality="video", dim=params.video_dim, dtype="float16",
            weights_id="none", library="extract.shaped", stride_sec=spec.stride_sec,
            frames_per_feature=1, input_size=0,
        ),
        EncoderSpec(
            name="shaped_text", modality="text", dim=params.word_dim, dtype="float16",
            weights_id="none", library="extract.shaped", tokenizer="words [a-z0-9']+",
            max_tokens=None,
        ),
    ]  # fmt: skip
    out = Path(out)
    # The old record would vouch for the new cache between its rename and the new record's.
    params_path(out).unlink(missing_ok=True)
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")
    writer = CacheWriter(partial, dataset=f"shaped_{variant}", encoders=encoders, mode="overwrite")
    videos: dict[str, int] = {}
    queries: dict[str, int] = {}
    for split in spec.splits:
        rows = by_split.get(split, [])
        per_video: dict[str, list[Annotation]] = {}
        for row in rows:
            per_video.setdefault(row.vid, []).append(row)
        vids = list(per_video)[:limit_videos]
        pool = [row for v in vids for row in per_video[v]]  # distractor candidates of this split
        if len({row.vid for row in pool}) < 2:
            raise AnnotationError(
                f"{spec.dataset} split {split!r}: {len(vids)} videos; need 2 for distractors"
            )
        for first in range(0, len(vids), CHUNK_VIDEOS):
            chunk = vids[first : first + CHUNK_VIDEOS]
            latents = [latent_clips(per_video[v], pool, spec.stride_sec, space, params) for v in chunk]
            # One call of phi per chunk: large matrix products instead of one per video.
            features = np.split(
                phi(np.concatenate([x for _, x in latents])), np.cumsum([len(x) for _, x in latents])[:-1]
            )
            for vid, (clips, _), feats in zip(chunk, latents, features, strict=True):
                writer.add_video(
                    VideoItem(
                        vid=vid,
                        duration_sec=per_video[vid][0].duration_sec,
                        features={"shaped_video": feats},  # (T, video_dim)
                        timestamps_sec={"shaped_video": clips},
                        source=f"generated://shaped/{variant}/{vid}",
                    )
                )
            items = []
            for row in (row for vid in chunk for row in per_video[vid]):
                tokens = space.tokens(row.query, row.source)  # (L, word_dim)
                items.append(
                    QueryItem(
                        qid=row.qid, vid=row.vid, text=row.query, split=split, windows=list(row.windows),
                        saliency=row.saliency, saliency_clip_sec=row.saliency_clip_sec,
                        tokens={"shaped_text": tokens}, pooled={"shaped_text": tokens.mean(axis=0)},
                    )
                )  # fmt: skip
            writer.add_queries(items)
        videos[split], queries[split] = len(vids), len(pool)
        log(f"  {split}: {len(vids)} videos, {len(pool)} queries ({time.perf_counter() - t0:.0f} s)")
    writer.close()
    os.replace(partial, out)
    summary = GenerationSummary(videos, queries, result.report.summary(), time.perf_counter() - t0)
    sidecar = params_path(out)
    record = {
        "variant": variant,
        "params": params.to_dict(),
        "limit_videos": limit_videos,
        "videos": videos,
        "queries": queries,
    }
    tmp = sidecar.with_name(sidecar.name + ".partial")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)
    return summary


def params_path(cache: str | os.PathLike) -> Path:
    """``<cache>.params.json``: the generation record written after the cache is complete."""
    cache = Path(cache)
    return cache.with_name(cache.name + ".params.json")


def read_params(cache: str | os.PathLike) -> dict | None:
    """The generation record of a complete shaped cache, None when the cache or its record is missing."""
    sidecar = params_path(cache)
    if not Path(cache).exists() or not sidecar.exists():
        return None
    return json.loads(sidecar.read_text())


def is_up_to_date(
    cache: str | os.PathLike, variant: str, params: GeneratorParams, limit_videos: int | None
) -> bool:
    """Whether ``cache`` is complete and was generated from these arguments."""
    record = read_params(cache)
    return (
        record is not None
        and record["variant"] == variant
        and record["params"] == params.to_dict()
        and record["limit_videos"] == limit_videos
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extract shaped", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="qvhighlights")
    parser.add_argument("--out", type=Path, required=True, help="cache path (.h5 or .zarr)")
    parser.add_argument(
        "--annotations", type=Path, default=None, help="annotation folder (default: shared data)"
    )
    parser.add_argument("--limit-videos", type=int, default=None, help="first N videos of each split")
    parser.add_argument(
        "--reuse", action="store_true", help="keep OUT when it is complete and was made with these arguments"
    )
    for field in dataclasses.fields(GeneratorParams):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m extract shaped``: exit 0 on success, 2 with one line when the input is bad."""
    args = build_parser().parse_args(argv)
    params = GeneratorParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GeneratorParams)})
    if args.reuse and is_up_to_date(args.out, args.variant, params, args.limit_videos):
        print(f"{args.out} is up to date (see {params_path(args.out)})")
        return 0
    try:
        summary = generate(
            args.variant,
            args.out,
            params,
            annotations=args.annotations,
            limit_videos=args.limit_videos,
            log=lambda line: print(line, flush=True),
        )
    except (AnnotationError, SchemaError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.adapter_report)
    print(
        f"wrote {sum(summary.queries.values())} queries over {sum(summary.videos.values())} videos to "
        f"{args.out} in {summary.seconds:.0f} s"
    )
    return 0
