"""`callbacks-kit inspect RUN`: print what a TensorBoard run holds, per plugin, read with TensorBoard's loader."""

from __future__ import annotations

import argparse
import json
import sys

from callbacks_kit.errors import CLIError
from callbacks_kit.inspection.event_report import format_report, inspect_run, unreadable_message


def run(args: argparse.Namespace) -> int:
    """Print the report for `args.run`; 2 when there is nothing to read, or some event file cannot be read."""
    try:
        report = inspect_run(args.run)
    except FileNotFoundError as exc:
        print(f"callbacks-kit inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    if report["unreadable"]:  # the rest is reported, and the status says that not everything was
        raise CLIError(unreadable_message(report["unreadable"]))
    return 0
