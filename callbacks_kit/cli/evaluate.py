"""`callbacks-kit evaluate RUN --data DIR`: loss, accuracy, per-class report and confusion matrix on a test set.

A segmentation run reports loss, mean IoU, pixel accuracy and per-class IoU and Dice on a
split of images and masks. `--output FILE.json` writes the figures as JSON for either task.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from callbacks_kit.cli.run_dir import tensorboard_command
from callbacks_kit.deploy.evaluate import EvaluationReport, evaluate_run
from callbacks_kit.deploy.evaluate_segmentation import evaluate_segmentation
from callbacks_kit.deploy.output_file import check_output_file
from callbacks_kit.deploy.run_info import read_run_info
from callbacks_kit.errors import CLIError

HEADER_WIDTH = 10  # a predicted class's column shows at most this much of its name


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the report; 0 on success."""
    if args.batch_size < 1 or args.workers < 0:
        raise CLIError(
            f"--batch-size must be at least 1 and --workers at least 0, got {args.batch_size} and {args.workers}"
        )
    if args.output:  # before any work: a folder, a file in the way, a place that cannot be written
        check_output_file(args.output, suffixes=(".json",), example="figures.json")
    info = read_run_info(args.run)
    measure = evaluate_segmentation if info.segmentation else evaluate_run
    report = measure(
        args.run,
        args.data,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        workers=args.workers,
        device="cpu" if args.cpu else None,
        tensorboard=not args.no_tensorboard,
    )
    print(f"weights: {info.weights_description(args.checkpoint)}")
    if isinstance(report, EvaluationReport):
        if report.missing_classes:
            print(f"classes without test images (not measured): {', '.join(report.missing_classes)}")
        print(report.table())
        print("confusion matrix (rows: true class, columns: predicted class):")
        print(confusion_text(report.classes, report.confusion.tolist()))
    else:
        print(report.table())
    if not args.no_tensorboard:
        print(f"written to the run's TensorBoard under test/: {tensorboard_command(args.run)}")
    if args.output:
        print(f"figures written to {write_json(args.output, report.to_json())}")
    return 0


def confusion_text(classes: list[str], rows: list[list[int]]) -> str:
    """The confusion matrix as aligned text: a header row of predicted classes, a row per true class.

    A header longer than `HEADER_WIDTH` is cut, ending in "~"; each column is as wide as its
    header or its largest count.
    """
    headers = [name if len(name) <= HEADER_WIDTH else name[: HEADER_WIDTH - 1] + "~" for name in classes]
    widths = [max(len(header), *(len(str(row[j])) for row in rows)) for j, header in enumerate(headers)]
    corner = "true / predicted"
    first = max(len(corner), *(len(name) for name in classes))
    lines = [corner.ljust(first) + "  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    for name, row in zip(classes, rows, strict=True):
        lines.append(name.ljust(first) + "  " + "  ".join(str(n).rjust(w) for n, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def write_json(path: str, figures: dict[str, Any]) -> Path:
    """Write `figures` to `path` as JSON (its folder made if needed); NaN is written as null."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_finite(figures), indent=2, allow_nan=False) + "\n")
    return target


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
