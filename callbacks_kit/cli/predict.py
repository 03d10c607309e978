"""`callbacks-kit predict RUN IMAGES...`: top-k class names and probabilities per image, printed or written.

A segmentation run writes one index PNG per image into `--output DIR` instead (and, with
`--overlay`, the image with its classes coloured beside it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from callbacks_kit.data.images import expand_images
from callbacks_kit.deploy.output_file import check_output_file
from callbacks_kit.deploy.predict import OUTPUT_SUFFIXES, predict_images, write_predictions
from callbacks_kit.deploy.predict_masks import predict_mask_files
from callbacks_kit.deploy.run_info import load_run_model, read_run_info
from callbacks_kit.distributed import best_device
from callbacks_kit.errors import CLIError


def run(args: argparse.Namespace) -> int:
    """Predict and print one line per image; 0 on success."""
    if read_run_info(args.run).segmentation:
        return run_masks(args)
    if args.overlay:
        raise CLIError("--overlay colours the masks of a segmentation run; this run classifies images")
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
    print(
        f"{len(result.predictions)} image(s) predicted on {device}, {len(result.skipped)} skipped; weights: "
        f"{info.weights_description(args.checkpoint)}"
    )
    if args.output:
        print(f"written to {write_predictions(result, args.output)}")
    return 0


def run_masks(args: argparse.Namespace) -> int:
    """Write one mask per image (and overlays) into --output DIR and print where each went; 0 on success."""
    if not args.output:
        raise CLIError("a segmentation run writes one mask per image: pass --output DIR, the folder they go to")
    if Path(args.output).is_file() or Path(args.output).suffix.lower() in (".csv", ".json"):
        raise CLIError(f"--output {args.output}: a segmentation run writes masks into a folder; give a folder name")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    paths = expand_images(args.images)
    model, info = load_run_model(args.run, args.checkpoint)
    device = best_device(args.cpu)
    result = predict_mask_files(model, info, paths, args.output, args.overlay, args.batch_size, device)
    for p in result.predictions:
        top = sorted(p.shares.items(), key=lambda item: -item[1])[:4]
        shares = ", ".join(f"{name} {share:.1%}" for name, share in top)
        print(f"{p.path} -> {p.mask} ({p.size[0]}x{p.size[1]}): {shares}")
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}")
    overlays = " and overlays" if args.overlay else ""
    written = f"{len(result.predictions)} mask(s){overlays} written to {args.output}"
    print(f"{written} on {device}, {len(result.skipped)} skipped")
    return 0
