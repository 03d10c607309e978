"""The `callbacks-kit` console script: one module per command (train, lr-find, inspect, predict, evaluate, export).

The parser (`cli.parser`) is built without importing torch; the module of the command given
is imported once the command line has parsed, so help and argument errors come back at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from callbacks_kit.cli.parser import COMMANDS, build_parser
from callbacks_kit.errors import CallbacksKitError, PeerProcessError, is_peer_failure, peer_failure_message

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `callbacks-kit` console script: 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        command = importlib.import_module(f"callbacks_kit.cli.{COMMANDS[args.command]}")
        return int(command.run(args))
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
