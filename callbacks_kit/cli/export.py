"""`callbacks-kit export RUN --format state_dict|torchscript|pt2|onnx`: ship the model, checked against PyTorch."""

from __future__ import annotations

import argparse

from callbacks_kit.deploy.export import TORCHSCRIPT_NOTE, check_packages, check_tolerance, export_run
from callbacks_kit.deploy.run_info import read_run_info


def run(args: argparse.Namespace) -> int:
    """Export, check and say where the file went; 0 on success."""
    check_packages(args.format)
    check_tolerance(args.tolerance)
    if args.format == "torchscript":
        print(f"note: {TORCHSCRIPT_NOTE}")
    result = export_run(
        args.run,
        args.format,
        args.output,
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
        tolerance=args.tolerance,
    )
    weights = read_run_info(args.run).weights_description(args.checkpoint)
    print(
        f"{result.format} written to {result.path}; checked on a sample batch: largest difference from the "
        f"PyTorch model {result.max_abs_diff:.3g}; weights: {weights}"
    )
    return 0
