"""`make bench-train`: training throughput, evaluation time and peak memory on a QVHighlights-shaped cache.

Defaults: 7,218 training queries (one per video), T = 75 features of 2,816 dims (CLIP 512 +
SlowFast 2304 at 2-s clips), 32 text tokens of 512, the `span` model with its config. Measures
steady-state training samples/s over `--steps` optimizer steps (after warm-up steps), peak
memory (process RSS on CPU, `torch.cuda.max_memory_allocated` on GPU), and the projected time for
`--epochs` epochs. With `--full-epochs` it trains that many real epochs and reports the wall time.
On CPU it also reports the process's CPU seconds per step and the epoch they add up to: with one
thread, the time a dedicated core would take, which stays meaningful on a busy shared machine.
`--model all` measures every trainable model, one row each.

`--eval-queries` also times a validation pass (forward, decode, metric update and compute, on the
device) over that many queries and reports it as a share of the training epoch. `--profile` runs
torch.profiler over a few steps and prints the time of each part of the step (the network's
top-level modules, a module's second call in one forward as a separate part, the loss, backward
and the optimizer) and the heaviest operators.

GPU path: `--precision bf16` (autocast; the default on CUDA), `--compile` (torch.compile, with T
padded up to a multiple of `--clip-bucket` so every batch has one of a few static shapes), the
learning rate scaled from `--base-lr` at batch 32 by `ground.module.scaled_lr` for large batches,
and a step that never waits for the device (the loss is not read back; gradients are clipped
without `error_if_nonfinite`).

`--epoch-queries` projects the epoch of a training split larger than the cache written here (a
benchmark's real split size with a cache of a few hundred videos of its shape): the step time
depends on the batch's shape, not on how many videos the cache holds. Torch threads follow the
policy of every command (`ground.threads`: 1, or `$GROUNDCACHE_TORCH_THREADS`).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from cache_schema.fake import write_fake_cache
from ground.data import GroundingDataModule, SplitTensors, pad_clips
from ground.metrics import MomentRetrievalMetric
from ground.models import build_model, trainable_models
from ground.module import adamw, scaled_lr
from ground.threads import apply_thread_policy

REPO = Path(__file__).resolve().parents[1]
BASE_BATCH = 32
"""Batch size at which `--base-lr` is the learning rate (`scaled_lr` scales it for others)."""


@dataclass(frozen=True)
class Shape:
    """The QVHighlights shape of the benchmark cache."""

    queries: int = 7218
    clips: int = 75
    video_dim: int = 2816
    text_dim: int = 512
    tokens: int = 32


@dataclass(frozen=True)
class StepTiming:
    """Steady-state training speed of one model."""

    model: str
    params: int
    samples_per_sec: float
    step_sec: float
    step_cpu_sec: float
    """Process CPU seconds per step: with one thread, the step time of a dedicated core."""


def ensure_cache(workdir: Path, shape: Shape) -> Path:
    """The fake training cache of `shape` under `workdir`, written once (synthetic features)."""
    cache = workdir / f"train_{shape.queries}x{shape.clips}x{shape.video_dim}.h5"
    if not cache.exists():
        print(f"writing {cache} ...", flush=True)
        t0 = time.perf_counter()
        write_fake_cache(
            cache,
            n_videos=shape.queries,
            queries_per_video=1,
            video_dims=(shape.video_dim,),
            text_dim=shape.text_dim,
            tokens_range=(shape.tokens, shape.tokens),
            stride_sec=2.0,
            duration_range_sec=(2.0 * shape.clips, 2.0 * shape.clips),
            splits=("train",),
            seed=0,
        )
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return cache


def build_net(name: str, data: GroundingDataModule, device: torch.device,
              overrides: dict | None = None) -> nn.Module:
    """`name` with its config's hyperparameters updated by `overrides`, in training mode on `device`."""
    hparams = yaml.safe_load((REPO / "ground" / "configs" / "model" / f"{name}.yaml").read_text())["hparams"]
    hparams = {**(hparams or {}), **(overrides or {})}
    net = build_model(name, video_dim=data.video_dim, text_dim=data.text_dim, **hparams)
    return net.to(device).train()


