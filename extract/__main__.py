"""``python -m extract``: extract features into a cache, generate the synthetic dataset, merge shards.

    python -m extract --config extract/configs/synthetic.yaml [--limit N] [--output PATH] [--field value ...]
    python -m extract run --config ...            (the same; the default when the first argument is an option)
    python -m extract --config ... --add-encoder NAME [--add-encoder ...]   (add encoders to the cache)
    python -m extract synthetic --out DIR [--n-videos N] [--seed S]
    python -m extract merge OUTPUT [--world-size N] [--keep-shards]
    python -m extract import --format moment_detr --annotations DATASET ...
    python -m extract shaped --variant qvhighlights|charades_sta --out PATH   (accuracy benchmark cache)
    torchrun --nproc_per_node=N -m extract --config ...   (each rank extracts a shard; rank 0 merges)

Exit codes: 0 every video extracted, 1 some video failed (see ``<output stem>.failures.jsonl``),
2 the run could not start (bad config, unreadable annotations, unknown dataset or encoder): one
``error:`` line on stderr naming the item.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from cache_schema.cli import run_commands

PROG = "python -m extract"


def _run(argv: list[str]) -> int:
    """extract features of a dataset's videos and queries into a cache (the default command)"""
    # Imported here so that `python -m extract synthetic` does not load torch and the encoders.
    from extract.config import parse_config
    from extract.pipeline import run

    config = parse_config(argv, prog=f"{PROG} [run]")
    if config.add_encoder:
        from extract.grow import run_add

        return run_add(config, console=Console(stderr=True)).exit_code
    return run(config, console=Console(stderr=True)).exit_code


def _synthetic(argv: list[str]) -> int:
    """generate the synthetic dataset (videos with known events) and its annotations"""
    from extract.synthetic import main

    return main(argv)


def _merge(argv: list[str]) -> int:
    """merge the shard stores of a torchrun extraction into one cache"""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} merge",
        description="Merge the shard stores of a torchrun extraction into OUTPUT.",
    )
    parser.add_argument("output", help="final cache path (its shards are OUTPUT_STEM.rank<r>-of-<N>.SUFFIX)")
    parser.add_argument(
        "--world-size", type=int, default=None, help="number of shards (default: found on disk)"
    )
    parser.add_argument("--keep-shards", action="store_true", help="keep the shards after merging")
    args = parser.parse_args(argv)

    from extract.pipeline import failures_path, merge_shards

    console = Console(stderr=True)
    added = merge_shards(args.output, args.world_size, remove=not args.keep_shards)
    console.print(f"merged {added} videos into {escape(str(args.output))}; it validates")
    failures = failures_path(args.output)
    if failures.exists() and failures.stat().st_size:
        console.print(f"[red]some videos failed during extraction[/red]; see {escape(str(failures))}")
        return 1
    return 0


def _import(argv: list[str]) -> int:
    """import public pre-extracted features (Moment-DETR npz, C3D HDF5) into a cache"""
    from extract.importers import main

    return main(argv)


def _shaped(argv: list[str]) -> int:
    """generate a benchmark-shaped cache from real annotations (the accuracy benchmark's data)"""
    from extract.shaped import main

    return main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": _run,
    "synthetic": _synthetic,
    "merge": _merge,
    "import": _import,
    "shaped": _shaped,
}
"""Sub-commands by name; ``python -m extract --help`` lists each with its docstring's first line."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command inside the error boundary (`cache_schema.cli.run_commands`).

    ``run`` gets the whole line when it starts with an option such as ``--config``.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    description = (
        "Extract frozen-encoder features of videos and queries into a cache.\n"
        f"`{PROG} --config CONFIG.yaml` is `{PROG} run --config CONFIG.yaml`."
    )
    return run_commands(PROG, description, COMMANDS, argv, default=_run)


if __name__ == "__main__":
    raise SystemExit(main())
