"""The `callbacks-kit` console script: one module per command (train, lr-find, inspect, predict, evaluate, export)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from callbacks_kit.cli import evaluate, export, inspect, lr_find, predict, train
from callbacks_kit.errors import CallbacksKitError, PeerProcessError, is_peer_failure, peer_failure_message

COMMANDS = {
    "train": train,
    "lr-find": lr_find,
    "inspect": inspect,
    "predict": predict,
    "evaluate": evaluate,
    "export": export,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `callbacks-kit`, with every command's options."""
    parser = argparse.ArgumentParser(prog="callbacks-kit", description="TensorBoard-integrated callback toolkit.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `callbacks-kit` console script: 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except PeerProcessError as exc:
        print(f"callbacks-kit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except CallbacksKitError as exc:
        print(f"callbacks-kit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_peer_failure(exc):
            raise
        print(f"callbacks-kit {args.command}: error: {peer_failure_message(exc)}", file=sys.stderr)
        return 1
