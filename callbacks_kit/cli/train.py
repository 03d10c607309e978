"""`callbacks-kit train`: the main job. Trains a classifier or a segmentation model and writes a TensorBoard run."""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from callbacks_kit.callbacks.base import Callback
from callbacks_kit.callbacks.model_checkpoint import ModelCheckpoint
from callbacks_kit.callbacks.progress_bar import ProgressBar
from callbacks_kit.callbacks.tensorboard_logger import TensorBoardLogger
from callbacks_kit.checkpoint.format import BEST_WEIGHTS
from callbacks_kit.cli.job import build_job
from callbacks_kit.cli.job_callbacks import (
    VALIDATED,
    checkpoint_callbacks,
    ema_callbacks,
    error_analysis_callbacks,
    finetune_callbacks,
    inspection_callbacks,
    monitored,
    profiling_callbacks,
    recipe_callbacks,
    training_view_callbacks,
)
from callbacks_kit.cli.lr_sweep import auto_lr, lr_finder
from callbacks_kit.cli.parser import train_defaults
from callbacks_kit.cli.resume_checks import check_new_run, check_resume, checkpoint_folder
from callbacks_kit.cli.run_dir import lock_run, pick_run_dir, tensorboard_command
from callbacks_kit.cli.run_hparams import run_hparams, user_flags
from callbacks_kit.cli.segmentation_job import check_task_args, segmentation_callbacks, task_info
from callbacks_kit.deploy.run_info import RunInfo, WriteRunInfo
from callbacks_kit.errors import CLIError, ScheduleError


def _resume_advice(args: argparse.Namespace, run_dir: str, exc: ScheduleError) -> str:
    """What a CLI user can run when the saved LR schedule does not fit the new settings."""
    folder = args.checkpoint_dir or os.path.join(run_dir, "checkpoints")
    source = folder if args.resume in ("last", "auto") else args.resume
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
    check_new_run(args)  # before anything is read or written
    given = user_flags(args, train_defaults())  # before the checks fill in defaults
    check_task_args(args)  # the task's defaults of --epochs, --batch-size and --lr, before anything reads them
    if args.lr == "auto":
        if args.resume:
            raise CLIError(
                "--lr auto runs an LR range test for a new run; a resumed run keeps the LR schedule it was started "
                "with (its checkpoint holds it): pass the run's --lr with --resume, or drop --resume"
            )
        lr_finder(args)  # its range is checked before any data is loaded
    recipe = recipe_callbacks(args)  # checks the recipe's flags before any data is read
    monitor, mode = monitored(args)  # and --monitor's
    job = build_job(args)
    state, classes, size = job.state, job.classes, job.size
    train_loader, val_loader = job.train_loader, job.val_loader
    run_dir = pick_run_dir(args.log_dir, state)
    steps_per_epoch = max(1, len(train_loader) // max(1, state.num_processes) // args.grad_accum)
    logger = TensorBoardLogger(run_dir, hparams=run_hparams(args, given, size))
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
    callbacks += profiling_callbacks(args, steps_per_epoch)
    info = RunInfo(
        args.model,
        list(classes),
        size,
        job.resize,
        head=args.head,
        hidden=args.hidden,
        dropout=args.dropout,
        checkpoint_dir=str(Path(args.checkpoint_dir).resolve()) if args.checkpoint_dir else "checkpoints",
        label_smoothing=args.label_smoothing,
        monitor=monitor,
        monitor_mode=mode,
        best_weights="ema" if monitor.startswith("val_ema/") else "trained",
        **task_info(args),
    )
    check_resume(args, info, checkpoint_folder(args, run_dir))  # the data and settings the checkpoint was trained on
    callbacks.append(WriteRunInfo(run_dir, info))  # what predict, evaluate and export need
    if customize is not None:
        callbacks = customize(callbacks)
    trainer = job.trainer(args, callbacks)
    trainer.print(f"training {job.describe(args)}, {args.epochs} epochs, {job.processes(trainer)}")
    trainer.print(job.input.describe())
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
    trainer.print(
        f"done in {time.perf_counter() - start:.0f} s: {_last_figures(metrics, VALIDATED[args.task][0])}\n"
        f"{_best_line(trainer.callbacks.find(ModelCheckpoint), info)}"
        f"run written to {run_dir}\nopen it with: {tensorboard_command(run_dir)}"
    )
    return metrics


def _last_figures(metrics: dict[str, float], main: str) -> str:
    """The last validation's `main` metric and loss: `val/*`, and `val_ema/*` when the EMA was validated."""
    nan = float("nan")
    figures = f"val/{main} {metrics.get(f'val/{main}', nan):.4f}, val/loss {metrics.get('val/loss', nan):.4f}"
    if f"val_ema/{main}" in metrics:
        figures += (
            f"; val_ema/{main} {metrics[f'val_ema/{main}']:.4f}, val_ema/loss {metrics.get('val_ema/loss', nan):.4f}"
        )
    return figures


def _best_line(checkpoints: list[ModelCheckpoint], info: RunInfo) -> str:
    """Which weights best.safetensors holds, with its score and epoch (a line), or nothing before any best."""
    best = checkpoints[0] if checkpoints else None
    if best is None or best.best_name is None:
        return ""
    epoch = re.match(r"epoch=(\d+)", best.best_name)
    when = f" after epoch {int(epoch.group(1))}" if epoch else ""
    weights = "the EMA's averaged weights" if info.best_weights == "ema" else "the trained weights"
    return (
        f"best {info.monitor} {best.best_k[best.best_name]:.4f}{when}: {weights}, in "
        f"{best.dirpath / BEST_WEIGHTS} (predict, evaluate and export use them)\n"
    )


def run(args: argparse.Namespace) -> int:
    """Run the `train` command; 0 on success."""
    train(args)
    return 0
