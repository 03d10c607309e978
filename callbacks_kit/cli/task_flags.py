"""`--task` and the segmentation options of `train` and `lr-find`, torch-free like every flag module (`cli.parser`)."""

from __future__ import annotations

import argparse

from callbacks_kit.choices import DEFAULT_SEGMENTATION_MODEL, IGNORE_INDEX, SEGMENTATION_LOSSES, TASKS


def add_task_args(parser: argparse.ArgumentParser) -> None:
    """`--task` and the segmentation options (train and lr-find)."""
    group = parser.add_argument_group("task: classification or segmentation")
    group.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="segmentation: per-pixel classes from image and mask pairs (the built-in shapes' masks: 0 background, "
        "class + 1 on each shape; or --data DIR with train/ and val/, each holding images/ and masks/), the "
        f"package's {DEFAULT_SEGMENTATION_MODEL} or --model one of torchvision.models.segmentation, checkpoints by "
        "val/mean_iou",
    )
    group.add_argument(
        "--loss",
        choices=SEGMENTATION_LOSSES,
        help="segmentation loss from callbacks_kit.losses, each leaving out the ignored pixels (default: ce+dice)",
    )
    group.add_argument(
        "--ignore-index",
        type=int,
        metavar="N",
        help=f"mask value of pixels counted in no loss or metric; -1: none (default: {IGNORE_INDEX})",
    )
    group.add_argument(
        "--overlay-images",
        type=int,
        metavar="N",
        help="fixed validation images shown as image | truth | prediction | errors; 0: none (default: 8)",
    )
    group.add_argument(
        "--worst-images",
        type=int,
        metavar="K",
        help="validation images with the lowest IoU shown with their overlays; 0: none (default: 8)",
    )
