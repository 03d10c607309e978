"""`callbacks-kit lr-find`: the LR range test on the main job's data, model and freezing, written to TensorBoard."""

from __future__ import annotations

import argparse
from typing import Any

from callbacks_kit.cli import options
from callbacks_kit.cli.train import add_job_args, build_job, lock_run, pick_run_dir


def add_parser(commands: Any) -> None:
    """Add the `lr-find` command: `train`'s data, model, run and fine-tuning options, and the sweep's."""
    command = commands.add_parser(
        "lr-find",
        help="LR range test: sweep the LR, plot the loss against it in TensorBoard, suggest an LR for train",
        description="Runs train's job (same --data, --model, --weights, --freeze-backbone...) through an "
        "exponential LR sweep and suggests an LR for `callbacks-kit train --lr` (or use `train --lr auto`). "
        "The model is not saved: the sweep only measures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_job_args(command)
    options.add_finetune_args(command)
    options.add_lr_find_args(command)


def run(args: argparse.Namespace) -> int:
    """Run the `lr-find` command; 0 on success."""
    options.lr_finder(args)  # the range is checked before any data is loaded
    if args.lr == "auto":
        args.lr = 1e-3  # only the groups' ratios matter to the sweep
    job = build_job(args)
    trainer = job.trainer(args, [], progress_bar=False)
    trainer.print(f"LR range test of {job.describe(args)}, up to {args.lr_find_steps} steps, {job.processes(trainer)}")
    run_dir = pick_run_dir(args.log_dir, job.state)
    with lock_run(run_dir, job.state):
        result = options.sweep_lr(args, trainer, job.train_loader, run_dir)
    if result.suggestion is not None:
        trainer.print(
            f"train with it: callbacks-kit train --lr {result.suggestion:.3g} (same options), or --lr auto\n"
            f"curve written to {run_dir}\nopen it with: tensorboard --logdir {run_dir}"
        )
    return 0
