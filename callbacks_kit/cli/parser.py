"""The `callbacks-kit` parser: every command and its options, built without importing torch.

`callbacks-kit --help`, a command's `--help` and a mistyped option come back at once: this
module and the flag modules it calls (`flags`, `train_flags`) import only the standard
library and `callbacks_kit.choices`. A command's own module, and torch with it, is imported
by `cli.main` once the command line has parsed (`COMMANDS`).
"""

from __future__ import annotations

import argparse
from typing import Any

from callbacks_kit.choices import EXPORT_FORMATS, EXPORT_TOLERANCE
from callbacks_kit.cli.flags import add_finetune_args, add_job_args, add_lr_find_args
from callbacks_kit.cli.task_flags import add_task_args
from callbacks_kit.cli.train_flags import (
    add_checkpoint_args,
    add_ema_args,
    add_error_analysis_args,
    add_inspection_args,
    add_profiling_args,
    add_recipe_args,
    add_training_view_args,
)

# The option groups of `train`, in the order of its help.
TRAIN_GROUPS = (
    add_job_args,
    add_task_args,
    add_inspection_args,
    add_error_analysis_args,
    add_training_view_args,
    add_finetune_args,
    add_ema_args,
    add_checkpoint_args,
    add_recipe_args,
    add_lr_find_args,
    add_profiling_args,
)

# Each command -> the module of callbacks_kit.cli that runs it (its `run(args)`).
COMMANDS = {
    "train": "train",
    "lr-find": "lr_find",
    "inspect": "inspect",
    "predict": "predict",
    "evaluate": "evaluate",
    "export": "export",
}


