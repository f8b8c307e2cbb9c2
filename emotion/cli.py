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



class ConfigError(ValueError):
    """Invalid command-line options."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from emotion.models import ModelError

    return (DatasetError, ImageLoadError, ModelError, ConfigError, FileNotFoundError, NotADirectoryError)


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
    p.add_argument("--blank-std", type=float, default=5.0,
                   help="flag images whose pixel standard deviation (0-255 scale) is below this as blank")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes for large datasets (default: CPU count, at most 8)")


def add_dataclass_arguments(p: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field, with its help metadata (transformers-examples style)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        if args and type(None) in args:  # Optional[X]
            kind = next(a for a in args if a is not type(None))
        help_text = f.metadata.get("help", "")
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                           help=help_text)
        else:
            p.add_argument(flag, dest=f.name, type=kind, default=f.default,
                           help=f"{help_text} (default: {f.default})")


def _setup_train(p: argparse.ArgumentParser) -> None:
    from emotion.training import TrainConfig

    add_dataclass_arguments(p, TrainConfig)


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from emotion.training import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    metrics = train(config)
    if metrics:
        print(json.dumps({"run_dir": str(config.run_dir), "val": metrics["val"], "test": metrics["test"]},
                         indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from emotion.models import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        print(f"{name:20s} {cfg.family:4s} {cfg.input_size:4d}px  weights: {' -> '.join(cfg.weight_sources)}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "audit": ("check a dataset for corrupt, blank, duplicate and leaked images", _setup_audit, _cmd_audit),
    "train": ("train a model into a run folder", _setup_train, _cmd_train),
    "models": ("list the registered models", lambda p: None, _cmd_models),
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
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
