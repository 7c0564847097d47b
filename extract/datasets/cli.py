"""``python -m extract.datasets list | info DATASET | report DATASET``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from extract.datasets.annotation import AnnotationError
from extract.datasets.registry import annotations_from_strings, get_dataset, list_datasets
from extract.datasets.validation import (
    ALLOWED_ACTIONS,
    AnnotationValidationError,
    ValidationPolicy,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m extract.datasets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered datasets")
    info = sub.add_parser("info", help="where the videos and public features come from")
    info.add_argument("dataset")
    report = sub.add_parser("report", help="parse and validate annotations, print the report")
    report.add_argument("dataset")
    report.add_argument(
        "--annotations",
        nargs="+",
        metavar="DIR | SPLIT=FILE",
        help="annotation folder in the release layout (custom: jsonl file), or one file per split "
        "(and per extra file role, e.g. charades_sta durations_train=CSV): train=a.jsonl val=b.jsonl; "
        "default: shared data",
    )
    report.add_argument("--video-root", help="folder of the videos; missing videos are reported")
    report.add_argument("--split", nargs="+", help="split(s) to read (default: all)")
    report.add_argument("--variant", help="adapter variant (e.g. vslnet); default: the adapter's first")
    policy_help = "; ".join(f"{k}: {'|'.join(v)}" for k, v in ALLOWED_ACTIONS.items())
    report.add_argument(
        "--policy",
        nargs="+",
        default=[],
        metavar="KIND=ACTION",
        help=f"override actions (first is the default). {policy_help}; also duration_tolerance_sec=SECONDS",
    )
    report.add_argument("--jsonl", help="also write every problem to this JSON Lines file")
    report.add_argument("--examples", type=int, default=3, help="examples printed per problem kind")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns 0, 1 when a problem has the ``error`` action, 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            for name in list_datasets():
                print(name)
            return 0
        if args.command == "info":
            print(get_dataset(args.dataset).SOURCE_INFO)
            return 0
        adapter = get_dataset(args.dataset, variant=args.variant)
        policy = ValidationPolicy.from_strings(args.policy)
        annotations = annotations_from_strings(args.annotations) if args.annotations else None
        try:
            result = adapter.load(annotations, split=args.split, policy=policy, video_root=args.video_root)
        except AnnotationValidationError as err:
            print(err.report.summary(args.examples))
            if args.jsonl:
                print(f"problems written to {err.report.to_jsonl(args.jsonl)}")
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(result.report.summary(args.examples))
        if args.jsonl:
            print(f"problems written to {result.report.to_jsonl(args.jsonl)}")
        return 0
    except (AnnotationError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
