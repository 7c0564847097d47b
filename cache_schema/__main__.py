"""`python -m cache_schema`: check and describe caches.

    python -m cache_schema validate PATH      every invariant; exit 1 listing each violation
    python -m cache_schema inspect PATH [--json]
    python -m cache_schema drop-encoder PATH NAME [--modality video|text]
    python -m cache_schema merge OUTPUT INPUT [INPUT ...]

Exit codes: 0 valid / described, 1 `validate` found violations, 2 bad input (no such cache, a
file that is not a readable cache, bad arguments): one ``error:`` line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from cache_schema.cli import run_commands
from cache_schema.validate import inspect, validate

PROG = "python -m cache_schema"


def _validate(argv: list[str]) -> int:
    """check every invariant of a cache; exit 1 listing each violation"""
    parser = argparse.ArgumentParser(prog=f"{PROG} validate", description=_validate.__doc__)
    parser.add_argument("path")
    args = parser.parse_args(argv)
    problems = validate(args.path)
    for problem in problems:
        print(problem)
    print(f"{args.path}: {'INVALID, ' + str(len(problems)) + ' problem(s)' if problems else 'valid'}")
    return 1 if problems else 0


def _inspect(argv: list[str]) -> int:
    """print a cache's counts, encoders, dims, splits and size on disk"""
    parser = argparse.ArgumentParser(prog=f"{PROG} inspect", description=_inspect.__doc__)
    parser.add_argument("path")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    info = inspect(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    _print_info(info)
    return 0


def _drop_encoder(argv: list[str]) -> int:
    """remove one encoder from a cache and reclaim its space"""
    parser = argparse.ArgumentParser(prog=f"{PROG} drop-encoder", description=_drop_encoder.__doc__)
    parser.add_argument("path", help="the cache (no writer may have it open)")
    parser.add_argument("name", help="the encoder's name (python -m cache_schema inspect PATH lists them)")
    parser.add_argument(
        "--modality",
        choices=("video", "text"),
        default=None,
        help="needed when NAME is both a video and a text encoder",
    )
    args = parser.parse_args(argv)
    from cache_schema.edit import drop_encoder

    freed = drop_encoder(args.path, args.name, args.modality)
    print(f"{args.path}: dropped encoder {args.name!r}, {freed / 2**20:.2f} MiB freed")
    return 0


def _merge(argv: list[str]) -> int:
    """merge caches of one dataset (same encoders) into one; exit 1 when the result does not validate"""
    parser = argparse.ArgumentParser(prog=f"{PROG} merge", description=_merge.__doc__)
    parser.add_argument("output", help="the merged cache; created, or resumed when it exists")
    parser.add_argument("inputs", nargs="+", help="caches to merge (a video may be in only one of them)")
    args = parser.parse_args(argv)
    from cache_schema.edit import merge_caches

    added = merge_caches(args.output, args.inputs)
    problems = validate(args.output)
    for problem in problems:
        print(problem)
    state = f"INVALID, {len(problems)} problem(s)" if problems else "valid"
    print(f"{args.output}: merged {added} videos from {len(args.inputs)} caches; {state}")
    return 1 if problems else 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "validate": _validate,
    "inspect": _inspect,
    "drop-encoder": _drop_encoder,
    "merge": _merge,
}
"""Sub-commands by name; `python -m cache_schema --help` lists each with its docstring's first line."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command inside the error boundary (`cache_schema.cli.run_commands`)."""
    return run_commands(PROG, "Check and describe groundcache caches.", COMMANDS, argv)


def _print_info(info: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Paths, names and weights ids are user text: escaped, or rich reads "[...]" in them as markup.
    console = Console()
    console.print(
        f"[bold]{escape(info['path'])}[/] ({info['backend']}, schema {info['schema_version']}, "
        f"dataset {escape(repr(info['dataset']))}, {info['size_on_disk_bytes'] / 2**20:.1f} MiB on disk)",
        soft_wrap=True,  # a path cut in two by the terminal width cannot be pasted
    )
    console.print(
        escape(
            f"videos {info['videos']}, queries {info['queries']}, splits {info['splits']}, "
            f"features per video {info['features_per_video']}"
        ),
        soft_wrap=True,
    )
    table = Table("modality")
    # Names and coverage never wrap (a name cut in two cannot be searched or pasted); the
    # descriptive columns give way on a narrow terminal.
    names = [n for m in ("video", "text") for n in info[f"{m}_encoders"]]
    table.add_column("encoder", no_wrap=True, min_width=max(map(len, names), default=7))
    table.add_column("coverage", no_wrap=True)
    for column in ("dim", "dtype", "stride_sec", "weights", "normalized"):
        table.add_column(column)
    for modality in ("video", "text"):
        total = info["videos" if modality == "video" else "queries"]
        for name, spec in info[f"{modality}_encoders"].items():
            table.add_row(
                modality,
                escape(name),
                f"{info['coverage'][modality][name]}/{total}",
                str(spec["dim"]),
                spec["dtype"],
                str(spec["stride_sec"] or "-"),
                escape(spec["weights_id"] or "-"),
                str(spec["normalized"]),
            )
    console.print(table)
    for name, blocks in info.get("block_inputs", {}).items():
        console.print(
            escape(
                f"block inputs of {name}: K={blocks['blocks']} of {blocks['depth']} blocks, "
                f"{blocks['tokens']} x {blocks['width']} {blocks['dtype']} per feature, pool {blocks['pool']}"
            )
        )


if __name__ == "__main__":
    sys.exit(main())
