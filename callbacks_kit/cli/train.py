"""`callbacks-kit train`: the main job. Trains a torchvision classifier and writes a TensorBoard run."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.progress_bar import ProgressBar
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger, default_log_dir
from callbacks_kit.checkpoint.format import MODEL
from callbacks_kit.checkpoint.store import read_pointer
from callbacks_kit.cli import options
from callbacks_kit.data.csv_labels import csv_datasets
from callbacks_kit.data.folders import image_folder_datasets
from callbacks_kit.data.loaders import default_workers, make_loader
from callbacks_kit.data.shapes import ShapesDataset
from callbacks_kit.data.transforms import augmentation
from callbacks_kit.deploy.run_info import RunInfo, WriteRunInfo
from callbacks_kit.distributed import process_state, use_cpu
from callbacks_kit.errors import CallbacksKitError, CLIError, FolderInUseError, ScheduleError
from callbacks_kit.finetune import backbone_blocks, build_classifier, head_name, load_weights, param_groups
from callbacks_kit.folder_lock import FolderLock
from callbacks_kit.metrics import accuracy
from callbacks_kit.trainer import Trainer


def add_parser(commands: Any) -> None:
    """Add the `train` command and its options to `commands` (what `add_subparsers()` returned)."""
    train = commands.add_parser(
        "train",
        help="train an image classifier and write a TensorBoard run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_job_args(train)
    options.add_inspection_args(train)
    options.add_error_analysis_args(train)
    options.add_training_view_args(train)
    options.add_finetune_args(train)
    options.add_ema_args(train)
    options.add_checkpoint_args(train)
    options.add_recipe_args(train)
    options.add_lr_find_args(train)


def add_job_args(train: argparse.ArgumentParser) -> None:
    """The data, model and run options, shared with `lr-find`."""
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="DIR",
        help="ImageFolder tree (train/ and val/, or class folders); default: the built-in shapes dataset",
    )
    data.add_argument("--val-split", type=float, default=None, help="fraction held out when --data has no val/ (0.2)")
    data.add_argument("--image-size", type=int, default=None, help="input size (64 for shapes, 224 for --data)")
    data.add_argument(
        "--train-samples", type=int, help=f"size of the built-in training set ({SHAPES_SIZES['train_samples']})"
    )
    data.add_argument(
        "--val-samples", type=int, help=f"size of the built-in validation set ({SHAPES_SIZES['val_samples']})"
    )
    data.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (0 for shapes, else half the cores)"
    )
    model = train.add_argument_group("model and optimisation")
    model.add_argument("--model", default="resnet18", help="any torchvision classifier name")
    model.add_argument(
        "--weights",
        metavar="PATH|NAME",
        help="local state_dict to start from (head is replaced), or torchvision weights by name (DEFAULT, "
        "IMAGENET1K_V1) read from the torch hub cache, offline",
    )
    model.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="load the matching part of --weights that only partly fit the model (refused by default)",
    )
    model.add_argument("--epochs", type=int, default=5)
    model.add_argument("--batch-size", type=int, default=64, help="per process")
    model.add_argument(
        "--lr",
        type=lr_value,
        default=2e-3,
        help="LR of every param group; 'auto' runs the LR range test first (see lr-find) and trains with its "
        "suggestion",
    )
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
    options.add_augment_args(train)
    options.add_head_args(train)
    options.add_csv_args(train)


def lr_value(text: str) -> float | str:
    """`--lr`: a number, or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'auto', got {text!r}") from None


# Sizes of the built-in shapes dataset; with --data the folder decides and these flags are refused.
SHAPES_SIZES = {"train_samples": 3000, "val_samples": 600}

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


def checkpoint_weights(path: str) -> Path:
    """The weights file of `--init-from`: a checkpoint folder's, the newest of a checkpoint directory, or a file."""
    where = Path(path)
    if where.is_dir() and not (where / MODEL).is_file():
        newest = read_pointer(where)
        if newest is None:
            raise CLIError(
                f"--init-from {where}: neither a checkpoint folder (no {MODEL}) nor a directory with last.json"
            )
        where = where / newest
    if where.is_dir():
        where = where / MODEL
    if not where.is_file():
        raise CLIError(f"--init-from {path}: no such checkpoint or weights file")
    return where


def _resume_advice(args: argparse.Namespace, run_dir: str, exc: ScheduleError) -> str:
    """What a CLI user can run when the saved LR schedule does not fit the new settings."""
    source = args.resume if args.resume != "last" else (args.checkpoint_dir or os.path.join(run_dir, "checkpoints"))
    first = str(exc).split(": it would fail")[0]
    return (
        f"cannot resume {source} with these settings: the saved --scheduler {args.scheduler} schedule has a fixed "
        f"length ({first}). Either resume with the --epochs, --batch-size, --grad-accum and --train-samples the "
        f"run was started with, or start a new run from its weights: add --init-from {source} with a new "
        "--log-dir instead of --resume"
    )


