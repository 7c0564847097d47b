"""``python -m extract``: extract features into a cache, generate the synthetic dataset, merge shards.

    python -m extract --config extract/configs/synthetic.yaml [--limit N] [--output PATH] [--field value ...]
    python -m extract run --config ...            (the same; the default when the first argument is an option)
    python -m extract synthetic --out DIR [--n-videos N] [--seed S]
    python -m extract merge OUTPUT [--world-size N] [--keep-shards]
    python -m extract shaped --variant qvhighlights|charades_sta --out PATH   (accuracy benchmark cache)
    torchrun --nproc_per_node=N -m extract --config ...   (each rank extracts a shard; rank 0 merges)

Exit codes: 0 every video extracted, 1 some video failed (see ``<output stem>.failures.jsonl``),
2 the run could not start (bad config, unreadable annotations, unknown encoder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from rich.console import Console


def _run(argv: Sequence[str]) -> int:
    # Imported here so that `python -m extract synthetic` does not load torch and the encoders.
    from cache_schema.spec import SchemaError
    from extract.config import ConfigError, parse_config
    from extract.datasets import AnnotationError
    from extract.encoders import EncoderError
    from extract.pipeline import run

    console = Console(stderr=True)
    try:
        config = parse_config(argv, prog="python -m extract [run]")
        return run(config, console=console).exit_code
    except (ConfigError, AnnotationError, EncoderError, SchemaError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2


def _synthetic(argv: Sequence[str]) -> int:
    from extract.synthetic import main

    return main(argv)


def _merge(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extract merge",
        description="Merge the shard stores of a torchrun extraction into OUTPUT.",
    )
    parser.add_argument("output", help="final cache path (its shards are OUTPUT_STEM.rank<r>-of-<N>.SUFFIX)")
    parser.add_argument(
        "--world-size", type=int, default=None, help="number of shards (default: found on disk)"
    )
    parser.add_argument("--keep-shards", action="store_true", help="keep the shards after merging")
    args = parser.parse_args(argv)

    from cache_schema.spec import SchemaError
    from extract.pipeline import failures_path, merge_shards

    console = Console(stderr=True)
    try:
        added = merge_shards(args.output, args.world_size, remove=not args.keep_shards)
    except (FileNotFoundError, ValueError, SchemaError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return 2
    console.print(f"merged {added} videos into {args.output}; it validates")
    failures = failures_path(args.output)
    if failures.exists() and failures.stat().st_size:
        console.print(f"[red]some videos failed during extraction[/red]; see {failures}")
        return 1
    return 0


def _import(argv: Sequence[str]) -> int:
    from extract.importers import main

    return main(argv)


def _shaped(argv: Sequence[str]) -> int:
    from extract.shaped import main

    return main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": _run,
    "synthetic": _synthetic,
    "merge": _merge,
    "import": _import,
    "shaped": _shaped,
}
"""Sub-commands by name (``import`` is reserved for the feature importer)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command; ``run`` when the first argument is an option such as ``--config``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = ("run", argv) if argv[0].startswith("-") else (argv[0], argv[1:])
    if command not in COMMANDS:
        print(
            f"python -m extract: unknown command {command!r}; commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    raise SystemExit(main())
