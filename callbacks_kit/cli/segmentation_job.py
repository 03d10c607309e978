"""`--task segmentation`: its flags, their checks, and what the job builds differently for it.

The job is `job.build_job`'s for both tasks; for segmentation the data are image and mask
pairs (the built-in shapes' masks, or `--data DIR` with `train/` and `val/`, each holding
`images/` and `masks/`), the model one of `torchvision.models.segmentation`, the loss one of
`callbacks_kit.losses`' by `--loss`, the metrics mean IoU, pixel accuracy and per-class IoU and
Dice, and the views the segmentation callbacks. Flags that only mean something for one task
are refused with the other, naming them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.feature_maps import FeatureMaps
from callbacks_kit.callbacks.kernel_grid import KernelGrid
from callbacks_kit.callbacks.pixel_confusion_matrix import PixelConfusionMatrix
from callbacks_kit.callbacks.segmentation_overlays import SegmentationOverlays
from callbacks_kit.callbacks.segmentation_report import SegmentationReport
from callbacks_kit.callbacks.weight_histograms import WeightHistograms
from callbacks_kit.callbacks.worst_segmentations import WorstSegmentations
from callbacks_kit.cli.flags import is_unset
from callbacks_kit.cli.input_size import InputSize
from callbacks_kit.data import (
    SEGMENTATION_AUGMENTS,
    PairTransformed,
    ShapesDataset,
    default_workers,
    segmentation_augmentation,
    segmentation_folder_datasets,
)
from callbacks_kit.errors import CLIError
from callbacks_kit.finetune.segmentation_models import (
    DEFAULT_SEGMENTATION_MODEL,
    SEGMENTATION_MODELS,
    build_segmentation_model,
)
from callbacks_kit.layers import spread_conv_blocks
from callbacks_kit.losses import SegmentationLoss
from callbacks_kit.metrics import Metric
from callbacks_kit.segmentation_metrics import IGNORE_INDEX, SegmentationMetrics

# Each task's defaults of the flags that only it takes (None: given by nobody).
SEGMENTATION_DEFAULTS = {"loss": "ce+dice", "ignore_index": IGNORE_INDEX, "overlay_images": 8, "worst_images": 8}
# Shared flags whose default differs for segmentation (classification's is an `is_unset` value): on the
# built-in shapes the U-Net learns every class within 6 epochs of 32 images, not in 5 of 64.
SEGMENTATION_TRAINING = {"model": DEFAULT_SEGMENTATION_MODEL, "epochs": 6, "batch_size": 32, "lr": 5e-3}
# Classification's flags, with the value that means "not given": refused with --task segmentation.
CLASSIFICATION_ONLY = {
    "labels": None,
    "val_split": None,
    "label_smoothing": 0.0,
    "head": "linear",
    "mixup": None,
    "cutmix": None,
    "gradcam_layer": None,
    "probe_images": 8,
    "top_losses": 16,
    "embeddings": 0,
    "crop_ratio": None,
}


def check_task_args(args: argparse.Namespace) -> None:
    """Refuse flags of the other task and values that cannot work; fill in the segmentation defaults."""
    given = [name for name in SEGMENTATION_DEFAULTS if getattr(args, name, None) is not None]
    if args.task != "segmentation":
        if given:
            flags = " and ".join(_flag(name) for name in given)
            raise CLIError(f"{flags} set up segmentation: add --task segmentation, or drop them")
        return
    other = [
        name for name, unset in CLASSIFICATION_ONLY.items() if hasattr(args, name) and getattr(args, name) != unset
    ]
    if other:
        raise CLIError(
            f"{' and '.join(_flag(name) for name in other)} only apply to classification; with --task segmentation "
            "drop them (segmentation data is --data DIR with its own val/ folder)"
        )
    if args.augment not in (None, *SEGMENTATION_AUGMENTS):
        raise CLIError(
            f"--augment {args.augment} transforms the image only, so its mask would no longer fit; with --task "
            f"segmentation use {' or '.join(SEGMENTATION_AUGMENTS)} (the same random crop and flip for both)"
        )
    for name, default in SEGMENTATION_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    if not -1 <= args.ignore_index <= 255:
        raise CLIError(
            f"--ignore-index must be a mask value, 0 to 255 (masks are 8-bit PNGs), or -1 for none; got "
            f"{args.ignore_index}"
        )
    for name in ("overlay_images", "worst_images"):
        if getattr(args, name) < 0:
            raise CLIError(f"{_flag(name)} must be 0 (off) or more images, got {getattr(args, name)}")
    for name, default in SEGMENTATION_TRAINING.items():
        if is_unset(getattr(args, name, None)):
            setattr(args, name, default)
    if args.model not in SEGMENTATION_MODELS:
        raise CLIError(
            f"--model {args.model} is not a segmentation model; with --task segmentation choose one of "
            f"{', '.join(SEGMENTATION_MODELS)} (default {DEFAULT_SEGMENTATION_MODEL})"
        )


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def task_info(args: argparse.Namespace) -> dict[str, Any]:
    """What `run.json` records of the task: for segmentation the task, the loss and the ignore index."""
    if args.task != "segmentation":
        return {}
    return {"task": "segmentation", "loss": args.loss, "ignore_index": ignore_index(args)}


def ignore_index(args: argparse.Namespace) -> int | None:
    """`--ignore-index`, with -1 meaning none (no 8-bit mask holds it)."""
    return None if args.ignore_index == -1 else int(args.ignore_index)


def segmentation_size(args: argparse.Namespace) -> InputSize:
    """The segmentation job's input size: images (and masks) are resized to it whole, not cropped."""
    if args.image_size:
        return InputSize(args.image_size, args.image_size, None, "--image-size")
    size = 224 if args.data else 64
    return InputSize(size, size, None, "the segmentation job's default" + (" for --data" if args.data else ""))


