"""`callbacks-kit train`: the main job. Trains a torchvision classifier and writes a TensorBoard run."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.progress_bar import ProgressBar
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger, default_log_dir
from callbacks_kit.checkpoint.lock import FolderLock
from callbacks_kit.cli import options
from callbacks_kit.data import ShapesDataset, default_workers, image_folder_datasets, make_loader
from callbacks_kit.distributed import use_cpu
from callbacks_kit.errors import CallbacksKitError, CLIError, FolderInUseError
from callbacks_kit.finetune import backbone_blocks, build_classifier, head_name, param_groups
from callbacks_kit.metrics import accuracy
from callbacks_kit.trainer import Trainer


def add_parser(commands: Any) -> None:
    """Add the `train` command and its options to `commands` (what `add_subparsers()` returned)."""
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
    model.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="load the matching part of --weights that only partly fit the model (refused by default)",
    )
    model.add_argument("--epochs", type=int, default=5)
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
    options.add_inspection_args(train)
    options.add_finetune_args(train)
    options.add_checkpoint_args(train)


def _run_dir(requested: str | None) -> str:
    """One run folder for all processes: the main process picks it, the others receive it."""
    state = PartialState()
    chosen = [requested or (default_log_dir() if state.is_main_process else None)]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return chosen[0]


def _lock_run(run_dir: str) -> FolderLock:
    """The run folder's lock, taken by the main process; every process raises if it is refused."""
    state = PartialState()
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
    return lock


def train(
    args: argparse.Namespace, customize: Callable[[list[Callback]], list[Callback]] | None = None
) -> dict[str, float]:
    """Build data, model and callbacks from `args`, train, and say where the run went.

    Args:
        args: The parsed `train` options.
        customize: Sees (and may change) the main job's callbacks before the Trainer is
            built; the benchmark uses it to time them.
    """
    for name in ("epochs", "batch_size", "train_samples", "val_samples", "log_every", "grad_accum"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    # Like Accelerate, honour ACCELERATE_USE_CPU; without a GPU, a multi-process launch is gloo on CPUs.
    cpu_only = use_cpu(args.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
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
    # Drop the ragged last batch, as the reference training scripts do: one sample fails BatchNorm.
    drop_last = len(train_set) > args.batch_size * state.num_processes
    train_loader = make_loader(
        train_set, args.batch_size, shuffle=True, workers=workers, pin_memory=pin, drop_last=drop_last
    )
    val_loader = make_loader(val_set, args.batch_size, shuffle=False, workers=workers, pin_memory=pin)
    model = build_classifier(
        args.model, len(classes), args.weights, allow_partial=args.allow_partial_weights, report=state.print
    )
    # One param group per block, named for TensorBoard, so each can get its own LR when unfrozen.
    blocks = [head_name(model), *backbone_blocks(model)]
    groups = param_groups(model, dict.fromkeys(blocks, args.lr))
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    run_dir = _run_dir(args.log_dir)
    steps_per_epoch = max(1, len(train_loader) // max(1, state.num_processes) // args.grad_accum)
    hparams = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    callbacks: list[Callback] = [TensorBoardLogger(run_dir, hparams=hparams), ProgressBar(bar=not args.no_progress)]
    callbacks += options.inspection_callbacks(args, classes)
    callbacks += options.finetune_callbacks(args, steps_per_epoch)
    callbacks += options.checkpoint_callbacks(args, run_dir)
    if customize is not None:
        callbacks = customize(callbacks)
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
    with _lock_run(run_dir):  # one run per folder: a second one is refused before it writes anything
        trainer.fit(train_loader, val_loader, epochs=args.epochs, resume_from=args.resume)
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
