"""`callbacks-kit lr-find`: the LR range test on the main job's data, model and freezing, written to TensorBoard."""

from __future__ import annotations

import argparse

from callbacks_kit.cli.job import build_job
from callbacks_kit.cli.lr_sweep import lr_finder, sweep_lr
from callbacks_kit.cli.run_dir import lock_run, pick_run_dir, tensorboard_command
from callbacks_kit.distributed import process_state, use_cpu
from callbacks_kit.errors import CLIError


def run(args: argparse.Namespace) -> int:
    """Run the `lr-find` command; 0 with a suggestion, a CLIError (exit 2) when the sweep gives none."""
    lr_finder(args)  # the range is checked before any data is loaded
    state = process_state(use_cpu(args.cpu))
    state.print(f"lr-find: loading {args.data or args.labels or 'the built-in shapes'} and building {args.model}")
    job = build_job(args)  # lr-find's --lr is "auto": the groups start at AUTO_PLACEHOLDER_LR, the sweep uses ratios
    trainer = job.trainer(args, [], progress_bar=False)
    trainer.print(f"LR range test of {job.describe(args)}, up to {args.lr_find_steps} steps, {job.processes(trainer)}")
    trainer.print(job.input.describe())
    run_dir = pick_run_dir(args.log_dir, job.state)
    with lock_run(run_dir, job.state):
        result = sweep_lr(args, trainer, job.train_loader, run_dir)
    if result.suggestion is None:  # the command's one product is missing: a script must not read on
        raise CLIError(
            f"the LR range test found no LR to suggest ({'; '.join(result.notes) or 'no finite loss'}); the curve "
            f"is in {run_dir} ({tensorboard_command(run_dir)}). Widen --lr-find-min/--lr-find-max or raise "
            "--lr-find-steps, then run it again"
        )
    trainer.print(
        f"train with it: callbacks-kit train --lr {result.suggestion:.3g} (same options), or --lr auto\n"
        f"curve written to {run_dir}\nopen it with: {tensorboard_command(run_dir)}"
    )
    return 0