class HelpFormatter(argparse.HelpFormatter):
    """States each option's default once: "(default: X)" appended unless the help says "default:" itself.

    Options whose default is None or a switch's False say in words what happens without
    them ("default: the built-in shapes dataset"); appending "(default: None)" to those
    would say it twice, and wrongly. Overriding `_get_help_string` is how argparse's own
    `ArgumentDefaultsHelpFormatter` adds defaults; this one leaves those options alone.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default:" in text or nothing or action.required:
            return text
        return f"{text} (default: %(default)s)"


# train's options that lr-find refuses, and why the sweep has no use for them.
TRAIN_ONLY = {
    "--epochs": "the sweep's length is --lr-find-steps",
    "--lr": "the sweep sets the LR itself; train with its suggestion with `callbacks-kit train --lr auto`",
    "--scheduler": "the sweep's LR follows its own exponential schedule",
    "--warmup": "the sweep's LR follows its own exponential schedule",
    "--grad-accum": "every step of the sweep is one batch",
    "--log-every": "the sweep reads the loss at every step",
    "--backbone-lr-factor": "the sweep measures the layers that train first, with the backbone as --freeze-backbone "
    "leaves it",
}


class TrainOnly(argparse.Action):
    """An option of `train` given to `lr-find`: refused with why, not as an unknown or ambiguous abbreviation."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        """Stop parsing with an error that says where the option belongs."""
        parser.error(f"{option} is an option of `callbacks-kit train`: {TRAIN_ONLY[str(option)]}; drop it here")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `callbacks-kit`, with every command's options."""
    parser = argparse.ArgumentParser(prog="callbacks-kit", description="TensorBoard-integrated callback toolkit.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_lr_find, add_inspect, add_predict, add_evaluate, add_export):
        add(commands)
    return parser


def add_train(commands: Any) -> None:
    """The `train` command and its options (`commands`: what `add_subparsers()` returned)."""
    train = commands.add_parser(
        "train",
        help="train an image classifier (or, with --task segmentation, a segmentation model) and write a "
        "TensorBoard run",
        formatter_class=HelpFormatter,
    )
    for add_args in TRAIN_GROUPS:
        add_args(train)


def train_defaults() -> dict[str, Any]:
    """Every `train` flag's default, by its name in the parsed arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    for add_args in TRAIN_GROUPS:
        add_args(parser)
    return vars(parser.parse_args([]))


def add_lr_find(commands: Any) -> None:
    """`lr-find`: train's data, model, run and freezing options, and the sweep's; none it would ignore."""
    command = commands.add_parser(
        "lr-find",
        help="LR range test: sweep the LR, plot the loss against it in TensorBoard, suggest an LR for train",
        description="Runs train's job (same --data, --model, --weights, --freeze-backbone...) through an "
        "exponential LR sweep and suggests an LR for `callbacks-kit train --lr` (or use `train --lr auto`). "
        "The model is not saved: the sweep only measures. Options that shape training after the sweep "
        "(--epochs, --lr, --scheduler, --warmup...) belong to train.",
        formatter_class=HelpFormatter,
    )
    add_job_args(command, training=False)
    add_task_args(command)
    add_finetune_args(command, training=False)
    add_lr_find_args(command)
    for flag in TRAIN_ONLY:  # hidden from the help; refused with why when given
        command.add_argument(flag, action=TrainOnly, nargs="*", help=argparse.SUPPRESS, dest=f"refused_{flag[2:]}")
    # What the job builder reads of the options lr-find leaves out: the sweep sets the LR
    # itself (from the groups' ratios) and takes one batch per optimizer step.
    command.set_defaults(lr="auto", grad_accum=1, log_every=10)


def add_inspect(commands: Any) -> None:
    """`inspect RUN`: print a TensorBoard run's content."""
    parser = commands.add_parser(
        "inspect", help="print what a TensorBoard run contains, per plugin", formatter_class=HelpFormatter
    )
    parser.add_argument("run", help="a run folder (or a folder of runs, or one event file)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_predict(commands: Any) -> None:
    """`predict RUN IMAGES...`: top-k classes per image."""
    parser = commands.add_parser(
        "predict",
        help="classify images with a trained run (or write their masks, for a segmentation run)",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", help="the run folder (--log-dir of `callbacks-kit train`)")
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    group = parser.add_argument_group("prediction")
    group.add_argument(
        "--checkpoint",
        default="best",
        metavar="best|last|PATH",
        help="which weights to use (best: the weights run.json says best.safetensors holds)",
    )
    group.add_argument("--top-k", type=int, default=3, help="classes shown per image")
    group.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    group.add_argument(
        "--output",
        metavar="FILE|DIR",
        help="also write the predictions to FILE, .csv or .json; a segmentation run: the folder its masks go to "
        "(required), one index PNG per image at the image's size (default: print only)",
    )
    group.add_argument(
        "--overlay",
        action="store_true",
        help="segmentation: also write <name>_overlay.png beside each mask, the image with its classes coloured",
    )
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")


def add_evaluate(commands: Any) -> None:
    """`evaluate RUN --data DIR`: loss, accuracy, per-class report and confusion matrix."""
    parser = commands.add_parser(
        "evaluate",
        help="measure a trained run on a held-out ImageFolder and log it under test/",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", help="the run folder (--log-dir of `callbacks-kit train`)")
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="test images, one folder per class; for a segmentation run, a folder holding images/ and masks/",
    )
    group.add_argument(
        "--checkpoint",
        default="best",
        metavar="best|last|PATH",
        help="which weights to use (best: the weights run.json says best.safetensors holds)",
    )
    group.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    group.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    group.add_argument("--no-tensorboard", action="store_true", help="print only; write nothing into the run")
    group.add_argument(
        "--output",
        metavar="FILE.json",
        help='also write the figures as JSON: {"loss", "accuracy", "per_class": {name: {"precision", "recall", "f1", '
        '"support"}}}; a segmentation run: {"loss", "mean_iou", "pixel_accuracy", "per_class": {name: {"iou", '
        '"dice"}}} (null for a class absent from the truth and the predictions) (default: print only)',
    )


def add_export(commands: Any) -> None:
    """`export RUN --format ...`: ship the model, checked against PyTorch."""
    parser = commands.add_parser(
        "export",
        help="export a trained run as a state_dict, TorchScript, torch.export (pt2) or ONNX file (a segmentation "
        "run's gives the logits (N, C, H, W))",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run", help="the run folder (--log-dir of `callbacks-kit train`)")
    group = parser.add_argument_group("export")
    group.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="what to write: state_dict (.pth for torchvision's model), torchscript (deprecated in torch 2.14), "
        "pt2 (torch.export's ExportedProgram, for torch.export.load), onnx",
    )
    group.add_argument(
        "--output", metavar="FILE", help="file to write (default: <run>/export/model.<ext> for the format)"
    )
    group.add_argument(
        "--checkpoint",
        default="best",
        metavar="best|last|PATH",
        help="which weights to export (best: the weights run.json says best.safetensors holds)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    group.add_argument(
        "--tolerance",
        type=float,
        default=EXPORT_TOLERANCE,
        help="largest difference from PyTorch's outputs accepted",
    )
