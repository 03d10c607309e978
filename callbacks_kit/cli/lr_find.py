"""`callbacks-kit lr-find`: the LR range test on the main job's data, model and freezing, written to TensorBoard."""

from __future__ import annotations

import argparse
from typing import Any

from callbacks_kit.cli.flags import add_finetune_args, add_job_args, add_lr_find_args
from callbacks_kit.cli.job import build_job
from callbacks_kit.cli.lr_sweep import lr_finder, sweep_lr
from callbacks_kit.cli.run_dir import lock_run, pick_run_dir
from callbacks_kit.cli.segmentation_job import add_task_args


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
    add_task_args(command)
    add_finetune_args(command)
    add_lr_find_args(command)


def run(args: argparse.Namespace) -> int:
    """Run the `lr-find` command; 0 on success."""
    lr_finder(args)  # the range is checked before any data is loaded
    job = build_job(args)  # with --lr auto, the groups start at AUTO_PLACEHOLDER_LR: the sweep uses their ratios
    trainer = job.trainer(args, [], progress_bar=False)
    trainer.print(f"LR range test of {job.describe(args)}, up to {args.lr_find_steps} steps, {job.processes(trainer)}")
    run_dir = pick_run_dir(args.log_dir, job.state)
    with lock_run(run_dir, job.state):
        result = sweep_lr(args, trainer, job.train_loader, run_dir)
    if result.suggestion is not None:
        trainer.print(
            f"train with it: callbacks-kit train --lr {result.suggestion:.3g} (same options), or --lr auto\n"
            f"curve written to {run_dir}\nopen it with: tensorboard --logdir {run_dir}"
        )
    return 0
