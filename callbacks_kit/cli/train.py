"""`callbacks-kit train`: the main job. Trains a classifier or a segmentation model and writes a TensorBoard run."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.progress_bar import ProgressBar
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
from callbacks_kit.cli.flags import add_finetune_args, add_job_args, add_lr_find_args
from callbacks_kit.cli.job import build_job
from callbacks_kit.cli.job_callbacks import (
    checkpoint_callbacks,
    ema_callbacks,
    error_analysis_callbacks,
    finetune_callbacks,
    inspection_callbacks,
    recipe_callbacks,
    training_view_callbacks,
)
from callbacks_kit.cli.lr_sweep import auto_lr, lr_finder
from callbacks_kit.cli.run_dir import lock_run, pick_run_dir
from callbacks_kit.cli.segmentation_job import add_task_args, monitored_metric, segmentation_callbacks, task_info
from callbacks_kit.cli.train_flags import (
    add_checkpoint_args,
    add_ema_args,
    add_error_analysis_args,
    add_inspection_args,
    add_recipe_args,
    add_training_view_args,
)
from callbacks_kit.deploy.run_info import RunInfo, WriteRunInfo
from callbacks_kit.errors import CLIError, ScheduleError


def add_parser(commands: Any) -> None:
    """Add the `train` command and its options to `commands` (what `add_subparsers()` returned)."""
    train = commands.add_parser(
        "train",
        help="train an image classifier (or, with --task segmentation, a segmentation model) and write a "
        "TensorBoard run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_job_args(train)
    add_task_args(train)
    add_inspection_args(train)
    add_error_analysis_args(train)
    add_training_view_args(train)
    add_finetune_args(train)
    add_ema_args(train)
    add_checkpoint_args(train)
    add_recipe_args(train)
    add_lr_find_args(train)


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
        lr_finder(args)  # its range is checked before any data is loaded
    recipe = recipe_callbacks(args)  # checks the recipe's flags before any data is read
    job = build_job(args)
    state, classes, size = job.state, job.classes, job.size
    train_loader, val_loader = job.train_loader, job.val_loader
    run_dir = pick_run_dir(args.log_dir, state)
    steps_per_epoch = max(1, len(train_loader) // max(1, state.num_processes) // args.grad_accum)
    hparams = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    logger = TensorBoardLogger(run_dir, hparams=hparams)
    callbacks: list[Callback] = [logger, ProgressBar(bar=not args.no_progress)]
    if args.task == "segmentation":
        callbacks += segmentation_callbacks(args, classes, job.model)
    else:
        callbacks += inspection_callbacks(args, classes)
        callbacks += error_analysis_callbacks(args, classes)
    callbacks += training_view_callbacks(args, classes)
    callbacks += finetune_callbacks(args, steps_per_epoch)
    callbacks += ema_callbacks(args)
    callbacks += checkpoint_callbacks(args, run_dir)
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
        **task_info(args),
    )
    callbacks.append(WriteRunInfo(run_dir, info))  # what predict, evaluate and export need
    if customize is not None:
        callbacks = customize(callbacks)
    trainer = job.trainer(args, callbacks)
    trainer.print(f"training {job.describe(args)}, {args.epochs} epochs, {job.processes(trainer)}")
    start = time.perf_counter()
    with lock_run(run_dir, state):  # one run per folder: a second one is refused before it writes anything
        if args.lr == "auto":
            args.lr = logger.hparams["lr"] = auto_lr(args, trainer, train_loader, os.path.join(run_dir, "lr_find"))
        try:
            trainer.fit(train_loader, val_loader, epochs=args.epochs, resume_from=args.resume)
        except ScheduleError as exc:
            if not args.resume:
                raise
            raise CLIError(_resume_advice(args, run_dir, exc)) from exc
    metrics = dict(trainer.state.metrics)
    score = monitored_metric(args)
    trainer.print(
        f"done in {time.perf_counter() - start:.0f} s: {score} {metrics.get(score, float('nan')):.4f}, "
        f"val/loss {metrics.get('val/loss', float('nan')):.4f}\n"
        f"run written to {run_dir}\nopen it with: tensorboard --logdir {run_dir}"
    )
    return metrics


def run(args: argparse.Namespace) -> int:
    """Run the `train` command; 0 on success."""
    train(args)
    return 0
