"""`callbacks-kit predict RUN IMAGES...`: top-k class names and probabilities per image, printed or written."""

from __future__ import annotations

import argparse
from typing import Any

from callbacks_kit.data.images import expand_images
from callbacks_kit.deploy.output_file import check_output_file
from callbacks_kit.deploy.predict import OUTPUT_SUFFIXES, predict_images, write_predictions
from callbacks_kit.deploy.run_info import load_run_model
from callbacks_kit.distributed import best_device
from callbacks_kit.errors import CLIError


def add_parser(commands: Any) -> None:
    """Add the `predict` command and its options to `commands` (what `add_subparsers()` returned)."""
    parser = commands.add_parser(
        "predict",
        help="classify images with a trained run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run", help="the run folder (--log-dir of `callbacks-kit train`)")
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    group = parser.add_argument_group("prediction")
    group.add_argument("--checkpoint", default="best", metavar="best|last|PATH", help="which weights to use")
    group.add_argument("--top-k", type=int, default=3, help="classes shown per image")
    group.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    group.add_argument("--output", metavar="FILE", help="also write the predictions to FILE (.csv or .json)")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")


def run(args: argparse.Namespace) -> int:
    """Predict and print one line per image; 0 on success."""
    if args.top_k < 1 or args.batch_size < 1:
        raise CLIError(f"--top-k and --batch-size must be at least 1, got {args.top_k} and {args.batch_size}")
    if args.output:  # before any work: a folder, a missing or read-only place would fail after every image
        check_output_file(args.output, suffixes=OUTPUT_SUFFIXES)
    paths = expand_images(args.images)
    model, info = load_run_model(args.run, args.checkpoint)
    device = best_device(args.cpu)
    result = predict_images(model, info, paths, args.top_k, args.batch_size, device)
    for p in result.predictions:
        shown = ", ".join(f"{name} {prob:.3f}" for name, prob in zip(p.classes, p.probabilities, strict=True))
        print(f"{p.path}: {shown}")
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}")
    print(f"{len(result.predictions)} image(s) predicted on {device}, {len(result.skipped)} skipped")
    if args.output:
        print(f"written to {write_predictions(result, args.output)}")
    return 0
