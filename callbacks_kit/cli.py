"""`callbacks-kit train`: the main job, and the other commands of the console script."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.progress import ProgressBar
from callbacks_kit.callbacks.tensorboard import TensorBoardLogger, default_log_dir
from callbacks_kit.data import DataError, ShapesDataset, default_workers, image_folder_datasets, make_loader
from callbacks_kit.finetune import FinetuneError, build_classifier
from callbacks_kit.metrics import accuracy
from callbacks_kit.trainer import Trainer, TrainerError


class CLIError(ValueError):
    """A command-line option that cannot work."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `callbacks-kit`."""
    parser = argparse.ArgumentParser(prog="callbacks-kit", description="TensorBoard-integrated callback toolkit.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train an image classifier and write a TensorBoard run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="DIR",
        help="ImageFolder tree (train/ and val/, or class folders); default: the built-in shapes dataset",
    )
    data.add_argument("--val-split", type=float, default=None, help="fraction held out when --data has no val/ (0.2)")
    data.add_argument("--image-size", type=int, default=None, help="input size (64 for shapes, 224 for --data)")
    data.add_argument("--train-samples", type=int, default=3000, help="size of the built-in training set")
    data.add_argument("--val-samples", type=int, default=600, help="size of the built-in validation set")
    data.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (0 for shapes, else half the cores)"
    )
    model = train.add_argument_group("model and optimisation")
    model.add_argument("--model", default="resnet18", help="any torchvision classifier name")
    model.add_argument("--weights", metavar="PATH", help="local state_dict to start from (head is replaced)")
    model.add_argument("--epochs", type=int, default=4)
    model.add_argument("--batch-size", type=int, default=64, help="per process")
    model.add_argument("--lr", type=float, default=2e-3)
    model.add_argument("--weight-decay", type=float, default=0.05)
    model.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    model.add_argument("--max-grad-norm", type=float, default=None)
    run = train.add_argument_group("run")
    run.add_argument("--log-dir", help="folder of this run (default runs/<date>-<time>)")
    run.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    run.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--log-every", type=int, default=10, help="optimizer steps between loss reads")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (summary lines stay)")
    _add_inspection_args(train)
    _add_finetune_args(train)
    _add_checkpoint_args(train)
    return parser


# Each feature adds its options and its callbacks in its own pair of functions.
def _add_inspection_args(parser: argparse.ArgumentParser) -> None:
    """TensorBoard inspection options (histograms, images, Grad-CAM...)."""


def _inspection_callbacks(args: argparse.Namespace, classes: Sequence[str]) -> list[Callback]:
    return []


def _add_finetune_args(parser: argparse.ArgumentParser) -> None:
    """Freezing, unfreezing and LR scheduling options."""


def _finetune_callbacks(args: argparse.Namespace, steps_per_epoch: int) -> list[Callback]:
    return []


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """Checkpointing, resume and early-stopping options."""


def _checkpoint_callbacks(args: argparse.Namespace) -> list[Callback]:
    return []


def _resume_from(args: argparse.Namespace) -> str | None:
    return None


def _run_dir(requested: str | None) -> str:
    """One run folder for all processes: the main process picks it, the others receive it."""
    chosen = [requested or default_log_dir()]
    if PartialState().num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return chosen[0]


def train(args: argparse.Namespace) -> dict[str, float]:
    """Build data, model and callbacks from `args`, train, and say where the run went."""
    for name in ("epochs", "batch_size", "train_samples", "val_samples", "log_every", "grad_accum"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    # Like Accelerate, honour ACCELERATE_USE_CPU; without a GPU, a multi-process launch is gloo on CPUs.
    cpu_only = args.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    cpu_only = cpu_only or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    state = PartialState(cpu=cpu_only)
    torch.manual_seed(args.seed)
    if args.data:
        size = args.image_size or 224
        train_set, val_set, classes = image_folder_datasets(args.data, size, args.val_split, args.seed)
        workers = default_workers() if args.workers is None else args.workers
    else:
        size = args.image_size or 64
        train_set = ShapesDataset(args.train_samples, size, seed=args.seed)
        val_set = ShapesDataset(args.val_samples, size, seed=args.seed + 10_000)
        classes = list(ShapesDataset.classes)
        workers = 0 if args.workers is None else args.workers  # generating is cheaper than a worker's IPC
    pin = torch.cuda.is_available() and not args.cpu
    train_loader = make_loader(train_set, args.batch_size, shuffle=True, workers=workers, pin_memory=pin)
    val_loader = make_loader(val_set, args.batch_size, shuffle=False, workers=workers, pin_memory=pin)
    model = build_classifier(args.model, len(classes), args.weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    run_dir = _run_dir(args.log_dir)
    steps_per_epoch = max(1, len(train_loader) // max(1, state.num_processes) // args.grad_accum)
    callbacks: list[Callback] = [TensorBoardLogger(run_dir), ProgressBar(bar=not args.no_progress)]
    callbacks += _inspection_callbacks(args, classes)
    callbacks += _finetune_callbacks(args, steps_per_epoch)
    callbacks += _checkpoint_callbacks(args)
    trainer = Trainer(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        metrics={"accuracy": accuracy},
        callbacks=callbacks,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        cpu=cpu_only,
        seed=args.seed,
        log_every_n_steps=args.log_every,
    )
    source = args.data or f"built-in shapes ({args.train_samples} train / {args.val_samples} val, {size}px)"
    trainer.print(
        f"training {args.model} on {source}: {len(classes)} classes, {args.epochs} epochs, "
        f"{state.num_processes} process(es) on {trainer.device}, mixed precision {args.mixed_precision}"
    )
    start = time.perf_counter()
    trainer.fit(train_loader, val_loader, epochs=args.epochs, resume_from=_resume_from(args))
    metrics = dict(trainer.state.metrics)
    trainer.print(
        f"done in {time.perf_counter() - start:.0f} s: val/accuracy {metrics.get('val/accuracy', float('nan')):.4f}, "
        f"val/loss {metrics.get('val/loss', float('nan')):.4f}\n"
        f"run written to {run_dir}\nopen it with: tensorboard --logdir {run_dir}"
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `callbacks-kit` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            train(args)
    except (CLIError, DataError, FinetuneError, TrainerError) as exc:
        print(f"callbacks-kit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
