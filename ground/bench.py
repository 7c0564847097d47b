"""`make bench-train`: training throughput and peak memory of a model on a QVHighlights-shaped cache.

Defaults: 7,218 training queries (one per video), T = 75 features of 2,816 dims (CLIP 512 +
SlowFast 2304 at 2-s clips), 32 text tokens of 512, the `span` model with its config. Measures
steady-state training samples/s over `--steps` optimizer steps (after warm-up steps), peak
memory (process RSS on CPU, `torch.cuda.max_memory_allocated` on GPU), and the projected time for
`--epochs` epochs. With `--full-epochs` it trains that many real epochs and reports the wall time.
On CPU it also reports the process's CPU seconds per step and the epoch they add up to: with one
thread, the time a dedicated core would take, which stays meaningful on a busy shared machine.

`--epoch-queries` projects the epoch of a training split larger than the cache written here (a
benchmark's real split size with a cache of a few hundred videos of its shape): the step time
depends on the batch's shape, not on how many videos the cache holds. Torch threads follow the
policy of every command (`ground.threads`: 1, or `$GROUNDCACHE_TORCH_THREADS`).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch
import yaml

from cache_schema.fake import write_fake_cache
from ground.data import GroundingDataModule
from ground.models import build_model
from ground.threads import apply_thread_policy

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ground.bench", description=__doc__)
    parser.add_argument("--model", default="span")
    parser.add_argument("--queries", type=int, default=7218)
    parser.add_argument("--clips", type=int, default=75)
    parser.add_argument("--video-dim", type=int, default=2816)
    parser.add_argument("--text-dim", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200, help="epochs to project the training time for")
    parser.add_argument(
        "--epoch-queries",
        type=int,
        default=None,
        help="training queries per projected epoch (default: the cache's, --queries)",
    )
    parser.add_argument("--full-epochs", type=int, default=0, help="really train this many epochs (GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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

    cache = args.workdir / f"train_{args.queries}x{args.clips}x{args.video_dim}.h5"
    if not cache.exists():
        print(f"writing {cache} ...", flush=True)
        t0 = time.perf_counter()
        write_fake_cache(
            cache,
            n_videos=args.queries,
            queries_per_video=1,
            video_dims=(args.video_dim,),
            text_dim=args.text_dim,
            tokens_range=(args.tokens, args.tokens),
            stride_sec=2.0,
            duration_range_sec=(2.0 * args.clips, 2.0 * args.clips),
            splits=("train",),
            seed=0,
        )
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)

    device = torch.device(args.device)
    data = GroundingDataModule(str(cache), batch_size=args.batch_size, train_split="train")
    split = data.load("train").to(device)
    hparams = yaml.safe_load((REPO / "ground" / "configs" / "model" / f"{args.model}.yaml").read_text())[
        "hparams"
    ]
    net = (
        build_model(args.model, video_dim=data.video_dim, text_dim=data.text_dim, **hparams)
        .to(device)
        .train()
    )
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
    trained = [*net.parameters(), *([] if adapter is None else adapter.parameters())]
    optimizer = torch.optim.AdamW([p for p in trained if p.requires_grad], lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    n = len(split)
    epoch_queries = args.epoch_queries or n
    steps_per_epoch = -(-epoch_queries // args.batch_size)

    def step() -> None:
        idx = torch.randint(0, n, (args.batch_size,), generator=gen)
        batch = split.gather(idx)
        with autocast:
            if adapter is not None:
                batch = adapter.video_input({**batch, "block_inputs": hidden[:, : batch["video"].shape[1]]})
            loss = net.loss(net(batch), batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    sync()
    step_sec = (time.perf_counter() - t0) / args.steps
    # CPU seconds of this process per step: on a machine shared with other work, the step time a
    # dedicated core would give (with one thread), where the wall time measures the contention.
    step_cpu_sec = (time.process_time() - cpu0) / args.steps
    samples_per_sec = args.batch_size / step_sec
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        peak_what = "GPU max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_what = "process peak RSS"
    full = ""
    if args.full_epochs:
        t0 = time.perf_counter()
        for _ in range(args.full_epochs * steps_per_epoch):
            step()
        sync()
        full = f"{args.full_epochs} real epochs: {time.perf_counter() - t0:.1f} s"

    params = sum(p.numel() for p in net.parameters())
    label = args.model
    if adapter is not None:
        lora = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
        label += (
            f" + lora {args.adapter_encoder} K={args.adapter_blocks} ({lora / 1e6:.3f} M trainable"
            f"{', checkpointing' if args.adapter_checkpointing else ''})"
        )
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{threads} threads"
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, device {device} "
        f"({where}), "
        f"torch {torch.__version__}"
    )
    print(
        f"model {args.model} ({params / 1e6:.2f} M params), {n} queries x T={args.clips} x {args.video_dim}, "
        f"text {args.tokens} x {args.text_dim}, batch {args.batch_size}, "
        f"epoch of {epoch_queries} queries ({steps_per_epoch} steps)\n"
    )
    columns = ["model", "device", "samples/s", "step ms", "CPU s/step", "peak memory MiB", "epoch s"]
    print("| " + " | ".join([*columns, f"projected {args.epochs} epochs"]) + " |")
    print("|---" * (len(columns) + 1) + "|")
    print(
        f"| {label} | {device.type} | {samples_per_sec:.1f} | {step_sec * 1e3:.1f} | "
        f"{step_cpu_sec:.2f} | {peak:.0f} ({peak_what}) | {steps_per_epoch * step_sec:.0f} | "
        f"{args.epochs * steps_per_epoch * step_sec / 60:.1f} min |"
    )
    if device.type == "cpu":
        cpu_epoch_sec = steps_per_epoch * step_cpu_sec
        print(
            f"CPU time: {cpu_epoch_sec:.0f} s per epoch, {args.epochs * cpu_epoch_sec / 3600:.1f} h for "
            f"{args.epochs} epochs"
        )
    if full:
        print(full)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