def segmentation_data(args: argparse.Namespace, size: int) -> tuple[Dataset, Dataset, list[str], int]:
    """`(train set, val set, class names, workers)` of the segmentation job at input size `size`."""
    flip = not args.no_flip
    if args.data:
        train, val, classes = segmentation_folder_datasets(
            args.data, size, args.augment or "basic", flip=flip, ignore_index=ignore_index(args)
        )
        workers = default_workers() if args.workers is None else args.workers
        return train, val, classes, workers
    train_set: Dataset = ShapesDataset(args.train_samples, size, seed=args.seed, task="segmentation")
    augment = segmentation_augmentation(size, args.augment or "none", flip)
    if augment is not None:
        train_set = PairTransformed(train_set, augment)
    val_set = ShapesDataset(args.val_samples, size, seed=args.seed + 10_000, task="segmentation")
    workers = 0 if args.workers is None else args.workers  # generating is cheaper than a worker's IPC
    return train_set, val_set, list(val_set.classes), workers


def segmentation_model(
    args: argparse.Namespace, classes: Sequence[str], report: Callable[[str], None] | None = None
) -> nn.Module:
    """`--model` of torchvision.models.segmentation with one output per class, `--weights` loaded."""
    return build_segmentation_model(
        args.model, len(classes), args.weights, allow_partial=args.allow_partial_weights, report=report
    )


def segmentation_loss_and_metrics(
    args: argparse.Namespace, classes: Sequence[str]
) -> tuple[nn.Module, dict[str, Metric]]:
    """The `--loss` and the metrics logged as val/mean_iou, val/pixel_accuracy, val/iou/<class>, val/dice/<class>."""
    metrics = SegmentationMetrics(class_names=classes, ignore_index=ignore_index(args))
    return SegmentationLoss(args.loss, ignore_index(args)), dict(metrics.metrics())


def segmentation_callbacks(args: argparse.Namespace, classes: Sequence[str], model: nn.Module) -> list[Callback]:
    """The views of the segmentation job (off with --no-inspection), at the main job's cadences.

    Weight histograms, kernels and feature maps (of the backbone's stages) as for
    classification; then the overlay grid, the worst images, the pixel confusion matrix and
    the per-class report (`--no-class-report` leaves the report out).
    """
    if args.no_inspection:
        return []
    for name in ("hist_every", "images_every"):
        if getattr(args, name) < (0 if name == "hist_every" else 1):
            raise CLIError(f"--{name.replace('_', '-')} cannot be {getattr(args, name)}")
    index = ignore_index(args)
    backbone = getattr(model, "backbone", None)
    layers = args.feature_layers
    if layers is None and isinstance(backbone, nn.Module):
        layers = [f"backbone.{name}" for name in spread_conv_blocks(backbone, 4)]
    callbacks: list[Callback] = [
        WeightHistograms(every_n_steps=args.hist_every or None, grads=not args.no_grad_hist, include=args.hist_include),
        KernelGrid(args.kernel_layers, every_n_epochs=args.images_every),
        FeatureMaps(layers, every_n_epochs=args.images_every),
    ]
    if args.overlay_images:
        callbacks.append(
            SegmentationOverlays(
                args.overlay_images, class_names=classes, ignore_index=index, every_n_epochs=args.images_every
            )
        )
    if args.worst_images:
        callbacks.append(WorstSegmentations(args.worst_images, class_names=classes, ignore_index=index))
    callbacks.append(PixelConfusionMatrix(class_names=classes, ignore_index=index))
    if not args.no_class_report:
        callbacks.append(SegmentationReport(class_names=classes, ignore_index=index))
    return callbacks