def make_step(
    net: nn.Module,
    split: SplitTensors,
    batch_size: int,
    *,
    lr: float,
    precision: str,
    compile_net: bool,
    clip_bucket: int | None,
    seed: int = 0,
    adapter: nn.Module | None = None,
    block_inputs: torch.Tensor | None = None,
) -> Callable[[], None]:
    """One optimizer step on a random batch of `split`, as a closure.

    The step reads nothing back from the device, so on a GPU the host queues steps ahead. With
    `adapter` (a `ground.adapter.VisualAdapter`), it is trained too, on `block_inputs` (B, T, L, W)
    in place of the cache's features of its encoder.
    """
    device = next(net.parameters()).device
    trained = [*net.parameters(), *([] if adapter is None else adapter.parameters())]
    trained = [p for p in trained if p.requires_grad]
    optimizer = adamw(trained, lr)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    forward = torch.compile(net) if compile_net else net
    gen = torch.Generator().manual_seed(seed)
    n = len(split)

    def step() -> None:
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        batch = split.gather(idx)
        if clip_bucket:
            batch = pad_clips(batch, clip_bucket)
        with autocast:
            if adapter is not None:
                batch = adapter.video_input(
                    {**batch, "block_inputs": block_inputs[:, : batch["video"].shape[1]]}
                )
            loss = net.loss(forward(batch), batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(
    name: str, net: nn.Module, step: Callable[[], None], batch_size: int, steps: int, warmup: int
) -> StepTiming:
    """Wall and CPU seconds per step over `steps` steps after `warmup` untimed ones."""
    device = next(net.parameters()).device
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    step_sec = (time.perf_counter() - t0) / steps
    # CPU seconds of this process per step: on a machine shared with other work, the step time a
    # dedicated core would give (with one thread), where the wall time measures the contention.
    step_cpu_sec = (time.process_time() - cpu0) / steps
    params = sum(p.numel() for p in net.parameters())
    return StepTiming(name, params, batch_size / step_sec, step_sec, step_cpu_sec)


def measure_model(
    name: str,
    data: GroundingDataModule,
    split: SplitTensors,
    *,
    batch_size: int = BASE_BATCH,
    steps: int = 10,
    warmup: int = 2,
    base_lr: float = 3e-4,
) -> StepTiming:
    """Training speed of `name` on `split` at full precision, uncompiled: the CPU row `make zoo` shows."""
    device = split.video.device
    net = build_net(name, data, device)
    step = make_step(
        net,
        split,
        batch_size,
        lr=scaled_lr(base_lr, batch_size, BASE_BATCH),
        precision="32",
        compile_net=False,
        clip_bucket=None,
    )
    return time_steps(name, net, step, batch_size, steps, warmup)


@torch.no_grad()
def time_validation(
    net: nn.Module, split: SplitTensors, queries: int, batch_size: int, precision: str
) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds of one validation pass over the first `queries` queries of `split`.

    The pass is what `GroundingModule` runs each epoch: forward in eval mode, `decode` top 10,
    the metric's update on the device, then its compute.
    """
    device = split.video.device
    net.eval()
    metric = MomentRetrievalMetric().to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync(device)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, min(queries, len(split)), batch_size):
        idx = torch.arange(start, min(start + batch_size, queries, len(split)), device=device)
        batch = split.gather(idx)
        with autocast:
            preds = net.decode(net(batch), batch, 10)
        metric.update(
            batch["query_index"], preds.windows, preds.scores, batch["windows"], batch["window_mask"]
        )
    values = {k: float(v) for k, v in metric.compute().items()}
    sync(device)
    net.train()
    return time.perf_counter() - t0, time.process_time() - cpu0, values


def profile_step(net: nn.Module, step: Callable[[], None], steps: int) -> None:
    """Print the time of each part of a training step, from torch.profiler over `steps` steps.

    Parts: every top-level child module of the network (a ModuleList's members count together;
    a module called again in the same forward, such as `span`'s presence-negative pass through
    the fusion layers, is its own part), the loss, backward, and the optimizer (clipping
    included). Times are inclusive CPU milliseconds per step.
    """
    calls: dict[str, int] = defaultdict(int)
    open_ranges: list[record_function] = []

    def part_of(path: str) -> str:
        top = path.split(".")[0]
        child = getattr(net, top)
        return top if not isinstance(child, nn.ModuleList) else f"{top}[*]"

    def before(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            part = part_of(path)
            calls[path] += 1
            suffix = "" if calls[path] == 1 else f" (call {calls[path]})"
            rf = record_function(f"part: forward {part}{suffix}")
            rf.__enter__()
            open_ranges.append(rf)

        return hook

    def after(module: nn.Module, args: tuple, output: object) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = [net.register_forward_pre_hook(lambda *_: calls.clear())]
    for path, module in net.named_modules():
        depth = path.count(".")
        top = path.split(".")[0] if path else ""
        if path and (
            depth == 0
            and not isinstance(module, nn.ModuleList)
            or depth == 1
            and isinstance(getattr(net, top), nn.ModuleList)
        ):
            handles += [module.register_forward_pre_hook(before(path)), module.register_forward_hook(after)]
    loss_fn, backward = net.loss, torch.Tensor.backward

    def timed_loss(*args: object, **kwargs: object) -> dict:
        with record_function("part: loss"):
            return loss_fn(*args, **kwargs)

    def timed_backward(self: torch.Tensor, *args: object, **kwargs: object) -> None:
        with record_function("part: backward"):
            backward(self, *args, **kwargs)

    net.loss = timed_loss
    torch.Tensor.backward = timed_backward
    try:
        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with record_function("part: step"):
                    step()
    finally:
        torch.Tensor.backward = backward
        del net.loss
        for handle in handles:
            handle.remove()
    events = prof.key_averages()
    parts = {
        e.key.removeprefix("part: "): e.cpu_time_total / 1e3 / steps
        for e in events
        if e.key.startswith("part: ")
    }
    total = parts.pop("step")
    forward_parts = sum(v for k, v in parts.items() if k.startswith("forward"))
    rest = total - forward_parts - parts.get("loss", 0) - parts.get("backward", 0)
    print(f"\nprofile of {steps} steps: {total:.0f} ms per step (CPU, profiler on)\n")
    print("| part | ms per step | share |\n|---|---:|---:|")
    for key, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {key} | {ms:.0f} | {ms / total:.0%} |")
    print(f"| optimizer, clipping, batch gather, rest | {rest:.0f} | {rest / total:.0%} |")
    print("\n| operator | self ms per step | share |\n|---|---:|---:|")
    ops = sorted((e for e in events if not e.key.startswith("part: ")), key=lambda e: -e.self_cpu_time_total)
    for e in ops[:12]:
        ms = e.self_cpu_time_total / 1e3 / steps
        print(f"| {e.key} | {ms:.0f} | {ms / total:.0%} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ground.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = Shape()
    parser.add_argument("--model", default="span", help="a registered trainable model, or `all`")
    parser.add_argument(
        "--hparams", type=json.loads, default=None, metavar="JSON",
        help='network arguments over the model\'s config, e.g. \'{"hidden_dim": 128}\'',
    )
    parser.add_argument("--queries", type=int, default=default.queries)
    parser.add_argument("--clips", type=int, default=default.clips)
    parser.add_argument("--video-dim", type=int, default=default.video_dim)
    parser.add_argument("--text-dim", type=int, default=default.text_dim)
    parser.add_argument("--tokens", type=int, default=default.tokens)
    parser.add_argument("--batch-size", type=int, default=BASE_BATCH)
    parser.add_argument("--base-lr", type=float, default=3e-4, help=f"learning rate at batch {BASE_BATCH}")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200, help="epochs to project the training time for")
    parser.add_argument(
        "--epoch-queries",
        type=int,
        default=None,
        help="training queries per projected epoch (default: the cache's, --queries)",
    )
    parser.add_argument(
        "--eval-queries",
        type=int,
        default=0,
        help="also time a validation pass over this many queries (QVHighlights val: 1550)",
    )
    parser.add_argument("--full-epochs", type=int, default=0, help="really train this many epochs (GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        choices=("32", "bf16"),
        default=None,
        help="bf16 autocast or float32 (default: bf16 on CUDA, 32 on CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--clip-bucket",
        type=int,
        default=None,
        help="pad T up to a multiple of this (default with --compile: 25)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="profile this many steps and print the time of each part",
    )
    parser.add_argument("--workdir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument(
        "--adapter",
        choices=["lora"],
        default=None,
        help="also train a LoRA visual adapter (ground.adapter) on random block inputs of --adapter-encoder",
    )
    parser.add_argument("--adapter-encoder", default="clip_vit_b32", help="encoder adapted (random init)")
    parser.add_argument("--adapter-blocks", type=int, default=4, help="K: blocks the adapter holds")
    parser.add_argument("--adapter-checkpointing", action="store_true", help="activation checkpointing")
    args = parser.parse_args(argv)
    threads = apply_thread_policy()
    if args.model != "all" and args.model not in trainable_models():
        parser.error(
            f"--model {args.model!r}: not a trainable model; choose `all` or one of {trainable_models()}"
        )
    names = trainable_models() if args.model == "all" else [args.model]
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "32")
    clip_bucket = args.clip_bucket or (25 if args.compile else None)
    lr = scaled_lr(args.base_lr, args.batch_size, BASE_BATCH)

    shape = Shape(args.queries, args.clips, args.video_dim, args.text_dim, args.tokens)
    cache = ensure_cache(args.workdir, shape)
    data = GroundingDataModule(str(cache), batch_size=args.batch_size, train_split="train")
    split = data.load("train").to(device)
    adapter, hidden = None, None
    if args.adapter:
        from extract.api import describe_block_inputs
        from ground.adapter import VisualAdapter

        encoder_spec, block_spec = describe_block_inputs(args.adapter_encoder, args.adapter_blocks)
        adapter = VisualAdapter(encoder_spec, block_spec, 0, checkpointing=args.adapter_checkpointing)
        adapter = adapter.to(device).train()
        # (B, T, L, W) fp16 block inputs, as a cache stores them; the values do not change the cost.
        hidden = torch.randn(args.batch_size, args.clips, *block_spec.row_shape, generator=torch.Generator())
        hidden = hidden.half().to(device)
    n = len(split)
    epoch_queries = args.epoch_queries or n
    steps_per_epoch = -(-epoch_queries // args.batch_size)

    rows, extra = [], []
    for name in names:
        net = build_net(name, data, device, args.hparams)
        step = make_step(
            net,
            split,
            args.batch_size,
            lr=lr,
            precision=precision,
            compile_net=args.compile,
            clip_bucket=clip_bucket,
            adapter=adapter,
            block_inputs=hidden,
        )
        if args.profile:
            profile_step(net, step, args.profile)
        timing = time_steps(name, net, step, args.batch_size, args.steps, args.warmup)
        label = name
        if adapter is not None:
            lora = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
            label += (
                f" + lora {args.adapter_encoder} K={args.adapter_blocks} ({lora / 1e6:.3f} M trainable"
                f"{', checkpointing' if args.adapter_checkpointing else ''})"
            )
        if device.type == "cuda":
            peak, peak_what = torch.cuda.max_memory_allocated() / 2**20, "GPU max_memory_allocated"
        else:
            peak, peak_what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
        epoch_sec = steps_per_epoch * timing.step_sec
        rows.append(
            f"| {label} | {device.type} | {precision} | {timing.samples_per_sec:.1f} | "
            f"{timing.step_sec * 1e3:.1f} | "
            f"{timing.step_cpu_sec:.2f} | {peak:.0f} ({peak_what}) | {epoch_sec:.0f} | "
            f"{args.epochs * epoch_sec / 60:.1f} min |"
        )
        if device.type == "cpu":
            cpu_epoch_sec = steps_per_epoch * timing.step_cpu_sec
            extra.append(
                f"{name}: CPU time {cpu_epoch_sec:.0f} s per epoch, "
                f"{args.epochs * cpu_epoch_sec / 3600:.1f} h for {args.epochs} epochs"
            )
        if args.eval_queries:
            wall, cpu, _ = time_validation(net, split, args.eval_queries, args.batch_size, precision)
            cpu_epoch_sec = steps_per_epoch * timing.step_cpu_sec
            extra.append(
                f"{name}: validation over {min(args.eval_queries, n)} queries {wall:.1f} s wall, "
                f"{cpu:.1f} CPU s "
                f"= {wall / epoch_sec:.1%} of the training epoch's wall time, "
                f"{cpu / cpu_epoch_sec:.1%} of its CPU time"
            )
        if args.full_epochs:
            t0 = time.perf_counter()
            for _ in range(args.full_epochs * steps_per_epoch):
                step()
            sync(device)
            extra.append(f"{name}: {args.full_epochs} real epochs: {time.perf_counter() - t0:.1f} s")

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{threads} threads"
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, device {device} ({where}), "
        f"torch {torch.__version__}"
    )
    print(
        f"{n} queries x T={args.clips} x {args.video_dim}, text {args.tokens} x {args.text_dim}, "
        f"batch {args.batch_size}, lr {lr:.2e}, compile {args.compile} (T bucket {clip_bucket}), "
        f"epoch of {epoch_queries} queries ({steps_per_epoch} steps)\n"
    )
    columns = [
        "model",
        "device",
        "precision",
        "samples/s",
        "step ms",
        "CPU s/step",
        "peak memory MiB",
        "epoch s",
    ]
    print("| " + " | ".join([*columns, f"projected {args.epochs} epochs"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    print("\n".join(rows))
    if extra:
        print("\n".join(extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
