"""`callbacks-kit export RUN --format state_dict|torchscript|onnx`: ship the model, checked against PyTorch."""

from __future__ import annotations

import argparse
from typing import Any

from callbacks_kit.deploy.export import EXPORT_FORMATS, TOLERANCE, check_packages, export_run


def add_parser(commands: Any) -> None:
    """Add the `export` command and its options to `commands` (what `add_subparsers()` returned)."""
    parser = commands.add_parser(
        "export",
        help="export a trained run as a state_dict, TorchScript or ONNX file (a segmentation run's gives the logits "
        "(N, C, H, W))",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run", help="the run folder (--log-dir of `callbacks-kit train`)")
    group = parser.add_argument_group("export")
    group.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="what to write")
    group.add_argument("--output", metavar="FILE", help="file to write (default <run>/export/model.<ext>)")
    group.add_argument("--checkpoint", default="best", metavar="best|last|PATH", help="which weights to export")
    group.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    group.add_argument(
        "--tolerance", type=float, default=TOLERANCE, help="largest difference from PyTorch's outputs accepted"
    )


def run(args: argparse.Namespace) -> int:
    """Export, check and say where the file went; 0 on success."""
    check_packages(args.format)
    result = export_run(
        args.run,
        args.format,
        args.output,
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
        tolerance=args.tolerance,
    )
    print(
        f"{result.format} written to {result.path}; checked on a sample batch: largest difference from the "
        f"PyTorch model {result.max_abs_diff:.3g}"
    )
    return 0
