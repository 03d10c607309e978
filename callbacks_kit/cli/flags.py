"""The flags of the job itself, which `train` and `lr-find` both take, and their checks.

Data, model and optimisation, the run, augmentation, the classifier head, CSV-labelled data,
fine-tuning and the LR range test: each group is added by one `add_*` function; the checks
refuse values no other check can catch, naming the flag.
"""

from __future__ import annotations

import argparse
import math

from callbacks_kit.choices import AUGMENTS, HEADS
from callbacks_kit.errors import CLIError

# Sizes of the built-in shapes dataset; with --data the folder decides and these flags are refused.
SHAPES_SIZES = {"train_samples": 3000, "val_samples": 600}
# The share of the resized image that validation keeps (torchvision's reference scripts: 224 of 256).
CROP_RATIO = 0.875

# Each numeric option's range: (lowest, lowest allowed?, highest or None, highest allowed?).
NUMBERS: dict[str, tuple[float, bool, float | None, bool]] = {
    "epochs": (1, True, None, False),
    "batch_size": (1, True, None, False),
    "train_samples": (1, True, None, False),
    "val_samples": (1, True, None, False),
    "log_every": (1, True, None, False),
    "grad_accum": (1, True, None, False),
    "image_size": (16, True, None, False),
    "workers": (0, True, None, False),
    "seed": (0, True, 2**32 - 1, True),
    "lr": (0, False, None, False),
    "weight_decay": (0, True, None, False),
    "max_grad_norm": (0, False, None, False),
    "val_split": (0, False, 1, False),
    "backbone_lr_factor": (0, False, None, False),
}


class Unset(str):
    """A flag's default that knows it was not given (argparse keeps a default object as it is)."""


class UnsetInt(int):
    """An int default that knows it was not given: the segmentation task has its own."""


class UnsetFloat(float):
    """A float default that knows it was not given: the segmentation task has its own."""


def is_unset(value: object) -> bool:
    """Whether `value` is a default the user did not give (`Unset`, `UnsetInt`, `UnsetFloat`)."""
    return isinstance(value, (Unset, UnsetInt, UnsetFloat))


def add_job_args(train: argparse.ArgumentParser, training: bool = True) -> None:
    """The data, model and run options, shared with `lr-find` (without those of training: `training=False`)."""
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="DIR",
        help="ImageFolder tree: train/ and val/, or class folders (default: the built-in shapes dataset)",
    )
    data.add_argument(
        "--val-split", type=float, default=None, help="fraction of --data held out when it has no val/ (default: 0.2)"
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PIXELS",
        help="side of the square input (default: 64 for the built-in shapes; with --data or --labels the size "
        "the named --weights were trained at, else the training images' median shorter side within 32-224)",
    )
    data.add_argument(
        "--crop-ratio",
        type=float,
        default=None,
        metavar="R",
        help="with --data or --labels, validation (and evaluate, predict) resizes the shorter side to "
        "image-size / R and centre-crops image-size; 1 keeps the whole image (default: the named --weights' "
        f"ratio, else {CROP_RATIO})",
    )
    data.add_argument(
        "--train-samples",
        type=int,
        help=f"size of the built-in training set (default: {SHAPES_SIZES['train_samples']})",
    )
    data.add_argument(
        "--val-samples", type=int, help=f"size of the built-in validation set (default: {SHAPES_SIZES['val_samples']})"
    )
    data.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers (default: 0 for the built-in shapes, else half the CPU cores)",
    )
    model = train.add_argument_group("model and optimisation")
    model.add_argument(
        "--model",
        default=Unset("resnet18"),
        help="any torchvision classifier name; with --task segmentation, unet (the package's, the default) or one "
        "of torchvision.models.segmentation",
    )
    model.add_argument(
        "--weights",
        metavar="PATH|NAME",
        help="local state_dict to start from (head is replaced), or torchvision weights by name (DEFAULT, "
        "IMAGENET1K_V1) read from the torch hub cache, offline (default: random initialisation)",
    )
    model.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="load the matching part of --weights that only partly fit the model (refused by default)",
    )
    if training:
        model.add_argument(
            "--epochs",
            type=int,
            default=UnsetInt(5),
            help="passes over the training data; 6 with --task segmentation",
        )
    model.add_argument(
        "--batch-size",
        type=int,
        default=UnsetInt(64),
        help="images per batch, per process; 32 with --task segmentation",
    )
    if training:
        model.add_argument(
            "--lr",
            type=lr_value,
            default=UnsetFloat(2e-3),
            help="LR of every param group; 'auto' runs the LR range test first (see lr-find) and trains with its "
            "suggestion; 0.005 with --task segmentation",
        )
    model.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's decoupled weight decay")
    if training:
        model.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    model.add_argument(
        "--max-grad-norm",
        type=float,
        default=None,
        help="clip the global gradient norm to this value (default: no clipping)",
    )
    run = train.add_argument_group("run")
    run.add_argument("--log-dir", help="folder of this run (default: runs/<date>-<time>)")
    run.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default="no",
        help="autocast precision: bf16 (CPU or GPU), fp16 with loss scaling (GPU), or no",
    )
    run.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    run.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights, the data order and the built-in data"
    )
    if training:
        run.add_argument("--log-every", type=int, default=10, help="optimizer steps between loss reads")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (summary lines stay)")
    add_augment_args(train)
    add_head_args(train)
    add_csv_args(train)


