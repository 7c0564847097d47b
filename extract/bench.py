"""``make bench-extract``: decode and encode throughput of 1-fps sampling, as a markdown table.

1. Decode only, on one generated video (default 10 minutes of 1280x720 at 30 fps, cached under
   ``data/bench/``): decord random access (``get_batch`` of the sampled frames), decord sequential
   (read every frame, keep the sampled ones), and PyAV sequential decode (``extract.video``'s PyAV
   path, converting only the sampled frames). Frames/s counts sampled frames.
2. Encoders on CPU (random init, ``weights: none``): encoder only (the sampled frames already in
   memory, fixed-shape batches as in the pipeline) against end to end (``extract.pipeline`` on
   ``--copies`` copies of the video: decode workers + encoder + cache writes). The goal is end to
   end >= 80% of encoder only, i.e. the encoder never waits on decoding.

    python -m extract.bench                               # the full benchmark (slow to generate)
    python -m extract.bench --minutes 0.5 --height 240 --width 320 --copies 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from extract.api import encode_frames, frames_for_encoder, resolve_frame_size
from extract.config import EncoderChoice, ExtractConfig
from extract.encoders import build_encoder, encoder_specs
from extract.pipeline import run
from extract.video import feature_windows, nearest_frame_indices, probe_video, sample_video

REPO = Path(__file__).resolve().parents[1]


def bench_video(out_dir: Path, *, minutes: float, height: int, width: int, fps: int) -> Path:
    """Generate (once) a lossy H.264 video of moving gradients plus noise, streamed frame by frame."""
    path = out_dir / f"bench_{width}x{height}_{fps}fps_{minutes:g}min.mp4"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    n_frames = round(minutes * 60 * fps)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    noise = rng.integers(0, 24, size=(8, height, width, 3), dtype=np.uint8)
    tmp = path.with_name(path.stem + ".partial.mp4")
    # Streamed rather than extract.video.write_video, which takes every frame in one array
    # (10 minutes of 720p would be 50 GB).
    with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(n_frames):
            rgb = np.empty((height, width, 3), dtype=np.uint8)
            rgb[..., 0] = (xx + 4 * i) % 256
            rgb[..., 1] = (yy + 2 * i) % 256
            rgb[..., 2] = ((xx + yy) // 4 + i) % 256
            rgb += noise[i % len(noise)]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Row:
    stage: str
    method: str
    frames: int
    seconds: float

    @property
    def frames_per_sec(self) -> float:
        return self.frames / self.seconds


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    frames = fn()
    return frames, time.perf_counter() - start


def decode_rows(path: Path, fps: float, size: int | None) -> list[Row]:
    """Decode-only throughput of sampling ``path`` at ``fps`` with each decoder."""
    rows = []
    try:
        import decord
    except ImportError:  # decord has no wheels for some platforms; PyAV is measured anyway
        decord = None
    if decord is not None:
        frames, sec = _timed(lambda: len(sample_video(path, fps, size=size, backend="decord").frames))
        rows.append(Row("decode", "decord get_batch (seek)", frames, sec))

        def decord_sequential() -> int:
            info = probe_video(path)
            centres = feature_windows(info.duration_sec, fps).mean(axis=1)
            wanted = set(nearest_frame_indices(info.frame_timestamps_sec, centres).tolist())
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
            kept = 0
            for i in range(len(reader)):
                frame = reader.next()
                if i in wanted:
                    frame.asnumpy()
                    kept += 1
            return kept

        frames, sec = _timed(decord_sequential)
        rows.append(Row("decode", "decord sequential", frames, sec))
    frames, sec = _timed(lambda: len(sample_video(path, fps, size=size, backend="pyav").frames))
    rows.append(Row("decode", "PyAV sequential", frames, sec))
    return rows


def encoder_rows(
    path: Path, encoder: str, *, fps: float, copies: int, batch_size: int, num_workers: int, work_dir: Path
) -> list[Row]:
    """Encoder-only and end-to-end throughput of one encoder on CPU."""
    spec, _ = encoder_specs(encoder, weights="none", fps=fps)
    size = resolve_frame_size(None, [spec])
    sampled = sample_video(path, fps, frames_per_feature=spec.frames_per_feature or 1, size=size)
    model = build_encoder(encoder, weights="none", batch_size=batch_size, fps=fps)
    frames = frames_for_encoder(spec, sampled.frames, spec.frames_per_feature or 1)
    encode_frames(model, frames[:batch_size])  # warm-up: first-call allocations
    n, sec = _timed(lambda: len(encode_frames(model, frames)))
    rows = [Row(encoder, "encoder only", n, sec)]

    videos = work_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(copies):
        link = videos / f"copy{k}{path.suffix}"
        if not link.exists():
            link.symlink_to(path.resolve())
        lines.append(json.dumps({"qid": f"q{k}", "video": f"videos/{link.name}", "query": f"copy {k}"}))
    (work_dir / "annotations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = ExtractConfig(
        dataset="bench",
        output=str(work_dir / f"{encoder}.h5"),
        annotations=str(work_dir / "annotations.jsonl"),
        video_root=str(work_dir),
        video_encoders=[EncoderChoice(encoder, "none")],
        text_encoders=[EncoderChoice(encoder if _has_text(encoder) else "tiny_clip", "none")],
        fps=fps,
        batch_size=batch_size,
        num_workers=num_workers,
        overwrite=True,
    )
    summary = run(config)
    rows.append(
        Row(encoder, f"end to end ({num_workers} decode workers)", summary.frames, summary.loop_seconds)
    )
    return rows


def _has_text(encoder: str) -> bool:
    return encoder_specs(encoder, weights="none")[1] is not None


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| stage | method | frames | seconds | frames/s | vs encoder only |",
        "|---|---|---:|---:|---:|---:|",
    ]
    reference: dict[str, float] = {}
    for row in rows:
        if row.method == "encoder only":
            reference[row.stage] = row.frames_per_sec
        ratio = f"{row.frames_per_sec / reference[row.stage]:.0%}" if row.stage in reference else ""
        lines.append(
            f"| {row.stage} | {row.method} | {row.frames} | {row.seconds:.2f} | "
            f"{row.frames_per_sec:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extract.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the generated video")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--native-fps", type=int, default=30, help="frame rate of the generated video")
    parser.add_argument("--fps", type=float, default=1.0, help="sampling rate (features per second)")
    parser.add_argument("--encoders", nargs="+", default=["tiny_clip", "clip_vit_b32"])
    parser.add_argument("--copies", type=int, default=4, help="copies of the video in the end-to-end run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "bench", help="where the video is cached")
    args = parser.parse_args(argv)

    path = bench_video(
        args.out, minutes=args.minutes, height=args.height, width=args.width, fps=args.native_fps
    )
    info = probe_video(path)
    print(
        f"video {path}: {info.width}x{info.height}, {info.n_frames} frames at {info.fps:.2f} fps, "
        f"{info.duration_sec:.1f} s; sampling {math.ceil(info.duration_sec * args.fps)} frames "
        f"at {args.fps} fps; "
        f"torch threads {torch.get_num_threads()}"
    )
    size = resolve_frame_size(None, [encoder_specs(args.encoders[0], weights="none", fps=args.fps)[0]])
    rows = decode_rows(path, args.fps, size)
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        for encoder in args.encoders:
            rows += encoder_rows(
                path,
                encoder,
                fps=args.fps,
                copies=args.copies,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                work_dir=Path(tmp) / encoder,
            )
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