def pick_run_dir(requested: str | None, state: PartialState) -> str:
    """One run folder for all processes: the main process picks it, the others receive it."""
    chosen = [requested or (default_log_dir() if state.is_main_process else None)]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return chosen[0]


@contextlib.contextmanager
def lock_run(run_dir: str, state: PartialState) -> Iterator[None]:
    """Hold the run folder's lock: the main process takes it; every process raises if it is refused."""
    lock = FolderLock(run_dir, "the run folder", "Wait for that run to end, or pass another --log-dir.")
    box: list[tuple[bool, str] | None] = [None]
    if state.is_main_process:
        try:
            lock.acquire()
        except CallbacksKitError as exc:
            box[0] = (True, str(exc))
        except OSError as exc:
            box[0] = (
                False,
                f"--log-dir {run_dir} cannot hold a run ({exc.strerror or exc}); pick a folder you can write to",
            )
    if state.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    if box[0]:
        in_use, message = box[0]
        raise FolderInUseError(message) if in_use else CLIError(message)
    try:
        yield
    finally:
        lock.release()  # held by the main process alone; a no-op on the others


@dataclass
class Job:
    """What `train` and `lr-find` build alike from the options: data, model and optimizer."""

    state: PartialState
    cpu_only: bool
    train_loader: DataLoader
    val_loader: DataLoader
    classes: list[str]
    size: int
    resize: int  # the side images are resized to before the centre crop (run.json)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def describe(self, args: argparse.Namespace) -> str:
        """The model and the data, for the line a command prints at start."""
        source = args.data or f"built-in shapes ({args.train_samples} train / {args.val_samples} val, {self.size}px)"
        return f"{args.model} on {source}: {len(self.classes)} classes"

    def processes(self, trainer: Trainer) -> str:
        """Where it runs, for the same line: processes, device and precision."""
        precision = trainer.accelerator.mixed_precision
        return f"{self.state.num_processes} process(es) on {trainer.device}, mixed precision {precision}"

    def trainer(self, args: argparse.Namespace, callbacks: list[Callback], progress_bar: bool = True) -> Trainer:
        """The Trainer of this job with `callbacks`."""
        return Trainer(
            self.model,
            self.optimizer,
            torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),  # takes mixed (soft) targets too
            metrics={"accuracy": accuracy},
            callbacks=callbacks,
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.grad_accum,
            max_grad_norm=args.max_grad_norm,
            cpu=self.cpu_only,
            seed=args.seed,
            log_every_n_steps=args.log_every,
            progress_bar=progress_bar,
        )


def build_job(args: argparse.Namespace) -> Job:
    """Check the numbers, then build the data, the model (with --weights / --init-from) and AdamW.

    With `--lr auto` the param groups start at `AUTO_PLACEHOLDER_LR`; the LR range test only
    uses their ratios (all 1 here) and the caller sets the suggestion afterwards.
    """
    options.check_csv_args(args)
    options.check_head_args(args)
    check_numbers(args)
    # Like Accelerate, honour ACCELERATE_USE_CPU; without a GPU, a multi-process launch is gloo on CPUs.
    cpu_only = use_cpu(args.cpu)
    state = process_state(cpu_only)
    torch.manual_seed(args.seed)
    options.label_smoothing(args)
    if args.data or args.labels:
        size = args.image_size or 224
        augment, flip = args.augment or "basic", not args.no_flip
        if args.labels:
            train_set, val_set, classes = csv_datasets(
                args.labels,
                args.images,
                size,
                args.val_split,
                args.seed,
                args.path_column,
                args.label_column,
                augment=augment,
                flip=flip,
            )
        else:
            train_set, val_set, classes = image_folder_datasets(
                args.data, size, args.val_split, args.seed, augment=augment, flip=flip
            )
        workers = default_workers() if args.workers is None else args.workers
        resize = round(size / 0.875)  # eval_transform's resize before the centre crop
    else:
        size = args.image_size or 64
        steps = augmentation(size, args.augment or "none", flip=not args.no_flip)
        train_set = ShapesDataset(
            args.train_samples, size, seed=args.seed, transform=v2.Compose(steps) if steps else None
        )
        val_set = ShapesDataset(args.val_samples, size, seed=args.seed + 10_000)
        classes = list(ShapesDataset.classes)
        workers = 0 if args.workers is None else args.workers  # generating is cheaper than a worker's IPC
        resize = size  # shapes are drawn at the input size: a saved one goes in unchanged
    pin = torch.cuda.is_available() and not cpu_only  # pinned pages only help copies to a GPU
    # Drop the ragged last batch, as the reference training scripts do: one sample fails BatchNorm.
    drop_last = len(train_set) > args.batch_size * state.num_processes
    train_loader = make_loader(
        train_set, args.batch_size, shuffle=True, workers=workers, pin_memory=pin, drop_last=drop_last
    )
    val_loader = make_loader(val_set, args.batch_size, shuffle=False, workers=workers, pin_memory=pin)
    model = build_classifier(
        args.model,
        len(classes),
        args.weights,
        allow_partial=args.allow_partial_weights,
        report=state.print,
        head=args.head,
        hidden=args.hidden,
        dropout=args.dropout,
    )
    if getattr(args, "init_from", None):  # train's option; lr-find has none
        if args.resume:
            raise CLIError("--init-from starts a new run and --resume continues one: pass only one of them")
        source = checkpoint_weights(args.init_from)
        state.print(f"initialised from {source}: {load_weights(model, source, strict=True)}")
    # One param group per block, named for TensorBoard, so each can get its own LR when unfrozen.
    lr = AUTO_PLACEHOLDER_LR if args.lr == "auto" else args.lr
    blocks = [head_name(model), *backbone_blocks(model)]
    groups = param_groups(model, dict.fromkeys(blocks, lr))
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=args.weight_decay)
    return Job(state, cpu_only, train_loader, val_loader, classes, size, resize, model, optimizer)