def lr_value(text: str) -> float | str:
    """`--lr`: a number, or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'auto', got {text!r}") from None


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse NaN, infinities and out-of-range values of the numeric options, naming the flag.

    Also refuses options that do not apply (`--val-split` without `--data`, the shapes sizes
    with it) and fills in the shapes sizes when they were not given.
    """
    for name, (low, low_ok, high, high_ok) in NUMBERS.items():
        value = getattr(args, name, None)
        if value is None or value == "auto":
            continue
        flag = f"--{name.replace('_', '-')}"
        if not math.isfinite(value):
            raise CLIError(f"{flag} must be a finite number, got {value}")
        too_low = value < low or (value == low and not low_ok)
        too_high = high is not None and (value > high or (value == high and not high_ok))
        if too_low or too_high:
            if high is not None:
                wanted = f"between {low} and {high}" + ("" if high_ok and low_ok else " (exclusive)")
            else:
                wanted = f"at least {low}" if low_ok else f"greater than {low}"
            unit = " pixels" if name == "image_size" else ""
            raise CLIError(f"{flag} must be {wanted}{unit}, got {value}")
    folder = args.data or getattr(args, "labels", None)
    if args.val_split is not None and not folder:
        raise CLIError("--val-split sets the share of --data held out for validation; it needs --data DIR")
    given = [f"--{name.replace('_', '-')}" for name in SHAPES_SIZES if getattr(args, name) is not None]
    if folder and given:
        raise CLIError(
            f"{' and '.join(given)} size the built-in shapes dataset; with --data the folder decides what trains: "
            "drop them (or use --val-split for the share held out)"
        )
    for name, default in SHAPES_SIZES.items():
        if not folder and getattr(args, name) is None:
            setattr(args, name, default)


def add_augment_args(parser: argparse.ArgumentParser) -> None:
    """What the training images and the loss see: --augment, --no-flip, --label-smoothing (train and lr-find)."""
    group = parser.add_argument_group("augmentation and regularisation")
    group.add_argument(
        "--augment",
        choices=AUGMENTS,
        help="training augmentation: none; basic (random resized crop and horizontal flip); or basic followed by "
        "torchvision's TrivialAugmentWide, RandAugment or AutoAugment; validation images are never augmented "
        "(default: basic for --data, none for the built-in shapes)",
    )
    group.add_argument(
        "--no-flip",
        action="store_true",
        help="no horizontal flip in --augment (digits, text: a mirror changes the class)",
    )
    group.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        metavar="EPS",
        help="label smoothing of the cross-entropy (training and validation loss), e.g. 0.1; composes with mixing",
    )


def label_smoothing(args: argparse.Namespace) -> float:
    """`--label-smoothing`, checked: PyTorch takes values in [0, 1]; 1 would leave no label at all."""
    eps = args.label_smoothing
    if not (math.isfinite(eps) and 0 <= eps < 1):
        raise CLIError(f"--label-smoothing must be at least 0 and below 1 (0.1 is common), got {eps}")
    return eps


