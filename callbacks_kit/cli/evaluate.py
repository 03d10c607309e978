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

from callbacks_kit.deploy.evaluate import evaluate_run
from callbacks_kit.deploy.evaluate_segmentation import evaluate_segmentation
from callbacks_kit.deploy.run_info import read_run_info
from callbacks_kit.errors import CLIError


def add_parser(commands: Any) -> None:
    """Add the `evaluate` command and its options to `commands` (what `add_subparsers()` returned)."""
    parser = commands.add_parser(
        "evaluate",
        help="measure a trained run on a held-out ImageFolder and log it under test/",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run", help="the run folder (--log-dir of `callbacks-kit train`)")
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="test images, one folder per class; for a segmentation run, a folder holding images/ and masks/",
    )
    group.add_argument("--checkpoint", default="best", metavar="best|last|PATH", help="which weights to use")
    group.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    group.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    group.add_argument("--no-tensorboard", action="store_true", help="print only; write nothing into the run")
    group.add_argument(
        "--output",
        metavar="FILE.json",
        help='also write the figures as JSON: {"loss", "accuracy", "per_class": {name: {"precision", "recall", "f1", '
        '"support"}}}; a segmentation run: {"loss", "mean_iou", "pixel_accuracy", "per_class": {name: {"iou", '
        '"dice"}}} (null for a class absent from the truth and the predictions)',
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the report; 0 on success."""
    if args.batch_size < 1 or args.workers < 0:
        raise CLIError(
            f"--batch-size must be at least 1 and --workers at least 0, got {args.batch_size} and {args.workers}"
        )
    if args.output and Path(args.output).suffix.lower() != ".json":
        raise CLIError(f"--output {args.output}: give a .json file name")
    if read_run_info(args.run).segmentation:
        return run_segmentation(args)
    report = evaluate_run(
        args.run,
        args.data,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        workers=args.workers,
        device="cpu" if args.cpu else None,
        tensorboard=not args.no_tensorboard,
    )
    if report.missing_classes:
        print(f"classes without test images (not measured): {', '.join(report.missing_classes)}")
    print(report.table())
    width = max(len(name) for name in report.classes)
    print("confusion matrix (rows: true class, columns: predicted, in the order above):")
    for name, row in zip(report.classes, report.confusion.tolist(), strict=True):
        print(f"{name:<{width}}  " + " ".join(f"{count:5d}" for count in row))
    if not args.no_tensorboard:
        print(f"written to the run's TensorBoard under test/: tensorboard --logdir {args.run}")
    if args.output:
        print(f"figures written to {write_json(args.output, report.to_json())}")
    return 0


def run_segmentation(args: argparse.Namespace) -> int:
    """Evaluate a segmentation run and print its per-class IoU and Dice; 0 on success."""
    report = evaluate_segmentation(
        args.run,
        args.data,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        workers=args.workers,
        device="cpu" if args.cpu else None,
        tensorboard=not args.no_tensorboard,
    )
    print(report.table())
    if not args.no_tensorboard:
        print(f"written to the run's TensorBoard under test/: tensorboard --logdir {args.run}")
    if args.output:
        print(f"figures written to {write_json(args.output, report.to_json())}")
    return 0


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