# The groups' LR while `--lr auto` waits for the LR range test (only their ratios are used).
AUTO_PLACEHOLDER_LR = 1e-3


def train(
    args: argparse.Namespace, customize: Callable[[list[Callback]], list[Callback]] | None = None
) -> dict[str, float]:
    """Build data, model and callbacks from `args`, train, and say where the run went.

    Args:
        args: The parsed `train` options.
        customize: Sees (and may change) the main job's callbacks before the Trainer is
            built; the benchmark uses it to time them.
    """
    if args.lr == "auto":
        if args.resume:
            raise CLIError(
                "--lr auto runs an LR range test for a new run; a resumed run keeps the LR schedule it was started "
                "with (its checkpoint holds it): pass the run's --lr with --resume, or drop --resume"
            )
        options.lr_finder(args)  # its range is checked before any data is loaded
    recipe = options.recipe_callbacks(args)  # checks the recipe's flags before any data is read
    job = build_job(args)
    state, classes, size = job.state, job.classes, job.size
    train_loader, val_loader = job.train_loader, job.val_loader
    run_dir = pick_run_dir(args.log_dir, state)
    steps_per_epoch = max(1, len(train_loader) // max(1, state.num_processes) // args.grad_accum)
    hparams = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    logger = TensorBoardLogger(run_dir, hparams=hparams)
    callbacks: list[Callback] = [logger, ProgressBar(bar=not args.no_progress)]
    callbacks += options.inspection_callbacks(args, classes)
    callbacks += options.error_analysis_callbacks(args, classes)
    callbacks += options.training_view_callbacks(args, classes)
    callbacks += options.finetune_callbacks(args, steps_per_epoch)
    callbacks += options.ema_callbacks(args)
    callbacks += options.checkpoint_callbacks(args, run_dir)
    callbacks += recipe
    info = RunInfo(
        args.model,
        list(classes),
        size,
        job.resize,
        head=args.head,
        hidden=args.hidden,
        dropout=args.dropout,
        checkpoint_dir=str(Path(args.checkpoint_dir).resolve()) if args.checkpoint_dir else "checkpoints",
    )
    callbacks.append(WriteRunInfo(run_dir, info))  # what predict, evaluate and export need
    if customize is not None:
        callbacks = customize(callbacks)
    trainer = job.trainer(args, callbacks)
    trainer.print(f"training {job.describe(args)}, {args.epochs} epochs, {job.processes(trainer)}")
    start = time.perf_counter()
    with lock_run(run_dir, state):  # one run per folder: a second one is refused before it writes anything
        if args.lr == "auto":
            args.lr = logger.hparams["lr"] = options.auto_lr(
                args, trainer, train_loader, os.path.join(run_dir, "lr_find")
            )
        try:
            trainer.fit(train_loader, val_loader, epochs=args.epochs, resume_from=args.resume)
        except ScheduleError as exc:
            if not args.resume:
                raise
            raise CLIError(_resume_advice(args, run_dir, exc)) from exc
    metrics = dict(trainer.state.metrics)
    trainer.print(
        f"done in {time.perf_counter() - start:.0f} s: val/accuracy {metrics.get('val/accuracy', float('nan')):.4f}, "
        f"val/loss {metrics.get('val/loss', float('nan')):.4f}\n"
        f"run written to {run_dir}\nopen it with: tensorboard --logdir {run_dir}"
    )
    return metrics


def run(args: argparse.Namespace) -> int:
    """Run the `train` command; 0 on success."""
    train(args)
    return 0