def add_head_args(parser: argparse.ArgumentParser) -> None:
    """The classifier head: one Linear layer, or an MLP."""
    group = parser.add_argument_group("classifier head")
    group.add_argument(
        "--head",
        choices=HEADS,
        default="linear",
        help="linear: one Linear layer; mlp: dropout, a hidden Linear with BatchNorm and ReLU, dropout, Linear",
    )
    group.add_argument("--hidden", type=int, default=512, metavar="N", help="hidden units of --head mlp")
    group.add_argument("--dropout", type=float, default=0.2, metavar="P", help="dropout of --head mlp")


def check_head_args(args: argparse.Namespace) -> None:
    """Refuse MLP-head settings that cannot work, or that would be ignored."""
    if args.head == "mlp" and (args.hidden < 1 or not 0 <= args.dropout < 1):
        raise CLIError(f"--hidden must be at least 1 and --dropout in [0, 1), got {args.hidden} and {args.dropout}")
    if args.head != "mlp" and (args.hidden != 512 or args.dropout != 0.2):
        raise CLIError("--hidden and --dropout shape the MLP head: add --head mlp, or drop them")


def add_csv_args(parser: argparse.ArgumentParser) -> None:
    """Images labelled by a CSV instead of an ImageFolder tree."""
    group = parser.add_argument_group("CSV-labelled data")
    group.add_argument(
        "--labels", metavar="FILE.csv", help="CSV of image paths and labels, with --images (default: none)"
    )
    group.add_argument(
        "--images", metavar="DIR", help="folder the CSV's paths are relative to, with --labels (default: none)"
    )
    group.add_argument("--path-column", metavar="NAME", help="column of image paths (default: the first)")
    group.add_argument("--label-column", metavar="NAME", help="column of labels (default: 'label', else the second)")


def check_csv_args(args: argparse.Namespace) -> None:
    """`--labels` and `--images` go together, never with `--data`; the column names need `--labels`."""
    if bool(args.labels) != bool(args.images):
        raise CLIError("--labels FILE.csv and --images DIR go together: pass both, or neither")
    if args.labels and args.data:
        raise CLIError("--data (an ImageFolder) and --labels (a CSV) both name the data: pass only one")
    if (args.path_column or args.label_column) and not args.labels:
        raise CLIError("--path-column and --label-column name columns of --labels FILE.csv; add --labels and --images")


def add_finetune_args(parser: argparse.ArgumentParser, training: bool = True) -> None:
    """Freezing, unfreezing and LR scheduling options (`training=False`: the freezing the LR range test sees)."""
    group = parser.add_argument_group("LR schedule and fine-tuning" if training else "freezing")
    if training:
        group.add_argument(
            "--scheduler",
            choices=["none", "onecycle", "cosine", "linear", "step", "plateau"],
            default="onecycle",
            help="onecycle/cosine/linear: per optimizer step; step: LR/10 every third of the epochs; "
            "plateau: LR/10 when val/loss stalls for an epoch",
        )
        group.add_argument("--warmup", type=int, default=0, metavar="STEPS", help="linear warmup over the first STEPS")
        group.add_argument(
            "--bn-recalibration",
            type=int,
            default=3,
            metavar="BATCHES",
            help="before each validation, recompute the BatchNorm statistics for the current weights over this "
            "many training batches (the running ones lag the weights while the LR is high); 0: off",
        )
    group.add_argument(
        "--freeze-backbone", action="store_true", help="train only the classifier head (until --unfreeze-at)"
    )
    group.add_argument(
        "--unfreeze-at",
        type=int,
        nargs="+",
        metavar="EPOCH",
        help="unfreeze the backbone at this epoch; several epochs unfreeze it block by block from the head "
        "down (implies --freeze-backbone; default: never)",
    )
    if training:
        group.add_argument(
            "--backbone-lr-factor",
            type=float,
            metavar="F",
            help="on unfreezing, the backbone's LR is the head's times F (default: the same LR)",
        )


def add_lr_find_args(parser: argparse.ArgumentParser) -> None:
    """The LR range test's sweep (`lr-find`, and `train --lr auto`)."""
    group = parser.add_argument_group("LR range test (lr-find; train --lr auto)")
    group.add_argument("--lr-find-min", type=float, default=1e-7, metavar="LR", help="first LR of the sweep")
    group.add_argument("--lr-find-max", type=float, default=10.0, metavar="LR", help="last LR of the sweep")
    group.add_argument(
        "--lr-find-steps",
        type=int,
        default=100,
        metavar="N",
        help="optimizer steps of the exponential sweep (it stops earlier when the loss diverges)",
    )
