"""`python -m cache_schema validate PATH` / `python -m cache_schema inspect PATH`."""

from __future__ import annotations

import argparse
import json
import sys

from cache_schema.spec import SchemaError
from cache_schema.validate import inspect, validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cache_schema", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_validate = sub.add_parser("validate", help="check every invariant; exit 1 listing each violation")
    p_validate.add_argument("path")
    p_inspect = sub.add_parser("inspect", help="print counts, encoders, dims, splits and size on disk")
    p_inspect.add_argument("path")
    p_inspect.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    if args.command == "validate":
        problems = validate(args.path)
        for problem in problems:
            print(problem)
        print(f"{args.path}: {'INVALID, ' + str(len(problems)) + ' problem(s)' if problems else 'valid'}")
        return 1 if problems else 0

    try:
        info = inspect(args.path)
    except (SchemaError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{info['path']}[/] ({info['backend']}, schema {info['schema_version']}, "
        f"dataset {info['dataset']!r}, {info['size_on_disk_bytes'] / 2**20:.1f} MiB on disk)"
    )
    console.print(
        f"videos {info['videos']}, queries {info['queries']}, splits {info['splits']}, "
        f"features per video {info['features_per_video']}"
    )
    table = Table("modality", "encoder", "dim", "dtype", "stride_sec", "weights", "normalized")
    for modality in ("video", "text"):
        for name, spec in info[f"{modality}_encoders"].items():
            table.add_row(
                modality,
                name,
                str(spec["dim"]),
                spec["dtype"],
                str(spec["stride_sec"] or "-"),
                spec["weights_id"] or "-",
                str(spec["normalized"]),
            )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
