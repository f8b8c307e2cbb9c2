"""Command-line interface: ``python -m emotion <command> ...``.

Each command lives in a ``_cmd_<name>`` function registered in ``COMMANDS``;
user errors (bad paths, unreadable data, wrong class names) end with a
one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional, Sequence

from emotion.data.sources import DatasetError
from emotion.images import ImageLoadError

logger = logging.getLogger("emotion")

USER_ERRORS = (DatasetError, ImageLoadError, FileNotFoundError, NotADirectoryError)


def _add_data_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    help_data = "a class-folder dataset path, 'synthetic', or 'hf:<dataset id>'"
    if positional:
        p.add_argument("data", help=help_data)
    else:
        p.add_argument("--data", required=True, help=help_data)
    p.add_argument("--classes", default=None,
                   help="comma-separated subset of class folders, e.g. angry,happy,sad (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for the 80/20 split of an unsplit folder")


def _cmd_audit(args: argparse.Namespace) -> int:
    from emotion.audit import run_audit_command

    return run_audit_command(args)


def _setup_audit(p: argparse.ArgumentParser) -> None:
    _add_data_args(p, positional=True)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--near-distance", type=int, default=4,
                   help="max Hamming distance between 64-bit perceptual hashes for near duplicates")
    p.add_argument("--blank-std", type=float, default=3.0,
                   help="images whose pixel standard deviation is below this are flagged blank")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes for large datasets (default: CPU count, at most 8)")


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "audit": ("check a dataset for corrupt, blank, duplicate and leaked images", _setup_audit, _cmd_audit),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emotion", description="Emotion Studio command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, setup, _) in COMMANDS.items():
        setup(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _, _, run = COMMANDS[args.command]
    try:
        return run(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
